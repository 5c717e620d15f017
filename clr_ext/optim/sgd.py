"""The SGD-with-momentum rule on the scheduled-optimizer core, and its public classes:
CyclicSGD (torch.optim.SGD + CyclicLR) and OneCycleSGD (torch.optim.SGD + OneCycleLR)."""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch

from .. import backends as _backends
from .._checks import as_float, momentum_value, non_negative
from .core import _dtensor_type, _local_tensors, _real_views, _refuse_capture, _ScheduledOptimizer, _StalePlan
from .schedules import CyclicSchedule, CyclicScheduled, OneCycleSchedule, OneCycleScheduled

__all__ = ["CyclicSGD", "OneCycleSGD"]

_BUFFER = operator.itemgetter("momentum_buffer")

# A param's momentum_start (csrc/cyclic_sgd.h) before its first step with momentum,
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


class _SGDWork(NamedTuple):
    """One op call of an SGD step: a bucket's params (or part of them) with one momentum state."""

    backend: Any
    device: torch.device
    params: List[torch.Tensor]
    grads: List[torch.Tensor]
    buffers: List[torch.Tensor]  # empty: no momentum in this step
    starts: List[torch.Tensor]  # the op's momentum_start; empty: first_step decides
    first_step: bool  # the buffers are new (buffer = gradient), when starts is empty
    group: Dict[str, Any]
    bounds: List[float]


class _ScheduledSGD(_ScheduledOptimizer):
    """The SGD-with-momentum rule (torch.optim.SGD's): momentum buffers, and where the
    host cannot tell a buffer's first step, per-param start markers (``momentum_start``)
    decided by the op."""

    def __init__(
        self,
        params: Iterable[Any],
        schedule: Any,
        group_bounds: Dict[str, Any],
        *,
        momentum: float,
        dampening: float,
        weight_decay: float,
        nesterov: bool,
        maximize: bool,
        cycle_momentum: bool,
        backend: str,
    ) -> None:
        # param -> (int64 tensor, index): its momentum_start, where the op decides which
        # step is its buffer's first (see _plan_device_decided).
        self._momentum_start: Dict[torch.Tensor, Tuple[torch.Tensor, int]] = {}
        self._starts_version = 0  # changes whenever _momentum_start does
        super().__init__(
            params,
            schedule,
            group_bounds,
            dict(
                momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize
            ),
            cycle_momentum=cycle_momentum,
            backend=backend,
        )

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

    def _step_once(self, compiling: bool) -> None:
        found_inf = getattr(self, "found_inf", None)
        # (a schedule evaluated on the host reads the iteration; dynamo re-traces as it changes)
        shape = self._schedule.op_shape(self._iteration if self._schedule.host_evaluated else 0)
        state = self.state

        # Plan every bucket first: nothing is modified until all of them are known good.
        work = []
        has_dtensor = has_complex = False
        dtensor = _dtensor_type()

        def _views(tensors):
            tensors = _local_tensors(tensors, dtensor) if has_dtensor else tensors
            return _real_views(tensors) if has_complex else tensors

        # (param, its new buffer or None, its new start or None)
        new_buffers: List[Tuple[torch.Tensor, Optional[torch.Tensor], Optional[Tuple[torch.Tensor, int]]]] = []
        starts_of = self._momentum_start
        devices = set()
        for group_index, group in enumerate(self._step_groups()):
            buckets = self._buckets_of(group_index, group)
            if not buckets:
                continue
            if self.cycle_momentum:
                momentum_possible = group["base_momentum"] != 0 or group["max_momentum"] != 0
            else:
                momentum_possible = group["momentum"] != 0
            # torch.optim.SGD keeps no buffer while momentum is 0. On CUDA, and in a
            # step traced by torch.compile, the choice must not depend on the host
            # iteration (a captured graph would freeze it, dynamo would re-trace at
            # every step): buffers are passed whenever momentum can be non-zero, and
            # the kernel leaves them alone in a step whose momentum is 0.
            if self.cycle_momentum and not compiling:
                use_buffers = self._point(group, self._iteration)[1] != 0
            else:
                use_buffers = momentum_possible
            bounds = self._schedule.op_bounds(group)
            for bucket, grads in buckets:
                device, params, backend = bucket.device, bucket.params, bucket.backend
                devices.add(device)
                if bucket.dtensor is not None:
                    has_dtensor = True
                if bucket.complex:
                    has_complex = True
                host_decided = device.type in self._host_decided_types
                if not (use_buffers or (not host_decided and momentum_possible)):
                    work.append(_SGDWork(backend, device, params, grads, [], [], False, group, bounds))
                    continue
                # Looked up at every step: a user may replace or delete a buffer.
                if compiling or not host_decided or (starts_of and any(p in starts_of for p in params)):
                    work.append(self._plan_device_decided(bucket, grads, group, bounds, new_buffers, compiling))
                    continue
                try:
                    buffers = list(map(_BUFFER, bucket.states(state)))
                except KeyError:
                    buffers = None
                if buffers is not None and not any(map(operator.is_, buffers, repeat(None))):
                    work.append(_SGDWork(backend, device, params, grads, buffers, [], False, group, bounds))
                    continue
                old_p, old_g, old_b, new_p, new_g, new_b = [], [], [], [], [], []
                for p, g in zip(params, grads):
                    buf = state[p].get("momentum_buffer") if p in state else None
                    if buf is None:
                        buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                        new_p.append(p), new_g.append(g), new_b.append(buf)
                        new_buffers.append((p, buf, None))
                    else:
                        old_p.append(p), old_g.append(g), old_b.append(buf)
                if old_p:
                    work.append(_SGDWork(backend, device, old_p, old_g, old_b, [], False, group, bounds))
                if new_p:
                    work.append(_SGDWork(backend, device, new_p, new_g, new_b, [], True, group, bounds))

        if has_dtensor or has_complex:
            work = [w._replace(params=_views(w.params), grads=_views(w.grads), buffers=_views(w.buffers)) for w in work]
        # One bucket through a compiled op is checked by the op itself before it writes.
        if len(work) > 1 or (work and work[0].backend.name not in ("cpp", "cuda")):
            self._check_before_writing(
                work, lambda w: _backends._C.check_bucket(w.params, w.grads, w.buffers, w.starts), compiling
            )

        counter_on, scale_on, inf_on = self._device_inputs(devices)

        # Read on the host only where that costs no sync; elsewhere the op skips by itself
        # and every new buffer has a start, so nothing below needs to know.
        skipped = (
            found_inf is not None and found_inf.device.type in self._host_decided_types and float(found_inf) == 1.0
        )
        for position, w in enumerate(work):
            group = w.group
            try:
                w.backend.run(
                    params=w.params,
                    grads=w.grads,
                    buffers=w.buffers,
                    starts=w.starts,
                    counter=counter_on[w.device],
                    # a traced step must not read the host iteration (dynamo would guard on it)
                    iteration=None if compiling else self._iteration,
                    bounds=w.bounds,
                    shape=shape,
                    mode=self._schedule.op_mode,
                    # when cycling the op computes the momentum; a traced step passes a constant
                    # in its place (group["momentum"] changes at every step)
                    momentum=group["max_momentum"] if compiling and self.cycle_momentum else group["momentum"],
                    dampening=group["dampening"],
                    weight_decay=group["weight_decay"],
                    nesterov=group["nesterov"],
                    maximize=group["maximize"],
                    cycle_momentum=self.cycle_momentum,
                    first_step=w.first_step,
                    grad_scale=scale_on[w.device],
                    found_inf=inf_on[w.device],
                )
            except RuntimeError as err:
                if position == 0:  # the op checks before it writes: nothing has changed yet
                    raise _StalePlan() from err
                raise

        if any(start is not None for _, _, start in new_buffers):
            self._starts_version += 1
        # A skipped (overflow) step must not leave new buffers behind: the next
        # applied step is then the parameter's first, as in torch.optim.SGD + GradScaler.
        # Buffers with a start are kept: their start says whether they have begun.
        for p, buf, start in new_buffers:
            if start is not None:
                if buf is not None:
                    state[p]["momentum_buffer"] = buf
                starts_of[p] = start
            elif not skipped:
                state[p]["momentum_buffer"] = buf
        self._advance(compiling)

    def _plan_device_decided(self, bucket, grads, group, bounds, new_buffers, compiling):
        """A bucket whose buffers' first step is decided by the op, param by param.

        On CUDA (no host sync) and in traced steps the host cannot read the overflow
        flag, nor, when cycling under torch.compile, the momentum: it cannot tell
        whether a new buffer was started. Each such buffer gets a ``momentum_start``
        (see csrc/cyclic_sgd.h): ``self._momentum_start`` maps the param to (an int64
        tensor, an index in it), kept for as long as the param lives (a captured CUDA
        graph holds its address)."""
        backend, device, params = bucket.backend, bucket.device, bucket.params
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
                return _SGDWork(backend, device, params, grads, buffers, starts, False, group, bounds)
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
        return _SGDWork(backend, device, params, grads, buffers, _starts_argument(entries), False, group, bounds)


class CyclicSGD(CyclicScheduled, _ScheduledSGD):
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
        schedule = CyclicSchedule(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
        super().__init__(
            params,
            schedule,
            dict(base_lr=base_lr, max_lr=max_lr, base_momentum=base_momentum, max_momentum=max_momentum),
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            cycle_momentum=cycle_momentum,
            backend=backend,
        )


class OneCycleSGD(OneCycleScheduled, _ScheduledSGD):
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
        schedule = OneCycleSchedule(
            total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy, div_factor, final_div_factor, three_phase
        )
        super().__init__(
            params,
            schedule,
            dict(max_lr=max_lr, base_momentum=base_momentum, max_momentum=max_momentum),
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            cycle_momentum=cycle_momentum,
            backend=backend,
        )
