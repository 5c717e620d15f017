"""clr_ext: Cyclical Learning Rates (Leslie N. Smith, 2017) for PyTorch.

- :class:`SGD`, :class:`AdamW`: torch.optim.SGD / AdamW with any schedule of
  :mod:`clr_ext.schedules` (cyclical, 1cycle, SGDR, warmup, chains) in their fused step.
- :class:`CyclicSGD`: torch.optim.SGD + CyclicLR in one fused, device-side step.
- :class:`OneCycleSGD`: torch.optim.SGD + OneCycleLR, likewise.
- :class:`CyclicAdamW`, :class:`OneCycleAdamW`: torch.optim.AdamW + CyclicLR / OneCycleLR (beta1 cycled).
- :func:`range_test`: the paper's LR range test, which suggests the bounds.
- :func:`cyclic_lr`, :func:`one_cycle_lr`: the schedules as plain Python functions (the references).
"""

__version__ = "0.1.0"

from . import schedules  # noqa: E402, F401  (pure Python, no torch needed)
from .schedule import cyclic_lr, one_cycle_lr  # noqa: E402  (pure Python, no torch needed)

_NEEDS_TORCH = (
    "SGD",
    "AdamW",
    "CyclicSGD",
    "OneCycleSGD",
    "CyclicAdamW",
    "OneCycleAdamW",
    "range_test",
    "RangeTestResult",
    "available_backends",
    "from_torch",
)

try:
    import torch as _torch  # noqa: F401
except ImportError as _torch_error:
    # cyclic_lr, the reference schedule, works without torch; the rest says what is missing.
    _TORCH_ERROR = str(_torch_error)

    def __getattr__(name):
        if name in _NEEDS_TORCH:
            raise ImportError(
                f"clr_ext.{name} needs PyTorch, which cannot be imported ({_TORCH_ERROR}); "
                "only clr_ext.cyclic_lr and clr_ext.one_cycle_lr work without it"
            )
        raise AttributeError(f"module 'clr_ext' has no attribute {name!r}")
else:
    from .backends import available_backends  # noqa: E402, F401  (re-exported: __all__)
    from .optim import SGD, AdamW, CyclicAdamW, CyclicSGD, OneCycleAdamW, OneCycleSGD, from_torch  # noqa: E402, F401
    from .range_test import RangeTestResult, range_test  # noqa: E402, F401

__all__ = ["__version__", "cyclic_lr", "one_cycle_lr", "schedules", *_NEEDS_TORCH]
