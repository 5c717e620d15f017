"""The schedules a scheduled optimizer can follow, as the optimizer core sees them.

A schedule is a pure function of the iteration and of a param group's own bounds. For
the host it is evaluated by the Python oracle (``clr_ext.schedule``); for the kernels it
is described by the op's ``schedule_mode``, ``shape`` (one for all groups) and ``bounds``
(per group), which ``csrc/math/schedule.h`` evaluates on the device. The optimizer core
(``clr_ext.optim.core``) knows neither formula: it asks its schedule for these.

A new schedule adds a class here with the same methods, its formula in
``csrc/math/schedule.h`` and ``clr_ext/schedule.py``, and a thin public optimizer class.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import schedule as _oracle
from .. import schedules as S
from .._checks import ONE_CYCLE_SHAPE, ScaleFn, cyclic_shape, non_negative, one_cycle_shape, one_cycle_total


def _capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream (False without CUDA)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class CoreSchedule:
    """What the optimizer core asks of its schedule, and the defaults of a schedule whose
    op arguments are ``bound_keys`` read from the group, one ``shape`` and one ``op_mode``."""

    kind = ""
    #: Per-group keys the schedule reads from the groups (a new group must carry them).
    group_keys: Tuple[str, ...] = ()
    bound_keys: Tuple[str, ...] = ()
    #: Whether each step needs a value computed on the host (a ``scale_fn``).
    host_evaluated = False
    #: Whether the amplitude can exceed the bounds' (then the momentum can cross 0).
    may_overshoot = False
    op_mode = -1
    shape: Any = None
    #: ``scale_schedule``'s product: multiplies every LR (the op's ``lr_scale`` tensor).
    lr_scale = 1.0

    def op_shape(self, iteration: int) -> List[float]:
        raise NotImplementedError

    def op_arguments(self, group: Dict[str, Any], index: int, iteration: Any) -> Tuple[List[float], List[float], int]:
        """The op's ``(bounds, shape, schedule_mode)`` for param group ``index``. ``iteration``
        is read only by a host-evaluated schedule (None otherwise: a traced step must not)."""
        shape = self.op_shape(iteration) if self.host_evaluated else self.shape
        return [group[key] for key in self.bound_keys], shape, self.op_mode

    def check_group_count(self, n_groups: int) -> None:
        """Called with the constructor's groups: a schedule with per-group values checks their count."""

    def scaled(self, factor: Any) -> Any:
        """This schedule with its LRs multiplied by ``factor`` from now on (a new object)."""
        factor = lr_scale_value("factor", factor)
        scaled = copy.copy(self)  # (a ValueSchedule's group tables hold no scale: shared)
        scaled.lr_scale = self.lr_scale * factor
        return scaled

    def _saved_scale(self, state: Dict[str, Any]) -> Dict[str, Any]:
        # (an unscaled schedule saves what it saved before scale_schedule existed)
        if self.lr_scale != 1.0:
            state["lr_scale"] = self.lr_scale
        return state

    def as_value(self, groups: List[Dict[str, Any]], cycle_momentum: bool) -> Any:
        """The :mod:`clr_ext.schedules` value with these numbers, for ``groups``."""
        raise NotImplementedError

    #: The first iteration at which ``note_before_step`` has something to say (the step
    #: compares, and asks from there on only).
    warn_from = math.inf

    def note_before_step(self, iteration: int) -> Optional[str]:
        """What to warn about before the step with index ``iteration`` (asked from
        ``warn_from`` on; the optimizer warns, at the user's line): nothing for a schedule
        without an end."""
        return None


class CyclicSchedule(CoreSchedule):
    """CyclicLR's schedule (plus the paper's fixed / exp / decay policies)."""

    kind = "cyclic"
    #: Per-group keys the schedule reads, in the order the constructor takes them.
    group_keys = ("base_lr", "max_lr", "base_momentum", "max_momentum")
    #: What CyclicLR saves of its shape; saved and restored with the optimizer.
    _SAVED = ("mode", "step_size_up", "step_size_down", "gamma", "scale_mode")

    # No defaults here: the public classes' signatures hold them (construct passes every argument).
    def __init__(
        self, step_size_up: Any, step_size_down: Any, mode: str, gamma: Any, scale_fn: ScaleFn, scale_mode: str
    ) -> None:
        up, down, gamma = cyclic_shape(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
        down = up if down is None else down
        self.mode = mode
        self.step_size_up = up
        self.step_size_down = down
        self.gamma = gamma
        self.scale_fn = scale_fn
        self.scale_mode = scale_mode
        # What the step reads, computed once (a load rebuilds the schedule).
        self.op_mode = _oracle.CUSTOM_MODE if scale_fn is not None else _oracle.MODES[mode]
        #: Whether each step needs a value computed on the host (a ``scale_fn``).
        self.host_evaluated = scale_fn is not None
        #: The op's ``shape`` when it does not depend on the iteration.
        self.shape = None if self.host_evaluated else self.op_shape(0)
        #: Whether the amplitude can exceed the bounds' (then the momentum can cross 0).
        self.may_overshoot = scale_fn is not None or (mode == "exp_range" and gamma > 1)

    def init_group(self, group: Dict[str, Any], where: str, index: int) -> None:
        """Checks a group's bounds and sets what a scheduler would (``initial_lr``)."""
        for key in ("base_lr", "max_lr"):
            group[key] = non_negative(key + where, group[key])
        if group["max_lr"] < group["base_lr"]:
            raise ValueError(f"max_lr{where}: must be >= base_lr ({group['base_lr']}), got {group['max_lr']}")
        group.setdefault("initial_lr", group["base_lr"])

    def op_shape(self, iteration: int) -> List[float]:
        """The op's ``shape``: the same for every group. A ``scale_fn`` is evaluated here,
        on the host, at ``iteration``."""
        custom = 1.0
        if self.scale_fn is not None:
            if _capturing():
                raise RuntimeError(
                    "clr_ext: this schedule's scale_fn is a Python function, evaluated on the host at every step: "
                    "a captured CUDA graph would replay its value of the capture step forever. Capture a step "
                    "whose schedule has no scale_fn (a mode), or do not capture; nothing was changed"
                )
            if self.scale_mode == "cycle":
                custom = float(self.scale_fn(math.floor(1 + iteration / (self.step_size_up + self.step_size_down))))
            else:
                custom = float(self.scale_fn(iteration))
        return [self.step_size_up, self.step_size_down, self.gamma, custom]

    #: The group keys of the op's ``bounds``, in its order (csrc/math/schedule.h).
    bound_keys = ("base_lr", "max_lr", "base_momentum", "max_momentum")

    def point(self, group: Dict[str, Any], iteration: int, index: int) -> Tuple[float, float]:
        """``(lr, cycled momentum)`` of the step with index ``iteration``, by the oracle."""
        return _oracle.cyclic_point(
            iteration,
            group["base_lr"],
            group["max_lr"],
            self.step_size_up,
            self.step_size_down,
            self.mode,
            self.gamma,
            group["base_momentum"],
            group["max_momentum"],
            self.scale_fn,
            self.scale_mode,
        )

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"kind": self.kind}
        state.update({key: getattr(self, key) for key in self._SAVED})
        # A user function is not saved (as CyclicLR saves none); say that one was used.
        state["scale_fn"] = None if self.scale_fn is None else getattr(self.scale_fn, "__qualname__", "custom")
        return self._saved_scale(state)

    def as_value(self, groups: List[Dict[str, Any]], cycle_momentum: bool) -> Any:
        shape: Dict[str, Any] = dict(step_size_up=self.step_size_up, step_size_down=self.step_size_down)
        shape.update(mode=self.mode, gamma=self.gamma, scale_fn=self.scale_fn, scale_mode=self.scale_mode)
        return S.Cyclic(
            *([g[key] for g in groups] for key in ("base_lr", "max_lr")),
            cycle_momentum=cycle_momentum,
            base_momentum=[g["base_momentum"] for g in groups],
            max_momentum=[g["max_momentum"] for g in groups],
            **shape,
        )

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        _check_kind(self, state)
        if state.get("scale_fn") is not None and self.scale_fn is None:
            raise ValueError(
                "state_dict: was saved with a scale_fn (not saved with it); build the optimizer with "
                "the same scale_fn before loading"
            )
        if state.get("scale_fn") is None and self.scale_fn is not None:
            self.scale_fn = None  # the saved schedule used a mode
        restored = CyclicSchedule(
            state["step_size_up"],
            state["step_size_down"],
            state["mode"],
            state["gamma"],
            self.scale_fn,
            state["scale_mode"],
        )
        restored.lr_scale = lr_scale_value("lr_scale", state.get("lr_scale", 1.0))
        self.__dict__.update(restored.__dict__)


class OneCycleSchedule(CoreSchedule):
    """OneCycleLR's 1cycle policy."""

    kind = "one_cycle"
    group_keys = ("max_lr", "base_momentum", "max_momentum")
    _SAVED = ONE_CYCLE_SHAPE + ("phase_ends",)

    def __init__(
        self,
        total_steps: Any,
        epochs: Any,
        steps_per_epoch: Any,
        pct_start: Any,
        anneal_strategy: str,
        div_factor: Any,
        final_div_factor: Any,
        three_phase: bool,
    ) -> None:
        total = one_cycle_total(total_steps, epochs, steps_per_epoch)
        pct_start, div_factor, final_div_factor = one_cycle_shape(
            total, pct_start, anneal_strategy, div_factor, final_div_factor
        )
        ends = _oracle.one_cycle_phase_ends(total, pct_start, bool(three_phase))
        self.total_steps = total
        self.pct_start = pct_start
        self.anneal_strategy = anneal_strategy
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.three_phase = bool(three_phase)
        self.phase_ends = ends
        self.warn_from = total  # (then inf, once said)
        self.op_mode = _oracle.ONE_CYCLE_MODES[anneal_strategy]
        self.shape = self.op_shape(0)

    def init_group(self, group: Dict[str, Any], where: str, index: int) -> None:
        """Checks a group's ``max_lr`` and sets ``initial_lr`` and ``min_lr`` as OneCycleLR does."""
        group["max_lr"] = non_negative("max_lr" + where, group["max_lr"])
        if "initial_lr" not in group:
            group["initial_lr"] = group["max_lr"] / self.div_factor
            group["min_lr"] = group["initial_lr"] / self.final_div_factor
        for key in ("initial_lr", "min_lr"):
            group[key] = non_negative(key + where, group[key])

    def op_shape(self, iteration: int) -> List[float]:
        ends = list(self.phase_ends) + [0.0] * (3 - len(self.phase_ends))
        return ends + [float(len(self.phase_ends))]

    bound_keys = ("initial_lr", "max_lr", "base_momentum", "max_momentum", "min_lr")

    def point(self, group: Dict[str, Any], iteration: int, index: int) -> Tuple[float, float]:
        return _oracle.one_cycle_point(
            iteration,
            group["initial_lr"],
            group["max_lr"],
            group["min_lr"],
            self.phase_ends,
            self.anneal_strategy,
            group["base_momentum"],
            group["max_momentum"],
        )

    def note_before_step(self, iteration: int) -> Optional[str]:
        if iteration < self.total_steps:
            return None
        self.warn_from = math.inf  # (said once)
        return _past_one_cycle(iteration + 1, self.total_steps)

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"kind": self.kind}
        state.update({key: getattr(self, key) for key in self._SAVED})
        return self._saved_scale(state)

    def as_value(self, groups: List[Dict[str, Any]], cycle_momentum: bool) -> Any:
        return S.OneCycle(
            [g["max_lr"] for g in groups],
            self.total_steps,
            pct_start=self.pct_start,
            anneal_strategy=self.anneal_strategy,
            div_factor=self.div_factor,
            final_div_factor=self.final_div_factor,
            three_phase=self.three_phase,
            cycle_momentum=cycle_momentum,
            base_momentum=[g["base_momentum"] for g in groups],
            max_momentum=[g["max_momentum"] for g in groups],
        )

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        _check_kind(self, state)
        restored = OneCycleSchedule(
            state["total_steps"],
            None,
            None,
            state["pct_start"],
            state["anneal_strategy"],
            state["div_factor"],
            state["final_div_factor"],
            state["three_phase"],
        )
        if "phase_ends" in state:  # exact, also for a schedule taken over from OneCycleLR
            restored.phase_ends = tuple(float(end) for end in state["phase_ends"])
            restored.shape = restored.op_shape(0)
        restored.lr_scale = lr_scale_value("lr_scale", state.get("lr_scale", 1.0))
        self.__dict__.update(restored.__dict__)


class ValueSchedule(CoreSchedule):
    """A :mod:`clr_ext.schedules` value (any kind or chain) as the optimizer core runs it:
    each group's chain is a table (``Flat.table``) that the op evaluates from the device
    counter (``CLR_MODE_CHAIN``, csrc/math/schedule.h). The tables are built on the host when
    a group is added or its ``initial_lr`` changes, never by a traced step. ``lr_scale``
    (``scale_schedule``'s product) reaches the op as a device tensor (the op's ``lr_scale``),
    so that changing it changes no argument of a compiled or captured step."""

    kind = "value"
    op_mode = _oracle.CHAIN_MODE

    def __init__(self, value: Any, lr_scale: float = 1.0) -> None:
        if not isinstance(value, S.Schedule):
            raise ValueError(
                f"schedule: must be a clr_ext.schedules value (S.Cyclic, S.OneCycle, S.CosineRestarts, "
                f"S.Warmup(...), ...), got {value!r}"
            )
        segments = len(value._segments())
        if segments > S.MAX_SEGMENTS:
            raise ValueError(
                f"schedule: a chain of {segments} schedules; the device evaluates at most {S.MAX_SEGMENTS}"
            )
        self.value = value
        self.lr_scale = lr_scale_value("lr_scale", lr_scale)
        leaves = value.leaves()
        scale_fns = [leaf.scale_fn for leaf in leaves if isinstance(leaf, S.Cyclic) and leaf.scale_fn is not None]
        self.scale_fn = scale_fns[0] if scale_fns else None  # (given back to from_state_dict on a load)
        self.host_evaluated = bool(scale_fns)
        self.may_overshoot = self.host_evaluated or any(
            isinstance(leaf, S.Cyclic) and leaf.mode == "exp_range" and leaf.gamma > 1 for leaf in leaves
        )
        #: Whether some part of the chain cycles the momentum (SGD) or beta1 (AdamW).
        self.cycles_momentum = any(isinstance(leaf, (S.Cyclic, S.OneCycle)) and leaf.cycle_momentum for leaf in leaves)
        self._tables: Dict[int, Tuple[Any, List[float], Any]] = {}  # group index -> (initial_lr, table, flat)
        # The steps that run an S.OneCycle past its total_steps (it holds its final values,
        # where OneCycleLR, alone or in a SequentialLR, would raise): said once, as the
        # 1cycle classes say it.
        pieces = value._segments()
        ends = [start for start, _ in pieces[1:]] + [math.inf]
        self._past_ends = [
            (start, leaf.total_steps, end)
            for (start, leaf), end in zip(pieces, ends)
            if isinstance(leaf, S.OneCycle) and start + leaf.total_steps < end
        ]
        self.warn_from = sum(self._past_ends[0][:2]) if self._past_ends else math.inf

    def check_group_count(self, n_groups: int) -> None:
        given = self.value.groups
        if given is not None and given != n_groups:
            raise ValueError(f"schedule: its per-group values are given for {given} param groups, there are {n_groups}")

    def init_group(self, group: Dict[str, Any], where: str, index: int) -> None:
        """Sets ``initial_lr`` as PyTorch's schedulers built on the group would (from its ``lr``
        where the chain scales it), and, where the chain cycles the momentum, the range it
        spans as ``base_momentum`` / ``max_momentum`` (the rules read them, as for CyclicLR)."""
        given = self.value.groups
        if given is not None and index >= given:
            raise ValueError(
                f"schedule{where}: its per-group values are given for {given} param groups; a group "
                "added later needs a schedule with a value for it"
            )
        if group.get("initial_lr") is None:
            lr = group.get("lr")
            if lr is None and self.value.needs_initial_lr:
                raise ValueError(f"lr{where}: required by this schedule (it scales each group's initial lr)")
            if lr is not None:
                lr = non_negative("lr" + where, lr)  # (named as given, not as the initial_lr made of it)
            group["initial_lr"] = self.value.initial_lr(lr, index)
        group["initial_lr"] = non_negative("initial_lr" + where, group["initial_lr"])
        flat = self._table(group, index)[2]
        if self.cycles_momentum:
            momenta = [m for m in flat.held_momentum[0] if not math.isnan(m)]
            for kind, row in zip(flat.kinds, flat.params[0]):
                slots = _MOMENTUM_SLOTS.get(kind, ())
                momenta += [row[i] for i in slots if not math.isnan(row[i])]
            group["base_momentum"], group["max_momentum"] = min(momenta), max(momenta)

    def _table(self, group: Dict[str, Any], index: int, iteration: Any = None) -> Tuple[Any, List[float], Any]:
        initial = group.get("initial_lr")
        cached = self._tables.get(index)
        if cached is None or cached[0] != initial or iteration is not None:
            flat = self.value.flatten_group(initial, index)
            cached = (initial, flat.table(0, iteration), flat)
            self._tables[index] = cached
        return cached

    def op_arguments(self, group: Dict[str, Any], index: int, iteration: Any) -> Tuple[List[float], List[float], int]:
        return [], self._table(group, index, iteration)[1], _oracle.CHAIN_MODE

    def point(self, group: Dict[str, Any], iteration: int, index: int) -> Tuple[float, Optional[float]]:
        table = self._table(group, index, iteration if self.host_evaluated else None)[1]
        lr, momentum = S.table_point(iteration, table)
        return lr, (None if math.isnan(momentum) else momentum)

    def note_before_step(self, iteration: int) -> Optional[str]:
        self.warn_from = math.inf  # (said once)
        for start, total, end in self._past_ends:
            if iteration < start + total:  # (not there yet: ask again from there)
                self.warn_from = start + total
                return None
            if iteration < end:
                where = f" (the chain's, from step {start + 1})" if start else ""
                return _past_one_cycle(iteration - start + 1, total, where)
        return None

    def as_value(self, groups: List[Dict[str, Any]], cycle_momentum: bool) -> Any:
        return self.value

    def state_dict(self) -> Dict[str, Any]:
        state = self.value.state_dict()
        state["lr_scale"] = self.lr_scale
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("kind") not in S.KIND_NAMES:
            kind = state.get("kind") if isinstance(state, dict) else state
            raise ValueError(
                f"state_dict: holds a {kind!r} schedule, this optimizer follows a clr_ext.schedules value "
                "(a state dict of CyclicSGD / OneCycleSGD / ... loads into that class)"
            )
        value = S.from_state_dict(state, self.scale_fn)
        restored = ValueSchedule(value, state.get("lr_scale", 1.0))
        self.__dict__.update(restored.__dict__)


#: Where a kind's parameter vector holds momentum bounds (clr_ext.schedules.LAYOUTS).
_MOMENTUM_SLOTS = {
    S.CYCLIC: (S.LAYOUTS[S.CYCLIC].index("base_momentum"), S.LAYOUTS[S.CYCLIC].index("max_momentum")),
    S.ONE_CYCLE: (S.LAYOUTS[S.ONE_CYCLE].index("base_momentum"), S.LAYOUTS[S.ONE_CYCLE].index("max_momentum")),
}


def lr_scale_value(name: str, value: Any) -> float:
    """A factor on the LRs: finite and >= 0."""
    value = non_negative(name, value)
    if math.isinf(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return value


class CyclicScheduled:
    """What every cyclical optimizer shows of its schedule (as CyclicLR shows it), and
    its construction from a range test; a mixin of the public classes."""

    _schedule: CyclicSchedule

    @classmethod
    def from_range_test(
        cls,
        params: Any,
        result: Any,
        iters_per_epoch: int,
        *,
        epochs: Any = None,
        total_steps: Any = None,
        **kwargs: Any,
    ) -> Any:
        """An optimizer with the bounds and step size that a :func:`clr_ext.range_test` suggested
        (for AdamW, run the range test with ``optimizer="adamw"``: its range is its own).

        With ``epochs`` (or ``total_steps``), the run's length, the step sizes make whole
        cycles that end with the run (``RangeTestResult.cycle_for_run``); else the paper's 4
        epochs per half cycle. ``kwargs`` go to the constructor (``epochs_per_half_cycle``
        goes to the choice of the step size; explicit ``base_lr``/``max_lr``/``step_size_up``
        win)."""
        from ..range_test.result import cyclic_arguments

        return cls(
            params, **cyclic_arguments(result, iters_per_epoch, epochs=epochs, total_steps=total_steps, **kwargs)
        )


class OneCycleScheduled:
    """What every 1cycle optimizer shows of its schedule, and its construction from a
    range test; a mixin of the public classes."""

    _schedule: OneCycleSchedule

    @classmethod
    def from_range_test(cls, params: Any, result: Any, total_steps: Any = None, **kwargs: Any) -> Any:
        """A 1cycle optimizer whose ``max_lr`` is the range test's ``result.max_lr``.

        That is the suggested upper bound of the cyclical range: the LR where the loss
        stops improving, close to where training diverges. Smith's 1cycle policy peaks at
        exactly that bound (it visits max_lr only briefly, in the middle of the run, and
        the large LR there regularizes), and starts ``div_factor`` below it; the single-LR
        suggestions (``"valley"``, ``"steepest"``, ``"min/10"``) are made for a constant
        LR and sit well below it. ``kwargs`` go to the constructor (an explicit ``max_lr``
        wins; ``epochs`` with ``steps_per_epoch`` instead of ``total_steps``)."""
        return cls(params, kwargs.pop("max_lr", result.max_lr), total_steps, **kwargs)


# The schedule's fields, read-only on the optimizers, as the PyTorch schedulers show them.
for _mixin, _fields in ((CyclicScheduled, CyclicSchedule._SAVED + ("scale_fn",)), (OneCycleScheduled, ONE_CYCLE_SHAPE)):
    for _field in _fields:
        setattr(_mixin, _field, property(operator.attrgetter("_schedule." + _field)))


def _past_one_cycle(step: int, total_steps: int, where: str = "") -> str:
    return (
        f"clr_ext: step {step} of a 1cycle schedule of total_steps={total_steps}{where}: "
        "the final LR and momentum are kept from here on (OneCycleLR would raise)"
    )


def _check_kind(schedule: Any, state: Dict[str, Any]) -> None:
    if state.get("kind") != schedule.kind:
        raise ValueError(
            f"state_dict: holds a {state.get('kind')!r} schedule, this optimizer follows a {schedule.kind!r} one"
        )


def per_group(name: str, value: Any, n_groups: int) -> Sequence[Any]:
    """A scalar for every group, or a list with one value per group (as the schedulers take)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(f"{name}: has {len(value)} values but there are {n_groups} param groups")
        return list(value)
    return [value] * n_groups


_MODE_NAMES = {number: name for name, number in _oracle.MODES.items()}
_ANNEAL_NAMES = {number: name for name, number in _oracle.ONE_CYCLE_MODES.items()}


def op_point(iteration: int, bounds: List[float], shape: List[float], mode: int) -> Tuple[float, float]:
    """``(lr, cycled momentum)`` of a step from the op's schedule arguments (``bound_keys``,
    ``op_shape``, ``op_mode`` above), by the oracle: what csrc/math/schedule.h evaluates, for the
    backends written in Python."""
    if mode == _oracle.CHAIN_MODE:
        return S.table_point(iteration, shape)
    if mode in _ANNEAL_NAMES:
        ends = tuple(shape[: int(shape[3])])
        return _oracle.one_cycle_point(
            iteration, bounds[0], bounds[1], bounds[4], ends, _ANNEAL_NAMES[mode], bounds[2], bounds[3]
        )
    if mode == _oracle.CUSTOM_MODE:  # the host evaluated the scale_fn into shape[3]
        return _oracle.cyclic_point(
            iteration, *bounds[:2], *shape[:2], "triangular", shape[2], *bounds[2:4], lambda _x: shape[3], "cycle"
        )
    return _oracle.cyclic_point(iteration, *bounds[:2], *shape[:2], _MODE_NAMES[mode], shape[2], *bounds[2:4])
