"""Builds clr_ext from source against the installed torch.

- clr_ext._C: the C++ CPU kernel (and the CUDA kernel when a CUDA toolkit and a
  CUDA build of torch are present, or CLR_EXT_FORCE_CUDA=1), through
  torch.utils.cpp_extension; the op is registered with TORCH_LIBRARY.
- clr_ext._cython._cpu: the Cython fallback over the same headers, with no torch
  C++ headers, BLAS or Fortran.

Both are optional: with no C++ compiler, no Cython, or a compile error, the build says
so in one line per extension and installs the package with the backends that did build
(at least the pure-PyTorch one, which needs no compiler). What was skipped and why is
recorded in clr_ext/_build_info.json, which `clr-ext info` reads.

Switches (environment): CLR_EXT_REQUIRE_COMPILED=1 makes every extension that is not
switched off required (any failure stops the build), CLR_EXT_NO_CPP=1 skips _C,
CLR_EXT_NO_CYTHON=1 skips the fallback, CLR_EXT_NO_CUDA=1 never builds CUDA,
CLR_EXT_FORCE_CUDA=1 builds it without a visible GPU (honours TORCH_CUDA_ARCH_LIST;
default "9.0" then), CLR_EXT_BUILD_TEMP=DIR keeps the object files in DIR (an editable
install otherwise compiles in a temporary folder, so every re-install compiled everything):
a later build from the same folder with the same compiler flags, editable or a wheel, then
recompiles only what changed (ninja compares each file's command line and headers).
Install with: pip install --no-build-isolation .   (or -e .)
"""

import glob
import json
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
BUILD_INFO = "_build_info.json"
EXTENSION_BACKENDS = {"clr_ext._C": "cpp", "clr_ext._cython._cpu": "cython"}


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


REQUIRE_COMPILED = _flag("CLR_EXT_REQUIRE_COMPILED")


def _die(message):
    sys.stderr.write("\nclr_ext build error: " + message + "\n\n")
    sys.exit(1)


def _say(message):
    # stderr and flushed: pip shows a successful build's output only with -v, and a log
    # that interleaves stdout and stderr should still show this line where it happened.
    sys.stderr.write("clr_ext: " + message + "\n")
    sys.stderr.flush()


try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    _die(
        "torch is not importable. clr_ext compiles against the installed torch: "
        "install it first (pip install torch), then build without isolation: "
        "pip install --no-build-isolation ."
    )

# -ffp-contract=off: no fused multiply-adds but the explicit ones in csrc/math/sgd_update.h
# (where ATen has them), so that every backend and every instruction-set clone rounds
# exactly like the scalar code and like torch.optim.SGD (bit-identical runs).
#
# -g0: Python's CFLAGS (which setuptools passes first) carry -g, and the debug information of
# torch's headers took a third of each file's compile time and most of the library's size;
# CLR_EXT_DEBUG_INFO=1 keeps it (for gdb or perf on the kernels).
COMMON_CXX = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
if not _flag("CLR_EXT_DEBUG_INFO"):
    COMMON_CXX.append("-g0")


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


# Extensions left out before the build starts (a switch, no Cython), with the reason.
NOT_ATTEMPTED = {}


def extensions():
    exts = []
    if _flag("CLR_EXT_NO_CPP"):
        NOT_ATTEMPTED["cpp"] = "CLR_EXT_NO_CPP is set"
    else:
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
            NOT_ATTEMPTED["cuda"] = why_not
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
    if _flag("CLR_EXT_NO_CYTHON"):
        NOT_ATTEMPTED["cython"] = "CLR_EXT_NO_CYTHON is set"
        return exts
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_COMPILED:
            _die("Cython is not installed (pip install cython), and CLR_EXT_REQUIRE_COMPILED is set.")
        NOT_ATTEMPTED["cython"] = "Cython was not installed at build time (pip install cython)"
        return exts
    from setuptools import Extension

    fallback = Extension(
        "clr_ext._cython._cpu",
        [os.path.join("clr_ext", "_cython", "_cpu.pyx")],
        include_dirs=[CSRC],
        language="c++",
        extra_compile_args=COMMON_CXX + ["-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    try:
        exts += cythonize([fallback], language_level=3, quiet=True)
    except Exception as error:  # the .pyx does not translate (e.g. an older Cython)
        if REQUIRE_COMPILED:
            raise
        NOT_ATTEMPTED["cython"] = "Cython could not translate clr_ext/_cython/_cpu.pyx: " + _last_error_line(error)
    return exts


def _compiler_problem(command):
    """Why ``command`` (a compiler's argv) cannot compile, or None when it runs."""
    if not command:
        return "no C++ compiler configured"
    exe = command[0]
    if shutil.which(exe) is None:
        return "no C++ compiler found (%r is not on PATH)" % exe
    try:
        subprocess.run([exe, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "the C++ compiler %r does not run" % exe
    return None


def _last_error_line(error):
    """One line that says why an extension failed: the compiler's first 'error:' line when
    the exception carries the output, else the exception itself."""
    text = str(error)
    for attr in ("output", "stderr"):
        extra = getattr(error, attr, None)
        if isinstance(extra, bytes):
            extra = extra.decode(errors="replace")
        if extra:
            text = extra + "\n" + text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line[:300]
    return (lines[-1] if lines else type(error).__name__)[:300]


class OptionalBuildExt(cpp_extension.BuildExtension):
    """torch's BuildExtension, with every extension optional unless CLR_EXT_REQUIRE_COMPILED
    is set: a missing compiler skips them all, a failed compile skips that one. What was
    left out is said in one line at the end and recorded for ``clr-ext info``."""

    def finalize_options(self):
        super().finalize_options()
        keep = os.environ.get("CLR_EXT_BUILD_TEMP", "").strip()
        # After the default (an editable install sets its temporary folder before this runs);
        # an explicit --build-temp still wins.
        if keep and "build_temp" not in self.distribution.get_option_dict("build_ext"):
            self.build_temp = os.path.abspath(keep)

    def run(self):
        self._skipped = {}
        super().run()
        self._write_build_info()
        missing = {k: v for k, v in {**NOT_ATTEMPTED, **self._skipped}.items() if k != "cuda"}
        if missing:
            reasons = {}
            for backend, reason in sorted(missing.items()):
                reasons.setdefault(reason, []).append(backend)
            have = [EXTENSION_BACKENDS[e.name] for e in self.extensions] + ["torch (pure PyTorch)"]
            _say(
                "%s; installing with the backends %s (`clr-ext info` says how to get the others)"
                % ("; ".join("%s not built: %s" % (" and ".join(b), r) for r, b in reasons.items()), ", ".join(have))
            )

    def build_extensions(self):
        problem = _compiler_problem(getattr(self.compiler, "compiler_cxx", None))
        if problem is not None:
            if REQUIRE_COMPILED:
                _die(problem + ", and CLR_EXT_REQUIRE_COMPILED is set.")
            for ext in self.extensions:
                self._skipped[EXTENSION_BACKENDS[ext.name]] = problem
            self.extensions = []
            return
        super().build_extensions()
        # setuptools copies (inplace) and lists (wheels) every extension afterwards: drop the skipped ones.
        self.extensions = [e for e in self.extensions if EXTENSION_BACKENDS[e.name] not in self._skipped]

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:  # a compile or link failure, from distutils, ninja or a subprocess
            if REQUIRE_COMPILED:
                raise
            self._skipped[EXTENSION_BACKENDS[ext.name]] = (
                "failed to compile (%s; `pip install -v` shows the compiler's messages)" % _last_error_line(error)
            )

    def _write_build_info(self):
        not_built = {**NOT_ATTEMPTED, **self._skipped}
        if "cpp" in not_built and "cuda" not in not_built:
            not_built["cuda"] = "clr_ext._C (which holds the CUDA kernel) was not built"
        info = {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "python": "%d.%d" % sys.version_info[:2],
            "not_built": not_built,
        }
        # Into the build tree (wheels, installs) and, for in-place and editable builds, the sources.
        folders = [os.path.join(self.build_lib, "clr_ext")]
        if self.inplace:
            folders.append(self.get_finalized_command("build_py").get_package_dir("clr_ext"))
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, BUILD_INFO), "w") as f:
                json.dump(info, f, indent=1, sort_keys=True)


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt.with_options(no_python_abi_suffix=False)},
)
