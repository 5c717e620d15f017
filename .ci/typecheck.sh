#!/usr/bin/env bash
# The type check: mypy over clr_ext/ with the configuration in pyproject.toml ([tool.mypy]:
# strict for the integration modules and the CLI, lenient per module where older code is
# not annotated yet), at a pinned version so that every machine reports alike.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install -q "mypy==2.4.1"
[ "${1:-}" != --install-only ] || exit 0  # (.ci/run installs every tool before its checks)
"$PY" -m mypy
