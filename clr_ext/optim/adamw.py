"""AdamW with a cyclical or 1cycle schedule: torch.optim.AdamW + CyclicLR / OneCycleLR in
one fused step (the AdamW update rule on the scheduled-optimizer core)."""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .. import backends as _backends
from .._checks import beta, non_negative
from . import functional
from .core import _refuse_capture, _ScheduledOptimizer, construct
from .functional import Work
from .records import AdamwHyper, AdamwTensors
from .schedules import (
    CyclicSchedule,
    CyclicScheduled,
    OneCycleSchedule,
    OneCycleScheduled,
    ValueSchedule,
)

__all__ = ["AdamW", "CyclicAdamW", "OneCycleAdamW"]

#: The per-param state, named as torch.optim.AdamW names it.
_MOMENTS = ("exp_avg", "exp_avg_sq")


class _ScheduledAdamW(_ScheduledOptimizer):
    """The AdamW rule (torch.optim.AdamW's, decoupled weight decay): per param ``step``
    (a float32 tensor on the param's device, so that the kernel advances it without a
    sync and a skipped step leaves it alone), ``exp_avg``, ``exp_avg_sq`` and, with
    ``amsgrad``, ``max_exp_avg_sq``. With ``cycle_momentum`` the schedule's momentum is
    beta1, reported in ``group["betas"][0]`` as CyclicLR / OneCycleLR report it.

    ``fused`` (per group, as in torch.optim.AdamW's groups) says whose numbers the CPU
    kernel reproduces: ``torch.optim.AdamW(fused=True)``'s (IEEE square roots, one pass
    over memory) or, when None or False, the default path's (``torch.sqrt``: MKL's vector
    square root where torch has MKL). Either way the step is one fused kernel; CUDA
    kernels take IEEE square roots in both cases."""

    def _check_rule_group(self, group: Dict[str, Any], where: str) -> None:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas{where}: must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = (beta("betas[0]" + where, betas[0]), beta("betas[1]" + where, betas[1]))
        if self.cycle_momentum:  # the cycled beta1 must be a beta too
            for key in ("base_momentum", "max_momentum"):
                group[key] = beta(key + where, group[key])
        group["eps"] = non_negative("eps" + where, group["eps"])
        group["weight_decay"] = non_negative("weight_decay" + where, group["weight_decay"])
        group["amsgrad"] = bool(group["amsgrad"])
        group["maximize"] = bool(group["maximize"])
        fused = group.setdefault("fused", None)  # a torch.optim.AdamW group may lack it
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused{where}: must be True, False or None, got {fused!r}")

    def _report_momentum(self, group: Dict[str, Any], momentum: float) -> None:
        group["betas"] = (momentum, group["betas"][1])

    _momentum_key = "betas[0]"
    _momentum_slot = "betas"

    def _reported_momentum(self, group: Dict[str, Any]) -> Any:
        return group["betas"][0]

    def _loaded(self) -> None:
        # torch.optim.AdamW keeps `step` on the CPU (float32, or float64 under a float64
        # default dtype); the kernels read and advance it on the param's device.
        for group in self.param_groups:
            for p in group["params"]:
                step = self.state.get(p, {}).get("step")
                if step is None:
                    continue
                loaded = step if isinstance(step, torch.Tensor) else torch.tensor(float(step))
                if loaded is not step or loaded.dtype != torch.float32 or loaded.device != p.device:
                    self.state[p]["step"] = loaded.to(device=p.device, dtype=torch.float32)

    def _collect(self, group_index, group, buckets, schedule_arguments, compiling, work, created):
        """``created``: (param, its new state), stored once the step has run."""
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        hyper = AdamwHyper(
            *schedule_arguments,
            # a traced step passes a constant beta1 when cycling (the op computes it)
            group["max_momentum"] if compiling and self.cycle_momentum else beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            amsgrad,
            group["maximize"],
            self.cycle_momentum,
            0,
        )
        keys = ("step",) + _MOMENTS + (("max_exp_avg_sq",) if amsgrad else ())
        for bucket, grads in buckets:
            params = bucket.params
            try:  # every step after a param's first
                if compiling:
                    dicts = [self.state[p] for p in params]
                    steps, *moments = [list(map(operator.itemgetter(k), dicts)) for k in keys]
                else:
                    dicts = bucket.states(self.state) if bucket.state_dicts is None else bucket.state_dicts
                    columns = [functional.entries_of(dicts, k) for k in keys]
                    if any(missing for _, missing in columns):
                        raise KeyError
                    steps, *moments = [values for values, _ in columns]
            except KeyError:
                steps, *moments = self._state_with_new(params, keys, created)
            if not amsgrad:
                moments.append([])
            tensors = AdamwTensors(params, grads, *moments, steps)
            if bucket.dtensor is not None or bucket.complex:
                tensors = AdamwTensors(*(self._kernel_tensors(t, bucket) for t in tensors[:5]), steps)
            fused = group["fused"] and bucket.device.type == "cpu"
            call = hyper._replace(fused_width=_backends.fused_adamw_width(params[0].dtype)) if fused else hyper
            work.append(Work(bucket.backend, bucket.device, tensors, call, group_index))

    def _keep(self, created):
        for p, new in created:
            self.state[p].update(new)

    def _state_with_new(
        self,
        params: List[torch.Tensor],
        keys: Tuple[str, ...],
        created: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
    ) -> List[List[torch.Tensor]]:
        """The state columns of ``params``, zeros (as AdamW starts) where a param has none
        yet; the new tensors join the state only once the step has run."""
        columns: List[List[torch.Tensor]] = [[] for _ in keys]
        for p in params:
            have = self.state[p] if p in self.state else {}
            new = {}
            for k in keys:
                if k not in have:
                    _refuse_capture(p.device, "AdamW state")
                    new[k] = (
                        torch.zeros((), dtype=torch.float32, device=p.device)
                        if k == "step"
                        else torch.zeros_like(p, memory_format=torch.preserve_format)
                    )
            if new:
                created.append((p, new))
            for column, k in zip(columns, keys):
                column.append(have[k] if k in have else new[k])
        return columns


class AdamW(_ScheduledAdamW):
    r"""AdamW under any schedule of :mod:`clr_ext.schedules`, in one fused step:
    ``adamw.step(); sched.step()`` for ``torch.optim.AdamW(params, lr, betas, eps,
    weight_decay, amsgrad, maximize=maximize)`` and the PyTorch scheduler(s) that
    ``schedule`` names, with their numbers (beta1 cycled where the schedule cycles the
    momentum, as CyclicLR / OneCycleLR do). ``lr`` is each group's LR before the schedule
    (see :class:`clr_ext.SGD`); ``fused=True`` reproduces ``torch.optim.AdamW(fused=True)``'s
    rounding on the CPU (see :class:`clr_ext.CyclicAdamW`). :meth:`scale_schedule`
    multiplies the running schedule's LRs."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Optional[float] = 1e-3,
        *,
        schedule: Any,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        fused: Optional[bool] = None,
        backend: str = "auto",
    ) -> None:
        value = ValueSchedule(schedule)
        rule = dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, fused=fused)
        rule.update(lr=None if lr is None else non_negative("lr", lr))
        _ScheduledAdamW.__init__(self, params, value, {}, rule, cycle_momentum=value.cycles_momentum, backend=backend)


class CyclicAdamW(CyclicScheduled, AdamW):
    r"""AdamW whose learning rate (and beta1) follow a cyclical schedule, in one fused step.

    One ``step()`` does what ``adamw.step(); sched.step()`` does for::

        adamw = torch.optim.AdamW(params, lr=base_lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                  amsgrad=amsgrad, maximize=maximize)
        sched = torch.optim.lr_scheduler.CyclicLR(adamw, base_lr, max_lr, step_size_up, step_size_down,
                                                  mode, gamma, scale_fn, scale_mode, cycle_momentum,
                                                  base_momentum, max_momentum)

    with the same numbers. With ``cycle_momentum`` (the default, as in CyclicLR) beta1
    cycles inversely to the LR between ``base_momentum`` and ``max_momentum`` and
    ``group["betas"][0]`` reports the next step's. The schedule's arguments are
    :class:`~clr_ext.CyclicSGD`'s; ``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
    ``maximize`` are AdamW's, per group too. Each param's bias correction uses its own
    step count (``state[p]["step"]``), so a param that misses steps has a smaller one,
    as in PyTorch; a step that ``GradScaler`` skips changes nothing, step counts included.
    The state per param is AdamW's, so a ``torch.optim.AdamW`` state dict loads.

    The numbers are those of the default ``torch.optim.AdamW``; with ``fused=True`` those
    of ``torch.optim.AdamW(fused=True)`` (bit for bit on the CPU), which on the CPU is also
    the faster step for large models: its IEEE square roots let the kernel read memory
    once, where the default path's ``torch.sqrt`` (MKL's) costs a second pass per block.
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
        *,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        fused: Optional[bool] = None,
        cycle_momentum: bool = True,
        base_momentum: Any = 0.8,
        max_momentum: Any = 0.9,
        backend: str = "auto",
    ) -> None:
        construct(self, CyclicSchedule, locals())


class OneCycleAdamW(OneCycleScheduled, AdamW):
    r"""AdamW under the 1cycle policy, in one fused step: ``adamw.step(); sched.step()`` for
    ``torch.optim.AdamW`` + ``OneCycleLR`` (beta1 cycled between ``max_momentum`` and
    ``base_momentum`` with ``cycle_momentum``). The schedule's arguments and its end are
    :class:`~clr_ext.OneCycleSGD`'s, the update's :class:`CyclicAdamW`'s."""

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
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        fused: Optional[bool] = None,
        cycle_momentum: bool = True,
        base_momentum: Any = 0.85,
        max_momentum: Any = 0.95,
        backend: str = "auto",
    ) -> None:
        construct(self, OneCycleSchedule, locals())
