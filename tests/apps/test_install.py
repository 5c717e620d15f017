"""What an install of clr_ext requires and ships (issue 24): torch is the only hard
dependency, the demo's and the plots' packages come with extras, the package is typed.
The installs themselves (no compiler, the wheel in a fresh venv) are CI's
.ci/install_checks.sh: they take minutes and fresh virtual environments."""

from __future__ import annotations

import os
import re
import sys

import pytest

import clr_ext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _names(requirements):
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_torch_is_the_only_hard_dependency(project):
    assert _names(project["dependencies"]) == {"torch"}


def test_the_demo_and_plot_extras_bring_what_their_code_imports(project):
    from clr_ext._extras import EXTRAS

    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    for module, (distribution, extra) in EXTRAS.items():
        assert distribution in extras[extra], (module, extra)
        assert distribution in extras["demo"], module  # the demo needs every one of them
    assert {"pytest", "hypothesis"} <= extras["test"]


def test_the_package_is_typed():
    assert os.path.isfile(os.path.join(os.path.dirname(clr_ext.__file__), "py.typed"))


def test_requires_python_matches_the_interpreters_torch_supports(project):
    # The torch releases built here (2.11, 2.13, 2.14) need Python 3.10.
    assert project["requires-python"] == ">=3.10"
    assert sys.version_info >= (3, 10)


def test_importing_clr_ext_imports_no_optional_dependency():
    """Beyond what ``import torch`` itself imports (torch imports tqdm when it is there)."""
    import subprocess

    def imported(statement):
        code = (
            f"import sys; {statement}; "
            "print(sorted(m for m in ('matplotlib', 'sklearn', 'tqdm', 'lightning', 'transformers') if m in sys.modules))"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout

    assert imported("import clr_ext, clr_ext.integrations.lightning, clr_ext.integrations.transformers") == imported(
        "import torch"
    )
