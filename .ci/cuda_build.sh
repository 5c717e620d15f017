#!/usr/bin/env bash
# Proves that the CUDA extension compiles and links (sm_90) on a machine with no GPU:
# a second venv with torch 2.14.1+cu130 (from the local wheel store), nvcc 13.0, the
# extension built out of tree (the CPU venv's in-place clr_ext/_C*.so is not touched),
# then checks that the .so links, carries the kernels, imports, registers a CUDA
# kernel for torch.ops.clr_ext.cyclic_sgd_, and that tests/cuda/ runs (its
# GPU tests skip here; the registration tests run).
# Also: what the compiler made of the kernels (bench/sass_report.sh: 128-bit loads per
# instantiation, which must exist for float32, registers, spills; into build/cuda-ci/sass.md),
# the kernel emulated on the host with CUDA 13's 32 KB tables, and the libtorch
# library built through CMake with -DCLR_EXT_CUDA=ON (CLR_EXT_SKIP_CMAKE_CUDA=1 skips it).
#
# Environment (all optional):
#   CLR_EXT_CUDA_VENV   the venv to make or reuse (default ~/.cache/clr_ext/venv-cu130:
#                       outside the clone, so that CI runs on one machine share it)
#   CLR_EXT_CUDA_BUILD  the build folder (default build/cuda-ci in the clone)
#   CUDA_HOME           the CUDA toolkit root (default: /usr/local/cuda-13.0 or /usr/local/cuda)
#   MAX_JOBS            parallel compiler jobs (default: the number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
start=$(date +%s)
say() { echo "[cuda_build $(( $(date +%s) - start ))s] $*"; }
die() { echo "[cuda_build] FAILED: $*" >&2; exit 1; }

TORCH_CUDA_VERSION=2.14.1
VENV=${CLR_EXT_CUDA_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/clr_ext/venv-cu130}
BUILD=${CLR_EXT_CUDA_BUILD:-$REPO/build/cuda-ci}
PY=$VENV/bin/python

# --- the CUDA toolkit (the nvcc on PATH may be a wrapper script: torch's guess of
# CUDA_HOME from it is wrong, and linking then fails with "cannot find -lcudart").
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ -x "$d/bin/nvcc" ]; then CUDA_HOME=$d; break; fi
  done
fi
[ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] || die "no CUDA toolkit (set CUDA_HOME)"
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
say "CUDA toolkit: $CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*'))"

# --- the venv with the CUDA build of torch
venv_ok() {
  [ -x "$PY" ] && "$PY" - "$TORCH_CUDA_VERSION" <<'EOF' 2>/dev/null
import sys, torch, setuptools, ninja, pytest  # noqa: F401
ok = torch.__version__.split("+")[0] == sys.argv[1] and (torch.version.cuda or "").startswith("13.")
sys.exit(0 if ok else 1)
EOF
}
if ! venv_ok; then
  say "creating $VENV (torch==$TORCH_CUDA_VERSION, CUDA 13; ~90 s, 5.5 GB)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_CUDA_VERSION" setuptools wheel ninja numpy pytest \
    2> >(grep -v "^WARNING: Location" >&2)
  venv_ok || die "the venv at $VENV has no torch $TORCH_CUDA_VERSION with CUDA 13"
fi
say "venv: $VENV ($("$PY" -c 'import torch; print(torch.__version__)'))"

SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# torch's CUDA headers include cusparse.h etc., which this toolkit lacks; the nvidia
# pip packages that come with torch carry them.
if [ -d "$SITE/nvidia/cu13/include" ]; then
  export CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}"
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CLR_EXT_FORCE_CUDA=1 CLR_EXT_NO_CYTHON=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# --- build out of tree
rm -rf "$BUILD/lib"
mkdir -p "$BUILD"
say "building clr_ext._C with CUDA for sm_${TORCH_CUDA_ARCH_LIST//./} (MAX_JOBS=$MAX_JOBS)"
t0=$(date +%s)
"$PY" setup.py -q build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp" >"$BUILD/build.log" 2>&1 || {
  tail -60 "$BUILD/build.log"; die "the CUDA build failed (log: $BUILD/build.log)"; }
say "built in $(( $(date +%s) - t0 )) s"
SO=$(ls "$BUILD"/lib/clr_ext/_C*.so 2>/dev/null | head -1)
[ -n "$SO" ] || die "no clr_ext/_C*.so under $BUILD/lib"

# --- it links: every needed library resolves (torch's own libraries from the wheel)
TORCH_LIB=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
if LD_LIBRARY_PATH="$TORCH_LIB:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$SO" | grep "not found" >/dev/null; then
  LD_LIBRARY_PATH="$TORCH_LIB:$CUDA_HOME/lib64" ldd "$SO" | grep "not found"
  die "unresolved libraries"
fi
for lib in libc10_cuda libcudart; do
  readelf -d "$SO" | grep "NEEDED.*$lib" >/dev/null || die "$SO does not link $lib"
done
say "links: $(readelf -d "$SO" | grep -o 'NEEDED.*\[lib[a-z0-9_]*cuda[a-z0-9_]*' | sed 's/.*\[//' | sort -u | tr '\n' ' ')"

# --- it carries the kernels: host stubs for every dtype and device code for the arch
nm -C "$SO" > "$BUILD/nm.txt"
for t in float double clr_float16 clr_bfloat16; do
  grep -q "clr_cuda::cyclic_sgd_kernel<$t>" "$BUILD/nm.txt" || die "no cyclic_sgd_kernel<$t> in $SO"
done
grep -q "clr_ext::run_cuda(clr_ext::SgdCall const&)" "$BUILD/nm.txt" || die "no clr_ext::run_cuda(SgdCall) in $SO"
for t in float double clr_float16 clr_bfloat16; do
  for ams in false true; do
    grep -q "clr_cuda::cyclic_adamw_kernel<$t, $ams>" "$BUILD/nm.txt" || die "no cyclic_adamw_kernel<$t, $ams> in $SO"
  done
done
grep -q "clr_cuda::adamw_step_count_kernel" "$BUILD/nm.txt" || die "no adamw_step_count_kernel in $SO"
grep -q "clr_ext::run_cuda(clr_ext::AdamwCall const&)" "$BUILD/nm.txt" || die "no clr_ext::run_cuda(AdamwCall) in $SO"
nm -D --defined-only "$SO" | grep "PyInit__C" >/dev/null || die "no PyInit__C exported"
# the embedded fatbinary names the architectures it holds (an ELF cubin per sm_XX)
arch=${TORCH_CUDA_ARCH_LIST%%;*}; arch=${arch//./}; arch=${arch%%+PTX}
if ! strings -a "$SO" | grep "sm_$arch" >/dev/null; then die "no sm_$arch device code in $SO"; fi
say "kernels: cyclic_sgd_kernel and cyclic_adamw_kernel<float|double|f16|bf16, amsgrad or not>, adamw_step_count_kernel present, device code for sm_$arch"

# --- what the compiler made of them (bench/sass_report.sh, as bench/gpu_check.sh runs it
# on the GPU machine): 128-bit loads per instantiation, registers, spills. The vector
# path must exist: LDG.E.128 in cyclic_sgd_kernel<float>. This toolkit has no cuobjdump
# or nvdisasm: NVIDIA's wheels of them go into the venv (a few MB).
if [ ! -x "$CUDA_HOME/bin/cuobjdump" ] && ! ls "$SITE"/nvidia/*/bin/cuobjdump >/dev/null 2>&1; then
  say "installing cuobjdump and nvdisasm into the venv (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)"
  "$VENV/bin/pip" install -q --disable-pip-version-check nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm \
    2> >(grep -v "^WARNING: Location" >&2) || say "could not install them"
fi
rm -f "$BUILD/sass.md"
sass_rc=0
SASS_REQUIRE_VECTOR=1 PYTHON="$PY" bash "$REPO/bench/sass_report.sh" "$SO" "$BUILD/sass.md" || sass_rc=$?
case $sass_rc in
  0) say "SASS report: $BUILD/sass.md" ;;
  2) say "SASS report skipped: no cuobjdump / nvdisasm could be had" ;;
  *) die "bench/sass_report.sh: no 128-bit loads (LDG.E.128) in cyclic_sgd_kernel<float>: the vector path is gone (exit $sass_rc)" ;;
esac
bash -n "$REPO/bench/gpu_check.sh" || die "bench/gpu_check.sh does not parse"

# --- the kernel's work layout (chunk -> tensor and range, 64-bit offsets) on the host,
# for the 32 KB (CUDA 13) and the 4 KB kernel-argument tables
for variant in "-DCUDART_VERSION=13000" "-DCUDART_VERSION=12000"; do
  "${CXX:-g++}" -std=c++17 -O2 -Wall -Wextra -Werror $variant -I"$REPO/csrc" "$REPO/csrc/tests/test_cuda_index.cpp" \
    -o "$BUILD/test_cuda_index" || die "csrc/tests/test_cuda_index.cpp does not compile ($variant)"
  "$BUILD/test_cuda_index" || die "test_cuda_index failed ($variant)"
done
# --- the kernel itself emulated on the host with the 32 KB table of a CUDA 13 build
# (the 4 KB one runs in CTest and under the sanitizers)
"${CXX:-g++}" -std=c++17 -O2 -ffp-contract=off -fno-math-errno -Wall -Wextra -Werror -Wno-unknown-pragmas \
  -DCUDART_VERSION=13000 -I"$REPO/csrc" "$REPO/csrc/tests/test_cuda_kernel_host.cpp" -o "$BUILD/test_cuda_kernel_host" ||
  die "csrc/tests/test_cuda_kernel_host.cpp does not compile"
"$BUILD/test_cuda_kernel_host" 30 || die "test_cuda_kernel_host failed (32 KB tables)"
# --- the AdamW kernels (update, step counts) emulated on the host, 32 KB tables
"${CXX:-g++}" -std=c++17 -O2 -ffp-contract=off -fno-math-errno -Wall -Wextra -Werror -Wno-unknown-pragmas \
  -DCUDART_VERSION=13000 -I"$REPO/csrc" "$REPO/csrc/tests/test_cuda_adamw_host.cpp" -o "$BUILD/test_cuda_adamw_host" ||
  die "csrc/tests/test_cuda_adamw_host.cpp does not compile"
"$BUILD/test_cuda_adamw_host" 20 || die "test_cuda_adamw_host failed (32 KB tables)"

# --- the libtorch library through CMake with -DCLR_EXT_CUDA=ON (the C++ users' build):
# it configures with no GPU, compiles the .cu with the same flags, carries the kernels
if [ "${CLR_EXT_SKIP_CMAKE_CUDA:-0}" != 1 ]; then
  TORCH_PREFIX=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
  NINJA=$(dirname "$PY")/ninja
  NVRTC=$(ls "$SITE"/nvidia/cu13/lib/libnvrtc.so.13 2>/dev/null || true)  # this toolkit has none
  t0=$(date +%s)
  rm -rf "$BUILD/cmake"
  cmake -S "$REPO" -B "$BUILD/cmake" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA" -DCMAKE_BUILD_TYPE=Release \
    -DCLR_EXT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DBUILD_TESTING=OFF ${NVRTC:+-DCUDA_nvrtc_LIBRARY="$NVRTC"} \
    >"$BUILD/cmake.log" 2>&1 || { tail -40 "$BUILD/cmake.log"; die "CMake -DCLR_EXT_CUDA=ON does not configure"; }
  cmake --build "$BUILD/cmake" -j"$MAX_JOBS" >>"$BUILD/cmake.log" 2>&1 ||
    { tail -40 "$BUILD/cmake.log"; die "CMake -DCLR_EXT_CUDA=ON does not build"; }
  LIB=$(ls "$BUILD"/cmake/libclr_ext.so | head -1)
  # (whole outputs to grep: with pipefail, grep -q closing the pipe early would fail it)
  nm -C "$LIB" >"$BUILD/cmake-nm.txt"
  grep "clr_cuda::cyclic_sgd_kernel<float>" "$BUILD/cmake-nm.txt" >/dev/null || die "no CUDA kernel in $LIB"
  readelf -d "$LIB" | grep "NEEDED.*libcudart" >/dev/null || die "$LIB does not link libcudart"
  strings -a "$LIB" | grep "sm_90" >/dev/null || die "no sm_90 device code in $LIB"
  say "CMake -DCLR_EXT_CUDA=ON: libclr_ext.so with the CUDA kernel for sm_90, built in $(( $(date +%s) - t0 )) s"
fi

# --- it imports (no GPU or driver needed to load it) and registers the CUDA kernel
STAGE=$BUILD/stage
rm -rf "$STAGE"
mkdir -p "$STAGE"
# (without the CPU build's .so files, build record and byte code: .ci/run's set-up and tests
# may be writing those beside this, and a file that changes during a copy fails it; the
# CUDA build's own record comes from its build folder)
tar -C "$REPO" --exclude=__pycache__ --exclude="*.so" --exclude=_build_info.json -cf - clr_ext | tar -C "$STAGE" -xf -
cp "$SO" "$STAGE/clr_ext/"
if [ -f "$BUILD/lib/clr_ext/_build_info.json" ]; then cp "$BUILD/lib/clr_ext/_build_info.json" "$STAGE/clr_ext/"; fi
cd "$STAGE"  # so that the clone's own clr_ext/ (maybe with a CPU-only _C) is not on sys.path
PYTHONPATH="$STAGE" "$PY" - <<'EOF'
import torch
import clr_ext
from clr_ext import _C
assert _C.__file__.startswith(__import__("os").environ["PYTHONPATH"] + "/"), _C.__file__
assert _C.with_cuda is True, "clr_ext._C was built without CUDA"
assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::cyclic_sgd_", "CUDA"), "no CUDA kernel registered"
assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::cyclic_sgd_", "CPU"), "no CPU kernel registered"
assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::cyclic_adamw_", "CUDA"), "no CUDA AdamW kernel registered"
assert callable(getattr(_C, "cyclic_adamw_cuda_", None)), "no _C.cyclic_adamw_cuda_"
assert "cuda" in clr_ext.available_backends(), clr_ext.available_backends()
print("[cuda_build] import ok: torch %s, CUDA %s, backends %s, %d tensors per launch, GPU visible: %s"
      % (torch.__version__, torch.version.cuda, clr_ext.available_backends(), _C.cuda_max_tensors_per_launch(),
         torch.cuda.is_available()))
EOF

# --- the CUDA test file against this build (GPU tests skip without a GPU)
say "tests/cuda/ against the CUDA build"
mkdir -p "$STAGE/tests"
rm -rf "$STAGE/tests/cuda" "$STAGE/tests/support"
tar -C "$REPO" --exclude=__pycache__ -cf - tests/cuda tests/support | tar -C "$STAGE" -xf -
printf '[pytest]\nmarkers =\n    cuda: needs a CUDA device\n' > "$STAGE/pytest.ini"
(PYTHONPATH="$STAGE" "$PY" -m pytest -q -p no:cacheprovider tests/cuda 2>&1 | tail -5) \
  || die "tests/cuda/ failed"
say "CUDA build OK ($SO)"
