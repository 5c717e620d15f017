"""OneCycleSGD and one_cycle_lr against torch.optim.SGD + torch.optim.lr_scheduler.OneCycleLR
(docs/api.md, "The 1cycle policy and AdamW": one ``opt.step()`` is ``sgd.step(); sched.step()``),
for every CPU backend; the compiled schedule against the oracle; state dicts, the end of the
schedule, errors, torch.compile, from_torch and from_range_test."""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import warnings

import pytest
import torch
import torch._dynamo.testing
from conftest import (
    ALL_DTYPES,
    ReferencePair,
    assert_close_rel,
    compiled_step_against_eager,
    same_float,
    torch_state_dict_continues,
)
from test_parity import Problem, assert_every_param_moved, check_reported, check_state, sgd_case_id, step_both

import clr_ext
from clr_ext import backends as _backends
from clr_ext.schedule import ONE_CYCLE_MODES, one_cycle_phase_ends, one_cycle_point

OneCycleLR = torch.optim.lr_scheduler.OneCycleLR

#: Every OneCycleLR argument the oracle takes, over values that exercise its corners:
#: a first phase ending before step 0 (pct_start * total < 1), uneven phase ends, three
#: phases whose middle phase is shorter than the first.
ORACLE_CASES = [
    dict(total_steps=100),
    dict(total_steps=100, anneal_strategy="linear"),
    dict(total_steps=100, three_phase=True),
    dict(total_steps=97, three_phase=True, anneal_strategy="linear", pct_start=0.23),
    dict(total_steps=41, pct_start=0.77, div_factor=7.0, final_div_factor=33.0),
    dict(total_steps=13, pct_start=0.05),  # first phase ends at step -0.35
    dict(total_steps=1000, pct_start=0.45, three_phase=True, div_factor=10.0, final_div_factor=1e3),
    dict(epochs=3, steps_per_epoch=17, pct_start=0.4, anneal_strategy="linear"),
]


def _pair_trace(max_lr, base_momentum=0.85, max_momentum=0.95, **kwargs):
    """(lr, momentum) of every step of a real SGD + OneCycleLR, as its groups hold them."""
    p = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([p], lr=1.0, momentum=0.5)
    sched = OneCycleLR(sgd, max_lr, base_momentum=base_momentum, max_momentum=max_momentum, **kwargs)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(sched.total_steps):
            out.append((sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"]))
            sgd.step()
            if len(out) < sched.total_steps:
                sched.step()
    return out, sgd.param_groups[0]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_oracle_matches_onecyclelr_bit_for_bit(case):
    trace, group = _pair_trace(0.3, **case)
    kw = {k: v for k, v in case.items() if k not in ("epochs", "steps_per_epoch")}
    total = case.get("total_steps") or case["epochs"] * case["steps_per_epoch"]
    kw["total_steps"] = total
    ends = one_cycle_phase_ends(total, kw.get("pct_start", 0.3), kw.get("three_phase", False))
    for i, (lr, momentum) in enumerate(trace):
        assert same_float(clr_ext.one_cycle_lr(i, 0.3, **kw), lr), (i, lr)
        got = one_cycle_point(
            i, group["initial_lr"], group["max_lr"], group["min_lr"], ends, kw.get("anneal_strategy", "cos"), 0.85, 0.95
        )
        assert same_float(got[0], lr) and same_float(got[1], momentum), (i, got, lr, momentum)
    # The curve really is 1cycle: it starts at max_lr / div_factor, peaks at max_lr, ends at min_lr.
    lrs = [lr for lr, _ in trace]
    if ends[0] > 0:  # (with pct_start * total_steps < 1, step 0 is already past the first phase)
        assert lrs[0] == pytest.approx(0.3 / kw.get("div_factor", 25.0), rel=1e-12)
    assert max(lrs) <= 0.3 and max(lrs) == pytest.approx(0.3, rel=0.05)
    assert lrs[-1] == pytest.approx(group["min_lr"], rel=1e-9, abs=1e-15)
    # Past the end the final values are held.
    assert clr_ext.one_cycle_lr(total + 5, 0.3, **kw) == clr_ext.one_cycle_lr(total - 1, 0.3, **kw)


def _compiled_schedules():
    out = []
    if _backends._C is not None:
        out.append(pytest.param(_backends._C.schedule_at, id="cpp"))
    if _backends._cython_cpu is not None:
        out.append(pytest.param(_backends._cython_cpu.schedule_at, id="cython"))
    return out


@pytest.mark.parametrize("schedule_at", _compiled_schedules())
@pytest.mark.parametrize("strategy,three", list(itertools.product(("cos", "linear"), (False, True))))
def test_compiled_schedule_matches_oracle(schedule_at, strategy, three):
    total = 257
    ends = one_cycle_phase_ends(total, 0.37, three)
    shape = list(ends) + [0.0] * (3 - len(ends)) + [float(len(ends))]
    bounds = [0.4 / 25, 0.4, 0.8, 0.97, 0.4 / 25 / 1e4]
    for i in list(range(total + 3)) + [10**12]:
        want = one_cycle_point(i, bounds[0], bounds[1], bounds[4], ends, strategy, bounds[2], bounds[3])
        got = schedule_at(i, bounds, shape, ONE_CYCLE_MODES[strategy])
        assert same_float(got[0], want[0]) and same_float(got[1], want[1]), (i, got, want)


# ------------------------------------------------------------------ parity


MAX_LR = [0.05, 0.03, 0.04]
BASE_MOMENTUM = [0.8, 0.85, 0.0]
MAX_MOMENTUM = [0.9, 0.95, 0.9]
MOMENTUM_VARIANTS = ((0.0, False, 0.0), (0.9, False, 0.1), (0.9, True, 0.0))


def run_one_cycle(backend, dtype, strategy, three_phase, total_steps=60, bounds_as="lists", steps=None, **sgd):
    """OneCycleSGD against SGD + OneCycleLR over the whole schedule (or ``steps``); ``sgd``:
    momentum, nesterov, dampening, weight_decay, maximize and cycle_momentum."""
    cycle_momentum, maximize = sgd.pop("cycle_momentum"), sgd["maximize"]
    problem = Problem(dtype)
    shape = dict(
        pct_start=0.35, anneal_strategy=strategy, div_factor=10.0, final_div_factor=100.0, three_phase=three_phase
    )
    momentum = dict(cycle_momentum=cycle_momentum, base_momentum=BASE_MOMENTUM, max_momentum=MAX_MOMENTUM)
    sched_kwargs = dict(max_lr=MAX_LR, total_steps=total_steps, **shape, **momentum)
    ref = ReferencePair([{"params": g} for g in problem.groups], sgd, sched_kwargs, scheduler=OneCycleLR)
    params, groups = [], []
    for gi, group in enumerate(problem.groups):
        ps = [t.clone().requires_grad_(True) for t in group]
        params += ps
        groups.append({"params": ps})
    kwargs = {k: v for k, v in sched_kwargs.items() if k not in ("max_lr", "total_steps")}
    bounds = {k: kwargs.pop(k) for k in ("base_momentum", "max_momentum")}
    if bounds_as == "lists":
        kwargs.update(bounds)
        max_lr = MAX_LR
    else:  # per-group dict values win over the constructor's (different) scalars
        for gi, d in enumerate(groups):
            d["max_lr"] = MAX_LR[gi]
            for key, value in bounds.items():
                d[key] = value[gi]
        kwargs.update(base_momentum=0.1, max_momentum=0.2)
        max_lr = 0.5
    opt = clr_ext.OneCycleSGD(groups, max_lr, total_steps, backend=backend, **sgd, **kwargs)
    check_reported(opt, ref, cycle_momentum, "after construction")
    steps = total_steps if steps is None else steps
    for k in range(steps):
        if k == steps - 1:  # OneCycleLR raises on a step past total_steps: step the SGD alone
            ref.sched.step = lambda: None
        step_both(problem, ref, opt, params, k, maximize)
        if k < steps - 1:
            check_reported(opt, ref, cycle_momentum, "after step %d" % k)
    check_state(opt, params, ref)
    assert_every_param_moved(params, problem)
    return opt, params, ref


def _parity_cases():
    cases = []
    for (strategy, three), (momentum, nesterov, dampening), wd, maximize, cycle, dtype in itertools.product(
        itertools.product(("cos", "linear"), (False, True)),
        MOMENTUM_VARIANTS,
        (0.0, 0.01),
        (False, True),
        (True, False),
        ALL_DTYPES,
    ):
        if maximize and (wd == 0.0 or not cycle):  # maximize once per combination of the rest is enough
            continue
        sgd = dict(momentum=momentum, nesterov=nesterov, dampening=dampening, weight_decay=wd, maximize=maximize)
        cid = "%s%s-%s-%s" % (
            strategy,
            "-3ph" if three else "",
            sgd_case_id(cycle_momentum=cycle, **sgd),
            str(dtype).split(".")[-1],
        )
        case = dict(strategy=strategy, three_phase=three, cycle_momentum=cycle, dtype=dtype, **sgd)
        cases.append(pytest.param(case, id=cid))
    return cases


@pytest.mark.parametrize("case", _parity_cases())
def test_parity_with_sgd_and_onecyclelr(backend, case):
    """Three groups with per-group bounds, params that miss steps, the whole schedule:
    lr and momentum equal after every step, params and buffers within api.md's tolerance."""
    bounds_as = "lists" if (case["momentum"] + case["weight_decay"]) == 0 or case["three_phase"] else "dict"
    run_one_cycle(backend, bounds_as=bounds_as, **case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_is_bit_identical_in_fp32_and_fp64(backend, dtype):
    sgd = dict(momentum=0.9, nesterov=False, dampening=0.1, weight_decay=0.01, maximize=False, cycle_momentum=True)
    opt, params, ref = run_one_cycle(backend, dtype, "cos", False, total_steps=1000, **sgd)
    for i, (p, r) in enumerate(zip(params, ref.params)):
        assert torch.equal(p.detach(), r), i
        assert torch.equal(opt.state[p]["momentum_buffer"], ref.buffer(i)), i


# ------------------------------------------------------------------ the end of the schedule


def test_steps_past_total_keep_the_final_values_and_warn_once(backend):
    p = torch.nn.Parameter(torch.ones(8, dtype=torch.float64))
    opt = clr_ext.OneCycleSGD([p], 0.1, 10, momentum=0.9, backend=backend)
    for _ in range(10):
        p.grad = torch.ones_like(p)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
    final = (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])
    group = opt.param_groups[0]
    assert final[0] == clr_ext.one_cycle_lr(9, 0.1, 10) == pytest.approx(group["min_lr"], rel=1e-12)
    assert final[1] == 0.95
    before = p.detach().clone()
    with pytest.warns(UserWarning, match="total_steps=10") as said:
        opt.step()
    assert said[0].filename == __file__  # (the warning points at the caller's step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        for _ in range(3):
            p.grad = torch.ones_like(p)
            opt.step()
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == final
    assert opt.iteration == 14
    assert not torch.equal(p.detach(), before)  # it keeps training, with the final LR


# ------------------------------------------------------------------ state dicts


def _train(opt, params, gen, steps):
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


def test_state_dict_resumes_bit_for_bit_and_carries_the_schedule(backend):
    """Halfway through, the state dict loads into an optimizer built with other schedule
    arguments: it continues the saved schedule, exactly as the uninterrupted run."""
    init = [torch.randn(17, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)]
    kw = dict(momentum=0.9, dampening=0.1, weight_decay=1e-3, backend=backend)
    full = [torch.nn.Parameter(t.clone()) for t in init]
    a = clr_ext.OneCycleSGD(full, [0.2], 40, anneal_strategy="linear", three_phase=True, pct_start=0.2, **kw)
    _train(a, full, torch.Generator().manual_seed(0), 40)

    half = [torch.nn.Parameter(t.clone()) for t in init]
    b = clr_ext.OneCycleSGD(half, [0.2], 40, anneal_strategy="linear", three_phase=True, pct_start=0.2, **kw)
    gen = torch.Generator().manual_seed(0)
    _train(b, half, gen, 17)
    saved = pickle.loads(pickle.dumps(b.state_dict()))
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in half]
    c = clr_ext.OneCycleSGD(resumed, 0.9, 1000, backend=backend)  # another schedule entirely
    c.load_state_dict(saved)
    assert (c.total_steps, c.anneal_strategy, c.three_phase, c.pct_start) == (40, "linear", True, 0.2)
    assert c.iteration == 17 and c.get_last_lr() == b.get_last_lr()
    _train(c, resumed, gen, 23)
    for p, q in zip(resumed, full):
        assert torch.equal(p, q)
    assert c.get_last_lr() == a.get_last_lr()


def test_cyclic_state_dict_carries_its_schedule(backend):
    """Issue 11's defect: a CyclicSGD built with the default schedule follows the saved one."""
    a = clr_ext.CyclicSGD(
        [torch.nn.Parameter(torch.zeros(2))],
        0.1,
        0.5,
        step_size_up=2,
        mode="triangular2",
        cycle_momentum=False,
        backend=backend,
    )
    for _ in range(5):
        a.step()
    b = clr_ext.CyclicSGD([torch.nn.Parameter(torch.zeros(2))], 0.1, 0.5, cycle_momentum=False, backend=backend)
    b.load_state_dict(a.state_dict())
    assert (b.mode, b.step_size_up, b.step_size_down) == ("triangular2", 2.0, 2.0)
    assert b.get_last_lr() == a.get_last_lr() == [clr_ext.cyclic_lr(5, 0.1, 0.5, 2, mode="triangular2")]
    for _ in range(3):
        a.step()
        b.step()
        assert b.get_last_lr() == a.get_last_lr()


def test_load_state_dict_of_the_other_schedule_raises_before_changing_anything():
    cyc = clr_ext.CyclicSGD([torch.nn.Parameter(torch.zeros(2))], 0.1, 0.5)
    one = clr_ext.OneCycleSGD([torch.nn.Parameter(torch.zeros(2))], 0.5, 10)
    before = copy.deepcopy(one.param_groups[0])
    with pytest.raises(ValueError, match="state_dict"):
        one.load_state_dict(cyc.state_dict())
    assert {k: v for k, v in one.param_groups[0].items() if k != "params"} == {
        k: v for k, v in before.items() if k != "params"
    }


def test_post_load_hook_sees_the_recomputed_lr(backend):
    opt = clr_ext.OneCycleSGD([torch.nn.Parameter(torch.zeros(2))], 0.5, 10, backend=backend)
    for _ in range(4):
        opt.step()
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 123.0  # a stale value in the saved group
    seen = []
    fresh = clr_ext.OneCycleSGD([torch.nn.Parameter(torch.zeros(2))], 0.5, 10, backend=backend)
    fresh.register_load_state_dict_post_hook(lambda o: seen.append(o.param_groups[0]["lr"]))
    fresh.load_state_dict(saved)
    assert seen == [clr_ext.one_cycle_lr(4, 0.5, 10)]


def test_torch_sgd_with_onecyclelr_state_dict_loads(backend):
    """A torch.optim.SGD state dict (groups carrying OneCycleLR's keys) continues bit for bit."""
    p = torch.nn.Parameter(torch.randn(33, dtype=torch.float64))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = OneCycleLR(sgd, 0.3, total_steps=30)
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(33, generator=gen, dtype=torch.float64) for _ in range(29)]
    make = lambda params: clr_ext.OneCycleSGD(params, 0.3, 30, momentum=0.9, backend=backend)
    torch_state_dict_continues(sgd, sched, make, grads, 11, "lr")


def test_from_torch_converts_a_running_pair(backend):
    init = [torch.randn(9, dtype=torch.float32), torch.randn(4, 4, dtype=torch.float32)]
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    sgd = torch.optim.SGD(
        [{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.01}], lr=0.1, momentum=0.9, nesterov=True
    )
    shape = dict(total_steps=50, pct_start=0.31, anneal_strategy="linear", three_phase=True, div_factor=7.0)
    sched = OneCycleLR(sgd, [0.2, 0.1], final_div_factor=3.0, **shape)
    gen = torch.Generator().manual_seed(1)
    for _ in range(13):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        sgd.step()
        sched.step()
    opt = clr_ext.from_torch(sgd, sched, backend=backend)
    assert isinstance(opt, clr_ext.OneCycleSGD)
    assert opt.iteration == 13 and opt.get_last_lr() == sched.get_last_lr()
    mine = [p for g in opt.param_groups for p in g["params"]]
    assert all(a is b for a, b in zip(mine, ps))
    twin = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    twin_sgd = copy.deepcopy(sgd)  # continue the torch pair on copies, to compare
    twin_sgd.param_groups[0]["params"], twin_sgd.param_groups[1]["params"] = twin[:1], twin[1:]
    twin_sgd.state = {t: copy.deepcopy(sgd.state[p]) for t, p in zip(twin, ps)}
    twin_sched = OneCycleLR(twin_sgd, [0.2, 0.1], final_div_factor=3.0, last_epoch=12, **shape)
    twin_sched.load_state_dict(sched.state_dict())
    for _ in range(36):
        for p, t in zip(ps, twin):
            g = torch.randn(p.shape, generator=gen)
            p.grad, t.grad = g.clone(), g.clone()
        opt.step()
        twin_sgd.step()
        twin_sched.step()
        assert opt.get_last_lr() == twin_sched.get_last_lr()
        for p, t in zip(ps, twin):
            assert torch.equal(p, t)


def test_from_range_test_takes_max_lr():
    result = clr_ext.RangeTestResult(
        lrs=[0.001 * (i + 1) for i in range(100)],
        losses=[1.0] * 100,
        smoothed_losses=[1.0] * 100,
        metrics=None,
        diverged=False,
        base_lr=0.02,
        max_lr=0.08,
    )
    opt = clr_ext.OneCycleSGD.from_range_test([torch.nn.Parameter(torch.zeros(3))], result, 500, momentum=0.9)
    assert opt.param_groups[0]["max_lr"] == 0.08 and opt.total_steps == 500
    assert opt.param_groups[0]["lr"] == clr_ext.one_cycle_lr(0, 0.08, 500)
    other = clr_ext.OneCycleSGD.from_range_test(
        [torch.nn.Parameter(torch.zeros(3))], result, 500, max_lr=0.05, three_phase=True
    )
    assert other.param_groups[0]["max_lr"] == 0.05 and other.three_phase


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(), "total_steps"),
        (dict(epochs=3), "total_steps"),
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=-5), "total_steps"),
        (dict(total_steps=10.5), "total_steps"),
        (dict(epochs=0, steps_per_epoch=5), "epochs"),
        (dict(epochs=2, steps_per_epoch=-1), "steps_per_epoch"),
        (dict(total_steps=10, pct_start=0.0), "pct_start"),
        (dict(total_steps=10, pct_start=1.0), "pct_start"),
        (dict(total_steps=10, pct_start=1.5), "pct_start"),
        (dict(total_steps=10, pct_start=0.1), "pct_start"),  # the first phase would have no steps
        (dict(total_steps=10, anneal_strategy="cosine"), "anneal_strategy"),
        (dict(total_steps=10, div_factor=0.0), "div_factor"),
        (dict(total_steps=10, div_factor=-2.0), "div_factor"),
        (dict(total_steps=10, final_div_factor=0.0), "final_div_factor"),
        (dict(total_steps=10, max_lr=float("nan")), "max_lr"),
        (dict(total_steps=10, max_lr=float("inf")), "max_lr"),
        (dict(total_steps=10, max_lr=-0.1), "max_lr"),
        (dict(total_steps=10, max_lr=[0.1, 0.2]), "max_lr"),
        (dict(total_steps=10, base_momentum=float("nan")), "base_momentum"),
        (dict(total_steps=10, max_momentum=-0.5), "max_momentum"),
        (dict(total_steps=10, weight_decay=-1.0), "weight_decay"),
        (dict(total_steps=10, nesterov=True), "nesterov"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    kwargs = dict(kwargs)
    max_lr = kwargs.pop("max_lr", 0.1)
    with pytest.raises(ValueError, match=name):
        clr_ext.OneCycleSGD([torch.nn.Parameter(torch.zeros(2))], max_lr, **kwargs)


def test_epochs_and_steps_per_epoch_give_total_steps():
    opt = clr_ext.OneCycleSGD([torch.nn.Parameter(torch.zeros(2))], 0.1, epochs=4, steps_per_epoch=25)
    assert opt.total_steps == 100


# ------------------------------------------------------------------ AMP and torch.compile


def test_grad_scaler_skip_changes_nothing_but_the_schedule(backend):
    init = torch.randn(40, dtype=torch.float32)
    p = torch.nn.Parameter(init.clone())
    opt = clr_ext.OneCycleSGD([p], 0.1, 20, momentum=0.9, backend=backend)
    p.grad = torch.ones_like(p) * 1024.0
    opt.grad_scale = torch.tensor(1024.0)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), init) and "momentum_buffer" not in opt.state.get(p, {})
    assert opt.iteration == 1 and opt.get_last_lr() == [clr_ext.one_cycle_lr(1, 0.1, 20)]
    opt.found_inf = torch.tensor(0.0)
    opt.step()  # unscaled inside the kernel: the update of a unit gradient at step 1's LR
    assert torch.allclose(p.detach(), init - clr_ext.one_cycle_lr(1, 0.1, 20), rtol=0, atol=1e-7)


def test_compiled_step_is_traced_twice_and_matches_eager(backend):
    kw = dict(momentum=0.9, weight_decay=1e-3, anneal_strategy="linear", backend=backend)
    counter = compiled_step_against_eager(
        lambda params, steps: clr_ext.OneCycleSGD(params, 0.2, steps, **kw), "momentum"
    )
    assert counter.frame_count == 2


def test_complex_params_step_as_torch_sgd_does(backend):
    """torch.optim.SGD optimizes complex params (as real views); so does every scheduled SGD."""
    init = torch.randn(12, dtype=torch.complex64)
    p = torch.nn.Parameter(init.clone())
    q = torch.nn.Parameter(init.clone())
    opt = clr_ext.OneCycleSGD([p], 0.1, 10, momentum=0.9, weight_decay=0.01, backend=backend)
    sgd = torch.optim.SGD([q], lr=0.1, momentum=0.9, weight_decay=0.01)
    sched = OneCycleLR(sgd, 0.1, total_steps=10)
    gen = torch.Generator().manual_seed(4)
    for k in range(10):
        g = torch.randn(12, dtype=torch.complex64, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
        if k < 9:
            sched.step()
    assert opt.state[p]["momentum_buffer"].dtype == torch.complex64
    assert_close_rel([torch.view_as_real(p.detach())], [torch.view_as_real(q.detach())])
    assert math.isfinite(float(p.detach().abs().sum()))
