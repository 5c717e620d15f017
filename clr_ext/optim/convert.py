"""Converting a running ``torch.optim.SGD`` or ``AdamW`` + ``CyclicLR`` / ``OneCycleLR``
pair into the clr_ext optimizer that does the same step."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from .adamw import CyclicAdamW, OneCycleAdamW
from .sgd import CyclicSGD, OneCycleSGD

__all__ = ["from_torch"]

_SGD_GROUP_KEYS = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")
_ADAMW_GROUP_KEYS = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "fused")


def _rule_of(optimizer: Any) -> Tuple[Tuple[str, ...], Any, Any]:
    """(the group keys to take over, the cyclic class, the 1cycle class) for a torch optimizer."""
    if isinstance(optimizer, torch.optim.AdamW):
        return _ADAMW_GROUP_KEYS, CyclicAdamW, OneCycleAdamW
    if isinstance(optimizer, torch.optim.SGD):
        return _SGD_GROUP_KEYS, CyclicSGD, OneCycleSGD
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

    Example::

        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.CyclicLR(sgd, 0.01, 0.1, step_size_up=100)
        ...  # k iterations of sgd.step(); sched.step()
        opt = clr_ext.from_torch(sgd, sched)
        ...  # opt.step() from here on
    """
    keys, cyclic_cls, one_cycle_cls = _rule_of(optimizer)
    if not isinstance(scheduler, (torch.optim.lr_scheduler.CyclicLR, torch.optim.lr_scheduler.OneCycleLR)):
        raise TypeError(
            f"scheduler: must be a torch.optim.lr_scheduler.CyclicLR or OneCycleLR, got {type(scheduler).__name__}"
        )
    if scheduler.optimizer is not optimizer:
        raise ValueError("scheduler: is attached to another optimizer")
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
