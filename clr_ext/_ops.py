"""Python-side registrations for the compiled op ``torch.ops.clr_ext.cyclic_sgd_``.

The op mutates its inputs in place and returns nothing, so its fake (meta)
implementation has nothing to compute: registering it lets torch.compile trace
through the op (FakeTensor propagation) and ``torch.library.opcheck`` pass.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch


@torch.library.register_fake("clr_ext::cyclic_sgd_")
def _cyclic_sgd_fake(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    momentum_buffers: List[torch.Tensor],
    momentum_start: List[torch.Tensor],
    iteration: torch.Tensor,
    bounds: Sequence[float],
    shape: Sequence[float],
    schedule_mode: int,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    cycle_momentum: bool,
    first_step: bool,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
) -> None:
    return None


@torch.library.register_fake("clr_ext::cyclic_adamw_")
def _cyclic_adamw_fake(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    max_exp_avg_sqs: List[torch.Tensor],
    state_steps: List[torch.Tensor],
    iteration: torch.Tensor,
    bounds: Sequence[float],
    shape: Sequence[float],
    schedule_mode: int,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    cycle_momentum: bool,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
) -> None:
    return None
