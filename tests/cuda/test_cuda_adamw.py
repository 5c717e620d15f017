"""The CUDA AdamW step (issue 13): the kernel against the CPU op (every layout, found_inf,
several launches), CyclicAdamW and OneCycleAdamW against torch.optim.AdamW(fused=True) +
CyclicLR / OneCycleLR. The helpers, skips and dry run: cuda_harness.py."""

from __future__ import annotations

import sys

import torch
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
    grads_towards_targets,
    layout_zoo,
    make_problem,
    need_gpu,
    on_device,
    op_schedule,
    parametrize,
    sizes_spanning_launches,
    synchronize,
)
from support.adamw_op import op_args

import clr_ext


def adamw_op():
    return torch.ops.clr_ext.cyclic_adamw_


def _adamw_zoo(dtype, gen, device, amsgrad):
    """(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq or None) per param, over
    layout_zoo's layouts (vector body and tails, chunk boundaries, misaligned, shared
    and differing layouts, a non-dense view, an empty tensor); second moments non-negative."""
    out = []
    for p, g, m in layout_zoo(dtype, gen, device):
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
    scale = cfg.pop("grad_scale", None)
    amsgrad = cfg.pop("amsgrad", False)
    mode_number, bounds, shape = op_schedule(cfg, [0.001, 0.01, 0.85, 0.95], [7.0, 5.0, 0.999, 1.0], min_lr=1e-6)
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
            gs_t, fi = amp_inputs(scale, dev)
            tensors = [[zoo[i][k] for i in use] for k in range(4)]
            tensors += [[zoo[i][4] for i in use] if amsgrad else [], [steps[i] for i in use]]
            flags = dict(kw, amsgrad=amsgrad, grad_scale=gs_t, found_inf=fi)
            adamw_op()(*op_args(tensors, counter, bounds, shape, mode_number, **flags))
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
            sizes = (5, 4096, 70001, 0)
            ps, gs, ms = (on_device(dtype, sizes, gen) for _ in range(3))
            vs = on_device(dtype, sizes, gen, make=torch.rand)
            xs = [v * 2 for v in vs] if amsgrad else []
            steps = [torch.tensor(float(k), device=DEVICE) for k in (0, 1, 7, 2)]
            before = [t.clone() for t in ps + gs + ms + vs + xs + steps]
            counter = torch.tensor(4, device=DEVICE)

            def scaled_step(found_inf):
                """One step of the op with grads scaled by 256 and the given found_inf."""
                flags = dict(weight_decay=0.01, amsgrad=amsgrad, cycle_momentum=True, found_inf=found_inf)
                schedule = (counter, [0.001, 0.01, 0.85, 0.95], [5.0, 5.0, 1.0, 1.0], 0)
                tensors = (ps, gs, ms, vs, xs, steps)
                adamw_op()(*op_args(tensors, *schedule, grad_scale=torch.tensor(256.0, device=DEVICE), **flags))

            for inf_dtype in (torch.float32, torch.float64, torch.float16):
                scaled_step(torch.ones((), dtype=inf_dtype, device=DEVICE))
            for a, b in zip(ps + gs + ms + vs + xs + steps, before):
                assert torch.equal(a, b), (dtype, amsgrad)
            assert int(counter) == 4
            scaled_step(torch.zeros((), device=DEVICE))
            assert not torch.equal(ps[1], before[1])
            assert [float(s) for s in steps] == [1.0, 2.0, 8.0, 3.0]
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            assert torch.equal(gs[1], (before[5].to(compute) / 256.0).to(dtype))


def test_adamw_many_tensors_span_several_launches():
    """More tensors than one AdamW table holds (several update launches), params without
    elements among them: the same step as the CPU op, each count advanced once."""
    need_gpu()
    gen = torch.Generator().manual_seed(12)
    sizes = sizes_spanning_launches("adamw", gen, smallest=0)
    n = len(sizes)
    host = [[torch.randn(s, generator=gen) for s in sizes] for _ in range(3)]
    host.insert(3, [t.abs() * 0.01 for t in host[2]])  # exp_avg_sq from exp_avg's values
    host_steps = [torch.tensor(float(k % 5)) for k in range(n)]
    dev = [[t.to(DEVICE, copy=True) for t in ts] for ts in host]
    dev_steps = [s.to(DEVICE, copy=True) for s in host_steps]
    schedule, flags = ([0.001, 0.01, 0.85, 0.95], [3.0, 3.0, 1.0, 1.0], 1), dict(weight_decay=0.01, cycle_momentum=True)
    for step in range(4):
        adamw_op()(*op_args((*host, [], host_steps), step, *schedule, **flags))
        adamw_op()(*op_args((*dev, [], dev_steps), step, *schedule, device=DEVICE, **flags))
    synchronize()
    for name, a, b in zip(("param", "grad", "exp_avg", "exp_avg_sq"), dev, host):
        assert_close_rel([t.cpu() for t in a], b, RTOL_CPU[torch.float32], name)
    assert [float(s) for s in dev_steps] == [float(s) for s in host_steps] == [float(k % 5 + 4) for k in range(n)]


class _TorchAdamWPair(TorchFusedPair):
    """torch.optim.AdamW(fused=True) + CyclicLR / OneCycleLR on copies of ``groups``."""

    optimizer = torch.optim.AdamW
    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class _HalfAdamWViaFp32Pair(HalfViaFp32Pair):
    """The float16 / bfloat16 reference for AdamW, as HalfViaFp32Pair for SGD."""

    optimizer = _TorchAdamWPair.optimizer
    state_keys = _TorchAdamWPair.state_keys


ADAMW_TORCH_VARIANTS = [
    dict(mode="triangular", cycle_momentum=True, weight_decay=0.01),
    dict(mode="triangular2", cycle_momentum=False, amsgrad=True, weight_decay=0.1, betas=(0.8, 0.99)),
    dict(mode="exp_range", cycle_momentum=True, maximize=True, amsgrad=True, eps=1e-6),
]


def _run_adamw_vs_torch(dtype, opt_factory, ref_factory, steps, seed, maximize, one_cycle=False):
    init, targets = make_problem(dtype, seed=seed)
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
        # a param without a gradient now and then: its count falls behind
        ref_grads = grads_towards_targets(flat_mine, flat_ref, targets, noise, dtype, pull, drop_first=k % 9 == 4)
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


#: (OneCycleLR's annealing, AdamW's arguments); beta1 cycled (OneCycleLR's default) in both
ADAMW_ONE_CYCLE_VARIANTS = [
    (dict(anneal_strategy="cos", three_phase=False), dict(weight_decay=0.01)),
    (dict(anneal_strategy="linear", three_phase=True), dict(amsgrad=True, maximize=True)),
]


@parametrize("variant", range(len(ADAMW_ONE_CYCLE_VARIANTS)))
@parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_one_cycle_adamw_matches_torch_fused(dtype, variant):
    """A whole 1cycle schedule (600 steps) of OneCycleAdamW on CUDA against
    torch.optim.AdamW(fused=True) + OneCycleLR, as test_cyclic_adamw_matches_torch_fused."""
    need_gpu()
    annealing, v = ADAMW_ONE_CYCLE_VARIANTS[variant]
    steps = 600 if not DRY_RUN else 20
    sched_kw = dict(max_lr=[0.01, 0.004], total_steps=steps, pct_start=0.3, base_momentum=0.85, max_momentum=0.95)
    sched_kw.update(annealing)
    _run_adamw_vs_torch(
        dtype,
        lambda groups: clr_ext.OneCycleAdamW(groups, backend=BACKEND, **sched_kw, **v),
        lambda pair, groups: pair(groups, v, sched_kw, scheduler=torch.optim.lr_scheduler.OneCycleLR),
        steps,
        31 + variant,
        v.get("maximize", False),
        one_cycle=True,
    )


if __name__ == "__main__":
    import cuda_harness

    sys.exit(cuda_harness.main(sys.argv[1:]))
