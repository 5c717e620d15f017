"""The cyclical learning-rate schedule in pure Python: the reference.

This is an independent transcription of ``torch.optim.lr_scheduler.CyclicLR``'s
arithmetic (same operations in the same order, in double precision), so that it
agrees with PyTorch to the last bit. The compiled backends evaluate the same
formula from ``csrc/schedule.h``; the tests hold every backend to this oracle and
this oracle to PyTorch. It needs no torch.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

#: The schedule modes and their numbers in the compiled op (csrc/schedule.h).
MODES = {
    "triangular": 0,
    "triangular2": 1,
    "exp_range": 2,
    "fixed": 3,
    "exp": 4,
    "decay": 5,
}
#: The op's number for a user ``scale_fn`` (its value is computed on the host).
CUSTOM_MODE = 6
#: The modes of torch.optim.lr_scheduler.CyclicLR.
PYTORCH_MODES = ("triangular", "triangular2", "exp_range")


def _pow(base: float, exponent: float) -> float:
    """``base ** exponent`` as C's ``pow`` computes it: Python raises OverflowError where C
    returns inf (triangular2's ``2.0 ** (cycle - 1)`` past cycle 1024, a gamma > 1 far out)."""
    try:
        return base ** exponent
    except OverflowError:
        return math.inf


def _cycle_position(iteration: int, step_size_up: float, step_size_down: float) -> Tuple[int, float]:
    total_size = step_size_up + step_size_down
    step_ratio = step_size_up / total_size
    cycle = math.floor(1 + iteration / total_size)
    x = 1.0 + iteration / total_size - cycle
    if x <= step_ratio:
        factor = x / step_ratio
    else:
        factor = (x - 1) / (step_ratio - 1)
    return cycle, factor


def cyclic_point(
    iteration: int,
    base_lr: float,
    max_lr: float,
    step_size_up: float = 2000,
    step_size_down: Optional[float] = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
    scale_fn: Optional[Callable[[float], float]] = None,
    scale_mode: str = "cycle",
) -> Tuple[float, float]:
    """``(lr, momentum)`` used by the step with 0-based index ``iteration``.

    The momentum cycles inversely to the lr, as CyclicLR's ``cycle_momentum`` does.
    The paper's extra policies: ``"fixed"`` (lr = base_lr), ``"exp"``
    (lr = base_lr * gamma**iteration) and ``"decay"`` (max_lr falling linearly to
    base_lr over ``step_size_up`` iterations, then flat); their momentum moves
    against the lr, and is ``max_momentum`` whenever lr is ``base_lr`` (always for
    fixed and exp).
    """
    iteration = int(iteration)
    step_size_up = float(step_size_up)
    step_size_down = float(step_size_down) if step_size_down is not None else step_size_up
    if scale_fn is None and mode == "fixed":
        return base_lr, max_momentum
    if scale_fn is None and mode == "exp":
        return base_lr * _pow(gamma, iteration), max_momentum
    if scale_fn is None and mode == "decay":
        factor = max(0.0, 1.0 - iteration / step_size_up)
        scale = 1.0
    else:
        cycle, factor = _cycle_position(iteration, step_size_up, step_size_down)
        if scale_fn is not None:
            scale = scale_fn(cycle) if scale_mode == "cycle" else scale_fn(iteration)
        elif mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = 1 / _pow(2.0, cycle - 1)
        elif mode == "exp_range":
            scale = _pow(gamma, iteration)
        else:
            raise ValueError(f"mode: unknown mode {mode!r} (and no scale_fn given)")
    lr = base_lr + (max_lr - base_lr) * factor * scale
    momentum = max_momentum - (max_momentum - base_momentum) * factor * scale
    return lr, momentum


def cyclic_lr(
    iteration: int,
    base_lr: float,
    max_lr: float,
    step_size_up: float = 2000,
    step_size_down: Optional[float] = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> float:
    """The lr that the step with 0-based index ``iteration`` uses.

    Exactly what ``torch.optim.lr_scheduler.CyclicLR`` puts in ``group["lr"]`` when
    its ``last_epoch == iteration``:
    ``cycle = floor(1 + i / (up + down))``, ``x = 1 + i / (up + down) - cycle``,
    the ramp position is ``x / r`` while rising (``r = up / (up + down)``) and
    ``(x - 1) / (r - 1)`` while falling, and
    ``lr = base_lr + (max_lr - base_lr) * position * scale`` with scale 1
    (triangular), ``1 / 2**(cycle - 1)`` (triangular2) or ``gamma**i``
    (exp_range; ``i`` counts all iterations, it is not reset per cycle).
    Also accepts the paper's ``"fixed"``, ``"exp"`` and ``"decay"`` policies.
    """
    return cyclic_point(iteration, base_lr, max_lr, step_size_up, step_size_down, mode, gamma)[0]
