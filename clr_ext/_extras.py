"""The optional dependencies and the extras that install them.

The optimizers and the range test need torch alone; the plots, the demo's data and the
progress bar come with extras (pyproject.toml). Code that imports one of these modules
lazily turns a missing one into a one-line error naming the extra::

    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        raise missing_extra(e, "RangeTestResult.plot()") from None
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = ["EXTRAS", "missing_extra", "extra_for"]

# top-level module -> (the distribution pip installs, the clr_ext extra that brings it)
EXTRAS: Dict[str, Tuple[str, str]] = {
    "matplotlib": ("matplotlib", "plot"),
    "sklearn": ("scikit-learn", "demo"),
    "tqdm": ("tqdm", "progress"),
    "numpy": ("numpy", "demo"),
}


def extra_for(error: ModuleNotFoundError) -> Optional[Tuple[str, str]]:
    """``(distribution, extra)`` when ``error`` is about one of clr_ext's optional modules."""
    name = (error.name or "").split(".")[0]
    return EXTRAS.get(name)


def missing_extra(error: ModuleNotFoundError, what: str, extra: Optional[str] = None) -> ModuleNotFoundError:
    """A ModuleNotFoundError that says what needs the missing module and which extra installs
    it (``extra`` overrides the module's own, e.g. ``"demo"`` for everything the demo needs).
    An error about any other module is returned unchanged."""
    found = extra_for(error)
    if found is None:
        return error
    distribution, own_extra = found
    return ModuleNotFoundError(
        f'{what} needs {distribution}, which is not installed: pip install "clr_ext[{extra or own_extra}]"',
        name=error.name,
    )
