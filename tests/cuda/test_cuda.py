"""The CUDA step (issue 3): the kernel against the CPU op, CyclicSGD against
torch.optim.SGD(fused=True) + CyclicLR, no host sync, CUDA-graph capture of a whole
training step, GradScaler, launches per step and >2^31-element tensors.

Every GPU test skips without a CUDA device or where clr_ext._C was built without CUDA;
``test_cuda_kernel_registered`` only needs the CUDA build (it runs in CI's CUDA venv,
which has no GPU). With ``CLR_EXT_REQUIRE_CUDA=1`` (bench/gpu_check.sh sets it) those
conditions fail instead of skipping, so a GPU run can't pass by skipping everything.

Runs under pytest, and without it (the GPU machine may lack pytest):
``python tests/test_cuda.py [-k EXPR]`` runs every test function and case (EXPR: as
pytest's -k, substrings with and / or / not).

Dry run on the CPU: ``CLR_EXT_CUDA_TESTS_DEVICE=cpu`` runs every test that needs no
CUDA-only API (sync debug mode, profiler, graphs, 16 GiB tensors) on CPU tensors with
CyclicSGD forced onto the device-decided path the CUDA step takes. CI runs it so that
this file's own code, references and tolerances are known to work before a GPU is lent
(GPU time is short); on the CPU it proves nothing about the CUDA kernel.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import unittest
import warnings
from typing import Callable, List, Optional, Sequence

import torch
import torch._dynamo.testing

import clr_ext
from clr_ext import backends as _backends
from clr_ext import schedules as S
from clr_ext.schedule import MODES

try:
    import pytest

    parametrize = pytest.mark.parametrize
except ImportError:  # pragma: no cover - the fallback runner at the bottom is used then
    pytest = None

    def parametrize(names, values, ids=None):
        def deco(fn):
            fn.__dict__.setdefault("_clr_params", []).insert(0, (names, list(values)))
            return fn

        return deco


# bench/model_shapes.py: ResNet-50's parameter shapes
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))

REQUIRE = os.environ.get("CLR_EXT_REQUIRE_CUDA", "").strip() in ("1", "true", "yes")
DEVICE = os.environ.get("CLR_EXT_CUDA_TESTS_DEVICE", "cuda").strip() or "cuda"
DRY_RUN = DEVICE != "cuda"
#: the backend CyclicSGD is asked for: the CPU's fastest in a dry run
BACKEND = "cuda" if not DRY_RUN else "cpp"
_C = _backends._C
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}

#: Relative error (to the largest reference magnitude) allowed against torch: api.md's
#: contract for fp32 / fp64 over 1,000 steps (torch's fused SGD); a few units in the last
#: place of their own precision for the half types, against an fp32 run rounded once per
#: step (_HalfViaFp32Pair, as tests/conftest.py): the reference may contract multiply-adds,
#: ours does not, so a value can land on the other side of a half rounding boundary.
RTOL_TORCH = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 4 * 2.0**-10, torch.bfloat16: 4 * 2.0**-7}
#: Against the CPU op: the same arithmetic in the same order (--fmad=false,
#: -ffp-contract=off), so only the device pow() (exp_range, exp, triangular2) may differ
#: in the last bit of the lr.
RTOL_CPU = {torch.float32: 1e-6, torch.float64: 1e-13, torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7}


def _skip(reason: str, hard: bool = False):
    """Skips the test. ``hard``: a missing CUDA build or GPU, which fails instead under
    CLR_EXT_REQUIRE_CUDA=1; other reasons (memory, profiler) always skip."""
    if REQUIRE and hard:
        raise AssertionError("CLR_EXT_REQUIRE_CUDA=1 but " + reason)
    if pytest is not None:
        pytest.skip(reason)
    raise unittest.SkipTest(reason)


def need_cuda_build():
    if _C is None:
        _skip("clr_ext._C is not built", hard=True)
    if not getattr(_C, "with_cuda", False):
        _skip("clr_ext._C was built without CUDA", hard=True)


def need_gpu():
    """The test runs on DEVICE: a GPU, or the CPU in a dry run."""
    if DRY_RUN:
        if _C is None:
            _skip("clr_ext._C is not built")
        return
    need_real_gpu()


def need_real_gpu():
    """The test uses CUDA-only APIs: skipped in a dry run."""
    if DRY_RUN:
        _skip("uses CUDA-only APIs (dry run on %s)" % DEVICE)
    need_cuda_build()
    if not torch.cuda.is_available():
        _skip("no CUDA device", hard=True)


def synchronize():
    if not DRY_RUN:
        torch.cuda.synchronize()


def cyclic_sgd(*args, **kwargs) -> clr_ext.CyclicSGD:
    """CyclicSGD as the tests use it on CUDA; in a dry run, forced onto the path a CUDA
    step takes (first momentum steps decided by the op, not the host)."""
    opt = clr_ext.CyclicSGD(*args, **kwargs)
    if DRY_RUN:
        opt._host_decided_types = ()
    return opt


def rel_err(actual: torch.Tensor, expected: torch.Tensor, scale: Optional[float] = None) -> float:
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    assert torch.isfinite(a).all(), "non-finite values in the result"
    if scale is None:
        scale = float(e.abs().max())
    return float((a - e).abs().max()) / max(scale, 1e-30)


def assert_close_rel(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], rtol: float, what: str):
    assert len(actual) == len(expected)
    scale = max([float(e.detach().double().abs().max()) for e in expected if e.numel()] + [1e-30])
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, (what, i, a.shape, e.shape, a.dtype, e.dtype)
        err = rel_err(a, e, scale)
        assert err <= rtol, "%s %d (%s, shape %s): relative error %.3g > %.3g" % (
            what,
            i,
            a.dtype,
            tuple(a.shape),
            err,
            rtol,
        )


def op():
    return torch.ops.clr_ext.cyclic_sgd_


# ---------------------------------------------------------------- build / registration


def test_cuda_kernel_registered():
    """The CUDA build registers a CUDA kernel for the op (no GPU needed)."""
    need_cuda_build()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::cyclic_sgd_", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::cyclic_sgd_", "CPU")
    assert "cuda" in clr_ext.available_backends()
    # 720 with a CUDA 13 toolkit (32 KB kernel parameters), 69 with older ones (4 KB):
    # csrc/cuda/multi_tensor.cuh.
    assert _C.cuda_max_tensors_per_launch() in (720, 69), _C.cuda_max_tensors_per_launch()


# ------------------------------------------------------------- the op vs the CPU op


def _layout_zoo(dtype, gen, device):
    """(param, grad, buffer) triples covering the kernel's paths: vector body + tails,
    chunk boundaries, misaligned starts (scalar path), a layout shared by all three
    (channels_last: walked as raw memory), layouts that differ (staged through copies),
    a non-dense view (staged), and an empty tensor. The same generator state gives the
    same values on every device."""

    def make(shape, layout=None):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
        return layout(t) if layout is not None else t

    def same(shape, layout=None):
        return tuple(make(shape, layout) for _ in range(3))

    triples = [same((n,)) for n in (1, 3, 7, 8, 1000, 4097, 65536 + 13, 3 * 65536 + 5)]
    triples.append(same((4100,), lambda t: t[1:]))  # storage offset 1: misaligned
    triples.append(same((4, 6, 5, 3), lambda t: t.contiguous(memory_format=torch.channels_last)))
    triples.append((make((33, 64), lambda t: t.t()), make((64, 33)), make((64, 33))))  # strides differ
    triples.append((make((40, 70), lambda t: t[:, ::2]), make((40, 35)), make((40, 35))))  # not dense
    triples.append(same((0,)))
    return triples


OP_CONFIGS = {
    # mode, momentum, dampening, weight_decay, nesterov, maximize, cycle_momentum, buffers, grad_scale
    "tri-cycled": dict(mode="triangular", momentum=0.0, cycle_momentum=True),
    "tri2-const-damp": dict(mode="triangular2", momentum=0.9, dampening=0.1, cycle_momentum=False),
    "exp_range-nesterov-wd": dict(
        mode="exp_range", momentum=0.9, nesterov=True, weight_decay=0.01, cycle_momentum=False
    ),
    "tri-max-scale": dict(mode="triangular", maximize=True, grad_scale=1024.0),
    "no-buffers-wd": dict(mode="triangular", momentum=0.0, cycle_momentum=False, buffers=False, weight_decay=0.02),
    "zero-momentum-peaks": dict(mode="triangular", base_momentum=0.0),
    "fixed": dict(mode="fixed"),
    "exp": dict(mode="exp", gamma=0.97),
    "decay": dict(mode="decay"),
    "custom-scale": dict(mode=6, custom_scale=0.37),
    # 1cycle: phase ends and the phase count in `shape`, min_lr as a fifth bound
    "1cycle-cos": dict(mode=7, one_cycle=[9.0, 35.0, 0.0, 2.0]),
    "1cycle-linear-3phase": dict(mode=8, one_cycle=[9.0, 18.0, 35.0, 3.0], momentum=0.9, cycle_momentum=False),
}


@parametrize("config", list(OP_CONFIGS))
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_op_matches_cpu_op(dtype, config):
    """The CUDA op and the CPU op (same schedule.h / sgd_update.h) step the same tensors
    through 3 cycles: params, momentum buffers and (unscaled) grads agree."""
    need_gpu()
    cfg = dict(OP_CONFIGS[config])
    mode = cfg.pop("mode")
    mode_number = MODES[mode] if isinstance(mode, str) else mode
    buffers = cfg.pop("buffers", True)
    scale = cfg.pop("grad_scale", None)
    gamma = cfg.pop("gamma", 0.999)
    custom = cfg.pop("custom_scale", 1.0)
    bounds = [0.01, 0.05, cfg.pop("base_momentum", 0.8), 0.9]
    shape = [7.0, 5.0, gamma, custom]
    if "one_cycle" in cfg:
        shape = cfg.pop("one_cycle")
        bounds.append(1e-4)
    kw = dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False, cycle_momentum=True)
    kw.update(cfg)

    gen = torch.Generator().manual_seed(17)
    cpu = _layout_zoo(dtype, gen, "cpu")
    gen = torch.Generator().manual_seed(17)
    gpu = _layout_zoo(dtype, gen, DEVICE)
    sides = []
    for triples, dev in ((cpu, "cpu"), (gpu, DEVICE)):
        ps = [t[0] for t in triples]
        bs = [t[2].zero_() for t in triples] if buffers else []
        counter = torch.zeros((), dtype=torch.int64, device=dev)
        sides.append((ps, [t[1] for t in triples], bs, counter, dev))
    noise = torch.Generator().manual_seed(5)
    for step in range(36):
        grads_now = [torch.randn(t[0].shape, generator=noise, dtype=torch.float64) for t in cpu]
        for ps, gs, bs, counter, dev in sides:
            for g, new in zip(gs, grads_now):
                g.copy_((new * (scale or 1.0)).to(dtype))
            gs_t = torch.tensor(scale, device=dev) if scale is not None else None
            fi = torch.zeros((), device=dev) if scale is not None else None
            op()(
                ps,
                gs,
                bs,
                [],
                counter,
                bounds,
                shape,
                mode_number,
                kw["momentum"],
                kw["dampening"],
                kw["weight_decay"],
                kw["nesterov"],
                kw["maximize"],
                kw["cycle_momentum"],
                step == 0,
                gs_t,
                fi,
            )
            counter.add_(1)
    synchronize()
    (pc, gc, bc, _, _), (pg, gg, bg, _, _) = sides
    rtol = RTOL_CPU[dtype]
    assert_close_rel([t.cpu() for t in pg], pc, rtol, "param")
    assert_close_rel([t.cpu() for t in bg], bc, rtol, "buffer")
    if scale is not None:
        assert_close_rel([t.cpu() for t in gg], gc, rtol, "grad")
    # strides are kept (nothing was replaced, only written)
    for a, b in zip(pg, pc):
        assert a.stride() == b.stride()


def _with_size1_stride(t, dim, stride):
    """``t``'s values in a new dense tensor whose stride on size-1 dimension ``dim`` is ``stride``."""
    strides = list(t.stride())
    strides[dim] = stride
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def _channels_last(t):
    """``t``'s values in channels_last strides. (t.contiguous(memory_format=...) would keep a
    (C, 1, k, k) tensor's contiguous strides: with one channel it already counts as
    channels_last-contiguous.)"""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last).copy_(t)


#: (shape, param layout, grad layout, buffer layout): strides that differ only on size-1
#: dimensions (tests/test_layouts.py has the CPU op's cases).
SIZE_ONE_LAYOUTS = {
    "depthwise-contig-param-cl-grad": ((64, 1, 3, 3), lambda t: t, _channels_last, lambda t: t),
    "depthwise-cl-param-contig-grad": ((64, 1, 5, 5), _channels_last, lambda t: t, _channels_last),
    # several chunks, a different stride on the size-1 dimension in each tensor
    "depthwise-odd-strides-chunks": (
        (300, 1, 15, 15),
        lambda t: _with_size1_stride(t, 1, 1),
        lambda t: _with_size1_stride(t, 1, 12345),
        lambda t: _with_size1_stride(t, 1, 2),
    ),
    "row-from-transpose": (
        (1, 4099),
        lambda t: t,
        lambda t: t.t().contiguous().t(),
        lambda t: _with_size1_stride(t, 0, 7),
    ),
}
_COPY_OPS = ("aten::contiguous", "aten::clone", "aten::copy_", "aten::empty_like", "aten::empty_strided")


def _aten_ops_run_by(fn):
    """The op names dispatched while ``fn`` runs (inside the op too), or None without a profiler."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    except Exception:  # noqa: BLE001 - the profiler is optional here
        fn()
        return None
    return [e.name for e in prof.events()]


@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_size_one_strides_are_not_staged(dtype):
    """A depthwise convolution's weight (C, 1, k, k) whose grad / momentum buffer differ in
    strides only on the size-1 dimension is walked in place (issue 15): no copy runs
    inside the op at any step, and params, buffers and unscaled grads agree with the CPU
    op stepping contiguous copies."""
    need_gpu()
    gen = torch.Generator().manual_seed(23)
    for name, (shape, make_p, make_g, make_b) in SIZE_ONE_LAYOUTS.items():
        p0, g0, b0 = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
        p, g, b = (make(t.to(DEVICE)) for make, t in ((make_p, p0), (make_g, g0), (make_b, b0)))
        strides = p.stride()
        pc, gc, bc = p0.clone(), g0.clone(), b0.clone()
        for step in range(3):
            scale = 256.0 if step == 2 else None
            for ps, gs, bs, dev in (([pc], [gc], [bc], "cpu"), ([p], [g], [b], DEVICE)):
                if scale is not None:
                    gs[0].mul_(scale)
                # made here, not in the profiled call: torch.tensor(x, device="cuda") copies
                scalars = (
                    torch.tensor(step, device=dev),
                    None if scale is None else torch.tensor(scale, device=dev),
                    None if scale is None else torch.zeros((), device=dev),
                )

                def call():
                    op()(
                        ps,
                        gs,
                        bs,
                        [],
                        scalars[0],
                        [0.01, 0.1, 0.8, 0.9],
                        [5.0, 7.0, 0.99, 1.0],
                        0,
                        0.9,
                        0.1,
                        0.01,
                        False,
                        False,
                        True,
                        step == 0,
                        scalars[1],
                        scalars[2],
                    )

                if dev == "cpu":
                    call()
                    continue
                names = _aten_ops_run_by(call)
                if names is not None:
                    assert "clr_ext::cyclic_sgd_" in names, (name, names)
                    copies = [n for n in names if n in _COPY_OPS]
                    assert copies == [], (name, step, copies)
            synchronize()
        rtol = RTOL_CPU[dtype]
        assert_close_rel([p.cpu()], [pc], rtol, name + " param")
        assert_close_rel([b.cpu()], [bc], rtol, name + " buffer")
        assert_close_rel([g.cpu()], [gc], rtol, name + " grad")
        assert p.stride() == strides, name


def test_found_inf_writes_nothing():
    need_gpu()
    gen = torch.Generator().manual_seed(3)
    for dtype in ALL_DTYPES:
        ps = [torch.randn(n, generator=gen).to(dtype).to(DEVICE) for n in (5, 4096, 70001)]
        gs = [torch.randn(p.shape, generator=gen).to(dtype).to(DEVICE) for p in ps]
        bs = [torch.randn(p.shape, generator=gen).to(dtype).to(DEVICE) for p in ps]
        before = [t.clone() for t in ps + gs + bs]
        counter = torch.tensor(4, device=DEVICE)

        def scaled_step(first, found_inf):
            """One step of the op with grads scaled by 256 and the given found_inf."""
            op()(
                ps,
                gs,
                bs,
                [],
                counter,
                [0.01, 0.1, 0.8, 0.9],
                [5.0, 5.0, 1.0, 1.0],
                0,
                0.9,
                0.0,
                0.01,
                False,
                False,
                True,
                first,
                torch.tensor(256.0, device=DEVICE),
                found_inf,
            )

        for inf_dtype in (torch.float32, torch.float64, torch.float16):
            for first in (False, True):
                scaled_step(first, torch.ones((), dtype=inf_dtype, device=DEVICE))
        for a, b in zip(ps + gs + bs, before):
            assert torch.equal(a, b)
        assert int(counter) == 4
        # found_inf == 0: the step applies and the grads come back unscaled
        scaled_step(False, torch.zeros((), device=DEVICE))
        assert not torch.equal(ps[1], before[1])
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        assert torch.equal(gs[1], (before[4].to(compute) / 256.0).to(dtype))


def test_many_tensors_span_several_launches():
    """More tensors than one kernel-argument table holds: several launches, one iteration."""
    need_gpu()
    per_launch = _C.cuda_max_tensors_per_launch() if not DRY_RUN else 720  # a CUDA 13 build's
    n = 2 * per_launch + 3
    gen = torch.Generator().manual_seed(11)
    sizes = [int(s) for s in torch.randint(1, 300, (n,), generator=gen)]
    sizes[n // 2] = 65536 * 2 + 1
    pc = [torch.randn(s, generator=gen) for s in sizes]
    gc = [torch.randn(s, generator=gen) for s in sizes]
    bc = [torch.randn(s, generator=gen) for s in sizes]
    pg, gg, bg = ([t.to(DEVICE) for t in ts] for ts in (pc, gc, bc))
    args = ([0.01, 0.1, 0.8, 0.9], [3.0, 3.0, 1.0, 1.0], 1, 0.0, 0.0, 0.001, False, False, True, False, None, None)
    for step in range(5):
        op()(pc, gc, bc, [], torch.tensor(step), *args)
        op()(pg, gg, bg, [], torch.tensor(step, device=DEVICE), *args)
    assert_close_rel([t.cpu() for t in pg], pc, RTOL_CPU[torch.float32], "param")
    assert_close_rel([t.cpu() for t in bg], bc, RTOL_CPU[torch.float32], "buffer")


NOT_STARTED = 2**63 - 1  # a momentum_start before the buffer's first step


@parametrize("case", ("applied", "found_inf", "momentum-0", "applied-packed"))
def test_momentum_start_matches_cpu_op(case):
    """Per-param starts decided in the kernel: the same buffers start (buffer = g) as on
    the CPU, in tensors of many chunks (many blocks read and write one start), and a
    skipped or momentum-0 step starts none."""
    need_gpu()
    gen = torch.Generator().manual_seed(12)
    sizes = (3, 3 * 65536 + 7, 1031, 70001, 9)
    iteration = 15  # the peak of the second cycle: the cycled momentum is exactly base_momentum
    start_values = (NOT_STARTED, iteration, 5, -1, NOT_STARTED)
    sides = {}
    for dev in ("cpu", DEVICE):
        gen.manual_seed(12)
        ps, gs, bs = ([torch.randn(n, generator=gen).to(dev) for n in sizes] for _ in range(3))
        if case.endswith("packed"):  # one tensor, an element per param
            packed = torch.tensor(start_values, device=dev)
            ss, op_ss = list(packed), [packed]
        else:
            ss = op_ss = [torch.tensor(v, device=dev) for v in start_values]
        bounds = [0.01, 0.1, 0.0 if case == "momentum-0" else 0.8, 0.9]
        found_inf = torch.tensor(1.0 if case == "found_inf" else 0.0, device=dev)
        before = [b.clone() for b in bs]
        op()(
            ps,
            gs,
            bs,
            op_ss,
            torch.tensor(iteration, device=dev),
            bounds,
            [5.0, 5.0, 1.0, 1.0],
            0,
            0.9,
            0.3,
            0.0,
            False,
            False,
            True,
            False,
            torch.tensor(1.0, device=dev),
            found_inf,
        )
        sides[dev] = (ps, bs, ss, before)
    synchronize()
    (pc, bc, sc, bc0), (pg, bg, sg, _) = sides["cpu"], sides[DEVICE]
    assert [int(s) for s in sg] == [int(s) for s in sc]
    applied = case.startswith("applied")
    want = [iteration, iteration, 5, -1, iteration] if applied else list(start_values)
    assert [int(s) for s in sg] == want
    assert_close_rel([t.cpu() for t in pg], pc, RTOL_CPU[torch.float32], "param")
    assert_close_rel([t.cpu() for t in bg], bc, RTOL_CPU[torch.float32], "buffer")
    if not applied:
        for b, b0 in zip(bg, bc0):
            assert torch.equal(b.cpu(), b0)


def test_opcheck_cuda():
    need_gpu()
    gen = torch.Generator().manual_seed(2)
    for dtype in ALL_DTYPES:
        for variant in (dict(), dict(first_step=True), dict(grad_scale=8.0), dict(buffers=False)):
            v = dict(variant)
            buffers = v.pop("buffers", True)
            ps = [torch.randn(n, generator=gen).to(dtype).to(DEVICE) for n in (1, 17, 1031)]
            gs = [torch.randn(n, generator=gen).to(dtype).to(DEVICE) for n in (1, 17, 1031)]
            bs = [torch.randn(n, generator=gen).to(dtype).to(DEVICE) for n in (1, 17, 1031)] if buffers else []
            scale = v.pop("grad_scale", None)
            args = (
                ps,
                gs,
                bs,
                [],
                torch.tensor(3, device=DEVICE),
                [0.01, 0.1, 0.8, 0.9],
                [5.0, 7.0, 0.99, 1.0],
                0,
                0.9 if buffers else 0.0,
                0.0,
                0.0,
                False,
                False,
                buffers,
                v.get("first_step", False),
                None if scale is None else torch.tensor(scale, device=DEVICE),
                None if scale is None else torch.zeros((), device=DEVICE),
            )
            torch.library.opcheck(op(), args)


# ------------------------------------------- CyclicSGD vs torch fused SGD + CyclicLR


def _make_problem(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [[(3,), (1031,), (70001,)], [(17, 5), (8,)]]
    init = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in g] for g in shapes]
    targets = [torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE) for g in shapes for s in g]
    return init, targets


TORCH_VARIANTS = [
    dict(momentum=0.9, cycle_momentum=True),  # momentum cycled between 0.8 and 0.9
    dict(momentum=0.9, cycle_momentum=False, dampening=0.1, weight_decay=0.01),
    dict(momentum=0.9, cycle_momentum=True, nesterov=True, maximize=True),
    dict(momentum=0.0, cycle_momentum=False, weight_decay=0.01),
]


@parametrize("variant", range(len(TORCH_VARIANTS)))
@parametrize("mode", ("triangular", "triangular2", "exp_range"))
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_cyclic_sgd_matches_torch_fused(dtype, mode, variant):
    """1,000 steps (4+ cycles) of CyclicSGD on CUDA against torch.optim.SGD + CyclicLR
    (fused=True for fp32 / fp64; for fp16 / bf16 an fp32 run rounded to the half type
    once per step): params within api.md's tolerance, lr / momentum equal after every step."""
    need_gpu()
    v = dict(TORCH_VARIANTS[variant])
    cycle_momentum = v.pop("cycle_momentum")
    sched_kw = dict(
        base_lr=[0.01, 0.002],
        max_lr=[0.05, 0.02],
        step_size_up=130,
        step_size_down=90,
        mode=mode,
        gamma=0.9995,
        cycle_momentum=cycle_momentum,
        base_momentum=0.8,
        max_momentum=0.9,
    )
    init, targets = _make_problem(dtype, seed=7 + variant)
    mine = [[t.to(device=DEVICE, dtype=dtype, copy=True).requires_grad_() for t in g] for g in init]
    opt = cyclic_sgd([{"params": g} for g in mine], backend=BACKEND, **sched_kw, **v)
    half = dtype in (torch.float16, torch.bfloat16)
    # float16 / bfloat16: against an fp32 run rounded to the half type once per step, as
    # the CPU suite does (tests/conftest.py), not torch's fused half kernel (see
    # _HalfViaFp32Pair). fp32 / fp64: torch.optim.SGD(fused=True) itself.
    pair = _HalfViaFp32Pair if half else _TorchFusedPair
    ref = pair([[t.to(device=DEVICE, dtype=dtype) for t in g] for g in init], v, sched_kw)
    flat_mine = [p for g in mine for p in g]
    flat_ref = ref.params
    noise = torch.Generator(device=DEVICE).manual_seed(1)
    # Under maximize the step climbs the gradient: flip the pull towards the targets so
    # that both runs converge instead of growing without bound (fp16 would overflow).
    pull = -0.5 if v.get("maximize") else 0.5
    steps = 1000
    for k in range(steps):
        ref_grads = []
        for i, (pm, pr, tgt) in enumerate(zip(flat_mine, flat_ref, targets)):
            if i == 0 and k % 9 == 4:  # a param without a gradient now and then
                pm.grad = None
                ref_grads.append(None)
                continue
            n = 0.1 * torch.randn(tgt.shape, generator=noise, device=DEVICE, dtype=torch.float64)
            pm.grad = (pull * (pm.detach().double() - tgt) + n).to(dtype)
            ref_grads.append((pull * (pr.detach().double() - tgt) + n).to(dtype))
        opt.step()
        ref.step(ref_grads)
        assert opt.get_last_lr() == ref.last_lr(), (k, opt.get_last_lr(), ref.last_lr())
        if cycle_momentum:
            assert [g["momentum"] for g in opt.param_groups] == [ref.group_momentum(i) for i in range(len(init))], k
    assert opt.iteration == steps
    assert_close_rel(flat_mine, flat_ref, RTOL_TORCH[dtype], "param")
    bm = [opt.state[p].get("momentum_buffer") for p in flat_mine]
    br = [ref.buffer(i) for i in range(len(flat_ref))]
    assert [b is None for b in bm] == [b is None for b in br]
    if v["momentum"] != 0.0 or cycle_momentum:
        # Buffers of half-precision params are stored rounded at every step: the rounding
        # differences of the two kernels accumulate there (tests/test_parity.py allows the
        # same factor on the CPU).
        assert_close_rel(bm, br, RTOL_TORCH[dtype] * (2.0 if half else 1.0), "buffer")


ONE_CYCLE_VARIANTS = [
    dict(anneal_strategy="cos", three_phase=False, momentum=0.9, cycle_momentum=True),
    dict(
        anneal_strategy="linear", three_phase=True, momentum=0.9, cycle_momentum=False, dampening=0.1, weight_decay=0.01
    ),
    dict(anneal_strategy="cos", three_phase=False, momentum=0.9, cycle_momentum=True, nesterov=True, maximize=True),
]


@parametrize("variant", range(len(ONE_CYCLE_VARIANTS)))
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_one_cycle_sgd_matches_torch_fused(dtype, variant):
    """A whole 1cycle schedule (600 steps) of OneCycleSGD on CUDA against
    torch.optim.SGD + OneCycleLR, as test_cyclic_sgd_matches_torch_fused does for CyclicLR."""
    need_gpu()
    v = dict(ONE_CYCLE_VARIANTS[variant])
    steps = 600 if not DRY_RUN else 150  # (the dry run proves this code, not the kernel)
    sched_kw = dict(
        max_lr=[0.05, 0.02],
        total_steps=steps,
        pct_start=0.3,
        anneal_strategy=v.pop("anneal_strategy"),
        three_phase=v.pop("three_phase"),
        cycle_momentum=v.pop("cycle_momentum"),
        base_momentum=0.85,
        max_momentum=0.95,
    )
    init, targets = _make_problem(dtype, seed=11 + variant)
    mine = [[t.to(device=DEVICE, dtype=dtype, copy=True).requires_grad_() for t in g] for g in init]
    opt = clr_ext.OneCycleSGD([{"params": g} for g in mine], backend=BACKEND, **sched_kw, **v)
    if DRY_RUN:
        opt._host_decided_types = ()
    half = dtype in (torch.float16, torch.bfloat16)
    pair = _HalfViaFp32Pair if half else _TorchFusedPair
    ref = pair(
        [[t.to(device=DEVICE, dtype=dtype) for t in g] for g in init],
        v,
        sched_kw,
        scheduler=torch.optim.lr_scheduler.OneCycleLR,
    )
    flat_mine, flat_ref = [p for g in mine for p in g], ref.params
    noise = torch.Generator(device=DEVICE).manual_seed(2)
    pull = -0.5 if v.get("maximize") else 0.5
    for k in range(steps):
        ref_grads = []
        for i, (pm, pr, tgt) in enumerate(zip(flat_mine, flat_ref, targets)):
            n = 0.1 * torch.randn(tgt.shape, generator=noise, device=DEVICE, dtype=torch.float64)
            pm.grad = (pull * (pm.detach().double() - tgt) + n).to(dtype)
            ref_grads.append((pull * (pr.detach().double() - tgt) + n).to(dtype))
        ref.last = k == steps - 1
        opt.step()
        ref.step(ref_grads)
        if not ref.last:
            assert opt.get_last_lr() == ref.last_lr(), (k, opt.get_last_lr(), ref.last_lr())
    assert_close_rel(flat_mine, flat_ref, RTOL_TORCH[dtype], "param")


class _TorchFusedPair:
    """torch.optim.SGD(fused=True) + CyclicLR / OneCycleLR on copies of ``groups`` (lists of
    tensors), with the interface of tests/conftest.py's ReferencePair (which imports pytest,
    which the GPU machine may lack). A subclass names another torch optimizer (AdamW) and
    the per-param state it keeps."""

    optimizer = torch.optim.SGD
    state_keys = ("momentum_buffer",)

    def __init__(self, groups, opt_kwargs, sched_kwargs, scheduler=torch.optim.lr_scheduler.CyclicLR):
        self._groups = [[t.detach().clone().requires_grad_() for t in g] for g in groups]
        self.params = [p for g in self._groups for p in g]
        self.opt = self.optimizer([{"params": g} for g in self._groups], lr=0.01, fused=True, **opt_kwargs)
        self.sched = scheduler(self.opt, **sched_kwargs)
        self.last = False  # OneCycleLR raises on a step past its end: set before the last step

    def step(self, grads):
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.step()
        if not self.last:
            self.sched.step()

    def last_lr(self):
        return self.sched.get_last_lr()

    def group_momentum(self, gi):
        return self.opt.param_groups[gi]["momentum"]

    def state(self, i, key):
        return self.opt.state.get(self.params[i], {}).get(key)

    def buffer(self, i):
        return self.state(i, "momentum_buffer")


class _HalfViaFp32Pair(_TorchFusedPair):
    """The float16 / bfloat16 reference: torch's optimizer + scheduler run in float32 on
    shadows loaded from the half values, params and state (momentum buffers; moments)
    rounded to the half type once per step (one fp32 computation, one rounding per element
    and step, as a fused kernel, ours included, stores them; AdamW's parameter update uses
    the unrounded moments, as the fused kernels do). tests/conftest.py's ReferencePair does
    the same for the CPU suite; this copy needs no pytest.

    Not torch's CUDA fused SGD: that kernel computes with double scalars and contracted
    multiply-adds, so a value can round to the other half-precision neighbour, and the
    gradient feeds the difference back over 1,000 steps: a tolerance set on the CPU
    references would fail the one GPU run for no fault of either kernel (issue 15)."""

    def __init__(self, groups, opt_kwargs, sched_kwargs, scheduler=torch.optim.lr_scheduler.CyclicLR):
        self.params = [t.detach().clone() for g in groups for t in g]
        self._shadow_groups = [[t.detach().float().requires_grad_() for t in g] for g in groups]
        self._shadows = [c for g in self._shadow_groups for c in g]
        self.opt = self.optimizer([{"params": g} for g in self._shadow_groups], lr=0.01, **opt_kwargs)
        self.sched = scheduler(self.opt, **sched_kwargs)
        self.last = False

    def step(self, grads):
        for p, c, g in zip(self.params, self._shadows, grads):
            c.data.copy_(p)  # exact: every half value is a float32 value
            c.grad = None if g is None else g.detach().float()
        self.opt.step()
        if not self.last:
            self.sched.step()
        for p, c in zip(self.params, self._shadows):
            p.copy_(c.detach())  # the one rounding per step
            for key in self.state_keys:
                t = self.opt.state.get(c, {}).get(key)
                if t is not None:
                    t.copy_(t.to(p.dtype).float())

    def state(self, i, key):
        value = self.opt.state.get(self._shadows[i], {}).get(key)
        if isinstance(value, torch.Tensor) and key != "step":
            value = value.to(self.params[i].dtype)
        return value


# ------------------------------------------------------------------------ no host sync


def _tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(
        device=DEVICE, dtype=dtype
    )


class _WrapperOps:
    """Records the ops that CyclicSGD.step() dispatches itself, apart from those inside
    the backend's op (the CPU op of a dry run reads its scalars on the host, as it may),
    and how many times the op ran."""

    SCALAR_READS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.equal")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        record = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func)
                if record.inside_op == 0 and not name.startswith("profiler."):
                    record.ops.append(name)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.ops: List[str] = []
        self.op_runs = 0
        self.inside_op = 0

    def __enter__(self):
        original = _backends._CompiledOpBackend.run
        record = self

        def run(backend, *args, **kwargs):
            record.op_runs += 1
            record.inside_op += 1
            try:
                return original(backend, *args, **kwargs)
            finally:
                record.inside_op -= 1

        self._original = original
        _backends._CompiledOpBackend.run = run
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        _backends._CompiledOpBackend.run = self._original

    def scalar_reads(self):
        return [op for op in self.ops if op.startswith(self.SCALAR_READS)]


def test_step_dispatches_one_op_and_reads_no_device_value():
    """What the Python step itself dispatches on the CUDA path: from the second step on,
    one op call per bucket plus the counter's add_, and never a read of a device value
    (the usual sources of host syncs: .item(), bool(), nonzero), also with AMP's
    grad_scale / found_inf, a param without a gradient, and a param that gets its first
    gradient late. On a GPU, test_step_issues_no_host_sync checks the syncs themselves;
    this also runs in the CPU dry run."""
    need_gpu()
    params = [torch.zeros(s, device=DEVICE, requires_grad=True) for s in _resnet50_shapes_small()]
    late = torch.zeros(7, device=DEVICE, requires_grad=True)
    opt = cyclic_sgd(params + [late], 0.01, 0.1, step_size_up=3, momentum=0.9, dampening=0.1, weight_decay=1e-4)
    for k in range(8):
        for p in params:
            p.grad = torch.full_like(p, 0.01 * (k + 1))
        if k == 2:
            params[5].grad = None
        if k >= 4:
            late.grad = torch.ones_like(late)
            opt.grad_scale = torch.tensor(2.0, device=DEVICE)
            opt.found_inf = torch.tensor(float(k == 6), device=DEVICE)
        with _WrapperOps() as seen:
            opt.step()
        assert seen.scalar_reads() == [], (k, seen.ops)
        assert seen.op_runs == 1, (k, seen.op_runs)
        # In a steady step nothing else runs. (When the set of params with gradients
        # changes, the starts are passed as one view per param until it is steady again.)
        if k in (1, 6, 7):
            assert seen.ops == ["aten.add_.Tensor"], (k, seen.ops)
    synchronize()
    assert opt.iteration == 8


def test_one_kernel_launch_per_step():
    """ResNet-50's 161 parameter tensors: one cyclic_sgd kernel per step (+ the counter)."""
    need_real_gpu()
    params = [torch.zeros(s, device=DEVICE, requires_grad=True) for s in _resnet50_shapes_small()]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = cyclic_sgd(params, 0.01, 0.1)
    opt.step()
    synchronize()
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                opt.step()
            synchronize()
    except Exception as e:  # pragma: no cover - profiler unavailable
        _skip("torch.profiler unavailable: %s" % e)
    names = [
        e.name
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]  # kernels and copies only
    if not names:
        _skip("the profiler recorded no CUDA kernels")
    ours = [n for n in names if "cyclic_sgd_kernel" in n]
    assert len(ours) == 3, names
    assert len(names) <= 6, names  # per step: the update and at most the counter's add_


def test_compiled_step_matches_eager_and_is_traced_twice():
    """torch.compile(fullgraph=True) of opt.step() on CUDA (issue 5): eager's numbers and
    host LRs after every call, two traces in all (the schedule is read from the device
    counter, so the traced step depends on no per-step Python number)."""
    need_gpu()
    steps = 3 * torch._dynamo.config.recompile_limit
    x = torch.randn(16, 32, device=DEVICE, dtype=torch.float64)
    ref_model, model = _tiny_model(dtype=torch.float64), _tiny_model(dtype=torch.float64)
    cfg = dict(step_size_up=3, step_size_down=5, mode="triangular2", momentum=0.9, weight_decay=1e-4)
    ref_opt = cyclic_sgd(ref_model.parameters(), 0.01, 0.1, **cfg)
    opt = cyclic_sgd(model.parameters(), 0.01, 0.1, **cfg)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda: opt.step(), fullgraph=True, backend=counter)
        for k in range(steps):
            for m, o, run in ((ref_model, ref_opt, ref_opt.step), (model, opt, compiled)):
                o.zero_grad(set_to_none=True)
                m(x * (k + 1)).square().mean().backward()
                run()
            assert opt.get_last_lr() == ref_opt.get_last_lr(), k
            assert opt.iteration == k + 1
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == 2
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"], rtol=1e-13, atol=1e-13
        )


def _resnet50_shapes_small():
    """ResNet-50's 161 parameter shapes, with channel counts divided by 8 (fast to allocate)."""
    from model_shapes import resnet50_param_shapes

    return [tuple(max(1, d // 8) if i < 2 else d for i, d in enumerate(s)) for s in resnet50_param_shapes()]


# ------------------------------------------------------------------- CUDA graph capture


def _chain(kw):
    """A warmup, the cycle of ``kw`` and SGDR: a schedule value of three segments."""
    cyclic = {key: kw[key] for key in ("step_size_up", "step_size_down", "mode") if key in kw}
    segments = [S.Linear(0.1, 1.0, 4), S.Cyclic(kw["base_lr"], kw["max_lr"], **cyclic), S.CosineRestarts(5, 2)]
    return S.Sequential(segments, [4, 20])


def _scheduled(kind, params, **kw):
    if kind == "chain":
        opt = clr_ext.SGD(
            params,
            lr=kw["max_lr"],
            schedule=_chain(kw),
            momentum=kw.get("momentum", 0.9),
            weight_decay=kw.get("weight_decay", 0.0),
            backend=BACKEND,
        )
        if DRY_RUN:
            opt._host_decided_types = ()
        return opt
    if kind == "one_cycle":
        opt = clr_ext.OneCycleSGD(params, 0.1, 40, momentum=0.9, weight_decay=kw.get("weight_decay", 0.0))
        if DRY_RUN:
            opt._host_decided_types = ()
        return opt
    return cyclic_sgd(params, **kw)


@parametrize("kind", ["cyclic", "one_cycle", "chain"])
def test_capture_of_a_first_step_raises(kind):
    """Issue 15: state made inside capture would be a fill in the graph (the counter and
    momentum reset at every replay); the step refuses, with nothing changed, and works
    once an eager step has made it."""
    need_real_gpu()
    p = torch.zeros(1000, device=DEVICE, requires_grad=True)
    p.grad = torch.ones_like(p)
    opt = _scheduled(kind, [p], base_lr=0.01, max_lr=0.1, step_size_up=3, momentum=0.9)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    raised = None
    try:
        with torch.cuda.graph(graph):
            opt.step()
    except RuntimeError as err:
        raised = err
    assert raised is not None and "one eager opt.step()" in str(raised), raised
    torch.cuda.synchronize()
    assert opt.iteration == 0 and bool((p == 0).all()) and not opt._counters
    opt.step()  # eager
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(4):
        graph.replay()
    assert opt.sync() == 5


def test_replays_without_sync_then_sync():
    """The device counter advances on every replay; sync() brings the host mirror there."""
    need_real_gpu()
    p = torch.zeros(1000, device=DEVICE, requires_grad=True)
    p.grad = torch.ones_like(p)
    opt = cyclic_sgd([p], 0.01, 0.1, step_size_up=3)
    opt.step()  # eager: buffers exist
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(10):
        graph.replay()
    assert opt.sync() == 12
    assert opt.get_last_lr()[0] == clr_ext.cyclic_lr(12, 0.01, 0.1, 3)


# ------------------------------------------------------------------------------ AMP


def _amp_pair(dtype_model=torch.float32, seed=3, **kw):
    a = _tiny_model(seed=seed, dtype=dtype_model)
    b = _tiny_model(seed=seed, dtype=dtype_model)
    return a, b


def test_first_step_with_cycled_momentum_zero():
    """The cycled momentum starts at 0 (max_momentum=0): torch.optim.SGD keeps no buffer
    then and starts it with the gradient at the next step. The host does not read the
    iteration's momentum for CUDA steps: the kernel decides, and state_dict() agrees."""
    need_gpu()
    kw = dict(base_lr=0.01, max_lr=0.05, step_size_up=3, base_momentum=0.9, max_momentum=0.0)
    mine, ref = _tiny_model(seed=5), _tiny_model(seed=5)
    opt = cyclic_sgd(mine.parameters(), momentum=0.9, dampening=0.4, **kw)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, dampening=0.4)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, **kw)
    gen = torch.Generator(device=DEVICE).manual_seed(6)
    for k in range(8):
        x = torch.randn(16, 32, device=DEVICE, generator=gen)
        for model in (mine, ref):
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        opt.step()
        sgd.step()
        sched.step()
        saved = sorted(i for i, s in opt.state_dict()["state"].items() if "momentum_buffer" in s)
        assert saved == sorted(i for i, s in sgd.state_dict()["state"].items() if "momentum_buffer" in s), k
        assert_close_rel(list(mine.parameters()), list(ref.parameters()), 1e-5, "param at step %d" % k)


# ------------------------------------------------------------------- 64-bit indexing


def _free_gib():
    free, _ = torch.cuda.mem_get_info()
    return free / 2**30


@parametrize(
    "dtype,misaligned", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)], ids=lambda v: str(v)
)
def test_more_than_2_31_elements(dtype, misaligned):
    """One tensor of 2^31 + 33 elements: every element is updated, including those past
    2^31 and the tail (int64 offsets; vector and scalar paths)."""
    need_real_gpu()
    n = 2**31 + 33
    need = 3 * (n + 1) * torch.tensor([], dtype=dtype).element_size() / 2**30 + 2
    if _free_gib() < need:
        _skip("needs %.0f GiB of free GPU memory" % need)

    def make(value):
        t = torch.full((n + 1,), value, dtype=dtype, device=DEVICE)
        return t[1:] if misaligned else t[:n]

    p, g, b = make(0.5), make(1.0), make(0.0)
    counter = torch.tensor(2, device=DEVICE)
    args = ([0.01, 0.1, 0.8, 0.9], [5.0, 5.0, 1.0, 1.0], 0, 0.9, 0.0, 0.0, False, False, True)
    # reference: the CPU op on one element with the same inputs
    pr, gr, br = (torch.full((1,), v, dtype=dtype) for v in (0.5, 1.0, 0.0))
    for first in (True, False):
        op()([p], [g], [b], [], counter, *args, first, None, None)
        op()([pr], [gr], [br], [], torch.tensor(int(counter)), *args, first, None, None)
        counter.add_(1)
    synchronize()
    assert float(pr[0]) != 0.5 and float(br[0]) != 0.0
    for t, r in ((p, pr), (b, br)):
        expected = float(r[0])
        assert float(t[0]) == expected and float(t[2**31]) == expected and float(t[n - 1]) == expected
        assert bool((t == expected).all()), "some elements were not updated"
    del p, g, b
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ AdamW


def adamw_op():
    return torch.ops.clr_ext.cyclic_adamw_


def test_cuda_adamw_kernel_registered():
    """The CUDA build registers the AdamW op's CUDA kernel and its eager entry (no GPU needed)."""
    need_cuda_build()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::cyclic_adamw_", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::cyclic_adamw_", "CPU")
    assert callable(getattr(_C, "cyclic_adamw_cuda_", None))
    # 528 tensors per update launch with 32 KB of kernel parameters, 50 with 4 KB.
    assert _C.cuda_adamw_max_tensors_per_launch() in (528, 50), _C.cuda_adamw_max_tensors_per_launch()


def _adamw_zoo(dtype, gen, device, amsgrad):
    """(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq or None) per param, over
    _layout_zoo's layouts (vector body and tails, chunk boundaries, misaligned, shared
    and differing layouts, a non-dense view, an empty tensor); second moments non-negative."""
    out = []
    for p, g, m in _layout_zoo(dtype, gen, device):
        v = (m.double().abs() * 0.01).to(dtype)
        mx = (v.double() * 1.25).to(dtype) if amsgrad else None
        out.append((p, g, m.mul_(0.1), v, mx))
    return out


ADAMW_OP_CONFIGS = {
    # mode, beta1 (fixed) or cycled, weight_decay, amsgrad, maximize, grad_scale
    "tri-cycled-wd": dict(mode="triangular", weight_decay=0.01),
    "tri2-fixed-beta1-amsgrad": dict(mode="triangular2", cycle_momentum=False, amsgrad=True),
    "exp_range-max-scale": dict(mode="exp_range", maximize=True, grad_scale=1024.0, weight_decay=0.1),
    "beta1-small-amsgrad-scale": dict(
        mode="triangular", cycle_momentum=False, beta1=0.3, amsgrad=True, grad_scale=64.0
    ),
    "1cycle-cos": dict(mode=7, one_cycle=[9.0, 35.0, 0.0, 2.0]),
    "1cycle-linear-3phase-amsgrad": dict(mode=8, one_cycle=[9.0, 18.0, 35.0, 3.0], amsgrad=True),
}


@parametrize("config", list(ADAMW_OP_CONFIGS))
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_adamw_op_matches_cpu_op(dtype, config):
    """The CUDA AdamW op and the CPU op step the same tensors 36 times, each param at its
    own step count (one misses steps): params, moments, (unscaled) grads and step counts
    agree. The CPU op takes torch's (MKL) square root, the device the correctly rounded
    one: a tolerance, not bits."""
    need_gpu()
    cfg = dict(ADAMW_OP_CONFIGS[config])
    mode = cfg.pop("mode")
    mode_number = MODES[mode] if isinstance(mode, str) else mode
    scale = cfg.pop("grad_scale", None)
    amsgrad = cfg.pop("amsgrad", False)
    bounds = [0.001, 0.01, 0.85, 0.95]
    shape = [7.0, 5.0, 0.999, 1.0]
    if "one_cycle" in cfg:
        shape = cfg.pop("one_cycle")
        bounds.append(1e-6)
    kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, maximize=False, cycle_momentum=True)
    kw.update(cfg)
    sides = []
    for dev in ("cpu", DEVICE):
        zoo = _adamw_zoo(dtype, torch.Generator().manual_seed(19), dev, amsgrad)
        steps = [torch.tensor(float(3 * i), device=dev) for i in range(len(zoo))]
        counter = torch.zeros((), dtype=torch.int64, device=dev)
        sides.append((zoo, steps, counter, dev))
    noise = torch.Generator().manual_seed(6)
    n_steps = 36 if not DRY_RUN else 3  # (the dry run proves this code, not the kernel)
    for step in range(n_steps):
        grads_now = [torch.randn(t[0].shape, generator=noise, dtype=torch.float64) for t in sides[0][0]]
        for zoo, steps, counter, dev in sides:
            for t, new in zip(zoo, grads_now):
                t[1].copy_((new * (scale or 1.0)).to(dtype))
            # param 1 misses every third step (its count falls behind)
            use = [i for i in range(len(zoo)) if not (i == 1 and step % 3 == 2)]
            gs_t = torch.tensor(scale, device=dev) if scale is not None else None
            fi = torch.zeros((), device=dev) if scale is not None else None
            adamw_op()(
                [zoo[i][0] for i in use],
                [zoo[i][1] for i in use],
                [zoo[i][2] for i in use],
                [zoo[i][3] for i in use],
                [zoo[i][4] for i in use] if amsgrad else [],
                [steps[i] for i in use],
                counter,
                bounds,
                shape,
                mode_number,
                kw["beta1"],
                kw["beta2"],
                kw["eps"],
                kw["weight_decay"],
                amsgrad,
                kw["maximize"],
                kw["cycle_momentum"],
                gs_t,
                fi,
            )
            counter.add_(1)
    synchronize()
    (zc, sc, _, _), (zg, sg, _, _) = sides
    rtol = RTOL_CPU[dtype]
    names = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    for k, name in enumerate(names):
        if name == "grad" and scale is None or name == "max_exp_avg_sq" and not amsgrad:
            continue
        assert_close_rel([t[k].cpu() for t in zg], [t[k] for t in zc], rtol, name)
    assert [float(s) for s in sg] == [float(s) for s in sc]
    assert float(sg[1]) == 3.0 + n_steps - n_steps // 3 and float(sg[0]) == n_steps
    for a, b in zip(zg, zc):
        assert a[0].stride() == b[0].stride()


def test_adamw_found_inf_changes_nothing():
    """found_inf == 1 (float32, float64 or float16 flag): no param, grad (still scaled),
    moment or step count changes; found_inf == 0: the step applies, the grads come back
    unscaled, every count advances once (also a param without elements)."""
    need_gpu()
    gen = torch.Generator().manual_seed(3)
    for dtype in ALL_DTYPES:
        for amsgrad in (False, True):
            ps = [torch.randn(n, generator=gen).to(dtype).to(DEVICE) for n in (5, 4096, 70001, 0)]
            gs = [torch.randn(p.shape, generator=gen).to(dtype).to(DEVICE) for p in ps]
            ms = [torch.randn(p.shape, generator=gen).to(dtype).to(DEVICE) for p in ps]
            vs = [torch.rand(p.shape, generator=gen).to(dtype).to(DEVICE) for p in ps]
            xs = [v * 2 for v in vs] if amsgrad else []
            steps = [torch.tensor(float(k), device=DEVICE) for k in (0, 1, 7, 2)]
            before = [t.clone() for t in ps + gs + ms + vs + xs + steps]
            counter = torch.tensor(4, device=DEVICE)
            args = (
                counter,
                [0.001, 0.01, 0.85, 0.95],
                [5.0, 5.0, 1.0, 1.0],
                0,
                0.9,
                0.999,
                1e-8,
                0.01,
                amsgrad,
                False,
                True,
            )
            for inf_dtype in (torch.float32, torch.float64, torch.float16):
                adamw_op()(
                    ps,
                    gs,
                    ms,
                    vs,
                    xs,
                    steps,
                    *args,
                    torch.tensor(256.0, device=DEVICE),
                    torch.ones((), dtype=inf_dtype, device=DEVICE),
                )
            for a, b in zip(ps + gs + ms + vs + xs + steps, before):
                assert torch.equal(a, b), (dtype, amsgrad)
            assert int(counter) == 4
            adamw_op()(
                ps, gs, ms, vs, xs, steps, *args, torch.tensor(256.0, device=DEVICE), torch.zeros((), device=DEVICE)
            )
            assert not torch.equal(ps[1], before[1])
            assert [float(s) for s in steps] == [1.0, 2.0, 8.0, 3.0]
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            assert torch.equal(gs[1], (before[5].to(compute) / 256.0).to(dtype))


def test_adamw_many_tensors_span_several_launches():
    """More tensors than one AdamW table holds (several update launches), params without
    elements among them: the same step as the CPU op, each count advanced once."""
    need_gpu()
    per_launch = _C.cuda_adamw_max_tensors_per_launch() if not DRY_RUN else 528  # a CUDA 13 build's
    n = 2 * per_launch + 3
    gen = torch.Generator().manual_seed(12)
    sizes = [int(s) for s in torch.randint(0, 300, (n,), generator=gen)]
    sizes[n // 2] = 65536 * 2 + 1
    host = [[torch.randn(s, generator=gen) for s in sizes] for _ in range(3)]
    host.insert(3, [t.abs() * 0.01 for t in host[2]])  # exp_avg_sq from exp_avg's values
    host_steps = [torch.tensor(float(k % 5)) for k in range(n)]
    dev = [[t.to(DEVICE, copy=True) for t in ts] for ts in host]
    dev_steps = [s.to(DEVICE, copy=True) for s in host_steps]
    args = ([0.001, 0.01, 0.85, 0.95], [3.0, 3.0, 1.0, 1.0], 1, 0.9, 0.999, 1e-8, 0.01, False, False, True, None, None)
    for step in range(4):
        adamw_op()(*host, [], host_steps, torch.tensor(step), *args)
        adamw_op()(*dev, [], dev_steps, torch.tensor(step, device=DEVICE), *args)
    synchronize()
    for name, a, b in zip(("param", "grad", "exp_avg", "exp_avg_sq"), dev, host):
        assert_close_rel([t.cpu() for t in a], b, RTOL_CPU[torch.float32], name)
    assert [float(s) for s in dev_steps] == [float(s) for s in host_steps] == [float(k % 5 + 4) for k in range(n)]


class _TorchAdamWPair(_TorchFusedPair):
    """torch.optim.AdamW(fused=True) + CyclicLR / OneCycleLR on copies of ``groups``."""

    optimizer = torch.optim.AdamW
    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class _HalfAdamWViaFp32Pair(_HalfViaFp32Pair):
    """The float16 / bfloat16 reference for AdamW, as _HalfViaFp32Pair for SGD."""

    optimizer = _TorchAdamWPair.optimizer
    state_keys = _TorchAdamWPair.state_keys


ADAMW_TORCH_VARIANTS = [
    dict(mode="triangular", cycle_momentum=True, weight_decay=0.01),
    dict(mode="triangular2", cycle_momentum=False, amsgrad=True, weight_decay=0.1, betas=(0.8, 0.99)),
    dict(mode="exp_range", cycle_momentum=True, maximize=True, amsgrad=True, eps=1e-6),
]


def _run_adamw_vs_torch(dtype, opt_factory, ref_factory, steps, seed, maximize, one_cycle=False):
    init, targets = _make_problem(dtype, seed=seed)
    mine = [[t.to(device=DEVICE, dtype=dtype, copy=True).requires_grad_() for t in g] for g in init]
    opt = opt_factory([{"params": g} for g in mine])
    half = dtype in (torch.float16, torch.bfloat16)
    ref = ref_factory(
        _HalfAdamWViaFp32Pair if half else _TorchAdamWPair,
        [[t.to(device=DEVICE, dtype=dtype) for t in g] for g in init],
    )
    flat_mine, flat_ref = [p for g in mine for p in g], ref.params
    noise = torch.Generator(device=DEVICE).manual_seed(seed)
    pull = -0.5 if maximize else 0.5
    for k in range(steps):
        ref_grads = []
        for i, (pm, pr, tgt) in enumerate(zip(flat_mine, flat_ref, targets)):
            if i == 0 and k % 9 == 4:  # a param without a gradient now and then: its count falls behind
                pm.grad = None
                ref_grads.append(None)
                continue
            n = 0.1 * torch.randn(tgt.shape, generator=noise, device=DEVICE, dtype=torch.float64)
            pm.grad = (pull * (pm.detach().double() - tgt) + n).to(dtype)
            ref_grads.append((pull * (pr.detach().double() - tgt) + n).to(dtype))
        ref.last = one_cycle and k == steps - 1  # OneCycleLR raises on a step past its end
        opt.step()
        ref.step(ref_grads)
        if not ref.last:
            assert opt.get_last_lr() == ref.last_lr(), (k, opt.get_last_lr(), ref.last_lr())
            assert [g["betas"] for g in opt.param_groups] == [tuple(g["betas"]) for g in ref.opt.param_groups], k
    assert opt.iteration == steps
    rtol = RTOL_TORCH[dtype]
    assert_close_rel(flat_mine, flat_ref, rtol, "param")
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        got = [opt.state[p].get(key) for p in flat_mine]
        want = [ref.state(i, key) for i in range(len(flat_ref))]
        assert [g is None for g in got] == [w is None for w in want], key
        if got[0] is not None:
            # moments of half params are stored rounded at every step (as for SGD's buffers)
            assert_close_rel(got, want, rtol * (2.0 if half else 1.0), key)
    assert [float(opt.state[p]["step"]) for p in flat_mine] == [
        float(ref.state(i, "step")) for i in range(len(flat_ref))
    ]
    assert all(opt.state[p]["step"].device == p.device for p in flat_mine)


@parametrize("variant", range(len(ADAMW_TORCH_VARIANTS)))
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_cyclic_adamw_matches_torch_fused(dtype, variant):
    """1,000 steps of CyclicAdamW on CUDA against torch.optim.AdamW(fused=True) + CyclicLR
    (fp16 / bf16: an fp32 AdamW run rounded once per step), two groups with their own
    bounds, a param that misses steps: params and moments within api.md's tolerance, step
    counts, lrs and betas equal after every step."""
    need_gpu()
    v = dict(ADAMW_TORCH_VARIANTS[variant])
    steps = 1000 if not DRY_RUN else 20  # (the dry run proves this code, not the kernel)
    sched_kw = dict(
        base_lr=[0.001, 0.0005],
        max_lr=[0.01, 0.004],
        step_size_up=130 if not DRY_RUN else 7,
        step_size_down=90 if not DRY_RUN else 5,
        mode=v.pop("mode"),
        gamma=0.9995,
        cycle_momentum=v.pop("cycle_momentum"),
        base_momentum=0.8,
        max_momentum=0.9,
    )
    _run_adamw_vs_torch(
        dtype,
        lambda groups: clr_ext.CyclicAdamW(groups, backend=BACKEND, **sched_kw, **v),
        lambda pair, groups: pair(groups, v, sched_kw),
        steps,
        21 + variant,
        v.get("maximize", False),
    )


ADAMW_ONE_CYCLE_VARIANTS = [
    dict(anneal_strategy="cos", three_phase=False, cycle_momentum=True, weight_decay=0.01),
    dict(anneal_strategy="linear", three_phase=True, cycle_momentum=True, amsgrad=True, maximize=True),
]


@parametrize("variant", range(len(ADAMW_ONE_CYCLE_VARIANTS)))
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_one_cycle_adamw_matches_torch_fused(dtype, variant):
    """A whole 1cycle schedule (600 steps) of OneCycleAdamW on CUDA against
    torch.optim.AdamW(fused=True) + OneCycleLR, as test_cyclic_adamw_matches_torch_fused."""
    need_gpu()
    v = dict(ADAMW_ONE_CYCLE_VARIANTS[variant])
    steps = 600 if not DRY_RUN else 20
    sched_kw = dict(
        max_lr=[0.01, 0.004],
        total_steps=steps,
        pct_start=0.3,
        anneal_strategy=v.pop("anneal_strategy"),
        three_phase=v.pop("three_phase"),
        cycle_momentum=v.pop("cycle_momentum"),
        base_momentum=0.85,
        max_momentum=0.95,
    )
    _run_adamw_vs_torch(
        dtype,
        lambda groups: clr_ext.OneCycleAdamW(groups, backend=BACKEND, **sched_kw, **v),
        lambda pair, groups: pair(groups, v, sched_kw, scheduler=torch.optim.lr_scheduler.OneCycleLR),
        steps,
        31 + variant,
        v.get("maximize", False),
        one_cycle=True,
    )


def _scheduled_adamw(kind, params, **kw):
    if kind == "chain":
        return clr_ext.AdamW(
            params,
            lr=kw["max_lr"],
            schedule=_chain(kw),
            weight_decay=kw.get("weight_decay", 0.01),
            amsgrad=kw.get("amsgrad", False),
            backend=BACKEND,
        )
    if kind == "one_cycle":
        return clr_ext.OneCycleAdamW(
            params,
            0.01,
            40,
            weight_decay=kw.get("weight_decay", 0.01),
            amsgrad=kw.get("amsgrad", False),
            backend=BACKEND,
        )
    return clr_ext.CyclicAdamW(params, backend=BACKEND, **kw)


# ----------------------------------------------- schedules as values (clr_ext.SGD / AdamW)

_L = torch.optim.lr_scheduler


def _warmup_then(o, then):
    warmup = _L.LinearLR(o, 0.1, 1.0, 20)  # built first, as the value's order says
    return _L.SequentialLR(o, [warmup, then(o)], [20])


CHAIN_PAIRS = {
    # (ours, torch's optimizer, torch's scheduler(s)) with a warmup in front of SGDR / a cycle
    "sgd": (
        lambda ps: clr_ext.SGD(
            ps, lr=0.05, schedule=S.Warmup(S.CosineRestarts(30, 2, 1e-4), 20, 0.1), momentum=0.9, backend=BACKEND
        ),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, fused=not DRY_RUN),
        lambda o: _warmup_then(o, lambda o: _L.CosineAnnealingWarmRestarts(o, 30, 2, 1e-4)),
    ),
    "adamw": (
        lambda ps: clr_ext.AdamW(
            ps, lr=3e-3, schedule=S.Warmup(S.Cyclic(1e-4, 3e-3, 25, mode="triangular2"), 20, 0.1), backend=BACKEND
        ),
        lambda ps: torch.optim.AdamW(ps, lr=3e-3, fused=not DRY_RUN),
        lambda o: _warmup_then(o, lambda o: _L.CyclicLR(o, 1e-4, 3e-3, 25, mode="triangular2")),
    ),
}


@parametrize("rule", list(CHAIN_PAIRS))
def test_schedule_chain_matches_torch(rule):
    """300 steps of clr_ext.SGD / AdamW with a warmup + SGDR / cycle chain, evaluated on the
    device, against torch's fused optimizer with SequentialLR: the LR of every step (within
    LinearLR's recursive roundings) and the params."""
    need_gpu()
    make, make_torch, make_sched = CHAIN_PAIRS[rule]
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(4099, generator=gen), torch.randn(33, 7, generator=gen)]
    mine = [t.to(DEVICE).requires_grad_() for t in init]
    ref = [t.to(DEVICE).requires_grad_() for t in init]
    opt, ref_opt = make(mine), make_torch(ref)
    if DRY_RUN and rule == "sgd":
        opt._host_decided_types = ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make_sched(ref_opt)
        for k in range(300):
            assert opt.get_last_lr() == pytest_approx(sched.get_last_lr()), k
            for a, b in zip(mine, ref):
                a.grad = torch.sin(a.detach() * (k + 1)) + 0.1
                b.grad = torch.sin(b.detach() * (k + 1)) + 0.1
            opt.step()
            ref_opt.step()
            sched.step()
    synchronize()
    assert_close_rel(mine, ref, 1e-5, "param")


def pytest_approx(values):
    """LRs equal up to LinearLR's recursive roundings (one per factor: 20 here)."""
    return [_Approx(v) for v in values]


class _Approx:
    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return abs(other - self.value) <= 64 * 2.0**-52 * abs(self.value)

    def __repr__(self):
        return f"~{self.value!r}"


# ------------------------------------------- the properties every rule must have, once


def _sgd_graph_state_close(opt, a, eager_opt, b, steps):
    torch.testing.assert_close(
        opt.state[a]["momentum_buffer"], eager_opt.state[b]["momentum_buffer"], rtol=1e-6, atol=1e-7
    )


def _adamw_graph_state_close(opt, a, eager_opt, b, steps):
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt.state[a][key], eager_opt.state[b][key], rtol=1e-6, atol=1e-9)
    assert float(opt.state[a]["step"]) == float(eager_opt.state[b]["step"]) == steps


def _sgd_amp_optimizers(mine, ref, kw, overflow_steps):
    # torch's fused SGD leaves empty_like (uninitialised) buffers behind an overflow on the
    # very first step; compare that case against the non-fused SGD instead.
    fused = 0 not in overflow_steps
    # dampening != 0: a buffer started from zeros instead of the gradient would show
    opt = cyclic_sgd(mine.parameters(), momentum=0.9, dampening=0.3, **kw)
    sgd = torch.optim.SGD(ref.parameters(), lr=kw["base_lr"], momentum=0.9, dampening=0.3, fused=fused)
    return opt, sgd, torch.optim.lr_scheduler.CyclicLR(sgd, **kw)


def _adamw_amp_optimizers(mine, ref, kw, overflow_steps):
    opt = clr_ext.CyclicAdamW(mine.parameters(), weight_decay=0.01, amsgrad=True, backend=BACKEND, **kw)
    adamw = torch.optim.AdamW(ref.parameters(), lr=kw["base_lr"], weight_decay=0.01, amsgrad=True, fused=True)
    return opt, adamw, torch.optim.lr_scheduler.CyclicLR(adamw, base_momentum=0.8, max_momentum=0.9, **kw)


def _sgd_amp_state_close(opt, a, ref_opt, b, overflow_steps):
    assert_close_rel([opt.state[a]["momentum_buffer"]], [ref_opt.state[b]["momentum_buffer"]], 1e-5, "buffer")


def _adamw_amp_state_close(opt, a, ref_opt, b, overflow_steps):
    # skipped steps leave the step counts untouched
    assert float(opt.state[a]["step"]) == float(ref_opt.state[b]["step"]) == 16 - len(overflow_steps)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert_close_rel([opt.state[a][key]], [ref_opt.state[b][key]], 1e-5, key)


def _no_sync_state_sgd(opt, model):
    pass  # SGD keeps no per-param count


def _no_sync_state_adamw(opt, model):
    # 8 steps: the bias missed one, and one was skipped for all
    assert float(opt.state[model[0].weight]["step"]) == 7.0
    assert float(opt.state[model[0].bias]["step"]) == 6.0


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One rule's side of the properties below: how its Cyclic* / OneCycle* optimizer is
    made, the lr range and weight decay its tests use, its state checks and torch's
    reference for it under GradScaler."""

    make: Callable  # (kind, params, **cyclic_kwargs) -> optimizer
    base_lr: float
    max_lr: float
    no_sync_kw: dict
    graph_weight_decay: float
    no_sync_state: Callable  # (opt, model) after the no-sync steps
    graph_state_close: Callable  # (opt, a, eager_opt, b, steps)
    amp_optimizers: Callable  # (mine, ref, cyclic_kwargs, overflow_steps) -> (opt, torch opt, torch sched)
    amp_state_close: Callable  # (opt, a, torch opt, b, overflow_steps)


RULES = {
    "sgd": _Rule(
        make=_scheduled,
        base_lr=0.01,
        max_lr=0.1,
        no_sync_kw=dict(weight_decay=1e-4),
        graph_weight_decay=1e-3,
        no_sync_state=_no_sync_state_sgd,
        graph_state_close=_sgd_graph_state_close,
        amp_optimizers=_sgd_amp_optimizers,
        amp_state_close=_sgd_amp_state_close,
    ),
    "adamw": _Rule(
        make=_scheduled_adamw,
        base_lr=0.001,
        max_lr=0.01,
        no_sync_kw=dict(weight_decay=1e-2, amsgrad=True),
        graph_weight_decay=1e-2,
        no_sync_state=_no_sync_state_adamw,
        graph_state_close=_adamw_graph_state_close,
        amp_optimizers=_adamw_amp_optimizers,
        amp_state_close=_adamw_amp_state_close,
    ),
}


@parametrize("kind", ["cyclic", "one_cycle", "chain"])
@parametrize("rule", list(RULES))
def test_step_issues_no_host_sync(rule, kind):
    """opt.step() under torch.cuda.set_sync_debug_mode("error"): the first step (state
    created), later steps, params without grads, and AMP's grad_scale / found_inf (a
    skipped step among them); for every rule and schedule (AdamW with amsgrad)."""
    need_real_gpu()
    r = RULES[rule]
    model = _tiny_model()
    opt = r.make(kind, model.parameters(), base_lr=r.base_lr, max_lr=r.max_lr, step_size_up=4, **r.no_sync_kw)
    x = torch.randn(16, 32, device=DEVICE)
    for k in range(8):
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        if k == 3:
            model[0].bias.grad = None
        if k >= 5:
            opt.grad_scale = torch.tensor(1.0, device=DEVICE)
            opt.found_inf = torch.tensor(float(k == 6), device=DEVICE)
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for name in ("grad_scale", "found_inf"):
            if hasattr(opt, name):
                delattr(opt, name)
    synchronize()
    assert opt.iteration == 8
    r.no_sync_state(opt, model)


@parametrize("kind", ["cyclic", "one_cycle", "chain"])
@parametrize("rule", list(RULES))
def test_whole_training_step_in_a_cuda_graph(rule, kind):
    """Forward, backward and opt.step() captured once and replayed N times give the same
    params, state (momentum buffers; moments and step counts) and lr sequence as N eager
    steps; opt.sync() refreshes the host mirror after replays. For every rule and schedule
    (the 1cycle schedule runs on the device too, past its end included)."""
    need_real_gpu()
    r = RULES[rule]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    warmup, replays = 3, 25
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    batches = [
        (torch.randn(64, 32, device=DEVICE, generator=gen), torch.randn(64, 10, device=DEVICE, generator=gen))
        for _ in range(warmup + replays)
    ]
    kw = dict(
        base_lr=r.base_lr,
        max_lr=r.max_lr,
        step_size_up=5,
        step_size_down=3,
        mode="triangular2",
        weight_decay=r.graph_weight_decay,
    )

    def loss_fn(model, x, y):
        return torch.nn.functional.mse_loss(model(x), y)

    # eager reference
    eager = _tiny_model(seed=1)
    opt_e = r.make(kind, eager.parameters(), **kw)
    eager_lrs = []
    # a chain's scale changes between replays: the graph reads it on the device
    scale_at = warmup + 7 if kind == "chain" else None
    for k, (x, y) in enumerate(batches):
        if k == scale_at:
            opt_e.scale_schedule(0.5)
        opt_e.zero_grad(set_to_none=True)
        loss_fn(eager, x, y).backward()
        opt_e.step()
        eager_lrs.append(opt_e.get_last_lr()[0])

    # captured
    model = _tiny_model(seed=1)
    opt = r.make(kind, model.parameters(), **kw)
    static_x = torch.zeros(64, 32, device=DEVICE)
    static_y = torch.zeros(64, 10, device=DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph_lrs = []
    with torch.cuda.stream(side):
        for x, y in batches[:warmup]:
            static_x.copy_(x)
            static_y.copy_(y)
            opt.zero_grad(set_to_none=True)
            loss_fn(model, static_x, static_y).backward()
            opt.step()
            graph_lrs.append(opt.get_last_lr()[0])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss_fn(model, static_x, static_y).backward()
        opt.step()
    for k, (x, y) in enumerate(batches[warmup:], warmup):
        if k == scale_at:
            opt.scale_schedule(0.5)
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        assert opt.sync() == len(graph_lrs) + 1
        graph_lrs.append(opt.get_last_lr()[0])
    synchronize()
    assert opt.iteration == opt_e.iteration == warmup + replays
    assert graph_lrs == eager_lrs
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        r.graph_state_close(opt, a, opt_e, b, warmup + replays)


@parametrize("overflow_steps", [(3, 9), (0, 1, 7)], ids=lambda s: "overflow-at-" + "-".join(map(str, s)))
@parametrize("rule", list(RULES))
def test_grad_scaler_matches_torch_fused(rule, overflow_steps):
    """torch.amp.GradScaler(DEVICE) with CyclicSGD / CyclicAdamW against torch's fused
    SGD / AdamW + CyclicLR, overflow steps included: skipped on the device (params and
    state untouched), the schedule advances."""
    need_gpu()
    r = RULES[rule]
    kw = dict(base_lr=r.base_lr, max_lr=r.max_lr, step_size_up=4, step_size_down=6, mode="triangular")
    mine, ref = _amp_pair()
    opt, ref_opt, sched = r.amp_optimizers(mine, ref, kw, overflow_steps)
    s_mine = torch.amp.GradScaler(DEVICE, init_scale=2.0**12, growth_interval=4)
    s_ref = torch.amp.GradScaler(DEVICE, init_scale=2.0**12, growth_interval=4)
    gen = torch.Generator(device=DEVICE).manual_seed(4)
    for k in range(16):
        x = torch.randn(32, 32, device=DEVICE, generator=gen)
        y = torch.randn(32, 10, device=DEVICE, generator=gen)
        for model, scaler in ((mine, s_mine), (ref, s_ref)):
            model.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            if k in overflow_steps:
                model[2].weight.grad[0, 0] = float("inf")
        s_mine.step(opt)
        s_mine.update()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()" after a skip
            s_ref.step(ref_opt)
            s_ref.update()
            sched.step()
        assert s_mine.get_scale() == s_ref.get_scale(), k
        assert opt.get_last_lr() == sched.get_last_lr(), k
        assert_close_rel(list(mine.parameters()), list(ref.parameters()), 1e-5, "param at step %d" % k)
    assert opt.iteration == 16
    for a, b in zip(mine.parameters(), ref.parameters()):
        r.amp_state_close(opt, a, ref_opt, b, overflow_steps)


# ---------------------------------------------------------------- fallback runner


def _cases(fn):
    spec = getattr(fn, "_clr_params", None)
    if pytest is not None:
        spec = []
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                spec.insert(0, (mark.args[0], list(mark.args[1])))
    if not spec:
        yield "", {}
        return
    axes = []
    for names, values in spec:
        names = [s.strip() for s in names.split(",")]
        axes.append([dict(zip(names, v if len(names) > 1 else (v,))) for v in values])
    for combo in itertools.product(*axes):
        kwargs = {}
        for part in combo:
            kwargs.update(part)
        # pytest's ids for dtypes (f32, bf16, ...), so that the same -k expressions select alike
        yield (
            "["
            + "-".join(DTYPE_IDS.get(v, str(v)) if isinstance(v, torch.dtype) else str(v) for v in kwargs.values())
            + "]",
            kwargs,
        )


def _k_matcher(expr: str):
    """pytest's -k for the runner below: substrings joined by and / or / not, in parentheses."""
    import re

    if not expr.strip():
        return lambda label: True
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    code = " ".join(t if t in ("(", ")", "and", "or", "not") else "(%r in label)" % t for t in tokens)
    compiled = compile(code, "<-k>", "eval")
    return lambda label: bool(eval(compiled, {}, {"label": label}))


def main(argv: List[str]) -> int:
    matches = _k_matcher(argv[argv.index("-k") + 1] if "-k" in argv else "")
    passed = failed = skipped = 0
    for name, fn in list(globals().items()):
        if not name.startswith("test_") or not callable(fn):
            continue
        for suffix, kwargs in _cases(fn):
            label = name + suffix
            if not matches(label):
                continue
            try:
                torch.manual_seed(1234)
                fn(**kwargs)
            except unittest.SkipTest as e:
                skipped += 1
                print("SKIP", label, "-", e)
            except BaseException as e:  # noqa: BLE001
                if type(e).__name__ == "Skipped":  # pytest.skip
                    skipped += 1
                    print("SKIP", label, "-", e)
                    continue
                failed += 1
                import traceback

                print("FAIL", label)
                traceback.print_exc()
            else:
                passed += 1
                print("ok  ", label, flush=True)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
