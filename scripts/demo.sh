#!/usr/bin/env bash
# The main job on a fresh machine: set up, then `clr-ext demo` on the bundled data.
# Extra arguments go to `clr-ext demo` (e.g. --out DIR, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${CLR_EXT_VENV:-.venv}/bin/clr-ext" demo "$@"
