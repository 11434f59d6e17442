#!/usr/bin/env bash
# Every device check in one prepared script, for a machine with a CUDA GPU (issue 13):
#   1. gsplat's CUDA kernels, compiled once for this GPU's architecture only (timed);
#   2. the GPU tests (-m gpu): gsplat vs TorchRenderer scenes (tests/render), a tiny gsplat fit,
#      test/export/animate with gsplat, gsplat vs TorchRenderer on the trained avatar, and
#      bf16-mixed / 16-mixed (tests/test_gpu.py);
#   3. the benchmark at configs/paper.yaml scale (experiments/bench/gpu.py): training step time
#      and peak GPU memory (open body, 2 subdivision levels, 576x1024, LPIPS-VGG when installed)
#      and animation frames per second at 576x1024 including posing. Prints JSON.
# Every stage runs under its own time limit, and a failing stage does not stop the next one;
# the exit status is non-zero when any stage failed. Logs and the JSON go to $OUT (the device
# runner's result folder) or runs/gpu_check.
#   bash experiments/gpu_check.sh           # after `make install` (or with .venv carried over)
# Needs offline: torch with CUDA and gsplat 1.5.3 in $PY's environment; LPIPS weights in
# $PERSONA_CACHE_DIR/lpips for the LPIPS-VGG part (else the benchmark says so and runs without).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
RESULTS=${OUT:-runs/gpu_check}
mkdir -p "$RESULTS"
# gsplat JIT-builds its kernels through torch.utils.cpp_extension into TORCH_EXTENSIONS_DIR:
# a folder inside the (git-ignored) repository survives between runs, so they compile once.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then   # only this GPU's architecture: a faster build
  TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") \
    || TORCH_CUDA_ARCH_LIST=9.0
fi
export TORCH_CUDA_ARCH_LIST
# The three limits sum to < 600 s, the device runner's limit per command. STAGES picks stages.
COMPILE_LIMIT=${COMPILE_LIMIT:-200}   # s: gsplat's first build (a few seconds once built)
TESTS_LIMIT=${TESTS_LIMIT:-180}       # s: every GPU test
BENCH_LIMIT=${BENCH_LIMIT:-200}       # s: the benchmark (subject, body and volume builds included)
STAGES=${STAGES:-"build tests bench"}
failed=()

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR"

run_stage() { [[ " $STAGES " == *" $1 "* ]]; }

if run_stage build; then
echo "== 1. gsplat kernels"
timeout "$COMPILE_LIMIT" $PY - <<'EOF' 2>&1 | tee "$RESULTS/gsplat_build.log" | tail -5
import time
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
start = time.perf_counter()
from gsplat.cuda._backend import _C  # compiles on first import, loads the build afterwards
print(f"gsplat kernels ready in {time.perf_counter() - start:.1f} s:", _C is not None)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("gsplat build")
fi

if run_stage tests; then

echo "== 2. GPU tests"
timeout "$TESTS_LIMIT" $PY -m pytest -q -m gpu -p no:cacheprovider -rA -s \
  tests/render/test_gsplat_renderer.py tests/test_gpu.py > "$RESULTS/gpu_tests.log" 2>&1
status=$?
grep -E "^(PASSED|FAILED|SKIPPED|ERROR)|vs torch|trained avatar|-mixed:|passed|failed" \
  "$RESULTS/gpu_tests.log" | tail -60
[ "$status" -eq 0 ] || { failed+=("gpu tests ($status)"); tail -40 "$RESULTS/gpu_tests.log"; }
fi

if run_stage bench; then

echo "== 3. benchmark (configs/paper.yaml scale)"
timeout "$BENCH_LIMIT" $PY experiments/bench/gpu.py --out "$RESULTS/gpu_bench.json" \
  > "$RESULTS/gpu_bench.log" 2>&1
status=$?
if [ "$status" -eq 0 ]; then cat "$RESULTS/gpu_bench.json"; else
  failed+=("benchmark ($status)"); tail -40 "$RESULTS/gpu_bench.log"; fi
fi

if [ "${#failed[@]}" -gt 0 ]; then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "gpu_check: all stages passed"
