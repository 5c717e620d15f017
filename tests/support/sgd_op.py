"""The argument list of the SGD op, ``torch.ops.clr_ext.cyclic_sgd_`` (and its pybind twin
``_C.cyclic_sgd_cpu_``), written once for the tests that call it directly: the CPU op's
(backends/test_ops.py, backends/test_layouts.py) and the CUDA kernel's (cuda/test_cuda_sgd.py).
Imports no pytest: the GPU machine may lack it."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from support.op_inputs import scheduled_inputs

BOUNDS = [0.01, 0.1, 0.8, 0.9]  # base_lr, max_lr, base_momentum, max_momentum
SHAPE = [5.0, 7.0, 0.99, 1.0]  # step_size_up, step_size_down, gamma, custom_scale


#: the op's arguments after the mode, in its order, with the tests' defaults
FLAGS = {
    "momentum": 0.9,
    "dampening": 0.0,
    "weight_decay": 0.0,
    "nesterov": False,
    "maximize": False,
    "cycle_momentum": True,
    "first_step": False,
    "grad_scale": None,
    "found_inf": None,
}


def op_args(
    params,
    grads,
    bufs,
    iteration: Union[int, torch.Tensor] = 3,
    mode: Union[str, int] = "triangular",
    bounds: Sequence[float] = BOUNDS,
    shape: Sequence[float] = SHAPE,
    starts=(),
    device=None,
    **flags,
):
    """The op's positional arguments; ``flags``: FLAGS's, by name; ``iteration``: the counter
    or its value (op_inputs.scheduled_inputs)."""
    counter, mode_number, values = scheduled_inputs(iteration, mode, device, FLAGS, flags)
    return (params, grads, bufs, list(starts), counter, list(bounds), list(shape), mode_number, *values)
