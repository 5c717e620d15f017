"""The scheduled-optimizer core: what every scheduled optimizer shares.

Param groups, buckets per device and dtype, the device counter and its host mirror,
AMP inputs, DTensor shards and complex views, the torch.compile op, state dicts,
pickling and outside writes, in ``_ScheduledOptimizer``. A schedule
(``clr_ext.optim.schedules``) supplies the formula's arguments; an update rule is a
subclass (``clr_ext.optim.sgd``, ``clr_ext.optim.adamw``) that checks its group keys,
reports the cycled momentum where its PyTorch optimizer keeps it, and collects each
group's op calls (records of ``clr_ext.optim.records``) for the one step spine here and
in ``clr_ext.optim.functional``.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import struct
import sys
import warnings
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from .. import _ops
from .. import backends as _backends
from .._checks import momentum_value
from . import functional
from . import loading as _loading
from .functional import StalePlan, Work
from .records import StepInputs
from .schedules import per_group

# Optimizers by handle, for the op below: an op's arguments are tensors and numbers,
# so a traced step names its optimizer by an int that stays constant across steps.
_LIVE: "weakref.WeakValueDictionary[int, _ScheduledOptimizer]" = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def _advance_schedule(counters: List[torch.Tensor], handle: int) -> None:
    """Ends a step traced by torch.compile: advances the device counters and, as the
    compiled code runs, the optimizer's host mirror (``iteration``, ``group["lr"]``).

    An opaque op, so that the traced step reads no per-step Python number (dynamo would
    guard on it and re-trace at every step) and still leaves the host mirror right."""
    for counter in counters:
        counter.add_(1)
    optimizer = _LIVE.get(handle)
    if optimizer is not None:
        optimizer._host_advance()


_ops.define("advance_schedule_(Tensor(a!)[] counters, int handle) -> ()", _advance_schedule)


_NOTHING_WRITTEN = (None, None, None)


def _dtensor_type() -> Any:
    """``DTensor`` if ``torch.distributed.tensor`` was imported (no DTensor exists otherwise)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def _local_tensors(tensors: List[torch.Tensor], dtensor: Any) -> List[torch.Tensor]:
    """The local shards of DTensors (FSDP2 parameters, their grads and buffers), which the
    kernels update in place; other tensors as they are."""
    return [t._local_tensor if isinstance(t, dtensor) else t for t in tensors]


def _real_views(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """Complex tensors as real views (..., 2), as torch.optim.SGD steps them: the update
    is element-wise and linear, so real and imaginary parts update independently."""
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


_COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside clr_ext and torch.optim (the optimizer
    step's wrappers, a scheduler's patched step), so that a warning shows the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/clr_ext/" not in path and "/torch/optim/" not in path and "/torch/utils/_contextlib" not in path:
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _refuse_capture(device: torch.device, what: str) -> None:
    """State created while a CUDA graph is captured becomes a fill inside the graph: every
    replay would reset it (the counter to its first value, momentum to a fresh start)."""
    if _capturing(device):
        raise RuntimeError(
            f"clr_ext: {what} would be created inside CUDA-graph capture, where every replay would reset it. "
            "Take one eager opt.step() (e.g. warm-up iterations on a side stream, as PyTorch's CUDA-graph docs "
            "advise for optimizers) before capturing the step; nothing was changed"
        )


def _differs_for_the_step(theirs: Any, mine: float, group: Dict[str, Any]) -> bool:
    """Whether an outside value would have changed the step: the kernels round the LR and
    the momentum to the compute type, float32 unless the group holds a float64 param, so a
    difference below that rounding (a framework's closed form against the schedule's, one
    ulp apart) changes nothing and is not worth a warning."""
    try:
        theirs = float(theirs)
    except (TypeError, ValueError):
        return True
    if theirs == mine:
        return False
    if any(p.dtype == torch.float64 for p in group["params"]):
        return True
    try:
        return struct.pack("f", theirs) != struct.pack("f", mine)
    except OverflowError:
        return True


class _Bucket:
    """Params of one group on one device with one dtype, and their backend."""

    __slots__ = ("device", "params", "backend", "dtensor", "complex", "starts", "state_dicts")

    def __init__(self, device: torch.device, params: List[torch.Tensor], backend: Any) -> None:
        self.device = device
        self.params = params
        self.backend = backend
        # DTensor params (FSDP2): the step runs on their local shards.
        dtensor = _dtensor_type()
        self.dtensor = dtensor if dtensor is not None and any(isinstance(p, dtensor) for p in params) else None
        self.complex = params[0].dtype in _COMPLEX_DTYPES
        # (CyclicSGD._starts_version, the params' momentum starts): saves a dict lookup
        # per param and step on the device-decided path.
        self.starts: Optional[Tuple[int, List[torch.Tensor]]] = None
        self.state_dicts: Optional[List[Dict[str, Any]]] = None  # (see states)

    def states(self, state: Dict[torch.Tensor, Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The params' state dicts, looked up once: a lookup by tensor calls the Python
        ``Tensor.__hash__`` (~0.2 us; 40 us a step for 200 params), a lookup by key in a
        param's dict does not. The bucket lives no longer than ``state`` and its size
        (see ``_buckets_of``), so a buffer replaced or deleted in a param's dict is seen."""
        if self.state_dicts is None:
            self.state_dicts = [state[p] for p in self.params]
        return self.state_dicts


def construct(optimizer: "_ScheduledOptimizer", schedule_type: Any, arguments: Dict[str, Any]) -> None:
    """The public classes' constructor, written once: ``arguments`` (the constructor's
    ``locals()``) split into the schedule's own, the per-group bounds (the schedule's
    group keys and the momentum bounds), the rule's defaults (the rest), ``cycle_momentum``
    and ``backend``."""
    rest = {key: value for key, value in arguments.items() if key not in ("self", "__class__")}
    params, cycle_momentum, backend = rest.pop("params"), rest.pop("cycle_momentum"), rest.pop("backend")
    takes = inspect.signature(schedule_type).parameters
    schedule = schedule_type(**{key: rest.pop(key) for key in list(rest) if key in takes})
    bounds = {key: rest.pop(key) for key in schedule_type.group_keys + ("base_momentum", "max_momentum") if key in rest}
    _ScheduledOptimizer.__init__(
        optimizer, params, schedule, bounds, rest, cycle_momentum=cycle_momentum, backend=backend
    )


class _ScheduledOptimizer(Optimizer):
    """An optimizer whose LR (and momentum or beta1) follow a schedule, in one fused step.

    The shared core of every scheduled optimizer: param groups, buckets per device and
    dtype, the device counter and its host mirror, AMP, DTensor shards and complex views,
    torch.compile, state dicts, outside writes. ``schedule`` (``clr_ext.optim.schedules``)
    gives the formula's arguments; ``group_bounds`` are its per-group values (a float, or
    a list with one value per group). An update rule is a subclass: it checks its own
    group keys (``_check_rule_group``), reports the cycled momentum where its PyTorch
    optimizer keeps it (``_report_momentum``), lists a group's op calls (``_collect``)
    and stores the state it created once they ran (``_keep``); ``_step_checked`` runs
    the step around them, the same for every rule (``clr_ext.optim.functional``).
    """

    _step_supports_amp_scaling = True

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """torch.optim.Optimizer wraps ``step`` in this at the first construction. Here
        ``step`` stays as it is, with torch's wrapper (step hooks, the profiler's
        record_function) at hand as ``step.with_hooks``: ``step`` enters it only when there
        are hooks, a profiler or a trace, as its record_function alone costs ~10 us per
        step, a fifth of a 200-param step."""
        func.with_hooks = Optimizer.profile_hook_step(func)  # type: ignore[attr-defined]
        return func

    #: True while ``step`` runs inside torch's wrapper (``_step_with_hooks``).
    _in_hooks = False

    def _step_with_hooks(self, closure: Optional[Callable[[], Any]]) -> Any:
        self._in_hooks = True
        try:
            return type(self).step.with_hooks(self, closure)  # type: ignore[attr-defined]
        finally:
            self._in_hooks = False

    # Devices whose overflow flag the host reads for free; on all others the op decides
    # which buffers start (tests empty this to run that path without a GPU).
    _host_decided_types: Tuple[str, ...] = ("cpu",)

    def __init__(
        self,
        params: Iterable[Any],
        schedule: Any,
        group_bounds: Dict[str, Any],
        rule_defaults: Dict[str, Any],
        *,
        cycle_momentum: bool,
        backend: str,
    ) -> None:
        self._unpickled()  # (the rule's own fields)
        self._backend_request = _backends.requested_backend(backend)
        self._schedule = schedule
        self.cycle_momentum = bool(cycle_momentum)
        self._iteration = 0
        self._counters: Dict[torch.device, torch.Tensor] = {}
        self._lr_scales: Dict[torch.device, torch.Tensor] = {}  # (a scalable schedule's, per device)
        self._bucket_cache: Dict[int, Tuple[Any, ...]] = {}
        self._loading: Optional[Tuple[Any, ...]] = None
        # group id -> (lr, cycled momentum, the group's entry that reports it) as this
        # optimizer last wrote them there (see step and _outside_write)
        self._written: Dict[int, Tuple[Any, Any, Any]] = {}
        self._warned_outside: set = set()
        self._position_unknown = False  # see _say_position_unknown

        if isinstance(params, torch.Tensor):  # worded as torch.optim.Optimizer words it
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, "
                "but got " + torch.typename(params)
            )
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("params: optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        else:
            groups = [dict(g) for g in groups]  # never write into the caller's dicts
        for key, value in group_bounds.items():
            for group, value_of_group in zip(groups, per_group(key, value, len(groups))):
                group.setdefault(key, value_of_group)
        schedule.check_group_count(len(groups))
        defaults = {"lr": 0.0, **rule_defaults}  # lr: replaced by the schedule for every group
        for key, value in (("foreach", None), ("fused", None), ("differentiable", False)):  # torch's group keys
            defaults.setdefault(key, value)
        for key, value in group_bounds.items():
            if not isinstance(value, (list, tuple)):
                defaults[key] = value
        super().__init__(groups, defaults)
        self._register()

    # ------------------------------------------------------------------ groups

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Adds a group; its schedule starts at the optimizer's current iteration."""
        param_group = dict(param_group)
        for key in self._schedule.group_keys:
            if key not in param_group and key not in self.defaults:
                raise ValueError(
                    f"{key}: was given per group at construction; a new param group must carry its own {key}"
                )
        n_before = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group, len(self.param_groups) - 1)
        except Exception:
            del self.param_groups[n_before:]
            raise
        group["iteration"] = self._iteration
        self._refresh_group(group, len(self.param_groups) - 1)

    def _check_group(self, group: Dict[str, Any], index: int, schedule: Any = None) -> None:
        """Checks and normalises a group's values, against ``schedule`` (default: this
        optimizer's), as the constructor and ``load_state_dict`` take them."""
        where = "" if index == 0 else f" (param group {index})"
        (schedule or self._schedule).init_group(group, where, index)
        for key in ("base_momentum", "max_momentum"):
            if key in group:  # (a chain that cycles no momentum has none)
                group[key] = momentum_value(key + where, group[key])
        self._check_rule_group(group, where)

    def _check_rule_group(self, group: Dict[str, Any], where: str) -> None:
        raise NotImplementedError

    def _report_momentum(self, group: Dict[str, Any], momentum: float) -> None:
        """Writes the cycled momentum where the rule's PyTorch optimizer keeps it."""
        raise NotImplementedError

    #: Where the rule reports its cycled momentum, as its warnings name it, and the group
    #: key that holds it.
    _momentum_key = ""
    _momentum_slot = ""

    def _reported_momentum(self, group: Dict[str, Any]) -> Any:
        """The cycled momentum as the group holds it now (read back from where
        ``_report_momentum`` wrote it)."""
        raise NotImplementedError

    def _collect(
        self,
        group_index: int,
        group: Dict[str, Any],
        buckets: List[Tuple["_Bucket", List[torch.Tensor]]],
        schedule_arguments: Tuple[List[float], List[float], int],
        compiling: bool,
        work: List[Work],
        new_state: List[Any],
    ) -> None:
        """Appends the group's op calls to ``work`` (its record starts with
        ``schedule_arguments``: bounds, shape, mode), creating (not storing) missing state,
        which goes to ``new_state`` for ``_keep``."""
        raise NotImplementedError

    def _keep(self, new_state: List[Any]) -> None:
        """Stores the state ``_collect`` created, once the step has run."""
        raise NotImplementedError

    # ---------------------------------------------------------------- schedule

    @property
    def iteration(self) -> int:
        """The number of completed steps (the index of the next step)."""
        self._adopt_group_iteration()  # after a wrapper restored the groups (see there)
        return self._iteration

    def _point(self, group: Dict[str, Any], iteration: int, index: int) -> Tuple[float, Any]:
        lr, momentum = self._schedule.point(group, iteration, index)
        return lr * self._schedule.lr_scale, momentum  # (as the op multiplies its lr_scale in)

    @property
    def schedule(self) -> Any:
        """The :mod:`clr_ext.schedules` value this optimizer follows (for the cyclical and
        1cycle classes, the value with their groups' bounds)."""
        return self._schedule.as_value(self.param_groups, self.cycle_momentum)

    @property
    def schedule_scale(self) -> float:
        """The product of every :meth:`scale_schedule` factor so far (1.0: none)."""
        return self._schedule.lr_scale

    def scale_schedule(self, factor: float) -> None:
        """Multiplies the LR of every group, from the next step on, by ``factor`` (on top of
        earlier factors): a drop on a plateau that the host detected (what
        ``ReduceLROnPlateau`` does to a fixed LR), a multistep decay, applied to the running
        schedule, which keeps its shape and position. The product is saved in
        ``state_dict()["schedule"]["lr_scale"]``. It lives in a one-element tensor on each
        device that the step reads there: scaling writes it (no sync, no re-trace of a
        compiled step), and the replays of a captured CUDA graph follow it."""
        self._schedule = self._schedule.scaled(factor)  # (checks factor before anything changes)
        self._write_lr_scales()
        self._refresh_all()

    def _refresh_group(self, group: Dict[str, Any], index: int) -> None:
        lr, momentum = self._point(group, self._iteration, index)
        group["lr"] = lr
        group["iteration"] = self._iteration
        reported = None
        if self.cycle_momentum:
            self._report_momentum(group, momentum)
            reported = group[self._momentum_slot]
        self._written[id(group)] = (lr, momentum if self.cycle_momentum else None, reported)

    def _refresh_all(self) -> None:
        self._written = {}  # (keyed by id: no group that has gone may leave its id behind)
        for index, group in enumerate(self.param_groups):
            self._refresh_group(group, index)

    def get_last_lr(self) -> List[float]:
        """The lr of every group for the next step (as CyclicLR.get_last_lr())."""
        return [group["lr"] for group in self.param_groups]

    def _device_tensors(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """The step counter and the schedule's scale on ``device``, made at its first step
        there: the counter (int64) caches the groups' ``iteration``, the scale (float64,
        shape (1,)) is what ``scale_schedule`` and loads write."""
        counter = self._counters.get(device)
        if counter is None:
            _refuse_capture(device, "the step counter")
            counter = torch.full((), self._iteration, dtype=torch.int64, device=device)
            self._counters[device] = counter
        scale = self._lr_scales.get(device)
        if scale is None:
            # (shape (1,), as GradScaler's scale: dynamo reads a 0-dim float tensor made in a
            # traced step as a Python number the next time, and re-traces)
            scale = torch.full((1,), self._schedule.lr_scale, dtype=torch.float64, device=device)
            self._lr_scales[device] = scale
        return counter, scale

    def _write_lr_scales(self) -> None:
        for scale in self._lr_scales.values():
            scale.fill_(self._schedule.lr_scale)

    def sync(self) -> int:
        """Refreshes the host mirror (``iteration``, ``group["lr"]``, ``group["momentum"]``)
        from the device counter, e.g. after replaying a captured CUDA graph. One host
        sync; returns the iteration."""
        if self._counters:
            self._iteration = max(int(c.item()) for c in self._counters.values())
            for c in self._counters.values():
                c.fill_(self._iteration)
        self._refresh_all()
        return self._iteration

    # -------------------------------------------------------------------- step

    def _validate(self, group_index: int, params: List[torch.Tensor]) -> None:
        """The per-parameter checks of a group's params and grads (``_C.validate_group``;
        its Python twin serves builds without ``_C`` and traced steps)."""
        if _backends._C is not None and not functional.traced():
            _backends._C.validate_group(params, [p.grad for p in params], group_index, type(self).__name__)
        else:
            functional.validate_group(params, group_index, type(self).__name__)

    def _validate_all(self) -> None:
        groups = self._groups_alias if functional.traced() else self.param_groups
        for group_index, group in enumerate(groups):
            self._validate(group_index, [p for p in group["params"] if p.grad is not None])

    def _buckets_of(
        self, group_index: int, group: Dict[str, Any], compiling: bool
    ) -> List[Tuple["_Bucket", List[torch.Tensor]]]:
        """``[(bucket, grads)]``: the group's params that have a gradient, grouped by
        (device, dtype).

        The grouping is cached while the same params have gradients: a step then costs
        one pass over ``.grad`` in Python. The cache is not checked against later dtype
        or device changes; the kernels check every tensor before writing, and a failed
        check drops the cache and plans the step again (``_replan``).
        """
        params = group["params"]
        if compiling:
            grads = [p.grad for p in params]
            missing = any(g is None for g in grads)
        else:
            grads, missing = functional.grads_of(params)
        keep = None
        if missing:
            keep = tuple(i for i, g in enumerate(grads) if g is not None)
            params, grads = [params[i] for i in keep], [grads[i] for i in keep]
        plan = self._bucket_cache.get(group_index)
        # (the state's size matters to the eager path only, which keeps the params' state
        # dicts in the bucket; a traced step would re-trace as it changes)
        if (
            plan is None
            or plan[0] != (id(group["params"]), len(group["params"]), keep)
            or plan[1] is not self.state
            or (plan[2] != len(self.state) and not compiling)
        ):
            plan = self._plan_buckets(group_index, group, params, keep)
        return [(bucket, grads if index is None else [grads[i] for i in index]) for bucket, index in plan[3]]

    def _plan_buckets(
        self, group_index: int, group: Dict[str, Any], params: List[torch.Tensor], keep: Optional[Tuple[int, ...]]
    ) -> Tuple[Any, ...]:
        """Checks ``params`` (a group's, those in ``keep``) and groups them by (device,
        dtype) into buckets, each with its backend. Cached for ``_buckets_of``."""
        self._validate(group_index, params)
        grouped: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
        for i, p in enumerate(params):
            grouped.setdefault((p.device, p.dtype), []).append(i)
        buckets = []
        for (device, _), index in grouped.items():
            bucket = _Bucket(device, [params[i] for i in index], _backends.backend_for(self._backend_request, device))
            buckets.append((bucket, None if len(grouped) == 1 else index))
        plan = ((id(group["params"]), len(group["params"]), keep), self.state, len(self.state), buckets)
        self._bucket_cache[group_index] = plan
        return plan

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step with this iteration's lr and momentum (or beta1), then the schedule advances.

        Returns the closure's loss. Params whose ``.grad`` is None are skipped. Under
        ``torch.amp.GradScaler`` the gradients are unscaled inside the kernel and the
        update is skipped on overflow; the schedule advances either way.
        """
        if not self._in_hooks and (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks
            or functional.traced()
            or torch.autograd._profiler_enabled()
        ):
            return self._step_with_hooks(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if functional.traced():
            with torch.no_grad():
                self._meet_grads_through_groups()
                self._step_checked(compiling=True)
            return loss
        # Grad mode off, as @torch.no_grad() would set it, without its wrapper's cost
        # (~1.5 us, a twentieth of a 200-param step).
        grad_was_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            self._groups_alias = self.param_groups  # in case a user replaced the list
            # The groups as this optimizer left them after the last step, by identity (the
            # groups' ``iteration`` is the host truth, the device counters its cache): any
            # difference is an outside write (``_outside_write``).
            for index, group in enumerate(self.param_groups):
                lr, _, reported = self._written.get(id(group), _NOTHING_WRITTEN)
                if (
                    group["lr"] is not lr
                    or group.get("iteration") != self._iteration
                    or (reported is not None and group[self._momentum_slot] is not reported)
                ):
                    self._outside_write(index, group)
            if self._iteration >= self._schedule.warn_from or self._position_unknown:
                self._say_where_the_schedule_is()
            self._step_checked(compiling=False)
        finally:
            torch._C._set_grad_enabled(grad_was_enabled)
        return loss

    def _step_checked(self, compiling: bool) -> None:
        """One step, the same for every rule: the rule collects each group's op calls
        (``_collect``), all of them are checked before the first writes
        (``functional.check``), they run, the rule keeps the state it created, and the
        schedule advances. ``compiling``: torch.compile is tracing the step."""
        # Dynamo guards on every value of every group once ``param_groups`` is read in a
        # traced frame, and lr, momentum and iteration change at every step: a traced step
        # reads the same list through another attribute, with guards on the keys it reads.
        groups = self._groups_alias if compiling else self.param_groups
        # (a schedule evaluated on the host reads the iteration; dynamo re-traces as it changes)
        iteration = self._iteration if self._schedule.host_evaluated else None
        # Per device: the counter, its host mirror (none for a traced step: dynamo would
        # guard on it), GradScaler's tensors (moved without a sync) and the LR scale.
        host_iteration = None if compiling else self._iteration
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        for attempt in (1, 2):
            work: List[Work] = []
            new_state: List[Any] = []
            for group_index, group in enumerate(groups):
                buckets = self._buckets_of(group_index, group, compiling)
                if buckets:
                    arguments = self._schedule.op_arguments(group, group_index, iteration)
                    self._collect(group_index, group, buckets, arguments, compiling, work, new_state)
            try:
                if len(work) > 1 or (work and not work[0].backend.checks_before_writing):
                    functional.check(work, compiling, self._validate_all)
                inputs_of: Dict[torch.device, StepInputs] = {}
                for item in work:  # (the counters made, where new, before any call runs)
                    if item.device not in inputs_of:
                        counter, scale = self._counters.get(item.device), self._lr_scales.get(item.device)
                        if counter is None or scale is None:
                            counter, scale = self._device_tensors(item.device)
                        inputs_of[item.device] = StepInputs(
                            counter,
                            host_iteration,
                            None if grad_scale is None else grad_scale.to(item.device, non_blocking=True),
                            None if found_inf is None else found_inf.to(item.device, non_blocking=True),
                            scale,
                        )
                functional.run(work, inputs_of)
                break
            except StalePlan as stale:
                self._replan(stale, attempt)
        self._keep(new_state)
        self._advance(compiling)

    def _meet_grads_through_groups(self) -> None:
        """Dynamo names a tensor by the first path it meets it on. Met first as a key of
        ``self.state`` (group 0's lookups see every param), a later group's param gets a
        path through that dict, and its ``.grad`` a guard that fails as soon as the grad is
        replaced (``zero_grad(set_to_none=True)``): a re-trace per step. A traced step
        therefore meets every param and grad through its group first."""
        for group in self._groups_alias:
            for p in group["params"]:
                p.grad  # noqa: B018

    def _replan(self, stale: StalePlan, attempt: int) -> None:
        """A param changed dtype or device since the grouping was cached (nothing was
        written): every param is checked, so that a real error names it, and the step is
        planned again; a second failure is the error."""
        if attempt == 2:
            raise RuntimeError(f"{type(self).__name__}: param group {stale.group_index}: {stale.__cause__}") from None
        self._bucket_cache.clear()
        self._validate_all()

    def _outside_write(self, index: int, group: Dict[str, Any]) -> None:
        """Group ``index`` is not as this optimizer left it. An ``iteration`` written into
        the groups is taken up (``_adopt_group_iteration``). An outside ``lr`` (or the
        momentum / ``betas[0]`` that the schedule cycles) warns once per group and key: an
        outside scheduler (LambdaLR, ReduceLROnPlateau, SWALR, a trainer's warmup, an
        lr_find) would otherwise be ignored without a word. The schedule wins: the step
        uses its own values and writes them back."""
        if self._adopt_group_iteration():
            return
        written = self._written.get(id(group))
        if written is not None:
            lr, momentum, _ = written
            self._warn_outside_write(index, group, "lr", group["lr"], lr)
            if momentum is not None:
                self._warn_outside_write(index, group, self._momentum_key, self._reported_momentum(group), momentum)

    def _warn_outside_write(self, index: int, group: Dict[str, Any], key: str, theirs: Any, mine: float) -> None:
        if theirs is mine or (index, key) in self._warned_outside or not _differs_for_the_step(theirs, mine, group):
            return
        self._warned_outside.add((index, key))
        warnings.warn(
            f"clr_ext: param group {index}'s {key} was set to {theirs!r} from outside {type(self).__name__}, which "
            f"follows its own schedule and uses {key}={mine!r} for this step (the outside value is overwritten). "
            "Drop the outside scheduler; where a framework needs one, pass opt.as_scheduler(), which reports "
            "this optimizer's schedule (docs/api.md, 'Outside writes to group[\"lr\"]').",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )

    def as_scheduler(self) -> Any:
        """This optimizer's own schedule as an LR scheduler, for frameworks that want one
        (``Trainer(optimizers=(opt, opt.as_scheduler()))``, Lightning's
        ``{"optimizer": opt, "lr_scheduler": ...}``): its ``step()`` does nothing (the
        optimizer's step advances the schedule), ``get_last_lr()`` reports the LR the
        next step uses, and its state dict round-trips."""
        from .._lr_adapter import ScheduleAdapter

        return ScheduleAdapter(self)

    def _adopt_group_iteration(self) -> bool:
        """Takes up an ``iteration`` that was written into the param groups directly (True:
        it did; every group is rewritten then).

        Wrappers that own the state dict, such as
        ``torch.distributed.optim.ZeroRedundancyOptimizer.load_state_dict``, restore a
        checkpoint by copying the saved group entries into this optimizer's groups
        without calling :meth:`load_state_dict`; the schedule then continues from the
        saved iteration as it would after ``load_state_dict``."""
        iteration = self._iteration
        for group in self.param_groups:
            it = group.get("iteration", iteration)
            if it != iteration:
                break
        else:
            return False
        self._iteration = max(int(g.get("iteration", iteration)) for g in self.param_groups)
        for counter in self._counters.values():
            counter.fill_(self._iteration)
        self._iteration_moved()
        self._refresh_all()
        return True

    def _iteration_moved(self) -> None:
        """The iteration was set back or forth from outside (hook for the rules)."""

    @staticmethod
    def _kernel_tensors(tensors: List[torch.Tensor], bucket: "_Bucket") -> List[torch.Tensor]:
        """What the kernels update in place: DTensors' local shards, complex tensors' real views."""
        if bucket.dtensor is not None:
            tensors = _local_tensors(tensors, bucket.dtensor)
        if bucket.complex:
            tensors = _real_views(tensors)
        return tensors

    def _advance(self, compiling: bool) -> None:
        """Ends a step: the device counters, then the host mirror."""
        if compiling:
            torch.ops.clr_ext.advance_schedule_(list(self._counters.values()), self._handle)
        else:
            for counter in self._counters.values():
                counter.add_(1)
            self._host_advance()

    def _host_advance(self) -> None:
        self._iteration += 1
        self._refresh_all()

    # ------------------------------------------------------------- state dict

    def state_dict(self) -> Dict[str, Any]:
        """torch.optim.SGD's format (``momentum_buffer`` per parameter); each group also
        carries its schedule bounds and ``iteration``, and ``"schedule"`` the schedule's
        shape (as the scheduler's own state dict would). Once the op decides which buffers
        start (CUDA, torch.compile), this reads their starts: one host sync."""
        self._adopt_group_iteration()
        for group in self.param_groups:
            group["iteration"] = self._iteration
        saved = super().state_dict()
        saved["schedule"] = self._schedule.state_dict()
        return saved

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Loads a state dict of this class or of ``torch.optim.SGD`` (whose groups lack the
        schedule's keys: this optimizer's are kept, and so is its iteration). The saved
        schedule (``state_dict["schedule"]``) replaces this one's, as CyclicLR's and
        OneCycleLR's ``load_state_dict`` restore theirs. ``group["lr"]`` is recomputed
        before the load_state_dict post-hooks run."""
        schedule = None
        if isinstance(state_dict, dict) and state_dict.get("schedule") is not None:
            schedule = copy.copy(self._schedule)
            try:
                schedule.load_state_dict(state_dict["schedule"])
            except ValueError as refused:  # (the schedule's own checks speak as its constructor)
                words = str(refused)
                if not words.startswith("state_dict"):
                    words = f"load_state_dict: schedule: {words}"
                raise ValueError(words) from None
        _loading.check_loadable(self, state_dict, schedule)
        kept = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        before = _loading.snapshot(self)
        self._loading = (kept, schedule)
        try:
            super().load_state_dict(state_dict)  # runs __setstate__, then the post-hooks
        except BaseException:
            _loading.restore(self, before)  # a refused load changes nothing
            self._write_lr_scales()  # (a load that got as far as writing them)
            raise
        finally:
            self._loading = None
        self._position_unknown = schedule is None and not any("iteration" in g for g in state_dict["param_groups"])

    def _say_where_the_schedule_is(self) -> None:
        """Before a step that the schedule has something to say about (the end of a 1cycle
        run) or that follows a load which gave no position."""
        note = self._schedule.note_before_step(self._iteration)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=_caller_stacklevel())
        if self._position_unknown:
            self._say_position_unknown()

    def _say_position_unknown(self) -> None:
        """After a load whose state dict held no schedule position (a ``torch.optim.SGD`` /
        ``AdamW`` state dict) and nothing gave one since (``as_scheduler().load_state_dict``
        with the PyTorch scheduler's state takes its ``last_epoch``): the optimizer keeps its
        own iteration, right for a fresh start and wrong for a resume, so the first step
        says it."""
        self._position_unknown = False
        warnings.warn(
            f"clr_ext: the state dict loaded into this {type(self).__name__} held no schedule position (a "
            f"torch.optim optimizer's?), so the schedule goes on from its own iteration ({self._iteration}). To "
            "resume a PyTorch pair's run, also load the scheduler's state dict into opt.as_scheduler() (it "
            "carries last_epoch), or convert the running pair with clr_ext.from_torch(optimizer, scheduler)",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )

    def _finish_load(self, kept: List[Dict[str, Any]], schedule: Any) -> None:
        if schedule is not None:
            self._schedule = schedule
            # (a loaded composition may cycle the momentum where the one replaced did not)
            self.cycle_momentum = getattr(schedule, "cycles_momentum", self.cycle_momentum)
            self._write_lr_scales()
        iterations = []
        for group, old in zip(self.param_groups, kept):
            for key, value in old.items():
                group.setdefault(key, value)
            if "iteration" in group:
                iterations.append(int(group["iteration"]))
        if iterations:
            self._iteration = max(iterations)
        self._loaded()
        self._refresh_all()

    def _loaded(self) -> None:
        """A state dict was loaded (hook for the rules)."""

    _PICKLED: Tuple[str, ...] = ("_schedule", "cycle_momentum", "_iteration", "_backend_request")

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state.update({key: getattr(self, key) for key in self._PICKLED})
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        # Device counters, scales and bucket caches are rebuilt on demand.
        self._counters = {}
        self._lr_scales = {}
        self._bucket_cache = {}
        self.__dict__.setdefault("_written", {})
        self.__dict__.setdefault("_warned_outside", set())
        self.__dict__.setdefault("_position_unknown", False)
        self._register()
        self._unpickled()
        loading = self.__dict__.get("_loading")
        if loading is not None:  # inside load_state_dict: finish before its post-hooks
            self._finish_load(*loading)
        else:
            self._loading = None

    def _unpickled(self) -> None:
        """After ``__setstate__`` (unpickling, deepcopy, load_state_dict): hook for the rules."""

    def _register(self) -> None:
        # A copy (pickle, deepcopy) is another optimizer and gets its own handle; a
        # load_state_dict (which runs __setstate__) keeps this one's.
        if _LIVE.get(getattr(self, "_handle", 0)) is not self:
            self._handle = next(_HANDLES)
            _LIVE[self._handle] = self
        self._groups_alias = self.param_groups
