"""The arguments of one op call, as records: what each update rule's op takes, written once.

An op call is ``(tensors, hyper, inputs)``: the bucket's tensor lists (``SgdTensors`` /
``AdamwTensors``), the rule's hyper-parameters with the schedule's shape (``SgdHyper`` /
``AdamwHyper``: one per param group and step) and the per-step inputs (``StepInputs``: the
device counter, its host mirror, GradScaler's tensors). Backends take the three records and
unpack them only where they call a kernel; ``op_args`` lays them out in the op schema's
order (``csrc/op/sgd_op.h``), and ``python_op_schema`` derives the schema of the ops
through which the Python backends run in a traced step from the same fields.

A new rule adds its two records here (fields in its op schema's order).
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple

import torch


class StepInputs(NamedTuple):
    """What changes at every step, per device."""

    counter: torch.Tensor  # the op's ``iteration``: int64, on the bucket's device
    iteration: Optional[int]  # its host mirror; None in a step traced by torch.compile
    grad_scale: Optional[torch.Tensor]
    found_inf: Optional[torch.Tensor]
    # multiplies the schedule's LRs (scale_schedule): float64, one element, on the device;
    # None: 1
    lr_scale: Optional[torch.Tensor] = None


class SgdTensors(NamedTuple):
    params: List[torch.Tensor]
    grads: List[torch.Tensor]
    momentum_buffers: List[torch.Tensor]  # empty: no momentum in this step
    momentum_start: List[torch.Tensor]  # empty: ``first_step`` decides (csrc/op/sgd_op.h)

    like_params = ("momentum_buffers",)  # state of the params' dtype, shape and device


class SgdHyper(NamedTuple):
    """``cyclic_sgd_``'s scalar arguments, in its schema's order."""

    bounds: List[float]
    shape: List[float]
    schedule_mode: int
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool
    cycle_momentum: bool
    first_step: bool

    op = "cyclic_sgd"
    python_op = "python_backend_step_"
    tensors = SgdTensors
    after_inputs = 0  # scalars that the schema puts after grad_scale / found_inf


class AdamwTensors(NamedTuple):
    params: List[torch.Tensor]
    grads: List[torch.Tensor]
    exp_avgs: List[torch.Tensor]
    exp_avg_sqs: List[torch.Tensor]
    max_exp_avg_sqs: List[torch.Tensor]  # empty without amsgrad
    state_steps: List[torch.Tensor]

    like_params = ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")


class AdamwHyper(NamedTuple):
    """``cyclic_adamw_``'s scalar arguments, in its schema's order."""

    bounds: List[float]
    shape: List[float]
    schedule_mode: int
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    cycle_momentum: bool
    fused_width: int  # > 0: torch.optim.AdamW(fused=True)'s rounding on the CPU

    op = "cyclic_adamw"
    python_op = "python_backend_adamw_"
    tensors = AdamwTensors
    after_inputs = 1


def op_args(tensors: Tuple[Any, ...], hyper: Any, inputs: StepInputs) -> Tuple[Any, ...]:
    """The op's positional arguments, in its schema's order."""
    cut = len(hyper) - hyper.after_inputs
    return (*tensors, inputs.counter, *hyper[:cut], inputs.grad_scale, inputs.found_inf, *hyper[cut:], inputs.lr_scale)


def from_op_args(hyper_type: Any, args: Tuple[Any, ...]) -> Tuple[Any, Any, StepInputs]:
    """``op_args`` read back: ``(tensors, hyper, inputs)``, the host iteration read from the counter."""
    n_tensors, n_hyper = len(hyper_type.tensors._fields), len(hyper_type._fields)
    cut = n_tensors + 1 + n_hyper - hyper_type.after_inputs
    end = n_tensors + 1 + n_hyper + 2  # (lr_scale, the last, may be left out: its default is None)
    counter, grad_scale, found_inf = args[n_tensors], args[cut], args[cut + 1]
    lr_scale = args[end] if len(args) > end else None
    hyper = hyper_type(*args[n_tensors + 1 : cut], *args[cut + 2 : end])
    inputs = StepInputs(counter, int(counter), grad_scale, found_inf, lr_scale)
    return hyper_type.tensors(*args[:n_tensors]), hyper, inputs


_SCHEMA_TYPES = {"List[float]": "float[]", "int": "int", "float": "float", "bool": "bool"}


def python_op_schema(hyper_type: Any) -> str:
    """The schema of ``hyper_type.python_op``: the compiled op's arguments after a backend name."""
    names = hyper_type.tensors._fields
    tensors = [f"Tensor({chr(ord('a') + i)}!)[] {name}" for i, name in enumerate(names)]
    types = {name: getattr(t, "__forward_arg__", t) for name, t in hyper_type.__annotations__.items()}
    scalars = [f"{_SCHEMA_TYPES[types[name]]} {name}" for name in hyper_type._fields]
    cut = len(scalars) - hyper_type.after_inputs
    args = ["str backend", *tensors, "Tensor iteration", *scalars[:cut], "Tensor? grad_scale", "Tensor? found_inf"]
    return f"{hyper_type.python_op}({', '.join(args + scalars[cut:] + ['Tensor? lr_scale=None'])}) -> ()"


def written(tensors: Tuple[Any, ...], inputs: StepInputs) -> List[torch.Tensor]:
    """The tensors an op call writes: params and state (every list after the grads), and the
    grads when it unscales them."""
    out = list(tensors[0])
    for state in tensors[2:]:
        out += state
    if inputs.grad_scale is not None:
        out += tensors[1]
    return out
