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


def beta(name: str, value: Any) -> float:
    """An Adam beta: in [0, 1)."""
    value = as_float(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: must be in [0, 1), got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


# The tensor validator's messages. ``_C.validate_group`` (csrc/op/check.cpp) raises these words
# and its pure-Python twin (``clr_ext.optim.functional.validate_group``, for builds without
# ``_C`` and traced steps) builds them here; tests/test_optimizer.py holds both to them.
FLOATING = "float32, float64, float16, bfloat16, complex64, complex128"


def where_param(index: int, group_index: int) -> str:
    return f"parameter {index} of param group {group_index}"


def param_dtype_message(owner: str, where: str, dtype: Any) -> str:
    return f"{owner}: {where} has dtype {dtype}; only floating-point parameters ({FLOATING}) can be optimized"


def param_layout_message(owner: str, where: str) -> str:
    return f"{owner}: {where} is not a dense (strided) tensor"


def sparse_grad_message(owner: str, where: str) -> str:
    return f"{owner}: the gradient of {where} is sparse; sparse gradients are not supported"


def unlike_message(owner: str, what: str, where: str, key: str, theirs: Any, param: Any) -> str:
    """A gradient (or state tensor) whose ``key`` (dtype, shape, device) is not its param's."""
    verb = "is on" if key == "device" else f"has {key}"
    return f"{owner}: the {what} of {where} {verb} {theirs}, the parameter {'on ' if key == 'device' else ''}{param}"
