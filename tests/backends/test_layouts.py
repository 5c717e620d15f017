"""Layouts that differ only on size-1 dimensions (issue 15): a depthwise convolution's
weight (C, 1, k, k) and its gradient (or momentum buffer) can have different strides on
the size-1 dimension, e.g. one contiguous and one channels_last. Element i sits at the
same offset in both, so the compiled op must walk them in place, not stage them through
dense copies at every step (csrc/op/staging.h: strides are compared only where the
size is > 1). Checked here on the CPU op: the numbers are torch.optim.SGD + CyclicLR's,
and no copy runs inside the op (torch.profiler sees no aten::contiguous / clone /
copy_). tests/cuda/test_cuda_sgd.py::test_size_one_strides_are_not_staged is the CUDA twin.
"""

from __future__ import annotations

from typing import Callable, List

import pytest
import torch
from support.layouts import channels_last, size_one_layouts, staged_copies
from support.sgd_op import op_args

import clr_ext
from clr_ext import backends as _backends

DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (ATen's rule): the dimensions of size > 1, ordered by
    stride, tile numel() consecutive elements."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride != expected:
            return False
        expected *= size
    return True


LAYOUTS = size_one_layouts(
    {
        "depthwise-contig-param-cl-grad": (12, 1, 3, 3),
        "depthwise-cl-param-contig-grad": (12, 1, 5, 5),
        "depthwise-odd-strides": (7, 1, 3, 3),
        "row-from-transpose": (1, 1031),
        "leading-trailing-ones": (1, 33, 1),
    }
)


def test_layout_zoo_is_what_it_claims():
    """Each case's three tensors are dense, and their strides differ, on size-1 dimensions only."""
    for name, (shape, *makers) in LAYOUTS.items():
        base = torch.randn(shape)
        ts = [make(base) for make in makers]
        assert all(is_dense(t) for t in ts), name
        assert len(set(t.stride() for t in ts)) > 1, name
        for t in ts:
            assert torch.equal(t, base), name
            for d, size in enumerate(shape):
                if size > 1:
                    assert t.stride(d) == ts[0].stride(d), (name, d)


# ------------------------------------------------- CyclicSGD == torch.optim.SGD + CyclicLR


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
def test_size_one_stride_layouts_match_torch_sgd(backend, dtype, layout):
    """The same bits as torch.optim.SGD + CyclicLR after every step (as
    tests/rules/test_parity.py::test_bit_identical_to_torch_sgd for contiguous params), with
    the gradients given in a layout that differs from the param's on a size-1
    dimension; the param stays in place with its own strides."""
    shape, make_p, make_g, _ = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(21)
    init = torch.randn(shape, generator=gen, dtype=dtype)
    ours = make_p(init.clone()).requires_grad_()
    theirs = make_p(init.clone()).requires_grad_()
    strides, ptr = ours.stride(), ours.data_ptr()
    sgd_kw = dict(momentum=0.9, dampening=0.1, weight_decay=0.01)
    sched_kw = dict(base_lr=0.002, max_lr=0.05, step_size_up=5, step_size_down=7, mode="triangular2")
    opt = clr_ext.CyclicSGD([ours], backend=backend, **sched_kw, **sgd_kw)
    sgd = torch.optim.SGD([theirs], lr=0.002, foreach=False, **sgd_kw)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, **sched_kw)
    for k in range(30):
        g = torch.randn(shape, generator=gen, dtype=dtype)
        ours.grad = make_g(g.clone())
        theirs.grad = g.clone()
        opt.step()
        sgd.step()
        sched.step()
        assert torch.equal(ours, theirs), (k, (ours - theirs).abs().max().item())
    assert ours.stride() == strides and ours.data_ptr() == ptr, "the param must be updated in place"
    assert torch.equal(opt.state[ours]["momentum_buffer"], sgd.state[theirs]["momentum_buffer"])


# ------------------------------------------------------------- the op stages nothing

needs_op = pytest.mark.skipif(_backends._C is None, reason="clr_ext._C (the compiled op) is not built")


def op_call(
    params: List[torch.Tensor], grads: List[torch.Tensor], bufs: List[torch.Tensor], iteration: int, grad_scale=None
) -> Callable[[], None]:
    """One step of the op as a function (its scalar tensors made now, outside what is profiled)."""
    args = op_args(
        params,
        grads,
        bufs,
        iteration,
        dampening=0.1,
        weight_decay=0.01,
        first_step=iteration == 0,
        grad_scale=None if grad_scale is None else torch.tensor(grad_scale),
        found_inf=None if grad_scale is None else torch.zeros(()),
    )
    return lambda: torch.ops.clr_ext.cyclic_sgd_(*args)


def ops_run_by(fn: Callable[[], None]) -> List[str]:
    """The names of the aten ops dispatched while ``fn`` runs (the op's internal calls included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


@needs_op
@pytest.mark.parametrize("unscale", (False, True), ids=("plain", "unscale"))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: DTYPE_IDS[d])
def test_op_does_not_stage_size_one_stride_differences(dtype, layout, unscale):
    """The CPU op walks param, grad and buffer in place when their strides differ only on
    size-1 dimensions: no copy runs inside it, and it writes the same values as a step
    over contiguous copies of the same tensors (params, buffers, unscaled grads)."""
    shape, make_p, make_g, make_b = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(5)
    p0, g0, b0 = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    p, g, b = make_p(p0.clone()), make_g(g0.clone()), make_b(b0.clone())
    pc, gc, bc = p0.clone(), g0.clone(), b0.clone()
    scale = 64.0 if unscale else None
    for it in range(3):
        names = ops_run_by(op_call([p], [g], [b], it, scale))
        assert "clr_ext::cyclic_sgd_" in names, names  # the profiler saw the op, so it sees inside it
        assert staged_copies(names) == [], (layout, it, staged_copies(names))
        op_call([pc], [gc], [bc], it, scale)()
        assert torch.equal(p, pc) and torch.equal(b, bc) and torch.equal(g, gc), (layout, it)


@needs_op
def test_op_still_stages_real_layout_differences():
    """The control: where the strides differ on a dimension of size > 1 (a (C, 2, k, k)
    weight, channels_last grad) the op does stage through copies, which the profiler
    shows, and the values are still right. Proves the check above can see a copy."""
    gen = torch.Generator().manual_seed(6)
    shape = (12, 2, 3, 3)
    p0, g0, b0 = (torch.randn(shape, generator=gen) for _ in range(3))
    p, g, b = p0.clone(), channels_last(g0.clone()), b0.clone()
    pc, gc, bc = p0.clone(), g0.clone(), b0.clone()
    names = ops_run_by(op_call([p], [g], [b], 1))
    assert staged_copies(names), names
    op_call([pc], [gc], [bc], 1)()
    assert torch.equal(p, pc) and torch.equal(b, bc)
