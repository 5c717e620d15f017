"""Builds clr_ext from source against the installed torch.

- clr_ext._C: the C++ CPU kernel (and the CUDA kernel when a CUDA toolkit and a
  CUDA build of torch are present, or CLR_EXT_FORCE_CUDA=1), through
  torch.utils.cpp_extension; the op is registered with TORCH_LIBRARY.
- clr_ext._cython._cpu: the Cython fallback over the same headers, with no torch
  C++ headers, BLAS or Fortran.

Switches (environment): CLR_EXT_NO_CPP=1 skips _C, CLR_EXT_NO_CYTHON=1 skips the
fallback, CLR_EXT_NO_CUDA=1 never builds CUDA, CLR_EXT_FORCE_CUDA=1 builds it
without a visible GPU (honours TORCH_CUDA_ARCH_LIST; default "9.0" then).
Install with: pip install --no-build-isolation .   (or -e .)
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _die(message):
    sys.stderr.write("\nclr_ext build error: " + message + "\n\n")
    sys.exit(1)


try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    _die(
        "torch is not importable. clr_ext compiles against the installed torch: "
        "install it first (pip install torch), then build without isolation: "
        "pip install --no-build-isolation ."
    )

if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
    _die("no C++ compiler found (install g++ >= 9, e.g. apt-get install g++).")

# -ffp-contract=off: no fused multiply-adds but the explicit ones in csrc/sgd_update.h
# (where ATen has them), so that every backend and every instruction-set clone rounds
# exactly like the scalar code and like torch.optim.SGD (bit-identical runs).
COMMON_CXX = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]


def _cuda_wanted():
    if _flag("CLR_EXT_NO_CUDA"):
        return False, "CLR_EXT_NO_CUDA is set"
    force = _flag("CLR_EXT_FORCE_CUDA")
    if torch.version.cuda is None:
        return False, "torch %s is a CPU build" % torch.__version__
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    if not force and not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return False, "no GPU visible (set CLR_EXT_FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST to build anyway)"
    return True, ""


def extensions():
    exts = []
    if not _flag("CLR_EXT_NO_CPP"):
        sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/op/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
        cuda, why_not = _cuda_wanted()
        define = []
        if cuda:
            if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
                os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
            sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
            define.append(("CLR_EXT_WITH_CUDA", None))
            ext_cls = cpp_extension.CUDAExtension
            # No -std here: torch's BuildExtension adds the standard its headers need
            # (C++20 from torch 2.14 on) and nvcc rejects a second -std.
            # --fmad=false: no contracted multiply-adds on the device either, so that the
            # CUDA update rounds exactly like the CPU kernel (-ffp-contract=off).
            extra = {
                "cxx": [f for f in COMMON_CXX if not f.startswith("-std=")],
                "nvcc": ["-O3", "--fmad=false", "--expt-relaxed-constexpr", "-lineinfo"],
            }
        else:
            print("clr_ext: building the C++ CPU kernel without CUDA (%s)" % why_not)
            ext_cls = cpp_extension.CppExtension
            # No -std: BuildExtension adds the standard the installed torch's headers need.
            extra = {"cxx": [f for f in COMMON_CXX if not f.startswith("-std=")]}
        exts.append(
            ext_cls(
                "clr_ext._C",
                sources,
                include_dirs=[CSRC],
                define_macros=define,
                extra_compile_args=extra,
            )
        )
    if not _flag("CLR_EXT_NO_CYTHON"):
        try:
            from Cython.Build import cythonize
        except ImportError:
            _die("Cython is not installed (pip install cython), or set CLR_EXT_NO_CYTHON=1.")
        from setuptools import Extension

        fallback = Extension(
            "clr_ext._cython._cpu",
            [os.path.join("clr_ext", "_cython", "_cpu.pyx")],
            include_dirs=[CSRC],
            language="c++",
            extra_compile_args=COMMON_CXX + ["-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
        exts += cythonize([fallback], language_level=3, quiet=True)
    return exts


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
)
