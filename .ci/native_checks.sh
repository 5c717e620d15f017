#!/usr/bin/env bash
# CI's native checks: the CPU kernel and schedule tests under the sanitizers, the libtorch
# library through CMake and its CTest tests, the CUDA extension compiled and linked for
# sm_90, and tests/cuda/'s dry run on the CPU. .ci/run starts this beside its Python
# sections once scripts/setup.sh has made the venv: their pytest runs use one core of two,
# and these are mostly compiler runs.
#   PY=.venv/bin/python bash .ci/native_checks.sh
# CI_START: the time (date +%s) the section headers count from (.ci/run's start).
# CI_VENV_READY: a file that .ci/run creates when nothing more is installed into the venv;
# the dry run, which imports from the venv, waits for it (a package half-installed beside
# an import can fail it). Before it, only torch's CMake files and libraries are read.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
case $PY in /*) ;; *) PY=$PWD/$PY ;; esac
start=${CI_START:-$(date +%s)}
section() { echo; echo "=== $* ($(( $(date +%s) - start )) s) ==="; }

section "AddressSanitizer + UndefinedBehaviorSanitizer over the CPU kernel and schedule tests"
bash .ci/sanitizers.sh

section "libtorch C++ build (CMake) and CTest"
# (torch's CMake files found without importing torch: see CI_VENV_READY above)
TORCH_PREFIX=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/torch/share/cmake
[ -f "$TORCH_PREFIX/Torch/TorchConfig.cmake" ] || { echo "no TorchConfig.cmake under $TORCH_PREFIX"; exit 1; }
cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DPython_EXECUTABLE="$PY" -DCMAKE_MAKE_PROGRAM="$(dirname "$PY")/ninja"
cmake --build build/cmake -j2
ctest --test-dir build/cmake --output-on-failure

if [ -f .ci/cuda_build.sh ]; then
  section "CUDA extension: compile and link for sm_90 (no GPU here)"
  bash .ci/cuda_build.sh
fi

section "tests/cuda/ dry run on the CPU (the GPU tests' own code, before a GPU is lent)"
if [ -n "${CI_VENV_READY:-}" ]; then
  while [ ! -e "$CI_VENV_READY" ]; do sleep 5; done
fi
CLR_EXT_CUDA_TESTS_DEVICE=cpu "$PY" -m pytest -q -p no:cacheprovider tests/cuda
section "native checks passed"
