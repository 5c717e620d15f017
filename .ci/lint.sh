#!/usr/bin/env bash
# Formatting and lint are the tools' work, not reviewers': ruff (format + lint) for
# Python, clang-format for C++/CUDA (.clang-format), at pinned versions so that every
# machine formats alike. Fix what it reports with:
#   ruff format . && ruff check --fix . && git ls-files 'csrc/*.[ch]*' | xargs clang-format -i
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install -q "ruff==0.17.6" "clang-format==23.1.5"
[ "${1:-}" != --install-only ] || exit 0  # (.ci/run installs every tool before its checks)
BIN=$(dirname "$PY")
"$BIN/ruff" format --check .
"$BIN/ruff" check .
git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' | xargs "$BIN/clang-format" --dry-run --Werror
echo "lint: ruff format, ruff check and clang-format clean"
