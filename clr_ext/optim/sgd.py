"""The SGD-with-momentum rule on the scheduled-optimizer core, and its public classes:
CyclicSGD (torch.optim.SGD + CyclicLR) and OneCycleSGD (torch.optim.SGD + OneCycleLR)."""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .._checks import as_float, momentum_value, non_negative
from . import functional
from .core import _refuse_capture, _ScheduledOptimizer, construct
from .functional import Work
from .records import SgdHyper, SgdTensors
from .schedules import (
    CyclicSchedule,
    CyclicScheduled,
    OneCycleSchedule,
    OneCycleScheduled,
    ValueSchedule,
)

__all__ = ["SGD", "CyclicSGD", "OneCycleSGD"]

_BUFFER = operator.itemgetter("momentum_buffer")

# A param's momentum_start (csrc/op/sgd_op.h) before its first step with momentum,
# and for a buffer that began before it had a start (loaded, or started on the host).
_NOT_STARTED = 2**63 - 1
_STARTED_BEFORE = -1


def _starts_argument(entries: List[Tuple[torch.Tensor, int]]) -> List[torch.Tensor]:
    """The op's ``momentum_start`` for params whose starts are ``entries`` ((tensor,
    index) each): that tensor alone when it holds exactly these params' starts in
    order (one input for a traced step, not one per param), else a view per param."""
    if entries:
        shared = entries[0][0]
        if shared.numel() == len(entries) and all(t is shared and k == i for i, (t, k) in enumerate(entries)):
            return [shared]
    return [t[k] for t, k in entries]


class _ScheduledSGD(_ScheduledOptimizer):
    """The SGD-with-momentum rule (torch.optim.SGD's): momentum buffers, and where the
    host cannot tell a buffer's first step, per-param start markers (``momentum_start``)
    decided by the op."""

    _PICKLED = _ScheduledOptimizer._PICKLED + ("_momentum_start",)

    def _check_rule_group(self, group: Dict[str, Any], where: str) -> None:
        group["weight_decay"] = non_negative("weight_decay" + where, group["weight_decay"])
        group["momentum"] = momentum_value("momentum" + where, group["momentum"])
        group["dampening"] = as_float("dampening" + where, group["dampening"])
        group["nesterov"] = bool(group["nesterov"])
        group["maximize"] = bool(group["maximize"])
        # As torch.optim.SGD checks it: on the momentum argument, before any cycling.
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"nesterov{where}: Nesterov momentum requires a momentum > 0 and zero dampening")

    def _report_momentum(self, group: Dict[str, Any], momentum: float) -> None:
        group["momentum"] = momentum

    _momentum_key = "momentum"
    _momentum_slot = "momentum"

    def _reported_momentum(self, group: Dict[str, Any]) -> Any:
        return group["momentum"]

    def _iteration_moved(self) -> None:
        # The starts are iterations: once the counter may have gone back, a begun
        # buffer must not look as if it began in the future.
        for starts in {id(t): t for t, _ in self._momentum_start.values()}.values():
            starts.masked_fill_(starts != _NOT_STARTED, _STARTED_BEFORE)

    def _loaded(self) -> None:
        # The loaded buffers have begun (torch.optim.SGD saves no other kind); the
        # missing ones start at their next step.
        self._momentum_start.clear()

    def _unpickled(self) -> None:
        self.__dict__.setdefault("_momentum_start", {})
        self._starts_version = getattr(self, "_starts_version", 0) + 1

    def state_dict(self) -> Dict[str, Any]:
        saved = super().state_dict()
        not_started = self._not_started_params()
        if not_started:
            # A buffer whose every step so far was skipped (or had momentum 0) does not
            # exist for torch.optim.SGD: it is left out, and starts afresh after loading.
            index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
            for p in not_started:
                i = index.get(id(p))
                if "momentum_buffer" in saved["state"].get(i, {}):
                    saved["state"][i] = {k: v for k, v in saved["state"][i].items() if k != "momentum_buffer"}
        return saved

    def _not_started_params(self) -> List[torch.Tensor]:
        """Params whose buffer exists but has not started (one host sync when there are any starts)."""
        if not self._momentum_start:
            return []
        members: Dict[int, Tuple[torch.Tensor, List[Tuple[torch.Tensor, int]]]] = {}
        for p, (starts, k) in self._momentum_start.items():
            members.setdefault(id(starts), (starts, []))[1].append((p, k))
        not_started = []
        for starts, owners in members.values():
            values = starts.tolist()
            not_started += [p for p, k in owners if values[k] == _NOT_STARTED]
        return not_started

    def _collect(self, group_index, group, buckets, schedule_arguments, compiling, work, new_buffers):
        """``new_buffers``: (param, its new buffer or None, its new start or None)."""
        hyper = SgdHyper(
            *schedule_arguments,
            # when cycling the op computes the momentum; a traced step passes a constant
            # in its place (group["momentum"] changes at every step)
            group["max_momentum"] if compiling and self.cycle_momentum else group["momentum"],
            group["dampening"],
            group["weight_decay"],
            group["nesterov"],
            group["maximize"],
            self.cycle_momentum,
            False,
        )
        # torch.optim.SGD keeps no buffer while momentum is 0. On CUDA, and in a step
        # traced by torch.compile, the choice must not depend on the host iteration (a
        # captured graph would freeze it, dynamo would re-trace at every step): buffers
        # are passed whenever momentum can be non-zero, and the kernel leaves them alone
        # in a step whose momentum is 0.
        if hyper.cycle_momentum:
            low, high = group["base_momentum"], group["max_momentum"]
            momentum_possible = low != 0 or high != 0
            # Between two positive bounds (and an amplitude within them) the cycled
            # momentum is never 0: no need to evaluate it. (high - low != high: the
            # difference does not round to high, so the momentum cannot round to 0.)
            never_zero = low > 0 and high > 0 and high - low != high and not self._schedule.may_overshoot
            use_buffers = (
                momentum_possible
                if compiling or never_zero
                else self._point(group, self._iteration, group_index)[1] != 0
            )
        else:
            use_buffers = momentum_possible = group["momentum"] != 0
        state, starts_of = self.state, self._momentum_start
        for bucket, grads in buckets:
            params = bucket.params
            host_decided = bucket.device.type in self._host_decided_types
            if not (use_buffers or (not host_decided and momentum_possible)):
                calls = [(params, grads, [], [], False)]
            # Looked up at every step: a user may replace or delete a buffer.
            elif compiling or not host_decided or (starts_of and any(p in starts_of for p in params)):
                calls = [(params, grads, *self._plan_device_decided(bucket, new_buffers, compiling), False)]
            else:
                dicts = bucket.states(state) if bucket.state_dicts is None else bucket.state_dicts
                buffers, missing = functional.entries_of(dicts, "momentum_buffer")
                if not missing:
                    calls = [(params, grads, buffers, [], False)]
                else:
                    calls = self._with_new_buffers(params, grads, new_buffers)
            for params, grads, buffers, starts, first in calls:
                if bucket.dtensor is not None or bucket.complex:
                    params, grads, buffers = (self._kernel_tensors(t, bucket) for t in (params, grads, buffers))
                tensors = SgdTensors(params, grads, buffers, starts)
                call = hyper._replace(first_step=True) if first else hyper
                work.append(Work(bucket.backend, bucket.device, tensors, call, group_index))

    def _with_new_buffers(self, params, grads, new_buffers):
        """The calls of a host-decided bucket some of whose params have no buffer yet: the
        new buffers (zeros) start with this step's gradient, and are kept once it has run."""
        state = self.state
        old, new = ([], [], []), ([], [], [])
        for p, g in zip(params, grads):
            buf = state[p].get("momentum_buffer") if p in state else None
            if buf is None:
                buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                new_buffers.append((p, buf, None))
                columns = new
            else:
                columns = old
            for column, value in zip(columns, (p, g, buf)):
                column.append(value)
        return [(*old, [], False)] * bool(old[0]) + [(*new, [], True)] * bool(new[0])

    def _keep(self, new_buffers):
        if any(start is not None for _, _, start in new_buffers):
            self._starts_version += 1
        # A skipped (overflow) step must not leave new buffers behind: the next applied
        # step is then the parameter's first, as in torch.optim.SGD + GradScaler. Read on
        # the host only where that costs no sync; elsewhere the op skips by itself and
        # every new buffer has a start, which says whether it has begun.
        found_inf = getattr(self, "found_inf", None)
        skipped = found_inf is not None and found_inf.device.type in self._host_decided_types and float(found_inf) != 0
        state, starts_of = self.state, self._momentum_start
        for p, buf, start in new_buffers:
            if start is not None:
                if buf is not None:
                    state[p]["momentum_buffer"] = buf
                starts_of[p] = start
            elif not skipped:
                state[p]["momentum_buffer"] = buf

    def _plan_device_decided(self, bucket, new_buffers, compiling):
        """``(buffers, starts)`` of a bucket whose buffers' first step is decided by the op,
        param by param.

        On CUDA (no host sync) and in traced steps the host cannot read the overflow
        flag, nor, when cycling under torch.compile, the momentum: it cannot tell
        whether a new buffer was started. Each such buffer gets a ``momentum_start``
        (see csrc/op/sgd_op.h): ``self._momentum_start`` maps the param to (an int64
        tensor, an index in it), kept for as long as the param lives (a captured CUDA
        graph holds its address)."""
        device, params = bucket.device, bucket.params
        state, starts_of = self.state, self._momentum_start
        try:  # every step after the first: each param has its buffer and its start
            buffers = (
                [state[p]["momentum_buffer"] for p in params] if compiling else list(map(_BUFFER, bucket.states(state)))
            )
            if not compiling and bucket.starts is not None and bucket.starts[0] == self._starts_version:
                starts = bucket.starts[1]
            else:
                starts = _starts_argument([starts_of[p] for p in params])
                if not compiling:  # (dynamo would guard on the version)
                    bucket.starts = (self._starts_version, starts)
            if not any(b is None for b in buffers):
                return buffers, starts
        except KeyError:
            pass
        _refuse_capture(device, "momentum buffers")
        buffers, entries, needs_start, begun = [], [], [], set()
        for i, p in enumerate(params):
            buf = state[p].get("momentum_buffer") if p in state else None
            entry = starts_of.get(p)
            if buf is None:  # a new buffer (and a new start, whatever the old one said)
                buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                needs_start.append(i)
            elif entry is None:  # a loaded or host-started buffer
                needs_start.append(i)
                begun.add(i)
            buffers.append(buf)
            entries.append(entry)
        # One tensor for the starts this bucket creates: in the usual first step, all
        # of the bucket's, and the op then takes that tensor alone. They are kept once
        # the step has run (new_buffers), so a step that fails changes nothing.
        created = torch.full((len(needs_start),), _NOT_STARTED, dtype=torch.int64, device=device)
        for k, i in enumerate(needs_start):  # (never empty: the fast path above failed)
            entries[i] = (created, k)
            if i in begun:
                created[k].fill_(_STARTED_BEFORE)  # rare: once per param, after a load
            new_buffers.append((params[i], None if i in begun else buffers[i], entries[i]))
        return buffers, _starts_argument(entries)


class SGD(_ScheduledSGD):
    r"""SGD with momentum under any schedule of :mod:`clr_ext.schedules`, in one fused step.

    One ``step()`` does what ``sgd.step(); sched.step()`` does for
    ``sgd = torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening,
    weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)`` and the PyTorch
    scheduler(s) that ``schedule`` names (``S.CosineRestarts`` for
    ``CosineAnnealingWarmRestarts``, ``S.Warmup(X, n)`` for ``SequentialLR([LinearLR, X])``,
    ...), with their numbers: the schedule is evaluated from the device counter inside the
    kernel, whatever the chain (no host sync on CUDA, CUDA-graph capturable, a bounded
    number of traces under torch.compile).

    Args:
        params: an iterable of tensors or of param-group dicts (a group may carry its own
            ``lr`` and the SGD keys).
        lr: each group's LR before the schedule, which the schedules that scale a group's
            initial LR read (``CosineRestarts``, ``Linear``, ``Constant``, the ``hf_*``
            forms and ``Warmup``); unused (None allowed) when every part of the chain
            carries its own bounds (``Cyclic``, ``OneCycle``).
        schedule: a :mod:`clr_ext.schedules` value. Where it cycles the momentum, that
            replaces ``momentum``, as CyclicLR / OneCycleLR do.
        momentum, dampening, weight_decay, nesterov, maximize: as torch.optim.SGD.
        backend: ``"auto"`` or one of ``available_backends()``.

    Each group holds ``initial_lr`` (as PyTorch's schedulers leave it) and, after every
    step, the ``lr`` (and cycled ``momentum``) of the next step. :meth:`scale_schedule`
    multiplies the running schedule's LRs. :class:`CyclicSGD` and :class:`OneCycleSGD` are
    this optimizer with their schedule.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: Optional[float] = None,
        *,
        schedule: Any,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        backend: str = "auto",
    ) -> None:
        value = ValueSchedule(schedule)
        rule = dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        rule.update(maximize=maximize, lr=None if lr is None else non_negative("lr", lr))
        _ScheduledSGD.__init__(self, params, value, {}, rule, cycle_momentum=value.cycles_momentum, backend=backend)


class CyclicSGD(CyclicScheduled, SGD):
    r"""SGD with momentum whose learning rate (and momentum) follow a cyclical schedule.

    One ``step()`` does what ``sgd.step(); sched.step()`` does for::

        sgd = torch.optim.SGD(params, lr=base_lr, momentum=momentum, dampening=dampening,
                              weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        sched = torch.optim.lr_scheduler.CyclicLR(sgd, base_lr, max_lr, step_size_up, step_size_down,
                                                  mode, gamma, scale_fn, scale_mode, cycle_momentum,
                                                  base_momentum, max_momentum)

    with the same numbers, in one fused pass over all parameters (C++ on the CPU, CUDA
    on the GPU). The iteration counter lives on the parameters' device and the
    schedule is evaluated inside the kernel, so on CUDA a step never synchronizes
    with the host and can be captured in a CUDA graph.

    Args:
        params: parameters or param-group dicts. A group may carry ``base_lr``,
            ``max_lr``, ``base_momentum``, ``max_momentum``, ``momentum``,
            ``dampening``, ``weight_decay``, ``nesterov`` and ``maximize``; missing keys
            take the values given here.
        base_lr, max_lr: the cycle's bounds; a float or one value per group.
        step_size_up, step_size_down: iterations in the rising and falling half
            (``step_size_down=None``: same as up). Smith advises 2-10 epochs.
        mode: ``"triangular"``, ``"triangular2"``, ``"exp_range"`` (as CyclicLR), or
            the paper's other policies ``"fixed"`` (lr = base_lr), ``"exp"``
            (base_lr * gamma**iteration) and ``"decay"`` (max_lr falling linearly to
            base_lr over ``step_size_up``, then flat).
        gamma: the exp_range / exp factor.
        scale_fn, scale_mode: a custom amplitude function of the cycle number or of
            the iteration, as in CyclicLR. It runs on the host at every step, so a step
            with a ``scale_fn`` is not CUDA-graph capturable.
        momentum, dampening, weight_decay, nesterov, maximize: as torch.optim.SGD.
        cycle_momentum: cycle momentum inversely to the lr between ``base_momentum``
            and ``max_momentum`` (on by default, as in CyclicLR: it then replaces
            ``momentum``).
        backend: ``"auto"`` (per device, the fastest built: cuda, cpp, cython, torch),
            or one of those names. ``CLR_EXT_BACKEND`` overrides ``"auto"``.

    A group's ``base_lr``, ``max_lr``, ``base_momentum`` and ``max_momentum`` may be
    changed between steps (e.g. to drop a ``"fixed"`` LR at set iterations, as the
    paper's baseline does): every step reads them; ``group["lr"]`` follows after it.

    After construction and after every step, ``group["lr"]`` (and ``group["momentum"]``
    when cycling) hold the values the next step uses, and ``iteration`` counts the
    completed steps. After replaying a captured CUDA graph, call :meth:`sync` to bring
    these host-side values up to date.

    Under ``torch.compile``, ``step()`` traces without a graph break (``fullgraph=True``)
    and twice in all (before and after the momentum buffers exist): the traced step
    reads the iteration from the device counter only, and the host-side values are
    advanced by an op as the compiled code runs. A ``scale_fn`` runs on the host, so
    with one the step is re-traced whenever its value changes.

    A parameter's first step with momentum stores its gradient in the buffer (no
    dampening), as torch.optim.SGD does. Where the host cannot know whether a step was
    that first step (a CUDA step that ``GradScaler`` may skip on overflow, a traced
    step whose cycled momentum may be 0), the op decides on the device, param by
    param, from a start iteration kept with the buffer: a skipped step leaves the
    buffer unstarted (torch's fused SGD leaves uninitialised memory there), and
    ``state_dict()`` leaves such a buffer out, as torch.optim.SGD would have none.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_lr: Any,
        max_lr: Any,
        step_size_up: float = 2000,
        step_size_down: Optional[float] = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Optional[Callable[[float], float]] = None,
        scale_mode: str = "cycle",
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        cycle_momentum: bool = True,
        base_momentum: Any = 0.8,
        max_momentum: Any = 0.9,
        backend: str = "auto",
    ) -> None:
        construct(self, CyclicSchedule, locals())


class OneCycleSGD(OneCycleScheduled, SGD):
    r"""SGD with momentum under the 1cycle policy, in one fused step.

    One ``step()`` does what ``sgd.step(); sched.step()`` does for::

        sgd = torch.optim.SGD(params, lr=max_lr, momentum=momentum, dampening=dampening,
                              weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        sched = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr, total_steps, epochs, steps_per_epoch,
                                                    pct_start, anneal_strategy, cycle_momentum,
                                                    base_momentum, max_momentum, div_factor,
                                                    final_div_factor, three_phase)

    with the same numbers, in the same fused step as :class:`CyclicSGD` (the schedule is
    evaluated from the device counter inside the kernel: no host sync on CUDA, CUDA-graph
    capturable, one trace under torch.compile). The LR rises from ``max_lr / div_factor``
    to ``max_lr`` over the first ``pct_start`` of ``total_steps`` and anneals to
    ``max_lr / div_factor / final_div_factor``; with ``cycle_momentum`` the momentum moves
    inversely between ``max_momentum`` and ``base_momentum`` (and replaces ``momentum``).

    Groups may carry ``max_lr``, ``base_momentum``, ``max_momentum`` and the SGD keys; as
    with OneCycleLR each group also holds ``initial_lr`` and ``min_lr``, which the step
    reads. ``max_lr``, ``base_momentum`` and ``max_momentum`` may be lists (one per group).

    Unlike OneCycleLR, which raises on the step after ``total_steps``, steps past the end
    keep the final LR and momentum (those of step ``total_steps - 1``) and warn once: a
    loop that runs a step too many does not die. (OneCycleLR's ``get_last_lr()`` after its
    last step shows an extrapolated LR below ``min_lr``, negative with linear annealing;
    here ``group["lr"]`` shows the held final LR.)
    """

    def __init__(
        self,
        params: Iterable[Any],
        max_lr: Any,
        total_steps: Optional[int] = None,
        *,
        epochs: Optional[int] = None,
        steps_per_epoch: Optional[int] = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        cycle_momentum: bool = True,
        base_momentum: Any = 0.85,
        max_momentum: Any = 0.95,
        backend: str = "auto",
    ) -> None:
        construct(self, OneCycleSchedule, locals())
