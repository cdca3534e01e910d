#!/usr/bin/env bash
# The device-machine check, run as one prepared script when a session is lent a GPU:
#   what the GPU is, the meta-gradient tests, a CUDA training smoke run, and the CUDA benchmark.
# The device image has torch but not hydra/omegaconf/wandb/typer: carry their wheels in .whl/
# (see the device tool's README) and this script installs them into /tmp/site first.
# Usage there: bash scripts/gpu_check.sh   (writes its log to $OUT/gpu_check.log when OUT is set)
set -uo pipefail
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
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
    hydra.run.dir=/tmp/gpu_run && cat /tmp/gpu_run/eval.json | head -30
  python3 scripts/bench.py --device cuda --rounds 5
} 2>&1 | tee "$log"
