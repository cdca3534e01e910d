#!/usr/bin/env bash
# The device-machine check, run as one prepared script when a session is lent a GPU:
#   what the GPU is, the meta-gradient tests on it, a CUDA training smoke run per kind, and the
#   CUDA benchmarks (sinusoid, Omniglot 5-way and 20-way against learn2learn, the meta-RL split);
#   then the scaling part: torchrun on 2 GPUs vs 1 (final parameters equal; only with >= 2 GPUs),
#   the memory benchmark on the GPU, and torchrun's iterations/s on the GPU.
# The device image has torch but not hydra/omegaconf/wandb/typer/gymnasium/learn2learn: carry
# their wheels in .whl/ (see the device tool's README) and this script installs them into
# /tmp/site first. Omniglot data travels if copied into the repo's ignored .data/ folder.
# Usage there: bash scripts/gpu_check.sh [all|base|scaling]   (default all; writes its log to
#   $OUT/gpu_check.log when OUT is set). Every part is bounded by `timeout`, but all of them together
#   can outlast a 10-minute command: give `base` and `scaling` a call each when time is short.
set -uo pipefail
part=${1:-all}
case $part in
  all | base | scaling) ;;
  *) echo "usage: bash scripts/gpu_check.sh [all|base|scaling]" >&2 && exit 2 ;;
esac
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .data ] && export MAMLRUN_DATA="$PWD/.data"
log=${OUT:-/tmp}/gpu_check.log
{
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ "$part" != scaling ]; then
    python3 -m pytest -q -x tests/test_meta_gradient.py -p no:cacheprovider
    python3 -m mamlrun train device=cuda meta_iterations=3000 eval.tasks=200 logger=none progress=false \
      hydra.run.dir=/tmp/gpu_sinusoid && head -30 /tmp/gpu_sinusoid/eval.json
    python3 -m mamlrun train experiment=nav2d_paper device=cuda meta_iterations=20 logger=none progress=false \
      hydra.run.dir=/tmp/gpu_nav2d
    timeout 420 python3 scripts/bench.py --device cuda --rounds 5
  fi
  if [ "$part" != base ]; then
    # (a) torchrun on 2 GPUs (nccl) vs 1: the final parameters agree, as tests/test_distributed.py
    # checks on the CPU (gloo; its tests pin device=cpu through debug=smoke). Few iterations: Adam
    # amplifies float rounding over many. NVIDIA_TF32_OVERRIDE=0: float32 convolutions in both.
    gpus=$(nvidia-smi -L | wc -l)
    if [ "$gpus" -ge 2 ]; then
      echo "== torchrun: 2 GPUs vs 1, final parameters (sinusoid, learned alpha, 6 iterations)"
      NVIDIA_TF32_OVERRIDE=0 timeout 150 python3 scripts/bench_torchrun.py --device cuda \
        --experiment sinusoid_paper --iterations 6 --rounds 1 --no-warmup --max-diff 1e-5 \
        alpha=learned meta_batch=5
      echo "== torchrun: 2 GPUs vs 1, final parameters (Omniglot 5-way 1-shot, 3 iterations)"
      NVIDIA_TF32_OVERRIDE=0 timeout 200 python3 scripts/bench_torchrun.py --device cuda \
        --iterations 3 --rounds 1 --no-warmup --max-diff 1e-5
    else
      echo "== torchrun 2 GPUs vs 1: skipped ($gpus GPU)"
    fi
    # (b) peak memory of memory=keep vs recompute on the GPU (torch.cuda.max_memory_allocated)
    echo "== bench_memory.py on the GPU"
    timeout 150 python3 scripts/bench_memory.py --device cuda --rounds 3
    # (c) torchrun's iterations/s on the GPU: 1 process, and 2 (one GPU each) when there are 2 GPUs
    echo "== bench_torchrun.py on the GPU"
    timeout 180 python3 scripts/bench_torchrun.py --device cuda --iterations 100 --log-every 10 --rounds 2
  fi
} 2>&1 | tee "$log"
