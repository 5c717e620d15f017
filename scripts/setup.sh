#!/usr/bin/env bash
# Sets up a development environment from nothing: a virtual environment in .venv,
# torch (the CPU build; the venv keeps whatever torch is already installed there),
# the build dependencies, and clr_ext built from source (C++ kernel and Cython
# fallback) and installed in editable mode with its demo and test extras.
# Idempotent: a second run rebuilds only what changed, and nothing when nothing did.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CLR_EXT_VENV:-.venv}"
TORCH_SPEC="${CLR_EXT_TORCH:-torch==2.13.0}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "clr_ext setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "clr_ext setup: installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q "setuptools>=64" wheel "Cython>=3.0" "pybind11>=2.10" ninja

# The demo's and the tests' dependencies come with the extras (pyproject.toml). The compiled
# backends are required here (the tests run each of them): a failed build stops the set-up
# instead of leaving a pure-PyTorch install (CLR_EXT_REQUIRE_COMPILED=0 allows that).
# The objects stay in build/temp (CLR_EXT_BUILD_TEMP, setup.py): a second run, and the wheel
# CI builds from this tree (.ci/install_checks.sh), recompile only what changed.
# A second run with nothing changed skips pip (~30 s of its own work and a relink): the
# stamp in the venv records what the last build was made from (sources, recipe, compilers,
# switches, the torch it built against, the extensions it left).
fingerprint() {
  {
    find csrc -type f -print0 | sort -z | xargs -0 cksum
    cksum setup.py pyproject.toml clr_ext/_cython/_cpu.pyx
    env | grep -E '^(CC|CXX|CFLAGS|CXXFLAGS|LDFLAGS|CUDA_HOME|TORCH_CUDA_ARCH_LIST|CLR_EXT_(DEBUG_INFO|FORCE_CUDA|NO_CPP|NO_CUDA|NO_CYTHON|WITH_CUDA|REQUIRE_COMPILED|BUILD_TEMP))=' | sort || true
    "$PY" -c "import torch; print(torch.__version__)"
    ls clr_ext/_C*.so clr_ext/_cython/_cpu*.so 2>/dev/null || true
  } | cksum
}
STAMP="$VENV/.clr_ext_build_stamp"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ] && "$PY" -m pip show -q clr_ext >/dev/null 2>&1; then
  echo "clr_ext setup: the build is up to date (nothing it is made from has changed since the last one)"
else
  rm -f "$STAMP"
  echo "clr_ext setup: building clr_ext from source, with the demo and test extras"
  CC="${CC:-gcc}" CXX="${CXX:-g++}" MAX_JOBS="${MAX_JOBS:-2}" CLR_EXT_REQUIRE_COMPILED="${CLR_EXT_REQUIRE_COMPILED:-1}" \
    CLR_EXT_BUILD_TEMP="${CLR_EXT_BUILD_TEMP:-$PWD/build/temp}" "$PY" -m pip install -q --no-build-isolation -e ".[demo,test]"
  fingerprint >"$STAMP"
fi
"$PY" -c "import clr_ext; print('clr_ext', clr_ext.__version__, 'backends:', clr_ext.available_backends())"
