"""Schedules as values: ``from clr_ext import schedules as S``.

A schedule is an immutable, picklable value (``S.Cyclic(...)``, ``S.Warmup(S.OneCycle(...),
500)``, ...) that names a PyTorch scheduler or a chain of them and computes, for each param
group, the LR (and the momentum / ``betas[0]`` where the schedule cycles it) of the step with
0-based index ``iteration``, exactly as PyTorch computes it where PyTorch uses a closed form.
See docs/schedules.md for every kind, its PyTorch equivalent and the precision notes.

The numbers are defined in ONE place, built to be transcribed to C:

* every kind is a *kind code* (:data:`KINDS`), a fixed-width float parameter vector whose
  layout :data:`LAYOUTS` names, and a formula (:data:`FORMULAS`) of ``(local iteration,
  parameters)``, which returns ``(lr, momentum)`` with a NaN momentum where the kind does not
  set it;
* a chain is a list of ``(start, segment)``: :meth:`Schedule.flatten` turns any composition
  into a :class:`Flat` (kind codes, segment starts, per-group parameter vectors and the
  momentum each segment holds where it sets none), and :meth:`Flat.point` evaluates it. A
  device kernel reads the same arrays from its step counter without Python.

:meth:`Schedule.point` evaluates the composition as a tree (the chain's rule as
``SequentialLR`` applies it); the tests hold it to PyTorch and the flat form to it. This module
needs no torch.
"""

from __future__ import annotations

import bisect
import math
import numbers
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import schedule as _oracle
from ._checks import (
    ONE_CYCLE_SHAPE,
    ScaleFn,
    as_float,
    cyclic_shape,
    momentum_value,
    non_negative,
    one_cycle_shape,
    one_cycle_total,
)

NAN = float("nan")

# ---------------------------------------------------------------------------------------------
# The flat form: kind codes, parameter layouts, formulas. Codes are part of the device schema:
# append, never renumber.
CYCLIC, ONE_CYCLE, COSINE_RESTARTS, LINEAR, CONSTANT, HF_LINEAR, HF_COSINE, HF_WSD = range(8)
KINDS = {
    "Cyclic": CYCLIC,
    "OneCycle": ONE_CYCLE,
    "CosineRestarts": COSINE_RESTARTS,
    "Linear": LINEAR,
    "Constant": CONSTANT,
    "HFLinearWithWarmup": HF_LINEAR,
    "HFCosineWithWarmup": HF_COSINE,
    "HFWSD": HF_WSD,
}
#: Each kind's parameter vector, slot by slot. Codes in slots: ``mode`` is
#: ``clr_ext.schedule.MODES`` (``CUSTOM_MODE`` for a host ``scale_fn``); ``scale_by_iteration``,
#: ``cosine`` are 0/1; ``warmup_type`` / ``decay_type`` index :data:`HF_SHAPES`.
LAYOUTS = {
    CYCLIC: (
        "base_lr",
        "max_lr",
        "step_size_up",
        "step_size_down",
        "gamma",
        "base_momentum",
        "max_momentum",
        "mode",
        "scale_by_iteration",
        "custom_scale",
    ),
    ONE_CYCLE: (
        "initial_lr",
        "max_lr",
        "min_lr",
        "base_momentum",
        "max_momentum",
        "end_0",
        "end_1",
        "end_2",
        "phases",
        "cosine",
    ),
    COSINE_RESTARTS: ("initial_lr", "T_0", "T_mult", "eta_min"),
    LINEAR: ("initial_lr", "start_factor", "end_factor", "total_iters"),
    CONSTANT: ("initial_lr", "factor", "total_iters"),
    HF_LINEAR: ("initial_lr", "num_warmup_steps", "num_training_steps"),
    HF_COSINE: ("initial_lr", "num_warmup_steps", "num_training_steps", "num_cycles"),
    HF_WSD: (
        "initial_lr",
        "num_warmup_steps",
        "num_stable_steps",
        "num_decay_steps",
        "warmup_type",
        "decay_type",
        "min_lr_ratio",
        "num_cycles",
    ),
}
#: The width of every parameter vector (unused slots are 0).
WIDTH = max(len(layout) for layout in LAYOUTS.values())
#: transformers' warmup_type / decay_type names, by code.
HF_SHAPES = ("linear", "cosine", "1-sqrt")

_MODE_NAMES = {code: name for name, code in _oracle.MODES.items()}
_MODE_NAMES[_oracle.CUSTOM_MODE] = "custom"

Point = Tuple[float, float]


def _cyclic(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # CyclicLR.get_lr at last_epoch == t (clr_ext.schedule holds it to PyTorch). Without the
    # Python scale_fn (a device table), its value at t is in the custom_scale slot.
    if scale_fn is None and int(p[7]) == _oracle.CUSTOM_MODE:
        custom = p[9]
        scale_fn = lambda _x: custom  # noqa: E731
    return _oracle.cyclic_point(
        t,
        p[0],
        p[1],
        p[2],
        p[3],
        _MODE_NAMES[int(p[7])],
        p[4],
        p[5],
        p[6],
        scale_fn,
        ("cycle", "iterations")[int(p[8])],
    )


def _one_cycle(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # OneCycleLR.get_lr at last_epoch == t, the final values held after the last phase.
    ends = (p[5], p[6], p[7])[: int(p[8])]
    return _oracle.one_cycle_point(t, p[0], p[1], p[2], ends, "cos" if p[9] else "linear", p[3], p[4])


def _cosine_restarts(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # CosineAnnealingWarmRestarts.get_lr with T_cur and T_i as its step() leaves them after t
    # steps; found from t here (integers, exact in double below 2**53) instead of PyTorch's
    # log formula, which is what step(epoch) uses and is off near restarts.
    initial_lr, t_0, t_mult, eta_min = p[0], p[1], p[2], p[3]
    t_cur, t_i = float(t), t_0
    if t_mult == 1.0:
        t_cur = math.fmod(t_cur, t_0)
    else:
        while t_cur >= t_i:  # at most log2(t) restarts
            t_cur -= t_i
            t_i *= t_mult
    return eta_min + (initial_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2, NAN


def _linear(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # LinearLR._get_closed_form_lr; its step() multiplies factors instead (docs/schedules.md).
    initial_lr, start, end, total = p[0], p[1], p[2], p[3]
    return initial_lr * (start + (end - start) * min(total, float(t)) / total), NAN


def _constant(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # ConstantLR.step(): lr * factor at 0, then that * (1 / factor) at total_iters; the same
    # two roundings here, so that the incremental PyTorch value is matched bit for bit.
    scaled = p[0] * p[1]
    return (scaled if t < p[2] else scaled * (1.0 / p[1])), NAN


def _hf_warmup(t: float, warmup: float) -> float:
    return t / max(1.0, warmup)


def _hf_linear(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # transformers' _get_linear_schedule_with_warmup_lr_lambda, times LambdaLR's base_lr.
    initial_lr, warmup, total, t = p[0], p[1], p[2], float(t)
    if t < warmup:
        return initial_lr * _hf_warmup(t, warmup), NAN
    return initial_lr * max(0.0, (total - t) / max(1.0, total - warmup)), NAN


def _hf_cosine(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # transformers' _get_cosine_schedule_with_warmup_lr_lambda, times LambdaLR's base_lr.
    initial_lr, warmup, total, cycles, t = p[0], p[1], p[2], p[3], float(t)
    if t < warmup:
        return initial_lr * _hf_warmup(t, warmup), NAN
    progress = (t - warmup) / max(1.0, total - warmup)
    return initial_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress))), NAN


def _hf_wsd(t: int, p: Sequence[float], scale_fn: ScaleFn) -> Point:
    # transformers' _get_wsd_scheduler_lambda, times LambdaLR's base_lr.
    initial_lr, warmup, stable, decay, min_ratio, cycles, t = p[0], p[1], p[2], p[3], p[6], p[7], float(t)
    if t < warmup:
        progress = t / max(1.0, warmup)
        shape = HF_SHAPES[int(p[4])]
        if shape == "linear":
            factor = progress
        elif shape == "cosine":
            factor = 0.5 * (1.0 - math.cos(math.pi * progress))
        else:
            factor = 1.0 - math.sqrt(1.0 - progress)
        return initial_lr * max(0.0, factor * (1.0 - min_ratio) + min_ratio), NAN
    if t < warmup + stable:
        return initial_lr * 1.0, NAN
    if t < warmup + stable + decay:
        progress = (t - warmup - stable) / max(1.0, decay)
        shape = HF_SHAPES[int(p[5])]
        if shape == "linear":
            factor = 1.0 - progress
        elif shape == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress))
        else:
            factor = 1.0 - math.sqrt(progress)
        return initial_lr * max(0.0, factor * (1.0 - min_ratio) + min_ratio), NAN
    return initial_lr * min_ratio, NAN


#: Each kind's formula: ``(local iteration, parameter vector, host scale_fn) -> (lr, momentum)``,
#: the momentum NaN where the kind does not set it.
FORMULAS: Dict[int, Callable[[int, Sequence[float], ScaleFn], Point]] = {
    CYCLIC: _cyclic,
    ONE_CYCLE: _one_cycle,
    COSINE_RESTARTS: _cosine_restarts,
    LINEAR: _linear,
    CONSTANT: _constant,
    HF_LINEAR: _hf_linear,
    HF_COSINE: _hf_cosine,
    HF_WSD: _hf_wsd,
}


class Flat:
    """A composition as a device reads it; all per-group arrays are indexed ``[group][segment]``.

    - ``kinds[k]``: segment ``k``'s kind code; ``starts[k]``: its first step (``starts[0] == 0``,
      increasing). The step with index ``i`` is in the last segment with ``starts[k] <= i``, at
      local step ``i - starts[k]``.
    - ``params[g][k]``: its parameter vector (:data:`LAYOUTS`, :data:`WIDTH` floats).
    - ``held_momentum[g][k]``: the momentum in force where segment ``k`` sets none (what the
      group holds from the previous segment that cycles it, as PyTorch leaves it); NaN where
      nothing in the chain cycles it.
    - ``scale_fns[k]``: a Cyclic segment's Python ``scale_fn`` (host-evaluated), else None.
    """

    __slots__ = ("kinds", "starts", "params", "held_momentum", "scale_fns")

    def __init__(self, kinds, starts, params, held_momentum, scale_fns) -> None:
        self.kinds: Tuple[int, ...] = tuple(kinds)
        self.starts: Tuple[int, ...] = tuple(starts)
        self.params: Tuple[Tuple[Tuple[float, ...], ...], ...] = tuple(tuple(map(tuple, g)) for g in params)
        self.held_momentum: Tuple[Tuple[float, ...], ...] = tuple(map(tuple, held_momentum))
        self.scale_fns: Tuple[ScaleFn, ...] = tuple(scale_fns)

    def point(self, iteration: int, group: int = 0) -> Tuple[float, Optional[float]]:
        """``(lr, momentum or None)`` of the step with index ``iteration`` for group ``group``."""
        if iteration < 0:
            raise ValueError(f"iteration: must be >= 0, got {iteration!r}")
        k = bisect.bisect_right(self.starts, iteration) - 1
        lr, momentum = FORMULAS[self.kinds[k]](iteration - self.starts[k], self.params[group][k], self.scale_fns[k])
        if math.isnan(momentum):
            momentum = self.held_momentum[group][k]
        return lr, (None if math.isnan(momentum) else momentum)

    def table(self, group: int = 0, iteration: Optional[int] = None) -> List[float]:
        """Group ``group``'s chain as the op's ``shape`` in ``CLR_MODE_CHAIN`` (csrc/math/schedule.h,
        ``clr_chain_read``): the segment count, then per segment its kind, start, held momentum and
        parameter vector. A segment with a Python ``scale_fn`` gets its value at
        ``iteration`` (a host evaluation, as CyclicLR's) in its ``custom_scale`` slot."""
        if len(self.kinds) > MAX_SEGMENTS:
            raise ValueError(
                f"schedule: {len(self.kinds)} segments; a device-evaluated chain holds at most {MAX_SEGMENTS}"
            )
        out = [float(len(self.kinds))]
        for k, (kind, start) in enumerate(zip(self.kinds, self.starts)):
            params = list(self.params[group][k])
            scale_fn = self.scale_fns[k]
            if scale_fn is not None:
                ends = self.starts[k + 1] if k + 1 < len(self.starts) else math.inf
                if iteration is not None and start <= iteration < ends:
                    params[9] = _host_scale(scale_fn, params, iteration - start)
            out += [float(kind), float(start), self.held_momentum[group][k], *params]
        return out

    def __repr__(self) -> str:
        return (
            f"Flat(kinds={self.kinds}, starts={self.starts}, params={self.params}, held_momentum={self.held_momentum})"
        )


#: The most segments a device-evaluated chain holds (CLR_MAX_SEGMENTS).
MAX_SEGMENTS = 8
_TABLE_HEADER, _SEGMENT_VALUES = 1, 3 + WIDTH


def _host_scale(scale_fn: Callable[[float], float], params: Sequence[float], local: int) -> float:
    # CyclicLR's scale_fn(cycle) or scale_fn(iteration), at the segment's own step count.
    if params[8]:
        return float(scale_fn(local))
    return float(scale_fn(math.floor(1 + local / (params[2] + params[3]))))


def table_point(iteration: int, table: Sequence[float]) -> Tuple[float, float]:
    """``(lr, momentum)`` of the step with index ``iteration`` from a :meth:`Flat.table`, as
    ``clr_chain_point`` (csrc/math/schedule.h) evaluates it: the Python twin that the backends
    written in Python and the host mirror use. The momentum is NaN where nothing cycles it."""
    count = int(table[0])
    k = 0
    while k + 1 < count and iteration >= table[_TABLE_HEADER + (k + 1) * _SEGMENT_VALUES + 1]:
        k += 1
    base = _TABLE_HEADER + k * _SEGMENT_VALUES
    kind, start, held = int(table[base]), int(table[base + 1]), table[base + 2]
    lr, momentum = FORMULAS[kind](iteration - start, table[base + 3 : base + _SEGMENT_VALUES], None)
    return lr, (held if math.isnan(momentum) else momentum)


# ---------------------------------------------------------------------------------------------
# The values.


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _in_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    value = as_float(name, value)
    if value > high or value < low or (low_open and value == low):
        raise ValueError(f"{name}: must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return value


def _per_group(name: str, value: Any, check: Callable[[str, Any], float]) -> Any:
    """A float, or a tuple with one float per param group (as PyTorch's schedulers take lists)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name}: an empty list")
        return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))
    return check(name, value)


def _pick(value: Any, group: int) -> float:
    return value[group] if isinstance(value, tuple) else value


def _groups_of(value: Any) -> Optional[int]:
    return len(value) if isinstance(value, tuple) else None


class Schedule:
    """The common interface of every schedule value (immutable, picklable, comparable)."""

    _FIELDS: Tuple[str, ...] = ()

    # -- immutability and value semantics
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new value instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _set_fields(self, checked: Dict[str, Any]) -> None:
        """Sets every field from ``checked``: a constructor's ``locals()`` once each argument
        holds its checked value."""
        self._set(**{name: checked[name] for name in self._FIELDS})

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._FIELDS)})"

    # -- structure (defined by the leaves and the chains)
    def leaves(self) -> Tuple["_Leaf", ...]:
        """The kinds of the composition, in the order their PyTorch schedulers are built."""
        raise NotImplementedError

    def _locate(self, iteration: int) -> Tuple["_Leaf", int, int]:
        """``(leaf, local step, absolute start of the leaf's segment)`` for ``iteration``."""
        raise NotImplementedError

    def _segments(self) -> List[Tuple[int, "_Leaf"]]:
        """The chain as ``(start, leaf)``, starts increasing from 0."""
        raise NotImplementedError

    # -- what the optimizer asks
    @property
    def needs_initial_lr(self) -> bool:
        """Whether a kind of it scales the group's ``initial_lr`` (else it carries its bounds)."""
        return any(leaf.RELATIVE for leaf in self.leaves())

    @property
    def groups(self) -> Optional[int]:
        """The number of param groups its per-group bounds are given for (None: any)."""
        counts = {n for leaf in self.leaves() for n in leaf._group_counts() if n is not None}
        if len(counts) > 1:
            raise ValueError(f"schedule: per-group lists of different lengths {sorted(counts)}")
        return counts.pop() if counts else None

    def initial_lr(self, lr: Optional[float] = None, group: int = 0) -> float:
        """The ``group["initial_lr"]`` that PyTorch's schedulers leave in a group of LR ``lr``
        when built in order on it: the first one sets it (``CyclicLR`` to its ``base_lr``, the
        others to ``lr``), and every ``OneCycleLR`` overwrites it with ``max_lr / div_factor``.
        """
        value = None
        for leaf in self.leaves():
            if isinstance(leaf, OneCycle):
                value = _pick(leaf.max_lr, group) / leaf.div_factor
            elif value is None:
                value = _pick(leaf.base_lr, group) if isinstance(leaf, Cyclic) else lr
        if value is None:
            raise ValueError("lr: required by this schedule (it scales each group's initial lr)")
        return as_float("lr", value)

    def _initial_momentum(self, group: int) -> float:
        # The momentum a group holds before any segment sets it: PyTorch's cycling schedulers
        # each write their step-0 value when built, so the last one built wins. NaN: none cycles.
        momentum = NAN
        for leaf in self.leaves():
            value = leaf._evaluate(0, 0.0, group)[1]
            if not math.isnan(value):
                momentum = value
        return momentum

    def point(
        self, iteration: int, initial_lr: Optional[float] = None, group: int = 0
    ) -> Tuple[float, Optional[float]]:
        """``(lr, momentum)`` of the step with 0-based index ``iteration`` for param group
        ``group`` whose ``initial_lr`` is given (required where :attr:`needs_initial_lr`).
        ``momentum`` (or ``betas[0]``) is None where no kind of the chain cycles it."""
        iteration = _integer("iteration", iteration, 0)
        if initial_lr is None and self.needs_initial_lr:
            raise ValueError("initial_lr: required by this schedule (it scales each group's initial lr)")
        momentum = self._momentum_or_nan(iteration, initial_lr, group)
        leaf, local, _ = self._locate(iteration)
        return leaf._evaluate(local, initial_lr, group)[0], (None if math.isnan(momentum) else momentum)

    def _momentum_or_nan(self, iteration: int, initial_lr: Optional[float], group: int) -> float:
        leaf, local, start = self._locate(iteration)
        momentum = leaf._evaluate(local, initial_lr, group)[1]
        while math.isnan(momentum) and start > 0:  # held from the segment before, as PyTorch leaves it
            leaf, local, start = self._locate(start - 1)
            momentum = leaf._evaluate(local, initial_lr, group)[1]
        return self._initial_momentum(group) if math.isnan(momentum) else momentum

    def lr(self, iteration: int, initial_lr: Optional[float] = None, group: int = 0) -> float:
        """The LR of the step with index ``iteration`` (see :meth:`point`)."""
        return self.point(iteration, initial_lr, group)[0]

    def flatten(self, initial_lrs: Sequence[Optional[float]] = (None,)) -> Flat:
        """The composition as a device evaluates it (:class:`Flat`), for param groups whose
        ``initial_lr`` values are ``initial_lrs`` (None where :attr:`needs_initial_lr` is False)."""
        initial_lrs = list(initial_lrs)
        if self.groups not in (None, len(initial_lrs)):
            raise ValueError(f"initial_lrs: {len(initial_lrs)} groups, but the bounds are given for {self.groups}")
        if self.needs_initial_lr and any(v is None for v in initial_lrs):
            raise ValueError("initial_lrs: required by this schedule (it scales each group's initial lr)")
        return self._flat([(group, initial) for group, initial in enumerate(initial_lrs)])

    def flatten_group(self, initial_lr: Optional[float], group: int) -> Flat:
        """Param group ``group`` alone, as :meth:`flatten` gives it (a one-group :class:`Flat`)."""
        if self.groups is not None and not 0 <= group < self.groups:
            raise ValueError(f"group: the bounds are given for {self.groups} param groups, got group {group}")
        if self.needs_initial_lr and initial_lr is None:
            raise ValueError("initial_lr: required by this schedule (it scales each group's initial lr)")
        return self._flat([(group, initial_lr)])

    def _flat(self, groups: Sequence[Tuple[int, Optional[float]]]) -> Flat:
        segments = self._segments()
        params, held = [], []
        for group, initial in groups:
            rows = [leaf._params(initial, group) for _, leaf in segments]
            holds = [self._initial_momentum(group)]
            for k in range(1, len(segments)):  # the previous segment's last momentum, or what it held
                before = segments[k - 1][1]
                local = segments[k][0] - segments[k - 1][0] - 1
                last = FORMULAS[before.KIND](local, rows[k - 1], getattr(before, "scale_fn", None))[1]
                holds.append(holds[-1] if math.isnan(last) else last)
            params.append(rows)
            held.append(holds)
        return Flat(
            [leaf.KIND for _, leaf in segments],
            [start for start, _ in segments],
            params,
            held,
            [getattr(leaf, "scale_fn", None) for _, leaf in segments],
        )

    # -- state
    def state_dict(self) -> Dict[str, Any]:
        """The whole composition as plain data (no callables): :func:`from_state_dict` rebuilds it."""
        state: Dict[str, Any] = {"kind": type(self).__name__}
        for name in self._FIELDS:
            value = getattr(self, name)
            state[name] = list(value) if isinstance(value, tuple) else value
        return state

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any], scale_fn: ScaleFn = None) -> "Schedule":
        return from_state_dict(state, scale_fn)


class _Leaf(Schedule):
    """One kind: its code, its parameter vector and its formula."""

    KIND = -1
    #: Whether it scales the group's initial_lr (LRScheduler's base_lrs) rather than carrying bounds.
    RELATIVE = True
    _PER_GROUP: Tuple[str, ...] = ()

    def leaves(self) -> Tuple["_Leaf", ...]:
        return (self,)

    def _locate(self, iteration: int) -> Tuple["_Leaf", int, int]:
        return self, iteration, 0

    def _segments(self) -> List[Tuple[int, "_Leaf"]]:
        return [(0, self)]

    def _group_counts(self) -> List[Optional[int]]:
        return [_groups_of(getattr(self, name)) for name in self._PER_GROUP]

    def _named_params(self, initial_lr: Optional[float], group: int) -> Dict[str, Optional[float]]:
        """The parameter vector by name (``LAYOUTS[KIND]``): by default the group's initial lr
        and the fields, for the kinds that scale it."""
        return {"initial_lr": initial_lr, **{name: getattr(self, name) for name in self._FIELDS}}

    def _params(self, initial_lr: Optional[float], group: int) -> Tuple[float, ...]:
        named = self._named_params(initial_lr, group)
        layout = LAYOUTS[self.KIND]
        assert set(named) == set(layout), (type(self).__name__, set(named) ^ set(layout))
        return tuple(float(named[name]) for name in layout) + (0.0,) * (WIDTH - len(layout))

    def _evaluate(self, local: int, initial_lr: Optional[float], group: int) -> Point:
        return FORMULAS[self.KIND](local, self._params(initial_lr, group), getattr(self, "scale_fn", None))


class Cyclic(_Leaf):
    """``torch.optim.lr_scheduler.CyclicLR`` (plus the paper's ``"fixed"``, ``"exp"``, ``"decay"``)."""

    KIND, RELATIVE = CYCLIC, False
    _FIELDS = (
        "base_lr",
        "max_lr",
        "step_size_up",
        "step_size_down",
        "mode",
        "gamma",
        "scale_fn",
        "scale_mode",
        "cycle_momentum",
        "base_momentum",
        "max_momentum",
    )
    _PER_GROUP = ("base_lr", "max_lr", "base_momentum", "max_momentum")

    def __init__(
        self,
        base_lr: Any,
        max_lr: Any,
        step_size_up: Any = 2000,
        step_size_down: Any = None,
        mode: str = "triangular",
        gamma: Any = 1.0,
        scale_fn: ScaleFn = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: Any = 0.8,
        max_momentum: Any = 0.9,
    ) -> None:
        base_lr = _per_group("base_lr", base_lr, non_negative)
        max_lr = _per_group("max_lr", max_lr, non_negative)
        _check_lengths(("base_lr", base_lr), ("max_lr", max_lr))
        n = _groups_of(base_lr) or _groups_of(max_lr) or 1
        for g in range(n):
            if _pick(max_lr, g) < _pick(base_lr, g):
                raise ValueError(f"max_lr: must be >= base_lr ({_pick(base_lr, g)}), got {_pick(max_lr, g)}")
        step_size_up, step_size_down, gamma = cyclic_shape(
            step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode
        )
        if not isinstance(cycle_momentum, bool):
            raise ValueError(f"cycle_momentum: must be True or False, got {cycle_momentum!r}")
        base_momentum = _per_group("base_momentum", base_momentum, momentum_value)
        max_momentum = _per_group("max_momentum", max_momentum, momentum_value)
        _check_lengths(
            ("base_lr", base_lr), ("max_lr", max_lr), ("base_momentum", base_momentum), ("max_momentum", max_momentum)
        )
        self._set_fields(locals())

    def _named_params(self, initial_lr: Optional[float], group: int) -> Dict[str, Optional[float]]:
        cycled = self.cycle_momentum
        return {
            "base_lr": _pick(self.base_lr, group),
            "max_lr": _pick(self.max_lr, group),
            "step_size_up": self.step_size_up,
            "step_size_down": self.step_size_up if self.step_size_down is None else self.step_size_down,
            "gamma": self.gamma,
            "base_momentum": _pick(self.base_momentum, group) if cycled else NAN,
            "max_momentum": _pick(self.max_momentum, group) if cycled else NAN,
            "mode": _oracle.CUSTOM_MODE if self.scale_fn is not None else _oracle.MODES[self.mode],
            "scale_by_iteration": self.scale_mode == "iterations",
            "custom_scale": 1.0,  # a scale_fn's value, evaluated on the host (Flat.table)
        }

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        # A user function is not saved (CyclicLR saves none either); say that one was used.
        state["scale_fn"] = None if self.scale_fn is None else getattr(self.scale_fn, "__qualname__", "custom")
        return state


class OneCycle(_Leaf):
    """``torch.optim.lr_scheduler.OneCycleLR`` (the final values held past ``total_steps``)."""

    KIND, RELATIVE = ONE_CYCLE, False
    _FIELDS = ("max_lr", *ONE_CYCLE_SHAPE, "cycle_momentum", "base_momentum", "max_momentum")
    _PER_GROUP = ("max_lr", "base_momentum", "max_momentum")

    def __init__(
        self,
        max_lr: Any,
        total_steps: Any = None,
        *,
        epochs: Any = None,
        steps_per_epoch: Any = None,
        pct_start: Any = 0.3,
        anneal_strategy: str = "cos",
        div_factor: Any = 25.0,
        final_div_factor: Any = 1e4,
        three_phase: bool = False,
        cycle_momentum: bool = True,
        base_momentum: Any = 0.85,
        max_momentum: Any = 0.95,
    ) -> None:
        max_lr = _per_group("max_lr", max_lr, non_negative)
        total_steps = one_cycle_total(total_steps, epochs, steps_per_epoch)
        pct_start, div_factor, final_div_factor = one_cycle_shape(
            total_steps, pct_start, anneal_strategy, div_factor, final_div_factor
        )
        for name, value in (("three_phase", three_phase), ("cycle_momentum", cycle_momentum)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: must be True or False, got {value!r}")
        base_momentum = _per_group("base_momentum", base_momentum, momentum_value)
        max_momentum = _per_group("max_momentum", max_momentum, momentum_value)
        _check_lengths(("max_lr", max_lr), ("base_momentum", base_momentum), ("max_momentum", max_momentum))
        self._set_fields(locals())

    def _named_params(self, initial_lr: Optional[float], group: int) -> Dict[str, Optional[float]]:
        max_lr = _pick(self.max_lr, group)
        initial = max_lr / self.div_factor  # as OneCycleLR writes group["initial_lr"] and ["min_lr"]
        ends = _oracle.one_cycle_phase_ends(self.total_steps, self.pct_start, self.three_phase)
        cycled = self.cycle_momentum
        return {
            "initial_lr": initial,
            "max_lr": max_lr,
            "min_lr": initial / self.final_div_factor,
            "base_momentum": _pick(self.base_momentum, group) if cycled else NAN,
            "max_momentum": _pick(self.max_momentum, group) if cycled else NAN,
            "end_0": ends[0],
            "end_1": ends[1],
            "end_2": ends[2] if len(ends) == 3 else 0.0,
            "phases": len(ends),
            "cosine": self.anneal_strategy == "cos",
        }


class CosineRestarts(_Leaf):
    """``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` (SGDR), from each group's initial lr."""

    KIND = COSINE_RESTARTS
    _FIELDS = ("T_0", "T_mult", "eta_min")

    def __init__(self, T_0: int, T_mult: int = 1, eta_min: Any = 0.0) -> None:
        self._set(
            T_0=_integer("T_0", T_0, 1), T_mult=_integer("T_mult", T_mult, 1), eta_min=non_negative("eta_min", eta_min)
        )


class Linear(_Leaf):
    """``torch.optim.lr_scheduler.LinearLR``: the initial lr times a factor going linearly from
    ``start_factor`` to ``end_factor`` over ``total_iters`` steps, then held. ``start_factor`` may
    be 0 here (LinearLR wants it > 0), for a warmup from zero."""

    KIND = LINEAR
    _FIELDS = ("start_factor", "end_factor", "total_iters")

    def __init__(self, start_factor: Any = 1.0 / 3, end_factor: Any = 1.0, total_iters: int = 5) -> None:
        self._set(
            start_factor=_in_range("start_factor", start_factor, 0.0, 1.0),
            end_factor=_in_range("end_factor", end_factor, 0.0, 1.0),
            total_iters=_integer("total_iters", total_iters, 1),
        )


class Constant(_Leaf):
    """``torch.optim.lr_scheduler.ConstantLR``: the initial lr times ``factor`` for ``total_iters``
    steps, then the initial lr (as ``(lr * factor) * (1 / factor)``, PyTorch's roundings)."""

    KIND = CONSTANT
    _FIELDS = ("factor", "total_iters")

    def __init__(self, factor: Any = 1.0 / 3, total_iters: int = 5) -> None:
        # factor 0 is refused: ConstantLR divides by it at total_iters.
        self._set(
            factor=_in_range("factor", factor, 0.0, 1.0, low_open=True),
            total_iters=_integer("total_iters", total_iters, 1),
        )


class HFLinearWithWarmup(_Leaf):
    """transformers' ``get_linear_schedule_with_warmup`` (a ``LambdaLR``)."""

    KIND = HF_LINEAR
    _FIELDS = ("num_warmup_steps", "num_training_steps")

    def __init__(self, num_warmup_steps: int, num_training_steps: int) -> None:
        self._set(
            num_warmup_steps=_integer("num_warmup_steps", num_warmup_steps, 0),
            num_training_steps=_integer("num_training_steps", num_training_steps, 0),
        )


class HFCosineWithWarmup(_Leaf):
    """transformers' ``get_cosine_schedule_with_warmup`` (a ``LambdaLR``)."""

    KIND = HF_COSINE
    _FIELDS = ("num_warmup_steps", "num_training_steps", "num_cycles")

    def __init__(self, num_warmup_steps: int, num_training_steps: int, num_cycles: Any = 0.5) -> None:
        self._set(
            num_warmup_steps=_integer("num_warmup_steps", num_warmup_steps, 0),
            num_training_steps=_integer("num_training_steps", num_training_steps, 0),
            num_cycles=as_float("num_cycles", num_cycles),
        )


class HFWSD(_Leaf):
    """transformers' ``get_wsd_schedule`` (warmup, stable, decay; a ``LambdaLR``)."""

    KIND = HF_WSD
    _FIELDS = (
        "num_warmup_steps",
        "num_decay_steps",
        "num_stable_steps",
        "warmup_type",
        "decay_type",
        "min_lr_ratio",
        "num_cycles",
    )

    def __init__(
        self,
        num_warmup_steps: int,
        num_decay_steps: int,
        num_training_steps: Optional[int] = None,
        num_stable_steps: Optional[int] = None,
        warmup_type: str = "linear",
        decay_type: str = "cosine",
        min_lr_ratio: Any = 0.0,
        num_cycles: Any = 0.5,
    ) -> None:
        warmup = _integer("num_warmup_steps", num_warmup_steps, 0)
        decay = _integer("num_decay_steps", num_decay_steps, 0)
        if num_stable_steps is not None:
            if num_training_steps is not None:
                warnings.warn(
                    "Both num_training_steps and num_stable_steps are specified. num_stable_steps will be used.",
                    UserWarning,
                    stacklevel=3,
                )
            stable = _integer("num_stable_steps", num_stable_steps, 0)
        elif num_training_steps is not None:
            total = _integer("num_training_steps", num_training_steps, 0)
            if total < warmup + decay:
                raise ValueError(
                    f"num_training_steps: must be >= num_warmup_steps + num_decay_steps ({warmup + decay}), got {total}"
                )
            stable = total - warmup - decay
        else:
            raise ValueError("num_training_steps: give num_training_steps or num_stable_steps")
        for name, value in (("warmup_type", warmup_type), ("decay_type", decay_type)):
            if value not in HF_SHAPES:
                raise ValueError(f"{name}: must be one of {', '.join(HF_SHAPES)}, got {value!r}")
        self._set(
            num_warmup_steps=warmup,
            num_decay_steps=decay,
            num_stable_steps=stable,
            warmup_type=warmup_type,
            decay_type=decay_type,
            min_lr_ratio=_in_range("min_lr_ratio", min_lr_ratio, 0.0, 1.0),
            num_cycles=as_float("num_cycles", num_cycles),
        )

    def _named_params(self, initial_lr: Optional[float], group: int) -> Dict[str, Optional[float]]:
        return {
            "initial_lr": initial_lr,
            "num_warmup_steps": self.num_warmup_steps,
            "num_stable_steps": self.num_stable_steps,
            "num_decay_steps": self.num_decay_steps,
            "warmup_type": HF_SHAPES.index(self.warmup_type),
            "decay_type": HF_SHAPES.index(self.decay_type),
            "min_lr_ratio": self.min_lr_ratio,
            "num_cycles": self.num_cycles,
        }


#: The API's names for transformers' helpers (the values print and save under the class names).
hf_linear_with_warmup = HFLinearWithWarmup
hf_cosine_with_warmup = HFCosineWithWarmup
hf_wsd = HFWSD


class Sequential(Schedule):
    """``torch.optim.lr_scheduler.SequentialLR``: ``schedules[k]`` runs from ``milestones[k - 1]``
    (0 for the first) with its own step count restarting at 0, as SequentialLR's
    ``step(0)`` at a milestone does. A chain may hold chains (SequentialLR only takes one
    as its first scheduler); a nested chain is cut at the outer milestone."""

    _FIELDS = ("schedules", "milestones")

    def __init__(self, schedules: Sequence[Schedule], milestones: Sequence[int]) -> None:
        if isinstance(schedules, Schedule) or not isinstance(schedules, (list, tuple)) or not schedules:
            raise ValueError(f"schedules: must be a non-empty list of schedules, got {schedules!r}")
        for i, item in enumerate(schedules):
            if not isinstance(item, Schedule):
                raise ValueError(f"schedules[{i}]: must be a clr_ext.schedules value, got {item!r}")
        if not isinstance(milestones, (list, tuple)) or len(milestones) != len(schedules) - 1:
            raise ValueError(f"milestones: must be a list of {len(schedules) - 1} step(s), got {milestones!r}")
        milestones = tuple(_integer(f"milestones[{i}]", m, 1) for i, m in enumerate(milestones))
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones: must increase, got {list(milestones)}")
        self._set(schedules=tuple(schedules), milestones=milestones)
        _ = self.groups  # raises on per-group lists of different lengths

    def leaves(self) -> Tuple[_Leaf, ...]:
        return tuple(leaf for s in self.schedules for leaf in s.leaves())

    def _locate(self, iteration: int) -> Tuple[_Leaf, int, int]:
        k = bisect.bisect_right(self.milestones, iteration)
        start = self.milestones[k - 1] if k else 0
        leaf, local, inner = self.schedules[k]._locate(iteration - start)
        return leaf, local, start + inner

    def _segments(self) -> List[Tuple[int, _Leaf]]:
        ends = self.milestones + (math.inf,)
        out = []
        for start, end, item in zip((0,) + self.milestones, ends, self.schedules):
            out += [(start + inner, leaf) for inner, leaf in item._segments() if start + inner < end]
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {
            "kind": "Sequential",
            "schedules": [s.state_dict() for s in self.schedules],
            "milestones": list(self.milestones),
        }


class Warmup(Sequential):
    """``Sequential([Linear(start_factor, 1.0, steps), schedule], [steps])``: a linear warmup
    from ``start_factor`` times the group's initial lr in front of ``schedule``."""

    _FIELDS = ("schedule", "steps", "start_factor")

    def __init__(self, schedule: Schedule, steps: int, start_factor: Any = 0.0) -> None:
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule: must be a clr_ext.schedules value, got {schedule!r}")
        steps = _integer("steps", steps, 1)
        start_factor = _in_range("start_factor", start_factor, 0.0, 1.0)
        super().__init__([Linear(start_factor, 1.0, steps), schedule], [steps])
        self._set(schedule=schedule, steps=steps, start_factor=start_factor)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "kind": "Warmup",
            "schedule": self.schedule.state_dict(),
            "steps": self.steps,
            "start_factor": self.start_factor,
        }


def _check_lengths(*named: Tuple[str, Any]) -> None:
    lists = [(name, len(value)) for name, value in named if isinstance(value, tuple)]
    if len({n for _, n in lists}) > 1:
        raise ValueError(f"{lists[-1][0]}: has {lists[-1][1]} values but {lists[0][0]} has {lists[0][1]}")


_CLASSES = {cls.__name__: cls for cls in (*(c for c in _Leaf.__subclasses__()), Sequential, Warmup)}
#: The ``"kind"`` of every schedule state dict.
KIND_NAMES = frozenset(_CLASSES)


def from_state_dict(state: Dict[str, Any], scale_fn: ScaleFn = None) -> Schedule:
    """Rebuilds the value that :meth:`Schedule.state_dict` describes. A ``Cyclic`` saved with a
    Python ``scale_fn`` (not saved) needs it again as ``scale_fn``."""
    if not isinstance(state, dict) or state.get("kind") not in _CLASSES:
        raise ValueError(f"state: not a clr_ext schedule state dict ({state!r:.200})")
    # (lr_scale: an optimizer's opt.scale_schedule() factor, saved beside its schedule)
    args = {key: value for key, value in state.items() if key not in ("kind", "lr_scale")}
    kind = state["kind"]
    if kind == "Sequential":
        args["schedules"] = [from_state_dict(s, scale_fn) for s in args.get("schedules", ())]
    elif kind == "Warmup":
        args["schedule"] = from_state_dict(args.get("schedule"), scale_fn)
    elif kind == "Cyclic" and args.get("scale_fn") is not None:
        if scale_fn is None:
            raise ValueError(
                f"scale_fn: the schedule was saved with scale_fn {args['scale_fn']!r}, which is not saved; pass it"
            )
        args["scale_fn"] = scale_fn
    cls = _CLASSES[kind]
    try:
        return cls(**args)
    except TypeError as error:
        raise ValueError(f"state: a {kind} with unexpected keys {sorted(args)}: {error}") from None
