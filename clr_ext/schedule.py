"""The schedules in pure Python: the references.

These are independent transcriptions of ``torch.optim.lr_scheduler.CyclicLR``'s and
``OneCycleLR``'s arithmetic (same operations in the same order, in double precision),
so that they agree with PyTorch to the last bit. The compiled backends evaluate the same
formula from ``csrc/math/schedule.h``; the tests hold every backend to this oracle and
this oracle to PyTorch. It needs no torch.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

#: The schedule modes and their numbers in the compiled op (csrc/math/schedule.h).
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
#: The 1cycle policy's numbers in the op, by ``anneal_strategy``.
ONE_CYCLE_MODES = {"cos": 7, "linear": 8}
#: The op's number for a chain of clr_ext.schedules values (its table is in the op's shape).
CHAIN_MODE = 9
#: The modes of torch.optim.lr_scheduler.CyclicLR.
PYTORCH_MODES = ("triangular", "triangular2", "exp_range")


def _pow(base: float, exponent: float) -> float:
    """``base ** exponent`` as C's ``pow`` computes it: Python raises OverflowError where C
    returns inf (triangular2's ``2.0 ** (cycle - 1)`` past cycle 1024, a gamma > 1 far out)."""
    try:
        return base**exponent
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


def one_cycle_phase_ends(total_steps: int, pct_start: float = 0.3, three_phase: bool = False) -> Tuple[float, ...]:
    """The last step of each phase, as OneCycleLR's ``_schedule_phases[i]["end_step"]``."""
    if three_phase:
        return (float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2, float(total_steps - 1))
    return (float(pct_start * total_steps) - 1, float(total_steps - 1))


def _anneal(strategy: str, start: float, end: float, pct: float) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    if strategy == "linear":
        return (end - start) * pct + start
    raise ValueError(f"anneal_strategy: must be 'cos' or 'linear', got {strategy!r}")


def one_cycle_point(
    iteration: int,
    initial_lr: float,
    max_lr: float,
    min_lr: float,
    phase_ends: Tuple[float, ...],
    anneal_strategy: str = "cos",
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> Tuple[float, float]:
    """``(lr, momentum)`` of the step with index ``iteration`` under the 1cycle policy, from
    a group's ``initial_lr``, ``max_lr`` and ``min_lr`` (as OneCycleLR stores them) and the
    phases' last steps (:func:`one_cycle_phase_ends`). Past the last phase the final values
    are held (OneCycleLR raises there)."""
    step = min(int(iteration), phase_ends[-1])
    if len(phase_ends) == 3:
        lrs = ((initial_lr, max_lr), (max_lr, initial_lr), (initial_lr, min_lr))
        momenta = ((max_momentum, base_momentum), (base_momentum, max_momentum), (max_momentum, max_momentum))
    else:
        lrs = ((initial_lr, max_lr), (max_lr, min_lr))
        momenta = ((max_momentum, base_momentum), (base_momentum, max_momentum))
    start = 0.0
    for phase, end in enumerate(phase_ends):
        if step <= end or phase == len(phase_ends) - 1:
            pct = (step - start) / (end - start)
            return (_anneal(anneal_strategy, *lrs[phase], pct), _anneal(anneal_strategy, *momenta[phase], pct))
        start = end
    raise AssertionError("unreachable")  # pragma: no cover


def one_cycle_lr(
    iteration: int,
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> float:
    """The lr that the step with 0-based index ``iteration`` uses under the 1cycle policy.

    Exactly what ``torch.optim.lr_scheduler.OneCycleLR`` puts in ``group["lr"]`` when its
    ``last_epoch == iteration``, for ``iteration < total_steps``: the LR rises from
    ``initial_lr = max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of the
    steps, then falls to ``min_lr = initial_lr / final_div_factor`` (with ``three_phase``:
    back to ``initial_lr`` over as many steps, then to ``min_lr``), each phase annealed by
    ``anneal_strategy`` (``"cos"``: ``end + (start - end) / 2 * (cos(pi * pct) + 1)``,
    ``"linear"``: ``(end - start) * pct + start``, ``pct`` the position in the phase).
    From ``total_steps`` on it stays at the last step's LR, ``min_lr``.
    """
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    ends = one_cycle_phase_ends(total_steps, pct_start, three_phase)
    return one_cycle_point(iteration, initial_lr, max_lr, min_lr, ends, anneal_strategy)[0]
