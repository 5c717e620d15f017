#!/usr/bin/env bash
# Sets up a development environment from nothing: a virtual environment in .venv,
# torch (the CPU build; the venv keeps whatever torch is already installed there),
# the build and test dependencies, and clr_ext built from source (C++ kernel and
# Cython fallback) and installed in editable mode. Idempotent: a second run only
# rebuilds what changed.
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
"$PY" -m pip install -q "setuptools>=64" wheel "Cython>=3.0" "pybind11>=2.10" ninja \
  numpy "matplotlib>=3.5" "tqdm>=4.60" "scikit-learn>=1.0" \
  "pytest>=7" "pytest-benchmark>=4" "hypothesis>=6" "expecttest>=0.2"

echo "clr_ext setup: building clr_ext from source"
CC="${CC:-gcc}" CXX="${CXX:-g++}" MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c "import clr_ext; print('clr_ext', clr_ext.__version__, 'backends:', clr_ext.available_backends())"
