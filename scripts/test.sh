#!/usr/bin/env bash
# The tests on a fresh machine: set up, then the whole pytest suite (every built
# CPU backend goes through the same parity tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${CLR_EXT_VENV:-.venv}/bin/python" -m pytest -q tests "$@"
