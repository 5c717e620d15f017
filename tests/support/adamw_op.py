"""The argument list of the AdamW op, ``torch.ops.clr_ext.cyclic_adamw_`` (and its pybind and
Cython twins), written once for the tests that call it directly: the CPU entry points'
(backends/test_adamw_ops.py) and the CUDA kernel's (cuda/test_cuda_adamw.py). As
sgd_op.py for the SGD op. Imports no pytest: the GPU machine may lack it."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from support.op_inputs import scheduled_inputs

#: the op's arguments after the mode, in its order, with the tests' defaults: AdamW's
#: hyper-parameters, then whether beta1 is cycled, then AMP's grad_scale and found_inf
FLAGS = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False)
FLAGS.update(cycle_momentum=False, grad_scale=None, found_inf=None)


def op_args(tensors: Sequence, iteration: Union[int, torch.Tensor], bounds, shape, mode, device=None, **flags):
    """The op's positional arguments. ``tensors``: the six lists (params, grads, exp_avgs,
    exp_avg_sqs, max_exp_avg_sqs (empty without amsgrad), state_steps); ``flags``: FLAGS's,
    by name; ``iteration``: the counter or its value (op_inputs.scheduled_inputs)."""
    counter, mode_number, values = scheduled_inputs(iteration, mode, device, FLAGS, flags)
    return (*tensors, counter, list(bounds), list(shape), mode_number, *values)
