"""Scalar argument checks: each raises ``ValueError`` naming the argument, before anything
is changed. Shared by the optimizers and their schedules."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Optional, Tuple

from . import schedule as _oracle

#: A user's ``scale_fn`` (CyclicLR's), or None.
ScaleFn = Optional[Callable[[float], float]]

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


def cyclic_shape(
    step_size_up: Any, step_size_down: Any, mode: str, gamma: Any, scale_fn: ScaleFn, scale_mode: str
) -> Tuple[float, Optional[float], float]:
    """CyclicLR's shape checked, for the optimizers' schedule and the schedule value alike:
    ``(step_size_up, step_size_down, gamma)`` as floats (``step_size_down`` None if not given)."""
    up = None if isinstance(step_size_up, bool) else as_float("step_size_up", step_size_up)
    if up is None or up <= 0:
        raise ValueError(f"step_size_up: must be positive, got {step_size_up!r}")
    down = None if step_size_down is None else non_negative("step_size_down", step_size_down)
    gamma = as_float("gamma", gamma)
    if gamma <= 0:
        raise ValueError(f"gamma: must be positive, got {gamma!r}")
    if scale_fn is not None and not callable(scale_fn):
        raise ValueError(f"scale_fn: must be callable, got {scale_fn!r}")
    if scale_fn is None and mode not in _oracle.MODES:
        raise ValueError(f"mode: must be one of {', '.join(_oracle.MODES)} (or give a scale_fn), got {mode!r}")
    if scale_mode not in ("cycle", "iterations"):
        raise ValueError(f"scale_mode: must be 'cycle' or 'iterations', got {scale_mode!r}")
    return up, down, gamma


#: OneCycleLR's shape: what a 1cycle schedule keeps besides its per-group bounds.
ONE_CYCLE_SHAPE = ("total_steps", "pct_start", "anneal_strategy", "div_factor", "final_div_factor", "three_phase")


def one_cycle_total(total_steps: Any, epochs: Any, steps_per_epoch: Any) -> int:
    """OneCycleLR's length: ``total_steps``, or ``epochs * steps_per_epoch``."""
    if total_steps is not None:
        return positive_int("total_steps", total_steps)
    if epochs is not None and steps_per_epoch is not None:
        return positive_int("epochs", epochs) * positive_int("steps_per_epoch", steps_per_epoch)
    raise ValueError("total_steps: give total_steps, or both epochs and steps_per_epoch")


def one_cycle_shape(
    total: int, pct_start: Any, anneal_strategy: str, div_factor: Any, final_div_factor: Any
) -> Tuple[float, float, float]:
    """OneCycleLR's shape over ``total`` steps checked, for the optimizers' schedule and the
    schedule value alike: ``(pct_start, div_factor, final_div_factor)`` as floats."""
    pct_start = as_float("pct_start", pct_start)
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start: must be in (0, 1), got {pct_start!r}")
    if _oracle.one_cycle_phase_ends(total, pct_start)[0] == 0.0:  # OneCycleLR divides 0 by 0 there
        raise ValueError(f"pct_start: leaves the first phase without steps ({pct_start} of {total} steps)")
    if anneal_strategy not in _oracle.ONE_CYCLE_MODES:
        raise ValueError(f"anneal_strategy: must be 'cos' or 'linear', got {anneal_strategy!r}")
    for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
        if as_float(name, value) <= 0:
            raise ValueError(f"{name}: must be positive, got {value!r}")
    return pct_start, as_float("div_factor", div_factor), as_float("final_div_factor", final_div_factor)


# The tensor validator's messages. ``_C.validate_group`` (csrc/op/check.cpp) raises these words
# and its pure-Python twin (``clr_ext.optim.functional.validate_group``, for builds without
# ``_C`` and traced steps) builds them here; tests/rules/test_optimizer.py holds both to them.
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
