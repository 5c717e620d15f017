"""Checkpoints across backends, and converting a torch.optim.SGD + CyclicLR run mid-way
(clr_ext.from_torch)."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from conftest import same_float

import clr_ext
from clr_ext import from_torch

CPU_BACKENDS = [b for b in ("cpp", "cython", "torch") if b in clr_ext.available_backends()]
PAIRS = [(a, b) for a, b in itertools.product(CPU_BACKENDS, CPU_BACKENDS) if a != b]

#: each of the two groups with its own bounds
BOUNDS = dict(base_lr=[0.01, 0.02], max_lr=[0.1, 0.3], base_momentum=[0.8, 0.7], max_momentum=[0.9, 0.95])
CONFIG = dict(BOUNDS, step_size_up=3, step_size_down=5, mode="triangular2", momentum=0.9, weight_decay=1e-3)


def _init(dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    shapes = [(5, 3), (3,), (17,), (2, 2, 2)]
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def _grads(step, params):
    g = torch.Generator().manual_seed(1000 + step)
    # p-dependent so that the trajectories feed back, like a real loss.
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) + 0.1 * p for p in params]


def _make(backend, values, nesterov=False):
    params = [v.clone().requires_grad_(True) for v in values]
    groups = [{"params": params[:2]}, {"params": params[2:], "nesterov": nesterov, "dampening": 0.0}]
    return params, clr_ext.CyclicSGD(groups, backend=backend, **CONFIG)


def _run(opt, params, steps, start):
    for s in range(start, start + steps):
        for p, g in zip(params, _grads(s, [p.detach() for p in params])):
            p.grad = g
        opt.step()


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.skipif(not PAIRS, reason="only one CPU backend is built")
@pytest.mark.parametrize("src,dst", PAIRS)
def test_state_dict_across_backends(src, dst):
    values = _init()
    k, m = 7, 9
    # The saving run, continued with its own backend: the reference for the loaded one.
    params_a, opt_a = _make(src, values)
    _run(opt_a, params_a, k, 0)
    saved = _roundtrip(opt_a.state_dict())
    saved_values = [p.detach().clone() for p in params_a]

    params_b, opt_b = _make(dst, saved_values)
    opt_b.load_state_dict(saved)
    assert opt_b.iteration == k
    assert all(same_float(a, b) for a, b in zip(opt_b.get_last_lr(), opt_a.get_last_lr()))
    _run(opt_a, params_a, m, k)
    _run(opt_b, params_b, m, k)
    assert opt_b.iteration == opt_a.iteration == k + m
    assert all(same_float(a, b) for a, b in zip(opt_b.get_last_lr(), opt_a.get_last_lr()))
    compiled = {"cpp", "cython"}
    for pa, pb in zip(params_a, params_b):
        ba = opt_a.state[pa]["momentum_buffer"]
        bb = opt_b.state[pb]["momentum_buffer"]
        if {src, dst} <= compiled:
            assert torch.equal(pa, pb), (src, dst)
            assert torch.equal(ba, bb)
        else:
            torch.testing.assert_close(pb, pa, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(bb, ba, rtol=1e-12, atol=1e-12)


def test_state_dict_is_sgd_format(backend):
    """The saved dict loads into torch.optim.SGD too (momentum_buffer per parameter)."""
    values = _init()
    params, opt = _make(backend, values)
    _run(opt, params, 3, 0)
    sd = _roundtrip(opt.state_dict())
    sgd = torch.optim.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, momentum=0.9)
    sgd.load_state_dict(sd)
    for p in params:
        assert torch.equal(sgd.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


# ------------------------------------------------------------------ from_torch

CONVERT_CASES = [
    dict(mode="triangular", step_size_up=4, step_size_down=None, momentum=0.9, cycle_momentum=True),
    dict(mode="triangular2", step_size_up=3, step_size_down=7, momentum=0.9, cycle_momentum=True, nesterov=True),
    dict(
        mode="exp_range",
        gamma=0.97,
        step_size_up=5,
        step_size_down=2,
        momentum=0.5,
        cycle_momentum=False,
        dampening=0.1,
        weight_decay=1e-2,
    ),
    dict(mode="triangular", step_size_up=2, step_size_down=3, momentum=0.0, cycle_momentum=False, maximize=True),
    dict(scale_fn="half", scale_mode="cycle", step_size_up=3, momentum=0.9, cycle_momentum=True),
    dict(scale_fn="iter", scale_mode="iterations", step_size_up=3, step_size_down=4, momentum=0.9, cycle_momentum=True),
]


def _scale_half(x):
    return 1.0 / (2.0 ** (x - 1))


def _scale_iter(x):
    return 0.99**x


@pytest.mark.parametrize("case", range(len(CONVERT_CASES)))
def test_from_torch_continues_identically(case, backend):
    cfg = dict(CONVERT_CASES[case])
    sgd_kw = {k: cfg.pop(k) for k in ("momentum", "dampening", "weight_decay", "nesterov", "maximize") if k in cfg}
    if "scale_fn" in cfg:
        cfg["scale_fn"] = {"half": _scale_half, "iter": _scale_iter}[cfg["scale_fn"]]
    values = _init()

    def pair():
        params = [v.clone().requires_grad_(True) for v in values]
        groups = [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}]
        sgd = torch.optim.SGD(groups, lr=0.1, **sgd_kw)
        sched = torch.optim.lr_scheduler.CyclicLR(
            sgd, base_lr=[0.01, 0.05], max_lr=[0.1, 0.2], base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.95], **cfg
        )
        return params, sgd, sched

    # Two identical (deterministic) torch runs: one goes on as the reference, the other
    # is converted after k steps.
    params, sgd, sched = pair()
    twins, sgd2, sched2 = pair()
    k, m = 6, 11
    for s in range(k):
        for ps, o, sc in ((params, sgd, sched), (twins, sgd2, sched2)):
            for p, g in zip(ps, _grads(s, [p.detach() for p in ps])):
                p.grad = g
            o.step()
            sc.step()
    for p, t in zip(params, twins):
        assert torch.equal(p, t)

    opt = from_torch(sgd2, sched2, backend=backend)
    assert opt.iteration == k
    assert all(same_float(a, b) for a, b in zip(opt.get_last_lr(), sched.get_last_lr()))
    for t in twins:
        buf = sgd2.state.get(t, {}).get("momentum_buffer")
        if buf is not None:
            assert torch.equal(opt.state[t]["momentum_buffer"], buf)
            assert opt.state[t]["momentum_buffer"].data_ptr() != buf.data_ptr()  # a copy

    for s in range(k, k + m):
        grads = _grads(s, [p.detach() for p in params])
        for p, t, g in zip(params, twins, grads):
            p.grad = g
            t.grad = g.clone()
        sgd.step()
        sched.step()
        opt.step()
        assert all(same_float(a, b) for a, b in zip(opt.get_last_lr(), sched.get_last_lr())), s
        if sched.cycle_momentum:
            for ga, gb in zip(opt.param_groups, sgd.param_groups):
                assert same_float(ga["momentum"], gb["momentum"])
    for p, t in zip(params, twins):
        torch.testing.assert_close(t, p.detach(), rtol=1e-12, atol=1e-12)


def test_from_torch_rejects_other_types():
    p = torch.zeros(2, requires_grad=True)
    adam = torch.optim.Adam([p], lr=0.1)
    with pytest.raises(TypeError):
        from_torch(adam, None)
    sgd = torch.optim.SGD([p], lr=0.1)
    with pytest.raises(TypeError):
        from_torch(sgd, torch.optim.lr_scheduler.StepLR(sgd, 3))


def test_from_torch_fresh_scheduler():
    """Converting before any step: iteration 0, the constructor's LRs."""
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, 0.01, 0.1, step_size_up=5)
    opt = from_torch(sgd, sched)
    assert opt.iteration == 0
    assert same_float(opt.get_last_lr()[0], sched.get_last_lr()[0])
