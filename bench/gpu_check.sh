#!/usr/bin/env bash
# The GPU check (issues 3 and 15), for a machine with a CUDA GPU (written for one H200,
# 16 cores, torch with CUDA already installed in the python on PATH, nothing installable).
# One call must bring back every figure it measured, whatever happens, within 8 minutes:
#   1. build    clr_ext in place from source with CUDA (MAX_JOBS=cores, TORCH_CUDA_ARCH_LIST=9.0,
#               no Cython), under a timeout;
#   2. sass     what the compiler made (bench/sass_report.sh): 128-bit loads per kernel
#               instantiation (does the vector path exist?), registers, spills;
#   3. smoke    a one-minute subset of tests/cuda/ (SMOKE_K below);
#   3b. adamw   the AdamW parity against torch.optim.AdamW(fused=True) (ADAMW_K below);
#   4. bench    bench/gpu_bench.py: each row printed and appended to $OUT as it is measured;
#   5. parity   the rest of tests/cuda/ (the long parity runs), in the time left.
# Every phase prints its elapsed time; a recap (phase times, SASS table, benchmark table,
# test summaries) comes last. Tests run under `timeout --signal=INT`, so pytest writes its
# summary (with -v and --durations=15) even when cut short; output is unbuffered.
#
# Without a GPU (say, on a CPU development machine: `PYTHON=.venv/bin/python bash
# bench/gpu_check.sh`) the same phases run as a dry run of the machinery: no build (the
# in-place build would replace the checkout's CPU extension), the SASS report on a CUDA
# build if one is there (build/cuda-ci from .ci/cuda_build.sh), the tests' CPU dry run
# (CLR_EXT_CUDA_TESTS_DEVICE=cpu) and the benchmark's (--device cpu, small sizes). Its
# numbers say nothing about a GPU.
#
# Files under $OUT (default /tmp/gpu_check), written as the run goes:
#   gpu_check_build.log, gpu_check_sass.md, gpu_check_smoke.log, gpu_check_adamw.log, gpu_check_rows.md (one
#   line per benchmark row, as measured), gpu_check_bench.log, gpu_check_table.md,
#   gpu_check_parity.log, gpu_check_phases.txt.
# Exit status: 0 when every phase that ran passed; 1 otherwise (a failed build stops the
# run after the recap; failed tests don't stop the benchmark). In the dry run a phase cut
# by the time budget is reported, but is no failure unless a test in it failed.
#
# Environment (optional): PYTHON (default: python3 or python with torch, else
# .venv/bin/python), MAX_JOBS, TORCH_CUDA_ARCH_LIST, CUDA_HOME, OUT,
# GPU_CHECK_BUDGET (seconds for the whole run, default 470; 240 in the dry run: the long
# parity tests are cut there, which the dry run reports but does not count as a failure),
# GPU_CHECK_BUILD_TIMEOUT (200), GPU_CHECK_SMOKE_TIMEOUT (75), GPU_CHECK_BENCH_TIMEOUT (100)
# (with the SASS report's 45 s, the parity tests keep 50 s or more of the 470: the
# long tests get the time left), GPU_CHECK_SKIP_BUILD=1, GPU_CHECK_SKIP_TESTS=1,
# GPU_CHECK_DRY_RUN=1 (the no-GPU mode even with a GPU),
# GPU_CHECK_BUILD=1 (build even in the dry run), GPU_CHECK_SO (the .so for the SASS report).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[gpu_check $(elapsed)s] $*"; }
LOGDIR=${OUT:-/tmp/gpu_check}
mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/gpu_check_*
PHASES="$LOGDIR/gpu_check_phases.txt"
status=0

# phase bookkeeping: begin NAME; end STATUS-WORD
phase_name=""
phase_t0=0
begin() { phase_name=$1; phase_t0=$(date +%s); echo; say "=== phase $1: $2"; }
end() {
  local secs=$(( $(date +%s) - phase_t0 ))
  printf '%-8s %-48s %4d s\n' "$phase_name" "$1" "$secs" >>"$PHASES"
  say "=== phase $phase_name: $1 in ${secs} s"
}
# timeout that lets the command write its summary: SIGINT first, SIGKILL 10 s later
bounded() { local t=$1; shift; timeout --signal=INT --kill-after=10 "$t" "$@"; }
time_left() { local left=$(( BUDGET - $(elapsed) )); [ "$left" -lt "$1" ] && left=$1; echo "$left"; }

recap() {
  echo
  say "=================== recap (files in $LOGDIR) ==================="
  echo "mode: $MODE"
  echo "phase    result                                           time"
  cat "$PHASES" 2>/dev/null
  echo "total: $(elapsed) s (budget $BUDGET s)"
  if [ -s "$LOGDIR/gpu_check_sass.md" ]; then echo; cat "$LOGDIR/gpu_check_sass.md"; fi
  if [ -s "$LOGDIR/gpu_check_table.md" ]; then echo; cat "$LOGDIR/gpu_check_table.md"
  elif [ -s "$LOGDIR/gpu_check_rows.md" ]; then echo; echo "(benchmark rows measured before it stopped)"; cat "$LOGDIR/gpu_check_rows.md"
  fi
  for t in smoke parity; do
    if [ -s "$LOGDIR/gpu_check_$t.log" ]; then
      echo; echo "--- $t tests: failures and summary"
      grep -E "^(FAILED|ERROR) |^FAIL |[0-9]+ (passed|failed)|Interrupted|KeyboardInterrupt|Timeout" "$LOGDIR/gpu_check_$t.log" | tail -25
    fi
  done
  echo
  say "done: exit $status"
}

# ------------------------------------------------------------------- 0. environment
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3 python .venv/bin/python; do
    if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY=$(command -v "$c"); break; fi
  done
fi
[ -n "$PY" ] || { echo "gpu_check: no python with torch (set PYTHON)"; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # clr_ext as built in place here
say "python: $PY; $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1 | tail -1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
if [ -z "${GPU_CHECK_DRY_RUN:-}" ] && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  MODE=gpu
else
  MODE=dry-run
  say "NO GPU (or GPU_CHECK_DRY_RUN=1): a dry run of the phases on the CPU; its numbers say nothing about a GPU"
fi
BUDGET=${GPU_CHECK_BUDGET:-$([ "$MODE" = gpu ] && echo 470 || echo 240)}
say "time budget: $BUDGET s"

# The CUDA toolkit: CUDA_HOME, else torch's guess, else the usual folders, else the real
# folder of nvcc (which may be a wrapper script). Needs bin/nvcc and libcudart in any one
# of lib64/, targets/*/lib/, lib/.
cuda_ok() {
  [ -n "${1:-}" ] && [ -x "$1/bin/nvcc" ] || return 1
  local f
  for f in "$1"/lib64/libcudart.so* "$1"/targets/*/lib/libcudart.so* "$1"/lib/libcudart.so*; do
    [ -e "$f" ] && return 0
  done
  return 1
}
if ! cuda_ok "${CUDA_HOME:-}"; then
  CUDA_HOME=""
  for d in "$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' 2>/dev/null | tail -1)" \
           /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-13 \
           "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent/bin/nvcc)")")")"; do
    if cuda_ok "$d"; then CUDA_HOME=$d; break; fi
  done
  if [ -z "$CUDA_HOME" ] && command -v nvcc >/dev/null; then
    real=$(grep -o '/[^ "]*/bin/nvcc' "$(command -v nvcc)" 2>/dev/null | head -1)
    [ -n "$real" ] && cuda_ok "$(dirname "$(dirname "$real")")" && CUDA_HOME=$(dirname "$(dirname "$real")")
  fi
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
  say "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*'))"
elif [ "$MODE" = gpu ]; then
  say "no CUDA toolkit found (bin/nvcc and lib64/, targets/*/lib/ or lib/libcudart.so*; set CUDA_HOME)"
  status=1
else
  say "no CUDA toolkit found (not needed for the dry run)"
fi
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for inc in "$SITE/nvidia/cu13/include" "$SITE/nvidia/cusparse/include"; do
  [ -d "$inc" ] && export CPATH="$inc${CPATH:+:$CPATH}"
done
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CLR_EXT_NO_CYTHON=1  # the Cython fallback costs ~30 s and can fail before any GPU test
export CLR_EXT_FORCE_CUDA=1
"$PY" -c "import ninja" 2>/dev/null || command -v ninja >/dev/null || say "no ninja: the build runs serially"

# ---------------------------------------------------------------------------- 1. build
begin build "in place with CUDA (arch $TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, no Cython)"
if [ -n "${GPU_CHECK_SKIP_BUILD:-}" ]; then
  end "skipped (GPU_CHECK_SKIP_BUILD)"
elif [ "$MODE" != gpu ] && [ -z "${GPU_CHECK_BUILD:-}" ]; then
  end "skipped (dry run: GPU_CHECK_BUILD=1 builds)"
elif [ -z "${CUDA_HOME:-}" ]; then
  end "FAILED: no CUDA toolkit"
else
  bounded "${GPU_CHECK_BUILD_TIMEOUT:-200}" "$PY" setup.py -q build_ext --inplace >"$LOGDIR/gpu_check_build.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    end "ok"
  else
    tail -40 "$LOGDIR/gpu_check_build.log"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then end "FAILED: timed out (exit $rc)"; else end "FAILED (exit $rc)"; fi
    status=1
    recap
    exit 1
  fi
fi
have_cuda_backend=0
backends=$("$PY" -c "import clr_ext; print(clr_ext.available_backends(), 'tensors/launch', \
clr_ext.backends._C.cuda_max_tensors_per_launch() if 'cuda' in clr_ext.available_backends() else None)" 2>&1 | tail -1)
case $backends in
  *"'cuda'"*) have_cuda_backend=1; say "clr_ext backends: $backends" ;;
  *) if [ "$MODE" = gpu ]; then say "clr_ext has no CUDA backend after the build: $backends"; status=1
     else say "clr_ext backends here: $backends (no CUDA: expected in a dry run)"; fi ;;
esac

# ----------------------------------------------------------------------------- 2. SASS
begin sass "128-bit loads, registers, spills per kernel instantiation"
SO=${GPU_CHECK_SO:-}
if [ -z "$SO" ]; then
  for f in clr_ext/_C*.so build/cuda-ci/lib/clr_ext/_C*.so; do
    [ -f "$f" ] || continue
    # the first one that carries device code (a CPU build carries none)
    # (grep without -q: with pipefail, grep -q closing the pipe early would fail it)
    if [ "$MODE" = gpu ] || strings -a "$f" 2>/dev/null | grep "sm_[0-9]" >/dev/null; then SO=$f; break; fi
  done
fi
if [ -z "$SO" ]; then
  end "skipped: no CUDA build of clr_ext._C here"
else
  say "on $SO"
  PYTHON="$PY" bounded 45 bash bench/sass_report.sh "$SO" "$LOGDIR/gpu_check_sass.md"
  rc=$?
  case $rc in
    0) end "ok ($(grep -o 'vector path.*' "$LOGDIR/gpu_check_sass.md" | head -1))" ;;
    2) end "not measured (no cuobjdump / device code)" ;;
    *) end "FAILED (exit $rc)"; status=1 ;;
  esac
fi

# ------------------------------------------------------------------------- 3-5. tests
# The smoke subset: every kind of check once, quickly (one dtype of the op parity).
SMOKE_K="registered or found_inf or several_launches or momentum_start or opcheck or size_one_strides \
or no_host_sync or dispatches_one_op or one_kernel_launch or whole_training_step or replays_without_sync \
or grad_scaler or cycled_momentum_zero or (op_matches_cpu_op and f32)"
if [ "$MODE" = gpu ]; then
  export CLR_EXT_REQUIRE_CUDA=1
  TEST_ENV=(env)
else
  TEST_ENV=(env CLR_EXT_CUDA_TESTS_DEVICE=cpu)
fi
HAVE_PYTEST=0
"$PY" -c "import pytest" 2>/dev/null && HAVE_PYTEST=1

run_tests() {  # NAME K-EXPRESSION TIMEOUT
  local name=$1 expr=$2 limit=$3 log="$LOGDIR/gpu_check_$1.log" rc
  begin "$name" "tests/cuda -k '$expr' (limit $limit s)"
  if [ -n "${GPU_CHECK_SKIP_TESTS:-}" ]; then end "skipped (GPU_CHECK_SKIP_TESTS)"; return; fi
  if [ "$MODE" = gpu ] && [ "$have_cuda_backend" != 1 ]; then end "skipped: no CUDA backend"; status=1; return; fi
  if [ "$HAVE_PYTEST" = 1 ]; then
    bounded "$limit" "${TEST_ENV[@]}" "$PY" -m pytest -v --durations=15 -p no:cacheprovider -rfEs \
      tests/cuda -k "$expr" >"$log" 2>&1
  else
    say "pytest is not installed: the test file's own runner"
    bounded "$limit" "${TEST_ENV[@]}" "$PY" tests/cuda/cuda_harness.py -k "$expr" >"$log" 2>&1
  fi
  rc=$?
  grep -E "^(FAILED|ERROR) |^FAIL " "$log" | head -30
  tail -3 "$log"
  case $rc in
    0) end "ok ($(grep -oE '[0-9]+ passed[^=]*' "$log" | tail -1))" ;;
    124|137)
      end "TIMED OUT at $limit s ($(grep -oE '[0-9]+ (passed|failed)[^=]*' "$log" | tail -1))"
      # a dry run on a small CPU is cut by the GPU's time budget: that is no failure
      [ "$MODE" = gpu ] || grep -qE "^(FAILED|ERROR) |^FAIL " "$log" && status=1 ;;
    *) end "FAILED (exit $rc: $(grep -oE '[0-9]+ (passed|failed)[^=]*' "$log" | tail -1))"; status=1 ;;
  esac
}

run_tests smoke "$SMOKE_K" "${GPU_CHECK_SMOKE_TIMEOUT:-75}"
# AdamW against torch.optim.AdamW(fused=True) right after the smoke tests: the first GPU
# run must not lose them to the budget of the long parity phase at the end.
ADAMW_K="adamw_matches_torch_fused or (grad_scaler_matches_torch_fused and adamw)"
run_tests adamw "$ADAMW_K" "${GPU_CHECK_ADAMW_TIMEOUT:-90}"

begin bench "bench/gpu_bench.py, rows into $LOGDIR/gpu_check_rows.md as measured"
if [ "$MODE" = gpu ] && [ "$have_cuda_backend" != 1 ]; then
  end "skipped: no CUDA backend"
else
  BENCH_ARGS=(--rows "$LOGDIR/gpu_check_rows.md" --out "$LOGDIR/gpu_check_table.md")
  [ "$MODE" = gpu ] || BENCH_ARGS+=(--device cpu)
  bounded "${GPU_CHECK_BENCH_TIMEOUT:-100}" "$PY" bench/gpu_bench.py "${BENCH_ARGS[@]}" 2>&1 | tee "$LOGDIR/gpu_check_bench.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) end "ok ($(grep -o 'gpu_bench: [0-9]* rows, [0-9]* failed' "$LOGDIR/gpu_check_bench.log" | tail -1))" ;;
    124|130|137) end "TIMED OUT: the rows measured are in gpu_check_rows.md"; [ "$MODE" = gpu ] && status=1 ;;
    *) end "FAILED (exit $rc): the rows measured are in gpu_check_rows.md"; status=1 ;;
  esac
fi

run_tests parity "not ($SMOKE_K) and not ($ADAMW_K)" "$(time_left 30)"

recap
exit $status
