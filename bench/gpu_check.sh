#!/usr/bin/env bash
# The GPU check (issue 3), for a machine with a CUDA GPU (written for one H200, 16 cores,
# torch with CUDA already installed in the python on PATH, nothing installable):
#   1. builds clr_ext in place from source with CUDA (MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0),
#   2. runs tests/test_cuda.py with CLR_EXT_REQUIRE_CUDA=1 (pytest if present, else the
#      file's own runner): parity vs the CPU op and vs torch fused SGD + CyclicLR in every
#      dtype, sync-debug, CUDA-graph capture, GradScaler, launches per step, >2^31 elements,
#   3. benchmarks (bench/gpu_bench.py) and prints the table last.
# Budget: about 8 minutes on one H200, build included. Exit status: non-zero if the
# build or a test failed (the benchmark still runs after failed tests).
#
# Environment (optional): PYTHON (default: python3, else python), MAX_JOBS,
# TORCH_CUDA_ARCH_LIST, CUDA_HOME, OUT (a folder for the logs and table; else /tmp),
# GPU_CHECK_SKIP_BUILD=1, GPU_CHECK_SKIP_TESTS=1.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - start ))s] $*"; }
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3 python; do
    if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY=$(command -v "$c"); break; fi
  done
fi
[ -n "$PY" ] || { echo "gpu_check: no python with torch on PATH (set PYTHON)"; exit 1; }
# Logs and the table go straight into $OUT when given, so that a run cut short by a
# time limit (or a failed build) still returns what it wrote.
LOGDIR=${OUT:-/tmp}
mkdir -p "$LOGDIR"
status=0

export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CLR_EXT_FORCE_CUDA=1
export CLR_EXT_REQUIRE_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # clr_ext as built in place here

say "python: $PY; $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1 | tail -1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader

# --- the CUDA toolkit: CUDA_HOME, else torch's guess, else the real folder of nvcc
cuda_ok() { [ -n "${1:-}" ] && [ -x "$1/bin/nvcc" ] && ls "$1"/lib64/libcudart.so* "$1"/targets/*/lib/libcudart.so* >/dev/null 2>&1; }
if ! cuda_ok "${CUDA_HOME:-}"; then
  CUDA_HOME=""
  for d in "$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' 2>/dev/null | tail -1)" \
           /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-13 \
           "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent/bin/nvcc)")")")"; do
    if cuda_ok "$d"; then CUDA_HOME=$d; break; fi
  done
  # nvcc on PATH may be a wrapper script: look for the exec'd path inside it
  if [ -z "$CUDA_HOME" ] && command -v nvcc >/dev/null; then
    real=$(grep -o '/[^ "]*/bin/nvcc' "$(command -v nvcc)" 2>/dev/null | head -1)
    [ -n "$real" ] && cuda_ok "$(dirname "$(dirname "$real")")" && CUDA_HOME=$(dirname "$(dirname "$real")")
  fi
fi
if [ -z "${CUDA_HOME:-}" ]; then
  echo "gpu_check: no CUDA toolkit found (set CUDA_HOME)"; exit 1
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for inc in "$SITE/nvidia/cu13/include" "$SITE/nvidia/cusparse/include"; do
  [ -d "$inc" ] && export CPATH="$inc${CPATH:+:$CPATH}"
done
"$PY" -c "import Cython" 2>/dev/null || export CLR_EXT_NO_CYTHON=1
"$PY" -c "import ninja" 2>/dev/null || command -v ninja >/dev/null || say "no ninja: the build runs serially"
say "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*')), arch $TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS${CLR_EXT_NO_CYTHON:+, no Cython}"

# --- 1. build in place
if [ -z "${GPU_CHECK_SKIP_BUILD:-}" ]; then
  t0=$(date +%s)
  if "$PY" setup.py -q build_ext --inplace >"$LOGDIR/gpu_check_build.log" 2>&1; then
    say "built in $(( $(date +%s) - t0 )) s"
  else
    tail -40 "$LOGDIR/gpu_check_build.log"
    say "BUILD FAILED"; exit 1
  fi
fi
"$PY" -c "import clr_ext, torch; assert 'cuda' in clr_ext.available_backends(), clr_ext.available_backends(); \
print('backends', clr_ext.available_backends(), 'tensors/launch', clr_ext.backends._C.cuda_max_tensors_per_launch())" \
  || { say "clr_ext has no CUDA backend after the build"; exit 1; }

# --- 2. tests
if [ -z "${GPU_CHECK_SKIP_TESTS:-}" ]; then
  t0=$(date +%s)
  if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 270 "$PY" -m pytest -q -p no:cacheprovider -rfEs tests/test_cuda.py > "$LOGDIR/gpu_check_tests.log" 2>&1
    rc=$?
    tail -40 "$LOGDIR/gpu_check_tests.log"
  else
    say "pytest is not installed: running the test file's own runner"
    timeout 270 "$PY" tests/test_cuda.py > "$LOGDIR/gpu_check_tests.log" 2>&1
    rc=$?
    grep -v "^ok  " "$LOGDIR/gpu_check_tests.log" | tail -60
  fi
  say "tests: exit $rc in $(( $(date +%s) - t0 )) s"
  [ "$rc" -eq 0 ] || status=1
fi

# --- 3. benchmark (the table is printed last)
say "benchmark"
table="$LOGDIR/gpu_check_table.md"
timeout 150 "$PY" bench/gpu_bench.py --out "$table" > "$LOGDIR/gpu_check_bench.log" 2>&1 || { tail -30 "$LOGDIR/gpu_check_bench.log"; status=1; }
say "done (status $status)"
echo
[ -f "$table" ] && cat "$table"
exit $status
