#!/usr/bin/env bash
# The device checks in one script (for a machine with a CUDA GPU): gsplat vs the PyTorch
# renderer (marked tests) and the render benchmark on the GPU. Prints what it measured.
#   bash experiments/gpu_check.sh        # after `make install` (or with .venv carried over)
set -euo pipefail
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"   # one target arch: faster JIT build
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv || true
$PY -c "import torch; print('cuda', torch.cuda.is_available(), torch.version.cuda)"
$PY -m pytest -q -m gpu tests/render -rA -s 2>&1 | tail -40
$PY experiments/bench/render.py --quick 2>&1 | tail -40 || true   # CPU renderer, for reference
