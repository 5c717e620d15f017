"""Scalar argument checks: each raises ``ValueError`` naming the argument, before anything
is changed. Shared by the optimizers and their schedules."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

try:
    import torch as _torch
except ImportError:  # the oracle (clr_ext.schedule) works without torch; so does this module
    _torch = None


def as_float(name: str, value: Any) -> float:
    """A finite real number (a one-element tensor is read)."""
    if _torch is not None and isinstance(value, _torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: a tensor value must have one element, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return value


def non_negative(name: str, value: Any) -> float:
    value = as_float(name, value)
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value!r}")
    return value


def momentum_value(name: str, value: Any) -> float:
    """A momentum: >= 0; above 1 only a warning, as PyTorch allows it."""
    value = non_negative(name, value)
    if value > 1:
        warnings.warn(
            f"{name}={value} is outside [0, 1]: the momentum buffer will grow without bound", UserWarning, stacklevel=5
        )
    return value


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)
