"""The CUDA SGD step (issue 3): the kernel against the CPU op (every layout, found_inf,
several launches, per-param momentum starts, opcheck, >2^31-element tensors), CyclicSGD and
OneCycleSGD against torch.optim.SGD(fused=True) + CyclicLR / OneCycleLR, what one step
dispatches and launches, torch.compile. The helpers, skips and dry run: cuda_harness.py."""

from __future__ import annotations

import sys
from typing import List

import torch
import torch._dynamo.testing
from cuda_harness import (
    ALL_DTYPES,
    BACKEND,
    DEVICE,
    DRY_RUN,
    DTYPE_IDS,
    RTOL_CPU,
    RTOL_TORCH,
    HalfViaFp32Pair,
    TorchFusedPair,
    amp_inputs,
    assert_close_rel,
    cyclic_sgd,
    dry_run_sample,
    grads_towards_targets,
    layout_zoo,
    make_problem,
    need_gpu,
    need_real_gpu,
    on_device,
    op_schedule,
    parametrize,
    replay_captured_step,
    resnet50_shapes_small,
    sizes_spanning_launches,
    skip,
    synchronize,
    tiny_model,
)
from support.layouts import size_one_layouts, staged_copies
from support.sgd_op import op_args

import clr_ext
from clr_ext import backends as _backends


def op():
    return torch.ops.clr_ext.cyclic_sgd_


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
    dry_run_sample(config=(config, list(OP_CONFIGS)), dtype=(dtype, ALL_DTYPES))
    cfg = dict(OP_CONFIGS[config])
    buffers = cfg.pop("buffers", True)
    scale = cfg.pop("grad_scale", None)
    shape = [7.0, 5.0, cfg.pop("gamma", 0.999), cfg.pop("custom_scale", 1.0)]
    bounds = [0.01, 0.05, cfg.pop("base_momentum", 0.8), 0.9]
    mode_number, bounds, shape = op_schedule(cfg, bounds, shape, min_lr=1e-4)
    kw = dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False, cycle_momentum=True)
    kw.update(cfg)

    gen = torch.Generator().manual_seed(17)
    cpu = layout_zoo(dtype, gen, "cpu")
    gen = torch.Generator().manual_seed(17)
    gpu = layout_zoo(dtype, gen, DEVICE)
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
            gs_t, fi = amp_inputs(scale, dev)
            op()(
                *op_args(
                    ps,
                    gs,
                    bs,
                    counter,
                    mode_number,
                    bounds=bounds,
                    shape=shape,
                    first_step=step == 0,
                    grad_scale=gs_t,
                    found_inf=fi,
                    **kw,
                )
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


#: (shape, param layout, grad layout, buffer layout): strides that differ only on size-1
#: dimensions (backends/test_layouts.py has the CPU op's cases), in tensors of several chunks.
SIZE_ONE_LAYOUTS = size_one_layouts(
    {
        "depthwise-contig-param-cl-grad": (64, 1, 3, 3),
        "depthwise-cl-param-contig-grad": (64, 1, 5, 5),
        "depthwise-odd-strides": (300, 1, 15, 15),
        "row-from-transpose": (1, 4099),
    }
)


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
                        *op_args(
                            ps,
                            gs,
                            bs,
                            scalars[0],
                            dampening=0.1,
                            weight_decay=0.01,
                            first_step=step == 0,
                            grad_scale=scalars[1],
                            found_inf=scalars[2],
                        )
                    )

                if dev == "cpu":
                    call()
                    continue
                names = _aten_ops_run_by(call)
                if names is not None:
                    assert "clr_ext::cyclic_sgd_" in names, (name, names)
                    copies = staged_copies(names)
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
        ps, gs, bs = (on_device(dtype, (5, 4096, 70001), gen) for _ in range(3))
        before = [t.clone() for t in ps + gs + bs]
        counter = torch.tensor(4, device=DEVICE)

        def scaled_step(first, found_inf):
            """One step of the op with grads scaled by 256 and the given found_inf."""
            op()(
                *op_args(
                    ps,
                    gs,
                    bs,
                    counter,
                    shape=[5.0, 5.0, 1.0, 1.0],
                    weight_decay=0.01,
                    first_step=first,
                    grad_scale=torch.tensor(256.0, device=DEVICE),
                    found_inf=found_inf,
                )
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
    gen = torch.Generator().manual_seed(11)
    sizes = sizes_spanning_launches("sgd", gen, smallest=1)
    pc = [torch.randn(s, generator=gen) for s in sizes]
    gc = [torch.randn(s, generator=gen) for s in sizes]
    bc = [torch.randn(s, generator=gen) for s in sizes]
    pg, gg, bg = ([t.to(DEVICE) for t in ts] for ts in (pc, gc, bc))
    kw = dict(mode=1, momentum=0.0, weight_decay=0.001, shape=[3.0, 3.0, 1.0, 1.0])
    for step in range(5):
        op()(*op_args(pc, gc, bc, step, **kw))
        op()(*op_args(pg, gg, bg, step, device=DEVICE, **kw))
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
            *op_args(
                ps,
                gs,
                bs,
                iteration,
                dampening=0.3,
                bounds=bounds,
                shape=[5.0, 5.0, 1.0, 1.0],
                grad_scale=torch.tensor(1.0, device=dev),
                found_inf=found_inf,
                starts=op_ss,
                device=dev,
            )
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
            args = op_args(
                ps,
                gs,
                bs,
                3,
                momentum=0.9 if buffers else 0.0,
                cycle_momentum=buffers,
                first_step=v.get("first_step", False),
                grad_scale=None if scale is None else torch.tensor(scale, device=DEVICE),
                found_inf=None if scale is None else torch.zeros((), device=DEVICE),
                device=DEVICE,
            )
            torch.library.opcheck(op(), args)


SGD_MODES = ("triangular", "triangular2", "exp_range")
TORCH_VARIANTS = [
    dict(momentum=0.9, cycle_momentum=True),  # momentum cycled between 0.8 and 0.9
    dict(momentum=0.9, cycle_momentum=False, dampening=0.1, weight_decay=0.01),
    dict(momentum=0.9, cycle_momentum=True, nesterov=True, maximize=True),
    dict(momentum=0.0, cycle_momentum=False, weight_decay=0.01),
]


@parametrize("variant", range(len(TORCH_VARIANTS)))
@parametrize("mode", SGD_MODES)
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_cyclic_sgd_matches_torch_fused(dtype, mode, variant):
    """1,000 steps (4+ cycles) of CyclicSGD on CUDA against torch.optim.SGD + CyclicLR
    (fused=True for fp32 / fp64; for fp16 / bf16 an fp32 run rounded to the half type
    once per step): params within api.md's tolerance, lr / momentum equal after every step."""
    need_gpu()
    dry_run_sample(dtype=(dtype, ALL_DTYPES), mode=(mode, SGD_MODES), variant=(variant, range(len(TORCH_VARIANTS))))
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
    init, targets = make_problem(dtype, seed=7 + variant)
    mine = [[t.to(device=DEVICE, dtype=dtype, copy=True).requires_grad_() for t in g] for g in init]
    opt = cyclic_sgd([{"params": g} for g in mine], backend=BACKEND, **sched_kw, **v)
    half = dtype in (torch.float16, torch.bfloat16)
    # float16 / bfloat16: against an fp32 run rounded to the half type once per step, as
    # the CPU suite does (tests/conftest.py), not torch's fused half kernel (see
    # HalfViaFp32Pair). fp32 / fp64: torch.optim.SGD(fused=True) itself.
    pair = HalfViaFp32Pair if half else TorchFusedPair
    ref = pair([[t.to(device=DEVICE, dtype=dtype) for t in g] for g in init], v, sched_kw)
    flat_mine = [p for g in mine for p in g]
    flat_ref = ref.params
    noise = torch.Generator(device=DEVICE).manual_seed(1)
    # Under maximize the step climbs the gradient: flip the pull towards the targets so
    # that both runs converge instead of growing without bound (fp16 would overflow).
    pull = -0.5 if v.get("maximize") else 0.5
    steps = 1000
    for k in range(steps):
        # a param without a gradient now and then
        ref_grads = grads_towards_targets(flat_mine, flat_ref, targets, noise, dtype, pull, drop_first=k % 9 == 4)
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
        # differences of the two kernels accumulate there (tests/rules/test_parity.py allows the
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
    dry_run_sample(dtype=(dtype, ALL_DTYPES), variant=(variant, range(len(ONE_CYCLE_VARIANTS))))
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
    init, targets = make_problem(dtype, seed=11 + variant)
    mine = [[t.to(device=DEVICE, dtype=dtype, copy=True).requires_grad_() for t in g] for g in init]
    opt = clr_ext.OneCycleSGD([{"params": g} for g in mine], backend=BACKEND, **sched_kw, **v)
    if DRY_RUN:
        opt._host_decided_types = ()
    half = dtype in (torch.float16, torch.bfloat16)
    pair = HalfViaFp32Pair if half else TorchFusedPair
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
        ref_grads = grads_towards_targets(flat_mine, flat_ref, targets, noise, dtype, pull)
        ref.last = k == steps - 1
        opt.step()
        ref.step(ref_grads)
        if not ref.last:
            assert opt.get_last_lr() == ref.last_lr(), (k, opt.get_last_lr(), ref.last_lr())
    assert_close_rel(flat_mine, flat_ref, RTOL_TORCH[dtype], "param")


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
    params = [torch.zeros(s, device=DEVICE, requires_grad=True) for s in resnet50_shapes_small()]
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
    params = [torch.zeros(s, device=DEVICE, requires_grad=True) for s in resnet50_shapes_small()]
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
        skip("torch.profiler unavailable: %s" % e)
    names = [
        e.name
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]  # kernels and copies only
    if not names:
        skip("the profiler recorded no CUDA kernels")
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
    ref_model, model = tiny_model(dtype=torch.float64), tiny_model(dtype=torch.float64)
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
    assert replay_captured_step(opt, 10) == 12
    assert opt.get_last_lr()[0] == clr_ext.cyclic_lr(12, 0.01, 0.1, 3)


def test_first_step_with_cycled_momentum_zero():
    """The cycled momentum starts at 0 (max_momentum=0): torch.optim.SGD keeps no buffer
    then and starts it with the gradient at the next step. The host does not read the
    iteration's momentum for CUDA steps: the kernel decides, and state_dict() agrees."""
    need_gpu()
    kw = dict(base_lr=0.01, max_lr=0.05, step_size_up=3, base_momentum=0.9, max_momentum=0.0)
    mine, ref = tiny_model(seed=5), tiny_model(seed=5)
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
        skip("needs %.0f GiB of free GPU memory" % need)

    def make(value):
        t = torch.full((n + 1,), value, dtype=dtype, device=DEVICE)
        return t[1:] if misaligned else t[:n]

    p, g, b = make(0.5), make(1.0), make(0.0)
    counter = torch.tensor(2, device=DEVICE)
    kw = dict(shape=[5.0, 5.0, 1.0, 1.0])
    # reference: the CPU op on one element with the same inputs
    pr, gr, br = (torch.full((1,), v, dtype=dtype) for v in (0.5, 1.0, 0.0))
    for first in (True, False):
        op()(*op_args([p], [g], [b], counter, first_step=first, **kw))
        op()(*op_args([pr], [gr], [br], int(counter), first_step=first, **kw))
        counter.add_(1)
    synchronize()
    assert float(pr[0]) != 0.5 and float(br[0]) != 0.0
    for t, r in ((p, pr), (b, br)):
        expected = float(r[0])
        assert float(t[0]) == expected and float(t[2**31]) == expected and float(t[n - 1]) == expected
        assert bool((t == expected).all()), "some elements were not updated"
    del p, g, b
    torch.cuda.empty_cache()


if __name__ == "__main__":
    import cuda_harness

    sys.exit(cuda_harness.main(sys.argv[1:]))
