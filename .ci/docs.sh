#!/usr/bin/env bash
# The documentation site (mkdocs.yml): the guide pages, the API contract and the reference
# generated from the docstrings (mkdocstrings), built with --strict: a broken link, a
# missing object or a docstring the parser cannot read fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install -q "mkdocs==1.6.1" "mkdocstrings[python]==1.0.8"
[ "${1:-}" != --install-only ] || exit 0  # (.ci/run installs every tool before its checks)
"$PY" -m mkdocs build --strict --quiet --site-dir "${SITE_DIR:-build/site}"
echo "docs: built $(find "${SITE_DIR:-build/site}" -name '*.html' | wc -l) pages into ${SITE_DIR:-build/site}"
