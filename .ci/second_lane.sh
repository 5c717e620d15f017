#!/usr/bin/env bash
# CI's second lane (.ci/run starts it at once, beside its Python sections, on the 2-core
# machine): the native checks (.ci/native_checks.sh: sanitizers, the CUDA build, CMake and
# CTest, tests/cuda/'s dry run), then the 1,000-step parity product and every schedule
# composition's 10,000 steps (slow marker, cpp backend), which need the finished venv but
# not the other lane. What it takes from the other lane, it waits for (CI_SETUP_DONE,
# CI_VENV_READY: see .ci/native_checks.sh).
#   PY=.venv/bin/python bash .ci/second_lane.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
start=${CI_START:-$(date +%s)}
section() { echo; echo "=== $* ($(( $(date +%s) - start )) s) ==="; }

bash .ci/native_checks.sh

section "The 1,000-step parity product and every schedule composition's 10,000 steps (slow marker), cpp backend"
CLR_EXT_BACKEND=cpp "$PY" -m pytest -q -p no:cacheprovider -m slow tests/rules/test_parity.py \
  tests/schedules/test_schedule_optimizers.py

section "second lane passed"
