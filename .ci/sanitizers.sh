#!/usr/bin/env bash
# The C++ CPU kernel under AddressSanitizer + UndefinedBehaviorSanitizer, with zero reports.
#
# Builds the header-only CTest binaries that run the CPU kernel and the schedule
# (csrc/tests/test_cpu_kernel.cpp: csrc/cpu/sgd_cpu.h's loops over every storage dtype,
# momentum state, flag combination and sizes around the SIMD widths (tails), any
# thread split of the range, the 16-bit conversions; csrc/tests/test_schedule.cpp:
# every mode, long runs and iterations up to 2^50; csrc/tests/test_cuda_index.cpp: the
# CUDA launcher's host-side chunk/table arithmetic; csrc/tests/test_cuda_kernel_host.cpp:
# the CUDA kernel run on the host, thread by thread, against the CPU kernel) with the release flags plus
# -fsanitize=address,undefined and runs them. Any report fails the run
# (-fno-sanitize-recover=all, halt_on_error). No torch needed: about two minutes.
#
# test_cpu_kernel is built twice: as shipped (GCC target_clones: the loader picks the
# AVX-512 / AVX2 / baseline clone this CPU runs) and with CLR_EXT_NO_TARGET_CLONES (the
# baseline x86-64 loops), so both the widest clone here and the baseline code are checked.
#
#   bash .ci/sanitizers.sh            # CXX=g++-12 by default; BUILD_DIR=build/sanitizers
set -euo pipefail
cd "$(dirname "$0")/.."

CXX=${CXX:-$(command -v g++-12 || command -v g++)}
BUILD_DIR=${BUILD_DIR:-build/sanitizers}
mkdir -p "$BUILD_DIR"

# The flags of CMakeLists.txt's CLR_EXT_CXX_FLAGS (same rounding, same vectorized code),
# plus debug info for readable reports.
FLAGS=(-std=c++20 -O3 -ffp-contract=off -fno-math-errno -g -Wall -Wextra
       -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -Icsrc)

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

echo "sanitizers: $("$CXX" --version | head -1)"
# csrc/math/schedule.h says it is valid C99 too: keep it so.
echo '#include "math/schedule.h"' | "${CC:-gcc}" -x c -std=c99 -pedantic -Werror -fsyntax-only -Icsrc -
build() {  # name source extra-flags...
  local name=$1 src=$2
  shift 2
  echo "--- build $name"
  "$CXX" "${FLAGS[@]}" "$@" "$src" -o "$BUILD_DIR/$name"
}
# The CUDA kernels emulated on the host (csrc/tests/cuda_host_emulation.h) at -O1, as
# AddressSanitizer's documentation advises: what they check is the kernels' index arithmetic
# and element logic, which no optimisation level changes, and at -O3 with the sanitizers
# their builds took 160 s of this script's 240 (-O1: 70 s; .ci/cuda_build.sh builds and runs
# them at -O2 without the sanitizers). The longest build runs beside the others (2 cores).
build test_cuda_adamw_host csrc/tests/test_cuda_adamw_host.cpp -Wno-unknown-pragmas -O1 &
emulation_build=$!
build test_schedule csrc/tests/test_schedule.cpp
build test_cpu_kernel csrc/tests/test_cpu_kernel.cpp
build test_cpu_kernel_baseline csrc/tests/test_cpu_kernel.cpp -DCLR_EXT_NO_TARGET_CLONES
build test_cuda_index csrc/tests/test_cuda_index.cpp
build test_cuda_kernel_host csrc/tests/test_cuda_kernel_host.cpp -Wno-unknown-pragmas -O1
wait "$emulation_build"

status=0
for t in test_schedule test_cpu_kernel test_cpu_kernel_baseline test_cuda_index test_cuda_kernel_host \
         test_cuda_adamw_host; do
  echo "--- run $t (ASan + UBSan)"
  log="$BUILD_DIR/$t.log"
  ok=1
  if ! "$BUILD_DIR/$t" >"$log" 2>&1; then
    echo "FAILED: $t"
    ok=0
  fi
  # A report that did not stop the program still counts.
  if grep -Eq "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:" "$log"; then
    echo "FAILED: $t: sanitizer report"
    ok=0
  fi
  if [ "$ok" -eq 1 ]; then
    tail -n 2 "$log"
  else
    status=1
    echo "--- full log of $t:"
    cat "$log"
  fi
done
[ "$status" -eq 0 ] && echo "sanitizers: all clean"
exit "$status"
