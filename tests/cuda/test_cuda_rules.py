"""What every rule must do on CUDA, written once and parametrised over the rules (SGD,
AdamW) and schedules (cyclic, 1cycle, a chain of schedule values): refuse to capture a
first step, no host sync, a whole training step in a CUDA graph, GradScaler against torch's
fused optimizers; and clr_ext.SGD / AdamW with a chain of schedule values against torch's
SequentialLR. The helpers, skips and dry run: cuda_harness.py."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import Callable

import torch
from cuda_harness import (
    _C,
    BACKEND,
    DEVICE,
    DRY_RUN,
    KERNELS,
    assert_close_rel,
    cyclic_sgd,
    need_cuda_build,
    need_gpu,
    need_real_gpu,
    parametrize,
    replay_captured_step,
    schedule_chain,
    synchronize,
    tiny_model,
)

import clr_ext
from clr_ext import schedules as S


@parametrize("rule", list(KERNELS))
def test_cuda_kernel_registered(rule):
    """The CUDA build registers the rule's CUDA kernel with the op and its eager entry in _C
    (no GPU needed)."""
    need_cuda_build()
    op, per_launch, expected = KERNELS[rule]
    for key in ("CUDA", "CPU"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("clr_ext::" + op, key), key
    assert callable(getattr(_C, op + "cuda_", None)), op + "cuda_"
    assert "cuda" in clr_ext.available_backends()
    assert getattr(_C, per_launch)() in expected, getattr(_C, per_launch)()


def _scheduled(kind, params, **kw):
    if kind == "chain":
        opt = clr_ext.SGD(
            params,
            lr=kw["max_lr"],
            schedule=schedule_chain(kw),
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


def _amp_pair(dtype_model=torch.float32, seed=3, **kw):
    a = tiny_model(seed=seed, dtype=dtype_model)
    b = tiny_model(seed=seed, dtype=dtype_model)
    return a, b


def _scheduled_adamw(kind, params, **kw):
    if kind == "chain":
        return clr_ext.AdamW(
            params,
            lr=kw["max_lr"],
            schedule=schedule_chain(kw),
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
    capture_kw: dict  # what gives the rule state to make on its first step (SGD: momentum)


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
        capture_kw=dict(momentum=0.9),
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
        capture_kw=dict(),
    ),
}


@parametrize("kind", ["cyclic", "one_cycle", "chain"])
@parametrize("rule", list(RULES))
def test_capture_of_a_first_step_raises(rule, kind):
    """Issue 15: state made inside capture would be a fill in the graph (the counter and
    momentum reset at every replay); the step refuses, with nothing changed, and works
    once an eager step has made it. For every rule and schedule."""
    need_real_gpu()
    p = torch.zeros(1000, device=DEVICE, requires_grad=True)
    p.grad = torch.ones_like(p)
    r = RULES[rule]
    opt = r.make(kind, [p], base_lr=r.base_lr, max_lr=r.max_lr, step_size_up=3, **r.capture_kw)
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
    assert replay_captured_step(opt, 4) == 5


@parametrize("kind", ["cyclic", "one_cycle", "chain"])
@parametrize("rule", list(RULES))
def test_step_issues_no_host_sync(rule, kind):
    """opt.step() under torch.cuda.set_sync_debug_mode("error"): the first step (state
    created), later steps, params without grads, and AMP's grad_scale / found_inf (a
    skipped step among them); for every rule and schedule (AdamW with amsgrad)."""
    need_real_gpu()
    r = RULES[rule]
    model = tiny_model()
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
    eager = tiny_model(seed=1)
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
    model = tiny_model(seed=1)
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


if __name__ == "__main__":
    import cuda_harness

    sys.exit(cuda_harness.main(sys.argv[1:]))
