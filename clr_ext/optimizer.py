"""Scheduled SGD: torch.optim.SGD + an LR scheduler (CyclicLR, OneCycleLR) in one fused step.

The core (``_ScheduledSGD``) owns what every scheduled optimizer shares: param groups,
buckets per device and dtype, the device counter and its host mirror, AMP, DTensor
shards, complex params, the torch.compile op and state dicts. Its schedule
(``clr_ext._schedules``) supplies the formula's arguments; the public classes
(``CyclicSGD``, ``OneCycleSGD``) only build a schedule and pass their arguments on.
"""
from __future__ import annotations

import copy
import itertools
import operator
import sys
import warnings
import weakref
from itertools import repeat
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch.optim import Optimizer

from . import backends as _backends
from ._checks import as_float, momentum_value, non_negative
from ._schedules import CyclicSchedule, OneCycleSchedule, per_group

# A param's momentum_start (csrc/cyclic_sgd.h) before its first step with momentum,
# and for a buffer that began before it had a start (loaded, or started on the host).
_NOT_STARTED = 2**63 - 1
_STARTED_BEFORE = -1

# Optimizers by handle, for the op below: an op's arguments are tensors and numbers,
# so a traced step names its optimizer by an int that stays constant across steps.
_LIVE: "weakref.WeakValueDictionary[int, CyclicSGD]" = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


# Ops written in Python, defined through a plain Library fragment: a call costs ~4 us
# where torch.library.custom_op's wrapper costs ~18 us.
_LIBRARY = torch.library.Library("clr_ext", "FRAGMENT")
_LIBRARY.define("advance_schedule_(Tensor(a!)[] counters, int handle) -> ()")


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


_LIBRARY.impl("advance_schedule_", _advance_schedule, "CompositeExplicitAutograd")


@torch.library.register_fake("clr_ext::advance_schedule_")
def _advance_schedule_fake(counters: List[torch.Tensor], handle: int) -> None:
    return None


_GRAD = operator.attrgetter("grad")


class _StalePlan(Exception):
    """A step's cached plan no longer fits its tensors; nothing was written."""


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
            "advise for optimizers) before capturing the step; nothing was changed")


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


class _Bucket:
    """Params of one group on one device with one dtype, and their backend."""

    __slots__ = ("device", "params", "backend", "dtensor", "complex", "starts", "_states")

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
        self._states: Optional[List[Dict[str, Any]]] = None

    def states(self, state: Dict[torch.Tensor, Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The params' state dicts, looked up once: a lookup by tensor calls the Python
        ``Tensor.__hash__`` (~0.2 us; 40 us a step for 200 params), a lookup by key in a
        param's dict does not. The bucket lives no longer than ``state`` and its size
        (see ``_buckets_of``), so a buffer replaced or deleted in a param's dict is seen."""
        if self._states is None:
            self._states = [state[p] for p in self.params]
        return self._states


class _ScheduledOptimizer(Optimizer):
    """An optimizer whose LR (and momentum or beta1) follow a schedule, in one fused step.

    The shared core of every scheduled optimizer: param groups, buckets per device and
    dtype, the device counter and its host mirror, AMP, DTensor shards and complex views,
    torch.compile, state dicts, outside writes. ``schedule`` (``clr_ext._schedules``)
    gives the formula's arguments; ``group_bounds`` are its per-group values (a float, or
    a list with one value per group). An update rule is a subclass: it checks its own
    group keys (``_check_rule_group``), reports the cycled momentum where its PyTorch
    optimizer keeps it (``_report_momentum``) and plans and runs the step
    (``_step_once``), with the helpers below.
    """

    _step_supports_amp_scaling = True
    # Devices whose overflow flag the host reads for free; on all others the op decides
    # which buffers start (tests empty this to run that path without a GPU).
    _host_decided_types: Tuple[str, ...] = ("cpu",)

    def __init__(self, params: Iterable[Any], schedule: Any, group_bounds: Dict[str, Any],
                 rule_defaults: Dict[str, Any], *, cycle_momentum: bool, backend: str) -> None:
        self._backend_request = _backends.requested_backend(backend)
        self._schedule = schedule
        self.cycle_momentum = bool(cycle_momentum)
        self._iteration = 0
        self._counters: Dict[torch.device, torch.Tensor] = {}
        self._bucket_cache: Dict[int, Tuple[Any, ...]] = {}
        self._loading: Optional[Tuple[Any, ...]] = None
        # group id -> the lr object this optimizer last wrote there (see _check_outside_writes)
        self._written_lr: Dict[int, float] = {}
        self._warned_outside_lr: set = set()

        if isinstance(params, torch.Tensor):  # worded as torch.optim.Optimizer words it
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got " + torch.typename(params))
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
        defaults = dict(lr=0.0, **rule_defaults)  # lr: replaced by the schedule for every group
        defaults.update(foreach=None, fused=None, differentiable=False)
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
                    f"{key}: was given per group at construction; a new param group must carry its own {key}")
        n_before = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group, len(self.param_groups) - 1)
        except Exception:
            del self.param_groups[n_before:]
            raise
        group["iteration"] = self._iteration
        self._refresh_group(group)

    def _check_group(self, group: Dict[str, Any], index: int) -> None:
        where = "" if index == 0 else f" (param group {index})"
        self._schedule.init_group(group, where)
        for key in ("base_momentum", "max_momentum"):
            group[key] = momentum_value(key + where, group[key])
        self._check_rule_group(group, where)

    def _check_rule_group(self, group: Dict[str, Any], where: str) -> None:
        raise NotImplementedError

    def _report_momentum(self, group: Dict[str, Any], momentum: float) -> None:
        """Writes the cycled momentum where the rule's PyTorch optimizer keeps it."""
        raise NotImplementedError

    def _step_once(self) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- schedule

    @property
    def iteration(self) -> int:
        """The number of completed steps (the index of the next step)."""
        self._adopt_group_iteration()  # after a wrapper restored the groups (see there)
        return self._iteration

    def _point(self, group: Dict[str, Any], iteration: int) -> Tuple[float, float]:
        return self._schedule.point(group, iteration)

    def _refresh_group(self, group: Dict[str, Any]) -> None:
        lr, momentum = self._point(group, self._iteration)
        group["lr"] = lr
        self._written_lr[id(group)] = lr
        group["iteration"] = self._iteration
        if self.cycle_momentum:
            self._report_momentum(group, momentum)

    def _refresh_all(self) -> None:
        self._written_lr = {}  # (keyed by id: no group that has gone may leave its id behind)
        for group in self.param_groups:
            self._refresh_group(group)

    def get_last_lr(self) -> List[float]:
        """The lr of every group for the next step (as CyclicLR.get_last_lr())."""
        return [group["lr"] for group in self.param_groups]

    def _counter(self, device: torch.device) -> torch.Tensor:
        counter = self._counters.get(device)
        if counter is None:
            _refuse_capture(device, "the step counter")
            counter = torch.full((), self._iteration, dtype=torch.int64, device=device)
            self._counters[device] = counter
        return counter

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
        """The precise, per-parameter checks (the kernels check the same things)."""
        for i, p in enumerate(params):
            g = p.grad
            where = f"parameter {i} of param group {group_index}"
            if p.dtype not in _backends.SUPPORTED_DTYPES and p.dtype not in _COMPLEX_DTYPES:
                raise RuntimeError(f"{type(self).__name__}: {where} has dtype {p.dtype}; only floating-point "
                                   "parameters (float32, float64, float16, bfloat16, complex64, complex128) "
                                   "can be optimized")
            if p.layout != torch.strided:
                raise RuntimeError(f"{type(self).__name__}: {where} is not a dense (strided) tensor")
            if g.layout != torch.strided or g.is_sparse:
                raise RuntimeError(f"{type(self).__name__}: the gradient of {where} is sparse; CyclicSGD does not support "
                                   "sparse gradients")
            if g.dtype != p.dtype:
                raise RuntimeError(f"{type(self).__name__}: the gradient of {where} has dtype {g.dtype}, the parameter {p.dtype}")
            if g.shape != p.shape:
                raise RuntimeError(f"{type(self).__name__}: the gradient of {where} has shape {tuple(g.shape)}, "
                                   f"the parameter {tuple(p.shape)}")
            if g.device != p.device:
                raise RuntimeError(f"{type(self).__name__}: the gradient of {where} is on {g.device}, the parameter on {p.device}")

    def _validate_all(self) -> None:
        for group_index, group in enumerate(self._step_groups()):
            self._validate(group_index, [p for p in group["params"] if p.grad is not None])

    def _buckets_of(self, group_index: int, group: Dict[str, Any]) -> List[Tuple["_Bucket", List[torch.Tensor]]]:
        """``[(bucket, grads)]``: the group's params that have a gradient, grouped by
        (device, dtype).

        The grouping is cached while the same params have gradients: a step then costs
        one pass over ``.grad`` in Python. The cache is not checked against later dtype
        or device changes; the kernels check every tensor before writing, and a failed
        check drops the cache and plans the step again (see ``step``).
        """
        params = group["params"]
        if torch.compiler.is_compiling():  # dynamo traces neither attrgetter nor map(operator.is_)
            grads = [p.grad for p in params]
            missing = any(g is None for g in grads)
        else:
            grads = list(map(_GRAD, params))
            missing = any(map(operator.is_, grads, repeat(None)))
        keep = None
        if missing:
            keep = tuple(i for i, g in enumerate(grads) if g is not None)
            if not keep:
                return []
            params = [params[i] for i in keep]
            grads = [grads[i] for i in keep]
        key = (id(group["params"]), len(group["params"]), keep)
        cached = self._bucket_cache.get(group_index)
        # (the state's size matters to the eager path only, which keeps the params' state
        # dicts in the bucket; a traced step would re-trace as it changes)
        if (cached is None or cached[0] != key or cached[1] is not self.state
                or (cached[2] != len(self.state) and not torch.compiler.is_compiling())):
            self._validate(group_index, params)
            grouped: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
            for i, p in enumerate(params):
                grouped.setdefault((p.device, p.dtype), []).append(i)
            buckets = [(_Bucket(device, [params[i] for i in index],
                                _backends.backend_for(self._backend_request, device)),
                        None if len(grouped) == 1 else index)
                       for (device, _), index in grouped.items()]
            cached = (key, self.state, len(self.state), buckets)
            self._bucket_cache[group_index] = cached
        return [(bucket, grads if index is None else [grads[i] for i in index]) for bucket, index in cached[3]]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One SGD step with this iteration's lr and momentum, then the schedule advances.

        Returns the closure's loss. Params whose ``.grad`` is None are skipped. Under
        ``torch.amp.GradScaler`` the gradients are unscaled inside the kernel and the
        update is skipped on overflow; the schedule advances either way.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not torch.compiler.is_compiling():  # a traced step must not read the host iteration
            self._groups_alias = self.param_groups  # in case a user replaced the list
            self._adopt_group_iteration()
            self._schedule.check_iteration(self._iteration)
            self._check_outside_writes()
        try:
            self._step_once()
        except _StalePlan:
            # A param changed dtype or device since the grouping was cached (nothing
            # was written): check every param, so that a real error names it, and replan.
            self._bucket_cache.clear()
            self._validate_all()
            try:
                self._step_once()
            except _StalePlan as again:
                raise again.__cause__ from None
        return loss

    def _check_outside_writes(self) -> None:
        """Warns once per group when ``group["lr"]`` is not what this optimizer last wrote
        there: an outside scheduler (LambdaLR, ReduceLROnPlateau, SWALR, a trainer's
        warmup, an lr_find) would otherwise be ignored without a word. The schedule wins:
        the step uses its own LR and writes it back."""
        written = self._written_lr
        for index, group in enumerate(self.param_groups):
            lr = group["lr"]
            mine = written.get(id(group))
            if mine is None or lr is mine or lr == mine or index in self._warned_outside_lr:
                continue
            self._warned_outside_lr.add(index)
            warnings.warn(
                f"clr_ext: param group {index}'s lr was set to {lr!r} from outside {type(self).__name__}, which "
                f"follows its own schedule and uses lr={mine!r} for this step (the outside value is overwritten). "
                "Drop the outside LR scheduler; where a framework needs one, pass opt.as_scheduler(), which reports "
                "this optimizer's schedule (docs/api.md, 'Outside writes to group[\"lr\"]').",
                UserWarning, stacklevel=_caller_stacklevel())

    def as_scheduler(self) -> Any:
        """This optimizer's own schedule as an LR scheduler, for frameworks that want one
        (``Trainer(optimizers=(opt, opt.as_scheduler()))``, Lightning's
        ``{"optimizer": opt, "lr_scheduler": ...}``): its ``step()`` does nothing (the
        optimizer's step advances the schedule), ``get_last_lr()`` reports the LR the
        next step uses, and its state dict round-trips."""
        from ._lr_adapter import ScheduleAdapter

        return ScheduleAdapter(self)

    def _adopt_group_iteration(self) -> None:
        """Takes up an ``iteration`` that was written into the param groups directly.

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
            return
        self._iteration = max(int(g.get("iteration", iteration)) for g in self.param_groups)
        for counter in self._counters.values():
            counter.fill_(self._iteration)
        self._iteration_moved()
        self._refresh_all()

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

    def _device_inputs(self, devices: Iterable[torch.device]) -> Tuple[Dict[Any, Any], Dict[Any, Any], Dict[Any, Any]]:
        """Per device: the step counter (made before any bucket runs), and GradScaler's
        ``grad_scale`` / ``found_inf`` (None without AMP), moved without a sync."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        counter_on = {device: self._counter(device) for device in devices}
        scale_on = {d: None if grad_scale is None else grad_scale.to(d, non_blocking=True) for d in counter_on}
        inf_on = {d: None if found_inf is None else found_inf.to(d, non_blocking=True) for d in counter_on}
        return counter_on, scale_on, inf_on

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
        if state_dict.get("schedule") is not None:  # checked before anything changes
            schedule = copy.copy(self._schedule)
            schedule.load_state_dict(state_dict["schedule"])
        kept = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        self._loading = (kept, schedule)
        try:
            super().load_state_dict(state_dict)  # runs __setstate__, then the post-hooks
        finally:
            self._loading = None

    def _finish_load(self, kept: List[Dict[str, Any]], schedule: Any) -> None:
        if schedule is not None:
            self._schedule = schedule
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
        # Device counters and bucket caches are rebuilt on demand.
        self._counters = {}
        self._bucket_cache = {}
        self.__dict__.setdefault("_written_lr", {})
        self.__dict__.setdefault("_warned_outside_lr", set())
        self._register()
        self._unpickled()
        loading = self.__dict__.get("_loading")
        if loading is not None:  # inside load_state_dict: finish before its post-hooks
            self._finish_load(*loading)
        else:
            self._loading = None

    def _unpickled(self) -> None:
        """After ``__setstate__`` (unpickling, deepcopy, load_state_dict): hook for the rules."""

    def _step_groups(self) -> List[Dict[str, Any]]:
        """``param_groups``, read by the step.

        Dynamo guards on every value of every group once ``param_groups`` is read in a
        traced frame, and ``lr``, ``momentum`` and ``iteration`` change at every step:
        the step would be re-traced each time. A traced step reads the same list through
        another attribute, which gets guards on the keys the step reads (constants) only."""
        return self._groups_alias if torch.compiler.is_compiling() else self.param_groups

    def _register(self) -> None:
        # A copy (pickle, deepcopy) is another optimizer and gets its own handle; a
        # load_state_dict (which runs __setstate__) keeps this one's.
        if _LIVE.get(getattr(self, "_handle", 0)) is not self:
            self._handle = next(_HANDLES)
            _LIVE[self._handle] = self
        self._groups_alias = self.param_groups


class _ScheduledSGD(_ScheduledOptimizer):
    """The SGD-with-momentum rule (torch.optim.SGD's): momentum buffers, and where the
    host cannot tell a buffer's first step, per-param start markers (``momentum_start``)
    decided by the op."""

    def __init__(self, params: Iterable[Any], schedule: Any, group_bounds: Dict[str, Any], *, momentum: float,
                 dampening: float, weight_decay: float, nesterov: bool, maximize: bool, cycle_momentum: bool,
                 backend: str) -> None:
        # param -> (int64 tensor, index): its momentum_start, where the op decides which
        # step is its buffer's first (see _plan_device_decided).
        self._momentum_start: Dict[torch.Tensor, Tuple[torch.Tensor, int]] = {}
        self._starts_version = 0  # changes whenever _momentum_start does
        super().__init__(params, schedule, group_bounds,
                         dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                              maximize=maximize),
                         cycle_momentum=cycle_momentum, backend=backend)

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

    def _step_once(self) -> None:
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

        compiling = torch.compiler.is_compiling()  # dynamo cannot trace map(operator.is_, ...)
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
                    buffers = [d["momentum_buffer"] for d in bucket.states(state)]
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
            try:
                # (dynamo cannot trace the pybind check; the Python one sees the same metadata)
                if _backends._C is not None and not compiling:
                    for w in work:
                        _backends._C.check_bucket(w.params, w.grads, w.buffers, w.starts)
                else:
                    self._validate_all()
            except RuntimeError as err:
                raise _StalePlan() from err

        counter_on, scale_on, inf_on = self._device_inputs(devices)

        # Read on the host only where that costs no sync; elsewhere the op skips by itself
        # and every new buffer has a start, so nothing below needs to know.
        skipped = (found_inf is not None and found_inf.device.type in self._host_decided_types
                   and float(found_inf) == 1.0)
        for position, w in enumerate(work):
            group = w.group
            try:
                w.backend.run(
                    params=w.params, grads=w.grads, buffers=w.buffers, starts=w.starts, counter=counter_on[w.device],
                    # a traced step must not read the host iteration (dynamo would guard on it)
                    iteration=None if compiling else self._iteration, bounds=w.bounds, shape=shape,
                    mode=self._schedule.op_mode,
                    # when cycling the op computes the momentum; a traced step passes a constant
                    # in its place (group["momentum"] changes at every step)
                    momentum=group["max_momentum"] if compiling and self.cycle_momentum else group["momentum"],
                    dampening=group["dampening"], weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                    maximize=group["maximize"], cycle_momentum=self.cycle_momentum, first_step=w.first_step,
                    grad_scale=scale_on[w.device], found_inf=inf_on[w.device])
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
            buffers = ([state[p]["momentum_buffer"] for p in params] if compiling
                       else [d["momentum_buffer"] for d in bucket.states(state)])
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



class CyclicSGD(_ScheduledSGD):
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
        super().__init__(params, schedule,
                         dict(base_lr=base_lr, max_lr=max_lr, base_momentum=base_momentum, max_momentum=max_momentum),
                         momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                         maximize=maximize, cycle_momentum=cycle_momentum, backend=backend)

    # The schedule's shape, as CyclicLR exposes it.
    mode = property(lambda self: self._schedule.mode)
    gamma = property(lambda self: self._schedule.gamma)
    step_size_up = property(lambda self: self._schedule.step_size_up)
    step_size_down = property(lambda self: self._schedule.step_size_down)
    scale_fn = property(lambda self: self._schedule.scale_fn)
    scale_mode = property(lambda self: self._schedule.scale_mode)

    @classmethod
    def from_range_test(cls, params: Iterable[Any], result: Any, iters_per_epoch: int, **kwargs: Any) -> "CyclicSGD":
        """An optimizer with the bounds and step size that a :func:`clr_ext.range_test` suggested.

        ``kwargs`` go to the constructor (``epochs_per_half_cycle`` goes to
        ``result.step_size``; explicit ``base_lr``/``max_lr``/``step_size_up`` win)."""
        half_cycle = kwargs.pop("epochs_per_half_cycle", None)
        step = result.step_size(iters_per_epoch) if half_cycle is None else result.step_size(iters_per_epoch,
                                                                                               half_cycle)
        kwargs.setdefault("step_size_up", step)
        base_lr = kwargs.pop("base_lr", result.base_lr)
        max_lr = kwargs.pop("max_lr", result.max_lr)
        return cls(params, base_lr, max_lr, **kwargs)


class OneCycleSGD(_ScheduledSGD):
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
        schedule = OneCycleSchedule(total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy, div_factor,
                                    final_div_factor, three_phase)
        super().__init__(params, schedule,
                         dict(max_lr=max_lr, base_momentum=base_momentum, max_momentum=max_momentum),
                         momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                         maximize=maximize, cycle_momentum=cycle_momentum, backend=backend)

    total_steps = property(lambda self: self._schedule.total_steps)
    pct_start = property(lambda self: self._schedule.pct_start)
    anneal_strategy = property(lambda self: self._schedule.anneal_strategy)
    div_factor = property(lambda self: self._schedule.div_factor)
    final_div_factor = property(lambda self: self._schedule.final_div_factor)
    three_phase = property(lambda self: self._schedule.three_phase)

    @classmethod
    def from_range_test(cls, params: Iterable[Any], result: Any, total_steps: int, **kwargs: Any) -> "OneCycleSGD":
        """A 1cycle optimizer whose ``max_lr`` is the range test's ``result.max_lr``.

        That is the suggested upper bound of the cyclical range: the LR where the loss
        stops improving, close to where training diverges. Smith's 1cycle policy peaks at
        exactly that bound (it visits max_lr only briefly, in the middle of the run, and
        the large LR there regularizes), and starts ``div_factor`` below it; the single-LR
        suggestions (``"valley"``, ``"steepest"``, ``"min/10"``) are made for a constant
        LR and sit well below it. ``kwargs`` go to the constructor (an explicit ``max_lr``
        wins)."""
        max_lr = kwargs.pop("max_lr", result.max_lr)
        return cls(params, max_lr, total_steps, **kwargs)
