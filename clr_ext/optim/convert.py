"""Converting a running ``torch.optim.SGD`` or ``AdamW`` and its LR scheduler into the
clr_ext optimizer that does the same step: ``CyclicLR`` / ``OneCycleLR`` into the Cyclic* /
OneCycle* classes, the other compositions clr_ext runs on the device into ``clr_ext.SGD`` /
``clr_ext.AdamW`` with the value that names them."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from .. import schedules as S
from .adamw import AdamW, CyclicAdamW, OneCycleAdamW
from .sgd import SGD, CyclicSGD, OneCycleSGD

__all__ = ["from_torch"]

_SGD_GROUP_KEYS = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")
_ADAMW_GROUP_KEYS = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "fused")


def _rule_of(optimizer: Any) -> Tuple[Tuple[str, ...], Any, Any, Any]:
    """(the group keys to take over, the cyclic class, the 1cycle class, the class that takes a
    schedule value) for a torch optimizer."""
    if isinstance(optimizer, torch.optim.AdamW):
        return _ADAMW_GROUP_KEYS, CyclicAdamW, OneCycleAdamW, AdamW
    if isinstance(optimizer, torch.optim.SGD):
        return _SGD_GROUP_KEYS, CyclicSGD, OneCycleSGD, SGD
    raise TypeError(f"optimizer: must be a torch.optim.SGD or torch.optim.AdamW, got {type(optimizer).__name__}")


def _step_sizes(total_size: float, step_ratio: float) -> Tuple[float, float]:
    """``(step_size_up, step_size_down)`` that reproduce CyclicLR's ``total_size`` and
    ``step_ratio`` exactly (CyclicLR keeps only those two numbers)."""
    total_size = float(total_size)
    step_ratio = float(step_ratio)
    exact = total_size * step_ratio
    candidates = [float(round(exact)), exact]
    for up in candidates:
        down = total_size - up
        if up > 0 and down >= 0 and up + down == total_size and up / (up + down) == step_ratio:
            return up, down
    return exact, total_size - exact


def from_torch(optimizer: Any, scheduler: Any, backend: str = "auto") -> Any:
    """The clr_ext optimizer that continues where ``optimizer`` + ``scheduler`` stand:
    :class:`CyclicSGD` / :class:`OneCycleSGD` for a ``torch.optim.SGD`` with a
    ``CyclicLR`` / ``OneCycleLR``, :class:`CyclicAdamW` / :class:`OneCycleAdamW` for a
    ``torch.optim.AdamW`` (the schedulers then cycle ``betas[0]``). What follows says
    it for CyclicSGD; the others take over their own hyper-parameters and state alike.

    The result has the same parameters and param groups, the same per-group SGD
    hyper-parameters (``momentum``, ``dampening``, ``weight_decay``, ``nesterov``,
    ``maximize``), the same schedule (``base_lrs``, ``max_lrs``, the step sizes
    recovered from ``total_size`` / ``step_ratio``, ``mode``, ``gamma``, a custom
    ``scale_fn`` with its ``scale_mode``, ``cycle_momentum`` with per-group
    ``base_momentum`` / ``max_momentum``), copies of the momentum buffers, and
    ``scheduler.last_epoch`` as its ``iteration``. From then on one
    ``cyclic.step()`` does what ``optimizer.step(); scheduler.step()`` would have done,
    with the same numbers.

    The momentum buffers are cloned, so the original pair can keep running (e.g. to
    compare). Only the convention "one ``scheduler.step()`` per ``optimizer.step()``"
    (the one CyclicLR is meant for) is carried over.

    The other schedulers clr_ext runs on the device (``CosineAnnealingWarmRestarts``,
    ``LinearLR``, ``ConstantLR``, a ``SequentialLR`` of these and of ``CyclicLR`` /
    ``OneCycleLR``, and transformers' ``get_linear_schedule_with_warmup``,
    ``get_cosine_schedule_with_warmup``, ``get_wsd_schedule``) give a :class:`clr_ext.SGD`
    / :class:`clr_ext.AdamW` with the :mod:`clr_ext.schedules` value that names them, each
    group's ``initial_lr`` and the scheduler's ``last_epoch`` as its iteration. Any other
    scheduler: ``TypeError``.

    Example::

        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.CyclicLR(sgd, 0.01, 0.1, step_size_up=100)
        ...  # k iterations of sgd.step(); sched.step()
        opt = clr_ext.from_torch(sgd, sched)
        ...  # opt.step() from here on
    """
    keys, cyclic_cls, one_cycle_cls, value_cls = _rule_of(optimizer)
    if not isinstance(scheduler, (_L.CyclicLR, _L.OneCycleLR) + _COMPOSABLE):
        raise TypeError(
            f"scheduler: must be a torch.optim.lr_scheduler.CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts, "
            f"LinearLR, ConstantLR, SequentialLR or a transformers LambdaLR, got {type(scheduler).__name__}"
        )
    if scheduler.optimizer is not optimizer:
        raise ValueError("scheduler: is attached to another optimizer")
    if isinstance(scheduler, _COMPOSABLE):
        return _continue(optimizer, scheduler, _from_composition(optimizer, scheduler, backend, keys, value_cls))
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        return _continue(optimizer, scheduler, _one_cycle(optimizer, scheduler, backend, keys, one_cycle_cls))

    n = len(optimizer.param_groups)
    cycle = bool(scheduler.cycle_momentum)
    up, down = _step_sizes(scheduler.total_size, scheduler.step_ratio)
    groups: List[Dict[str, Any]] = []
    for i, g in enumerate(optimizer.param_groups):
        group: Dict[str, Any] = {
            "params": list(g["params"]),
            "base_lr": float(scheduler.base_lrs[i]),
            "max_lr": float(scheduler.max_lrs[i]),
        }
        for key in keys:
            group[key] = g[key]
        if cycle:
            group["base_momentum"] = float(scheduler.base_momentums[i])
            group["max_momentum"] = float(scheduler.max_momentums[i])
        groups.append(group)
    if len(scheduler.base_lrs) != n or len(scheduler.max_lrs) != n:
        raise ValueError("scheduler: its per-group values do not match the optimizer's param groups")

    scale_fn = getattr(scheduler, "_scale_fn_custom", None)
    kwargs: Dict[str, Any] = dict(
        step_size_up=up, step_size_down=down, gamma=float(scheduler.gamma), cycle_momentum=cycle, backend=backend
    )
    if scale_fn is not None:
        kwargs.update(scale_fn=scale_fn, scale_mode=scheduler.scale_mode)
    else:
        kwargs["mode"] = scheduler.mode
    new = cyclic_cls(groups, [g["base_lr"] for g in groups], [g["max_lr"] for g in groups], **kwargs)

    return _continue(optimizer, scheduler, new)


def _one_cycle(optimizer: Any, scheduler: Any, backend: str, keys: Tuple[str, ...], cls: Any) -> Any:
    """OneCycleLR keeps its phases' ends and each group's initial/max/min LR, not the
    factors they came from: they are taken over as they are."""
    ends = tuple(float(phase["end_step"]) for phase in scheduler._schedule_phases)
    total = int(scheduler.total_steps)
    cycle = bool(scheduler.cycle_momentum)
    groups: List[Dict[str, Any]] = []
    for g in optimizer.param_groups:
        group: Dict[str, Any] = {"params": list(g["params"])}
        for key in keys + ("initial_lr", "max_lr", "min_lr"):
            group[key] = g[key]
        if cycle:
            group["base_momentum"] = float(g["base_momentum"])
            group["max_momentum"] = float(g["max_momentum"])
        groups.append(group)
    new = cls(
        groups,
        [g["max_lr"] for g in groups],
        total,
        pct_start=(ends[0] + 1) / total,
        anneal_strategy=scheduler._anneal_func_type,
        three_phase=len(ends) == 3,
        cycle_momentum=cycle,
        backend=backend,
    )
    new._schedule.phase_ends = ends
    return new


# ------------------------------------------------- compositions: clr_ext.SGD / AdamW with a value

_L = torch.optim.lr_scheduler
#: transformers' LambdaLR helpers, by the name of the function their lambdas are partials of
#: (the partials' keywords are the values' fields).
_HF_LAMBDAS = {
    "_get_linear_schedule_with_warmup_lr_lambda": S.HFLinearWithWarmup,
    "_get_cosine_schedule_with_warmup_lr_lambda": S.HFCosineWithWarmup,
    "_get_wsd_scheduler_lambda": S.HFWSD,
}
_COMPOSABLE = (
    _L.CosineAnnealingWarmRestarts,
    _L.LinearLR,
    _L.ConstantLR,
    _L.SequentialLR,
    _L.LambdaLR,
)


def _exact_one_cycle(optimizer: Any, scheduler: Any) -> Any:
    """OneCycleLR as a value, where the value recomputes the same numbers (OneCycleLR keeps the
    groups' LRs and its phases' ends, not the factors they came from)."""
    ends = tuple(float(phase["end_step"]) for phase in scheduler._schedule_phases)
    total = int(scheduler.total_steps)
    groups = optimizer.param_groups
    max_lrs = [float(g["max_lr"]) for g in groups]
    div, final = max_lrs[0] / groups[0]["initial_lr"], groups[0]["initial_lr"] / groups[0]["min_lr"]
    cycle = bool(scheduler.cycle_momentum)
    value = S.OneCycle(
        max_lrs,
        total,
        pct_start=(ends[0] + 1) / total,
        anneal_strategy=scheduler._anneal_func_type,
        div_factor=div,
        final_div_factor=final,
        three_phase=len(ends) == 3,
        cycle_momentum=cycle,
        base_momentum=[float(g.get("base_momentum", 0.85)) for g in groups],
        max_momentum=[float(g.get("max_momentum", 0.95)) for g in groups],
    )
    flat = value.flatten([None] * len(groups))
    for i, g in enumerate(groups):
        params = dict(zip(S.LAYOUTS[S.ONE_CYCLE], flat.params[i][0]))
        got = (params["initial_lr"], params["min_lr"], params["end_0"], params["end_1"])
        if got != (g["initial_lr"], g["min_lr"], ends[0], ends[1]):
            raise ValueError(
                "scheduler: this OneCycleLR's LRs or phases cannot be rebuilt exactly as a clr_ext.schedules.OneCycle "
                "inside a composition; convert a plain OneCycleLR pair (it becomes a OneCycleSGD / OneCycleAdamW)"
            )
    return value


def _value_of(optimizer: Any, scheduler: Any) -> Any:
    """The clr_ext.schedules value that names ``scheduler`` (built on ``optimizer``)."""
    if isinstance(scheduler, _L.CosineAnnealingWarmRestarts):
        return S.CosineRestarts(scheduler.T_0, scheduler.T_mult, scheduler.eta_min)
    if isinstance(scheduler, _L.LinearLR):
        return S.Linear(scheduler.start_factor, scheduler.end_factor, scheduler.total_iters)
    if isinstance(scheduler, _L.ConstantLR):
        return S.Constant(scheduler.factor, scheduler.total_iters)
    if isinstance(scheduler, _L.SequentialLR):
        parts = [_value_of(optimizer, s) for s in scheduler._schedulers]
        return S.Sequential(parts, list(scheduler._milestones))
    if isinstance(scheduler, _L.OneCycleLR):
        return _exact_one_cycle(optimizer, scheduler)
    if isinstance(scheduler, _L.CyclicLR):
        up, down = _step_sizes(scheduler.total_size, scheduler.step_ratio)
        cycle = bool(scheduler.cycle_momentum)
        scale_fn = getattr(scheduler, "_scale_fn_custom", None)
        shape: Dict[str, Any] = dict(step_size_up=up, step_size_down=down, gamma=float(scheduler.gamma))
        shape.update(scale_fn=scale_fn, scale_mode=scheduler.scale_mode) if scale_fn else shape.update(
            mode=scheduler.mode
        )
        if cycle:
            shape.update(base_momentum=list(scheduler.base_momentums), max_momentum=list(scheduler.max_momentums))
        return S.Cyclic(list(scheduler.base_lrs), list(scheduler.max_lrs), cycle_momentum=cycle, **shape)
    if type(scheduler) is _L.LambdaLR:
        found = set()
        for fn in scheduler.lr_lambdas:
            name = getattr(getattr(fn, "func", None), "__name__", None)
            if name not in _HF_LAMBDAS or getattr(fn, "args", ()):
                break
            make = _HF_LAMBDAS[name]
            names = make._FIELDS
            found.add((make, tuple((k, fn.keywords[k]) for k in names if k in fn.keywords)))
        else:
            if len(found) == 1:
                make, keywords = found.pop()
                return make(**dict(keywords))
    raise TypeError(
        f"scheduler: {type(scheduler).__name__} is not one clr_ext can run on the device (CyclicLR, OneCycleLR, "
        "CosineAnnealingWarmRestarts, LinearLR, ConstantLR, a SequentialLR of these, or transformers' "
        "get_linear/cosine_schedule_with_warmup / get_wsd_schedule)"
    )


def _from_composition(optimizer: Any, scheduler: Any, backend: str, keys: Tuple[str, ...], cls: Any) -> Any:
    value = _value_of(optimizer, scheduler)
    groups = []
    for g in optimizer.param_groups:
        group: Dict[str, Any] = {"params": list(g["params"]), "initial_lr": g["initial_lr"], "lr": g["initial_lr"]}
        group.update((key, g[key]) for key in keys)
        groups.append(group)
    return cls(groups, schedule=value, backend=backend)


def _continue(optimizer: Any, scheduler: Any, new: Any) -> Any:
    # The iteration and the per-param state (copies) through the public state-dict path.
    state = new.state_dict()
    iteration = max(int(scheduler.last_epoch), 0)
    for group in state["param_groups"]:
        group["iteration"] = iteration
    index = 0
    buffers: Dict[int, Dict[str, Any]] = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            saved = {
                k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                for k, v in optimizer.state.get(p, {}).items()
                if v is not None
            }
            if saved:
                buffers[index] = saved
            index += 1
    state["state"] = buffers
    new.load_state_dict(state)
    return new
