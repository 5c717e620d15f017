"""clr_ext: Cyclical Learning Rates (Leslie N. Smith, 2017) for PyTorch.

- :class:`CyclicSGD`: torch.optim.SGD + CyclicLR in one fused, device-side step.
- :func:`range_test`: the paper's LR range test, which suggests the bounds.
- :func:`cyclic_lr`: the schedule as a plain Python function (the reference).
"""
__version__ = "0.1.0"

from .schedule import cyclic_lr  # noqa: E402  (pure Python, no torch needed)
from .backends import available_backends  # noqa: E402
from .optimizer import CyclicSGD  # noqa: E402
from .convert import from_torch  # noqa: E402

try:
    from .range_test import RangeTestResult, range_test  # noqa: E402
except ImportError as _range_test_error:  # pragma: no cover - only while the module is missing
    _missing = str(_range_test_error)

    def range_test(*args, **kwargs):  # type: ignore[no-redef]
        raise ImportError("clr_ext.range_test is unavailable: " + _missing)

    class RangeTestResult:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            raise ImportError("clr_ext.RangeTestResult is unavailable: " + _missing)

__all__ = [
    "__version__",
    "CyclicSGD",
    "range_test",
    "RangeTestResult",
    "cyclic_lr",
    "available_backends",
    "from_torch",
]
