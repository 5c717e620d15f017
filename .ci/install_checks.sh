#!/usr/bin/env bash
# Installs clr_ext the ways users do, each into a fresh virtual environment outside the
# repository that holds torch and nothing else at first:
#   1. no C++ compiler on PATH: `pip install .` must end in a working package with the
#      pure-PyTorch backend and say so in one line; with CLR_EXT_REQUIRE_COMPILED=1 the
#      same install must fail. The install must pull no demo dependency, and the parity
#      suite's tests that can differ without _C then run on it (PARITY_TESTS, CLR_EXT_BACKEND=torch).
#   2. the wheel: `python -m build --wheel --no-isolation` with the compilers, installed
#      with its dependencies alone, then a smoke run (every backend the wheel holds steps
#      like torch.optim.SGD + CyclicLR; `clr-ext --help`, `clr-ext info`).
#   3. a C++ compile error (injected into a copy): the install goes on without that backend.
# Usage: bash .ci/install_checks.sh [nocompiler|compile-error|wheel|tools]...   (default: the
# three checks; tools only installs what they need into PY's venv)
# PY: the development venv's python (builds the wheel); BASE_PYTHON: the interpreter the
# fresh venvs are made from; CLR_EXT_TORCH: the torch they get.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
case $PY in /*) ;; *) PY=$REPO/$PY ;; esac # (the checks cd into copies of the source)
BASE_PYTHON=${BASE_PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${CLR_EXT_TORCH:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch without numpy warns on import (its own message, not ours): keep the logs readable.
export PYTHONWARNINGS="ignore:Failed to initialize NumPy"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/clr_ext_install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)
step() { echo "--- install checks: $* ($(($(date +%s) - t0)) s)"; }
fail() { echo "install checks FAILED: $*" >&2; exit 1; }

quiet_pip() { # venv, pip arguments: output only on failure
  local venv=$1 log
  shift
  log=$(mktemp "$WORK/pip.XXXXXX")
  "$venv/bin/python" -m pip install -q "$@" >"$log" 2>&1 || { cat "$log"; fail "pip install $*"; }
}

fresh_venv() { # path: a venv with torch only
  "$BASE_PYTHON" -m venv "$1"
  quiet_pip "$1" "$TORCH_SPEC"
}

source_copy() { # what a clone holds (tracked and not-ignored files), without build outputs
  mkdir -p "$1"
  git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c 'test -e "{}" && echo "{}"' |
    tar -cf - -T - | tar -xf - -C "$1"
}

no_compiler() {
  step "fresh venv, torch only"
  local venv=$WORK/nocc src=$WORK/src-nocc shadow=$WORK/path-without-compilers
  fresh_venv "$venv"
  # What --no-build-isolation needs (Cython too: the .pyx is translated, and only its
  # compilation fails).
  quiet_pip "$venv" "setuptools>=64" wheel "Cython>=3.0"
  source_copy "$src"
  # A PATH without any C or C++ compiler: every other program of the current PATH, linked.
  mkdir -p "$shadow"
  local dir exe
  IFS=: read -ra dirs <<<"$PATH"
  for dir in "${dirs[@]}"; do
    [ -d "$dir" ] || continue
    for exe in "$dir"/*; do
      name=${exe##*/}
      [[ $name =~ (^|-)(cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+)(-[0-9.]+)?$ ]] && continue
      [ -e "$shadow/$name" ] || ln -s "$exe" "$shadow/$name"
    done
  done
  local nocc_path="$venv/bin:$shadow"
  for c in cc c++ gcc g++ clang; do
    if PATH=$nocc_path command -v "$c" >/dev/null; then fail "$c is still on the PATH meant to hide compilers"; fi
  done

  step "pip install . with CLR_EXT_REQUIRE_COMPILED=1 and no compiler: must fail"
  if (cd "$src" && env -u CC -u CXX PATH=$nocc_path CLR_EXT_REQUIRE_COMPILED=1 \
    "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps . >"$WORK/required.log" 2>&1); then
    fail "the install succeeded although compiled backends were required"
  fi
  grep -m1 "clr_ext build error" "$WORK/required.log" || fail "no clr_ext build error in the failed install's log"

  step "pip install . with no compiler: the pure-PyTorch backend"
  (cd "$src" && env -u CC -u CXX PATH=$nocc_path "$venv/bin/python" -m pip install -v --no-build-isolation . \
    >"$WORK/nocc.log" 2>&1) || { tail -40 "$WORK/nocc.log"; fail "the install without a compiler failed"; }
  grep -E "^ *clr_ext: " "$WORK/nocc.log" | grep "installing with the backends" ||
    fail "the build did not say which backends it installs"
  # No demo dependency came with it (the venv had torch and the build tools only).
  for pkg in scikit-learn matplotlib tqdm; do
    if "$venv/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1; then fail "pip install . installed $pkg"; fi
  done

  step "the install works: backends, clr-ext info, the pure-PyTorch parity tests"
  local run=$WORK/run-nocc
  # (without byte code: CI's other lane may be writing it beside this copy)
  mkdir -p "$run" && tar -C "$REPO" --exclude=__pycache__ -cf - tests pyproject.toml | tar -C "$run" -xf -
  (cd "$run" && "$venv/bin/python" -c "
import clr_ext, os
assert clr_ext.__file__.startswith('$venv'), clr_ext.__file__
assert clr_ext.available_backends() == ['torch'], clr_ext.available_backends()
print('installed without a compiler: backends', clr_ext.available_backends())")
  (cd "$run" && "$venv/bin/clr-ext" info | tee "$WORK/info.txt")
  grep -q "cpp: not built" "$WORK/info.txt" || fail "clr-ext info does not say that cpp was not built"
  # Without the demo's dependencies the command says which extra to install, in one line.
  if (cd "$run" && "$venv/bin/clr-ext" demo --quick >"$WORK/demo.log" 2>&1); then fail "the demo ran without scikit-learn"; fi
  grep 'clr-ext demo: error: .*pip install "clr_ext\[demo\]"' "$WORK/demo.log" && ! grep -q Traceback "$WORK/demo.log" ||
    { cat "$WORK/demo.log"; fail "the demo's missing dependency was not reported in one line naming the extra"; }
  quiet_pip "$venv" "pytest>=7" "hypothesis>=6" "expecttest>=0.2"
  # The parity suite (.ci/run's PARITY_TESTS) on this install, where torch is the only backend
  # and the checks run through their pure-Python twins. The torch backend's numbers do not
  # read _C (its schedule is the Python oracle's), and its backend-parametrised parity tests
  # ran in the README command's run: here, the tests that take their backend from
  # CLR_EXT_BACKEND, and the whole of the files whose error cases reach the twins
  # (.ci/auto_backend_only.py). (All of them: 1,288 tests, ~200 s in CI; these: ~40 s.)
  # shellcheck disable=SC2086
  (cd "$run" && CLR_EXT_BACKEND=torch PYTHONPATH="$REPO/.ci" \
    AUTO_BACKEND_ONLY_KEEP="tests/rules/test_optimizer.py tests/backends/test_ops.py" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -p auto_backend_only ${PARITY_TESTS:-tests/rules/test_parity.py})
}

compile_error() {
  # A C++ compile error (injected) with the compilers on: the build goes on without the C++
  # backend, and fails with CLR_EXT_REQUIRE_COMPILED=1. (Cython is switched off to keep this
  # short.)
  step "a C++ compile error: the install goes on without the C++ backend"
  local venv=$WORK/nocc src=$WORK/src-broken
  if [ ! -x "$venv/bin/python" ]; then # (after the nocompiler check, its venv is reused)
    fresh_venv "$venv"
    quiet_pip "$venv" "setuptools>=64" wheel
  fi
  step "a C++ compile error: two installs"
  source_copy "$src"
  # A missing header stops the compiler at once (an #error would let it parse torch's headers).
  find "$src/csrc" -name '*.cpp' -exec sed -i '1i #include "injected_by_install_checks_missing.h"' {} +
  if (cd "$src" && CLR_EXT_NO_CYTHON=1 CLR_EXT_REQUIRE_COMPILED=1 "$venv/bin/python" -m pip install -q \
    --no-build-isolation --no-deps --force-reinstall . >"$WORK/broken-required.log" 2>&1); then
    fail "the install succeeded although the C++ backend failed and compiled backends were required"
  fi
  (cd "$src" && CLR_EXT_NO_CYTHON=1 MAX_JOBS=2 "$venv/bin/python" -m pip install -v --no-build-isolation --no-deps \
    --force-reinstall . \
    >"$WORK/broken.log" 2>&1) || { tail -40 "$WORK/broken.log"; fail "the install with a C++ compile error failed"; }
  grep -E "^ *clr_ext: cpp and cython not built|^ *clr_ext: cpp not built: failed to compile" "$WORK/broken.log" ||
    { tail -40 "$WORK/broken.log"; fail "the build did not say that the C++ backend failed to compile"; }
  (cd "$WORK" && "$venv/bin/python" -c "
import clr_ext, torch
assert clr_ext.available_backends() == ['torch'], clr_ext.available_backends()
p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)
clr_ext.CyclicSGD([p], 0.01, 0.1).step()
print('a C++ compile error left a working install: backends', clr_ext.available_backends())")
}

tools() { # what the checks install into the development venv (.ci/run installs it up front)
  "$PY" -m pip install -q "build>=1.0" 2>/dev/null
}

wheel() {
  step "python -m build --wheel --no-isolation (compilers on)"
  tools
  local venv=$WORK/wheel
  # Built from the repository itself (in CI a fresh clone), not from a copy: with the object
  # folder of scripts/setup.sh's editable build (CLR_EXT_BUILD_TEMP, setup.py), ninja finds
  # every object up to date (same sources, same paths, same command lines) and the wheel's
  # build only links: ~2 min of compiling saved. Anything changed since is recompiled. The
  # wheel's files come from the build alone: build_py copies the .py files and py.typed
  # (package-data; MANIFEST.in leaves *.so out), build_ext links each extension afresh into
  # a build folder under $WORK (DIST_EXTRA_CONFIG), and the smoke run below fails if a
  # compiled backend is missing from the wheel.
  # (CC and CXX as scripts/setup.sh sets them: another compiler name is another command line)
  printf '[build]\nbuild_base = %s\n' "$WORK/wheel-build" >"$WORK/wheel-build.cfg"
  (cd "$REPO" && DIST_EXTRA_CONFIG=$WORK/wheel-build.cfg CLR_EXT_BUILD_TEMP=${CLR_EXT_BUILD_TEMP:-$REPO/build/temp} \
    CC="${CC:-gcc}" CXX="${CXX:-g++}" CLR_EXT_REQUIRE_COMPILED=1 MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" -m build --wheel --no-isolation --outdir "$WORK/dist" >"$WORK/wheel.log" 2>&1) ||
    { tail -40 "$WORK/wheel.log"; fail "the wheel build failed"; }
  echo "wheel build: $(grep -c '^\[[0-9]*/[0-9]*\] ' "$WORK/wheel.log" || true) files compiled (the rest reused)"
  local whl
  whl=$(ls "$WORK"/dist/clr_ext-*.whl)
  echo "built $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB)"

  step "fresh venv: torch, then the wheel and its dependencies"
  fresh_venv "$venv"
  quiet_pip "$venv" "$whl"
  local extra
  extra=$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE "^(scikit-learn|matplotlib|tqdm)==" || true)
  [ -z "$extra" ] || fail "the wheel pulled demo dependencies: $extra"

  step "smoke run on the installed wheel"
  mkdir -p "$WORK/run-wheel"
  (cd "$WORK/run-wheel" && "$venv/bin/python" "$REPO/.ci/wheel_smoke.py" cpp cython torch)
  (cd "$WORK/run-wheel" && "$venv/bin/clr-ext" --help >/dev/null && "$venv/bin/clr-ext" info | tee "$WORK/wheel-info.txt")
  # The wheel carries its build record: the torch it was built against.
  grep -q "^built against torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')\$" "$WORK/wheel-info.txt" ||
    fail "clr-ext info does not name the torch the wheel was built against"
}

checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(nocompiler compile-error wheel)
for check in "${checks[@]}"; do
  case $check in
    nocompiler) no_compiler ;;
    compile-error) compile_error ;;
    wheel) wheel ;;
    tools) tools ;;
    *) fail "unknown check $check (nocompiler, compile-error, wheel, tools)" ;;
  esac
done
step "passed"
