#!/usr/bin/env bash
# The device-machine check, run as one prepared script when a session is lent a GPU:
#   what the GPU is, the meta-gradient tests on it, a CUDA training smoke run per kind, and the
#   CUDA benchmarks (sinusoid, Omniglot 5-way and 20-way against learn2learn, the meta-RL split).
# The device image has torch but not hydra/omegaconf/wandb/typer/gymnasium/learn2learn: carry
# their wheels in .whl/ (see the device tool's README) and this script installs them into
# /tmp/site first. Omniglot data travels if copied into the repo's ignored .data/ folder.
# Usage there: bash scripts/gpu_check.sh   (writes its log to $OUT/gpu_check.log when OUT is set)
set -uo pipefail
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
  python3 -m pytest -q -x tests/test_meta_gradient.py -p no:cacheprovider
  python3 -m mamlrun train device=cuda meta_iterations=3000 eval.tasks=200 logger=none progress=false \
    hydra.run.dir=/tmp/gpu_sinusoid && head -30 /tmp/gpu_sinusoid/eval.json
  python3 -m mamlrun train experiment=nav2d_paper device=cuda meta_iterations=20 logger=none progress=false \
    hydra.run.dir=/tmp/gpu_nav2d
  timeout 420 python3 scripts/bench.py --device cuda --rounds 5
} 2>&1 | tee "$log"
