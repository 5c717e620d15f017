#!/usr/bin/env bash
# CI's native checks: the CPU kernel and schedule tests under the sanitizers, the CUDA
# extension compiled and linked for sm_90, the libtorch library through CMake and its CTest
# tests, and tests/cuda/'s dry run on the CPU. .ci/run starts this at once, beside its
# Python sections: these are mostly compiler runs, and the first two need nothing of the
# development venv (the CUDA build makes its own), so they fill the core that the venv's
# set-up leaves idle.
#   PY=.venv/bin/python bash .ci/native_checks.sh
# CI_START: the time (date +%s) the section headers count from (.ci/run's start).
# CI_SETUP_DONE: a file that .ci/run creates once scripts/setup.sh has made the venv; the
# CMake build, which reads torch's CMake files from it, waits for it.
# CI_VENV_READY: a file that .ci/run creates when nothing more is installed into the venv;
# the dry run, which imports from the venv, waits for it (a package half-installed beside
# an import can fail it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
case $PY in /*) ;; *) PY=$PWD/$PY ;; esac
start=${CI_START:-$(date +%s)}
section() { echo; echo "=== $* ($(( $(date +%s) - start )) s) ==="; }

# Waits for .ci/run's flag file $1 (none outside CI).
wait_for() { if [ -n "${1:-}" ]; then while [ ! -e "$1" ]; do sleep 5; done; fi; }

section "AddressSanitizer + UndefinedBehaviorSanitizer over the CPU kernel and schedule tests"
bash .ci/sanitizers.sh

if [ -f .ci/cuda_build.sh ]; then
  section "CUDA extension: compile and link for sm_90 (no GPU here)"
  bash .ci/cuda_build.sh
fi

section "libtorch C++ build (CMake) and CTest"
wait_for "${CI_SETUP_DONE:-}"
# (torch's CMake files found without importing torch: the venv may be installing beside it)
TORCH_PREFIX=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/torch/share/cmake
[ -f "$TORCH_PREFIX/Torch/TorchConfig.cmake" ] || { echo "no TorchConfig.cmake under $TORCH_PREFIX"; exit 1; }
cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DPython_EXECUTABLE="$PY" -DCMAKE_MAKE_PROGRAM="$(dirname "$PY")/ninja"
# The library and the CTest tests that link it (the dispatcher op, clr::CyclicSGD, the install
# and a find_package consumer); the header-only tests (schedule, CPU loops, the CUDA kernels
# emulated on the host) ran above under the sanitizers, from the same sources (~100 s of
# compiling saved). `cmake --build build/cmake && ctest --test-dir build/cmake` runs them all.
cmake --build build/cmake -j2 --target clr_ext test_op test_cyclic_sgd_optim
ctest --test-dir build/cmake --output-on-failure -R "^(dispatcher_op|cyclic_sgd_optim|install|find_package_consumer)\$"

section "tests/cuda/ dry run on the CPU (the GPU tests' own code, before a GPU is lent)"
wait_for "${CI_VENV_READY:-}"
# One OpenMP thread: its 70,001-element tensors would wake torch's threads, whose spinning
# on the core the other lane needs doubled the run's time in CI.
OMP_NUM_THREADS=1 CLR_EXT_CUDA_TESTS_DEVICE=cpu "$PY" -m pytest -q -p no:cacheprovider tests/cuda
section "native checks passed"
