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

import math
import warnings
from typing import Any, Dict, List, Sequence, Tuple

from .. import schedule as _oracle
from .._checks import ONE_CYCLE_SHAPE, ScaleFn, cyclic_shape, non_negative, one_cycle_shape, one_cycle_total


def _capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream (False without CUDA)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class CyclicSchedule:
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

    def init_group(self, group: Dict[str, Any], where: str) -> None:
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

    def point(self, group: Dict[str, Any], iteration: int) -> Tuple[float, float]:
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

    def check_iteration(self, iteration: int) -> None:
        """Called before each step: nothing to say for a schedule without an end."""

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"kind": self.kind}
        state.update({key: getattr(self, key) for key in self._SAVED})
        # A user function is not saved (as CyclicLR saves none); say that one was used.
        state["scale_fn"] = None if self.scale_fn is None else getattr(self.scale_fn, "__qualname__", "custom")
        return state

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
        self.__dict__.update(restored.__dict__)


class OneCycleSchedule:
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
        self._warned_end = False
        self.op_mode = _oracle.ONE_CYCLE_MODES[anneal_strategy]
        self.shape = self.op_shape(0)

    host_evaluated = False
    may_overshoot = False

    def init_group(self, group: Dict[str, Any], where: str) -> None:
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

    def point(self, group: Dict[str, Any], iteration: int) -> Tuple[float, float]:
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

    def check_iteration(self, iteration: int) -> None:
        if iteration >= self.total_steps and not self._warned_end:
            self._warned_end = True
            warnings.warn(
                f"clr_ext: step {iteration + 1} of a 1cycle schedule of total_steps={self.total_steps}: "
                "the final LR and momentum are kept from here on (OneCycleLR would raise)",
                UserWarning,
                stacklevel=4,
            )

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"kind": self.kind}
        state.update({key: getattr(self, key) for key in self._SAVED})
        return state

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
        self.__dict__.update(restored.__dict__)


class CyclicScheduled:
    """What every cyclical optimizer shows of its schedule (as CyclicLR shows it), and
    its construction from a range test; a mixin of the public classes."""

    _schedule: CyclicSchedule

    mode = property(lambda self: self._schedule.mode)
    gamma = property(lambda self: self._schedule.gamma)
    step_size_up = property(lambda self: self._schedule.step_size_up)
    step_size_down = property(lambda self: self._schedule.step_size_down)
    scale_fn = property(lambda self: self._schedule.scale_fn)
    scale_mode = property(lambda self: self._schedule.scale_mode)

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

    total_steps = property(lambda self: self._schedule.total_steps)
    pct_start = property(lambda self: self._schedule.pct_start)
    anneal_strategy = property(lambda self: self._schedule.anneal_strategy)
    div_factor = property(lambda self: self._schedule.div_factor)
    final_div_factor = property(lambda self: self._schedule.final_div_factor)
    three_phase = property(lambda self: self._schedule.three_phase)

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
