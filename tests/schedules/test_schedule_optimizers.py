"""clr_ext.SGD / clr_ext.AdamW with a schedule value, against PyTorch's optimizer + scheduler(s).

- The device formula (``CLR_MODE_CHAIN`` of csrc/math/schedule.h, through ``_C`` and the Cython
  fallback) gives the Python twin's numbers (``clr_ext.schedules.table_point``) bit for bit, for
  every composition of tests/schedules/compositions.py, every group, over their 10,000 steps; the twin is
  held to PyTorch there (tests/schedules/test_schedule_values.py).
- Both rules on every CPU backend step as ``torch.optim.SGD`` / ``AdamW`` with the PyTorch
  scheduler(s) that the value names: the params and the host LRs bit for bit, except where
  PyTorch's LinearLR is recursive (within a rounding per factor).
- ``scale_schedule``, state dicts, the group checks, torch.compile's trace count, ``as_scheduler``.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from compositions import PARITY, STEPS
from torch.optim import lr_scheduler as L

import clr_ext
from clr_ext import schedules as S
from clr_ext.schedule import CHAIN_MODE

# ------------------------------------------------------------------ the device formula


def _device_evaluators():
    """Every compiled evaluation of the op's schedule arguments: ``(name, (it, bounds, shape, mode) -> point)``."""
    from clr_ext import backends

    out = []
    if backends._C is not None:
        out.append(("cpp", backends._C.schedule_at))
    if backends._cython_cpu is not None:
        out.append(("cython", backends._cython_cpu.schedule_at))
    return out


@pytest.mark.parametrize("evaluator", _device_evaluators(), ids=lambda e: e[0])
@pytest.mark.parametrize("rule, build, value, recursive", PARITY)
def test_device_chain_equals_the_python_twin(evaluator, rule, build, value, recursive):
    _, schedule_at = evaluator
    initial = [value.initial_lr(lr, g) for g, lr in enumerate((0.1, 0.037, 1.3e-3))]
    for g in range(3):
        flat = value.flatten_group(initial[g], g)
        for t in range(0, STEPS, 3):
            table = flat.table(0, t)  # (a host scale_fn is evaluated into the table, as a step does)
            lr, momentum = schedule_at(t, [], table, CHAIN_MODE)
            want_lr, want_momentum = S.table_point(t, table)
            assert lr == want_lr, (t, g)
            assert momentum == want_momentum or (math.isnan(momentum) and math.isnan(want_momentum)), (t, g)


def test_table_point_is_the_value():
    value = S.Warmup(S.Sequential([S.Cyclic(1e-3, 0.1, 30), S.CosineRestarts(20, 2)], [200]), 25, 0.1)
    flat = value.flatten_group(0.05, 0)
    for t in range(0, 600, 7):
        assert S.table_point(t, flat.table()) == value.point(t, 0.05)


def test_device_chain_refuses_a_bad_table():
    from clr_ext import backends

    if backends._C is None:
        pytest.skip("no compiled _C")
    table = S.Cyclic(1e-3, 0.1, 30).flatten_group(None, 0).table()
    for bad, words in (
        (table[:-1], "length"),
        ([9.0] + table[1:], "segments"),
        ([0.0] + table[1:], "segments"),
        (table[:1] + [42.0] + table[2:], "kind"),
    ):
        with pytest.raises(RuntimeError, match=words):
            backends._C.schedule_at(0, [], bad, CHAIN_MODE)
    with pytest.raises(RuntimeError, match="bounds must be empty"):
        backends._C.schedule_at(0, [0.1, 0.2, 0.8, 0.9], table, CHAIN_MODE)


# ---------------------------------------------------------- the optimizers against PyTorch

LRS = (0.1, 0.03)
BOUNDS = ([1e-3, 4e-3], [0.1, 0.05])
STEPS_SHORT = 90


def _hf(name):
    return getattr(pytest.importorskip("transformers.optimization"), name)


def _seq(first, then, at):
    return lambda o: L.SequentialLR(o, [first(o), then(o)], [at])


def _case(id, build, value, recursive=False):
    return pytest.param(build, value, recursive, id=id)


# Each PyTorch composition of the issue, with milestones inside a short run.
CASES = [
    _case("cawr", lambda o: L.CosineAnnealingWarmRestarts(o, 7, 2, 1e-4), S.CosineRestarts(7, 2, 1e-4)),
    _case("cawr-T1", lambda o: L.CosineAnnealingWarmRestarts(o, 11), S.CosineRestarts(11)),
    _case("cyclic", lambda o: L.CyclicLR(o, *BOUNDS, 9, mode="triangular2"), S.Cyclic(*BOUNDS, 9, mode="triangular2")),
    _case("onecycle", lambda o: L.OneCycleLR(o, BOUNDS[1], 95), S.OneCycle(BOUNDS[1], 95)),
    _case(
        "warmup-cyclic",
        _seq(lambda o: L.LinearLR(o, 0.1, 1.0, 10), lambda o: L.CyclicLR(o, *BOUNDS, 9), 10),
        S.Warmup(S.Cyclic(*BOUNDS, 9), 10, 0.1),
        True,
    ),
    _case(
        "warmup-onecycle",
        _seq(lambda o: L.LinearLR(o, 0.1, 1.0, 10), lambda o: L.OneCycleLR(o, BOUNDS[1], 85, three_phase=True), 10),
        S.Warmup(S.OneCycle(BOUNDS[1], 85, three_phase=True), 10, 0.1),
        True,
    ),
    _case(
        "warmup-cawr",
        _seq(lambda o: L.LinearLR(o, 0.1, 1.0, 10), lambda o: L.CosineAnnealingWarmRestarts(o, 7, 2), 10),
        S.Sequential([S.Linear(0.1, 1.0, 10), S.CosineRestarts(7, 2)], [10]),
        True,
    ),
    _case(
        "constant-cyclic",
        _seq(
            lambda o: L.ConstantLR(o, 0.25, 5), lambda o: L.CyclicLR(o, 1e-3, 0.1, 9, mode="exp_range", gamma=0.99), 8
        ),
        S.Sequential([S.Constant(0.25, 5), S.Cyclic(1e-3, 0.1, 9, mode="exp_range", gamma=0.99)], [8]),
    ),
    _case(
        "hf-linear",
        lambda o: _hf("get_linear_schedule_with_warmup")(o, 10, 70),
        S.hf_linear_with_warmup(10, 70),
    ),
    _case(
        "hf-cosine",
        lambda o: _hf("get_cosine_schedule_with_warmup")(o, 10, 80, num_cycles=1.5),
        S.hf_cosine_with_warmup(10, 80, num_cycles=1.5),
    ),
    _case(
        "hf-wsd",
        lambda o: _hf("get_wsd_schedule")(o, 10, 30, num_training_steps=75, decay_type="1-sqrt", min_lr_ratio=0.1),
        S.hf_wsd(10, 30, num_training_steps=75, decay_type="1-sqrt", min_lr_ratio=0.1),
    ),
]

RULES = {
    "sgd": (
        lambda groups: torch.optim.SGD(groups, lr=0.5, momentum=0.9, weight_decay=1e-3),
        lambda groups, value, backend: clr_ext.SGD(
            groups, lr=0.5, schedule=value, momentum=0.9, weight_decay=1e-3, backend=backend
        ),
    ),
    "adamw": (
        lambda groups: torch.optim.AdamW(groups, lr=0.5, weight_decay=1e-2),
        lambda groups, value, backend: clr_ext.AdamW(
            groups, lr=0.5, schedule=value, weight_decay=1e-2, backend=backend
        ),
    ),
}


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    shapes = ((37,), (5, 3))
    return [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype)) for shape in shapes]


def _groups(params):
    return [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]


def _grads(step, params):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def _reference(rule, build, dtype, steps, scale_at=None, factor=1.0):
    """PyTorch's pair; ``scale_at``: from that step on, every LR the scheduler sets is times ``factor``."""
    params = _params(dtype)
    opt = RULES[rule][0](_groups(params))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the schedulers' "step() before optimizer.step()"
        sched = build(opt)
        lrs = []
        for t in range(steps):
            if scale_at is not None and t >= scale_at:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * factor
            lrs.append([g["lr"] for g in opt.param_groups])
            for p, g in zip(params, _grads(t, params)):
                p.grad = g
            opt.step()
            if scale_at is not None and t >= scale_at:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] / factor  # (undone: the scheduler's own value goes on)
            sched.step()
    return [p.detach() for p in params], lrs


def _run(opt, params, start, steps, scale_at=None, factor=1.0):
    lrs = []
    for t in range(start, steps):
        if scale_at is not None and t == scale_at:
            opt.scale_schedule(factor)
        lrs.append([g["lr"] for g in opt.param_groups])
        for p, g in zip(params, _grads(t, params)):
            p.grad = g
        opt.step()
    return lrs


def _assert_params(ours, theirs, recursive):
    for a, b in zip(ours, theirs):
        if recursive:  # PyTorch's LinearLR multiplies a factor per step: last-bit differences
            torch.testing.assert_close(a, b, rtol=1e-5 if a.dtype == torch.float32 else 1e-12, atol=1e-7)
        else:
            assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("build, value, recursive", CASES)
def test_steps_as_pytorchs_pair(backend, build, value, recursive, rule, dtype):
    theirs, ref_lrs = _reference(rule, build, dtype, STEPS_SHORT)
    params = _params(dtype)
    opt = RULES[rule][1](_groups(params), value, backend)
    lrs = _run(opt, params, 0, STEPS_SHORT)
    _assert_params(params, theirs, recursive)
    if recursive:
        assert sum(lrs, []) == pytest.approx(sum(ref_lrs, []), rel=1e-13, abs=0)
    else:
        assert lrs == ref_lrs
    assert opt.iteration == STEPS_SHORT


@pytest.mark.parametrize("rule", sorted(RULES))
def test_scale_schedule_multiplies_every_later_lr(backend, rule):
    build, value, _ = CASES[0].values
    theirs, ref_lrs = _reference(rule, build, torch.float32, 40, scale_at=17, factor=0.5)
    params = _params(torch.float32)
    opt = RULES[rule][1](_groups(params), value, backend)
    lrs = _run(opt, params, 0, 40, scale_at=17, factor=0.5)
    assert lrs == ref_lrs
    _assert_params(params, theirs, False)
    assert opt.schedule_scale == 0.5 and opt.state_dict()["schedule"]["lr_scale"] == 0.5


@pytest.mark.parametrize("factor", [-0.5, float("nan"), float("inf"), "x"])
def test_scale_schedule_refuses_a_bad_factor_and_changes_nothing(backend, factor):
    params = _params(torch.float32)
    opt = clr_ext.SGD(_groups(params), lr=0.1, schedule=S.CosineRestarts(7), backend=backend)
    before = [g["lr"] for g in opt.param_groups]
    with pytest.raises(ValueError, match="factor"):
        opt.scale_schedule(factor)
    assert [g["lr"] for g in opt.param_groups] == before and opt.schedule_scale == 1.0


@pytest.mark.parametrize("rule", sorted(RULES))
def test_state_dict_carries_the_whole_composition(backend, rule):
    """Saved mid-run (after a scale), loaded into an optimizer built with ANOTHER schedule: the
    saved composition, scale and position replace it, and the run goes on as if uninterrupted."""
    build, value, _ = CASES[4].values  # a warmup in front of a cycle
    params = _params(torch.float64)
    opt = RULES[rule][1](_groups(params), value, backend)
    lrs = _run(opt, params, 0, 25, scale_at=20, factor=0.3)
    saved = copy.deepcopy(opt.state_dict())
    assert S.from_state_dict(saved["schedule"]) == value
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    lrs += _run(opt, params, 25, 60)

    other = RULES[rule][1](_groups(resumed_params), S.CosineRestarts(3), backend)
    other.load_state_dict(saved)
    assert other.schedule == value and other.schedule_scale == 0.3 and other.iteration == 25
    resumed = lrs[:25] + _run(other, resumed_params, 25, 60)
    assert resumed == lrs
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)


PAST_ONE_CYCLE = [
    # (value, the steps (indices) it runs a 1cycle past its total_steps, the warning's words)
    (S.OneCycle(0.1, 6), range(6, 12), "step 7 of a 1cycle schedule of total_steps=6:"),
    (S.Sequential([S.OneCycle(0.1, 4), S.CosineRestarts(3)], [7]), range(4, 7), "step 5 of a 1cycle"),
    (
        S.Warmup(S.OneCycle(0.1, 5), 2),
        range(7, 12),
        "step 6 of a 1cycle schedule of total_steps=5 (the chain's, from step 3)",
    ),
]


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("value, past, words", PAST_ONE_CYCLE)
def test_a_one_cycle_run_past_its_end_warns_once(backend, rule, value, past, words):
    """As the 1cycle classes do (OneCycleLR, alone or in a SequentialLR, raises there): once,
    at the caller's step, on the first step past its end; the chain runs on silently."""
    params = _params(torch.float32)
    opt = RULES[rule][1](_groups(params), value, backend)
    said = []
    for t in range(12):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _run(opt, params, t, t + 1)
        said += [(t, w) for w in caught if "1cycle" in str(w.message)]
    assert [t for t, _ in said] == [past[0]]
    assert words in str(said[0][1].message) and said[0][1].filename == __file__


def test_a_cyclic_sgd_state_dict_is_refused_with_words():
    params = _params(torch.float32)
    cyclic = clr_ext.CyclicSGD(_groups(params), 1e-3, 0.1, 9)
    opt = clr_ext.SGD(_groups(params), lr=0.1, schedule=S.Cyclic(1e-3, 0.1, 9))
    with pytest.raises(ValueError, match="schedule"):
        opt.load_state_dict(cyclic.state_dict())
    assert opt.schedule == S.Cyclic(1e-3, 0.1, 9)


def test_groups_are_checked_against_the_schedule():
    params = _params(torch.float32)
    with pytest.raises(ValueError, match="lr: required"):
        clr_ext.SGD(params, schedule=S.CosineRestarts(7))
    with pytest.raises(ValueError, match="schedule"):
        clr_ext.SGD(params, schedule=L.CosineAnnealingWarmRestarts)
    with pytest.raises(ValueError, match="schedule: its per-group values are given for 3"):
        clr_ext.SGD(_groups(params), schedule=S.Cyclic([1e-3] * 3, [0.1] * 3))
    # a bad lr is named as given (it was reported as the initial_lr the schedule makes of it)
    with pytest.raises(ValueError, match=r"^lr: must be >= 0"):
        clr_ext.AdamW(params, lr=-1.0, schedule=S.CosineRestarts(7))
    with pytest.raises(ValueError, match=r"^lr \(param group 1\): must be >= 0"):
        clr_ext.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": -1.0}], lr=0.1, schedule=S.OneCycle(0.1, 9))
    with pytest.raises(ValueError, match=r"^lr \(param group 1\): must be finite"):
        clr_ext.SGD([params[0]], lr=0.1, schedule=S.CosineRestarts(7)).add_param_group(
            {"params": [params[1]], "lr": math.inf}
        )
    nine = S.Sequential([S.Constant(0.5, 1)] * 9, list(range(1, 9)))
    with pytest.raises(ValueError, match="at most 8"):
        clr_ext.SGD(params, lr=0.1, schedule=nine)
    # bounds-only chains need no lr; per-group values take a group added later only if they cover it
    opt = clr_ext.SGD([params[0]], schedule=S.Cyclic([1e-3], [0.1]))
    with pytest.raises(ValueError, match="param group 1"):
        opt.add_param_group({"params": [params[1]]})
    assert len(opt.param_groups) == 1


def test_group_values_follow_pytorchs_conventions():
    params = _params(torch.float32)
    opt = clr_ext.SGD(_groups(params), lr=0.5, schedule=S.Warmup(S.Cyclic(1e-3, 0.1, 9, base_momentum=0.7), 4))
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]  # the warmup's start_factor 0
    assert opt.param_groups[0]["momentum"] == 0.9  # CyclicLR's momentum at its step 0, held by the warmup
    assert (opt.param_groups[0]["base_momentum"], opt.param_groups[0]["max_momentum"]) == (0.7, 0.9)
    plain = clr_ext.AdamW(_groups(params), schedule=S.CosineRestarts(5), betas=(0.8, 0.99))
    assert plain.param_groups[0]["betas"] == (0.8, 0.99) and not plain.cycle_momentum


@pytest.mark.parametrize("rule", sorted(RULES))
def test_compiled_step_traces_a_bounded_number_of_times(backend, rule):
    """torch.compile(fullgraph=True) over a chain that crosses two milestones and a
    scale_schedule: the eager numbers, and the traces of the cyclical classes (one before
    and one after the state exists): the scale is a device tensor, no argument of the trace."""
    torch._dynamo.reset()
    value = S.Sequential([S.Linear(0.1, 1.0, 5), S.Cyclic(1e-3, 0.1, 4), S.CosineRestarts(6, 2)], [5, 15])
    eager_params, params = _params(torch.float32), _params(torch.float32)
    eager = RULES[rule][1](_groups(eager_params), value, backend)
    opt = RULES[rule][1](_groups(params), value, backend)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda: opt.step(), fullgraph=True, backend=counter)
    for t in range(30):
        if t == 12:
            eager.scale_schedule(0.25)
            opt.scale_schedule(0.25)
        for ps in (eager_params, params):
            for p, g in zip(ps, _grads(t, ps)):
                p.grad = g
        eager.step()
        compiled()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in eager.param_groups], t
    for a, b in zip(params, eager_params):
        assert torch.equal(a, b)
    assert counter.frame_count <= 2
    torch._dynamo.reset()


def test_as_scheduler_reports_the_chain():
    params = _params(torch.float32)
    value = S.hf_cosine_with_warmup(5, 40)
    opt = clr_ext.AdamW(_groups(params), schedule=value)
    sched = opt.as_scheduler()
    for t in range(12):
        assert sched.get_last_lr() == [value.lr(t, lr) for lr in LRS]
        for p, g in zip(params, _grads(t, params)):
            p.grad = g
        opt.step()
        sched.step()


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("build, value, recursive", CASES)
def test_from_torch_continues_a_running_composition(backend, build, value, recursive, rule):
    """A PyTorch pair stepped 7 times (inside the warmups), converted by clr_ext.from_torch
    (a copy of it: the conversion shares the params), goes on as the pair does: the value
    that names the scheduler, the LRs and the params."""
    ref_params = _params(torch.float64)
    ref = RULES[rule][0](_groups(ref_params))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = build(ref)
        for t in range(7):
            for p, g in zip(ref_params, _grads(t, ref_params)):
                p.grad = g
            ref.step()
            sched.step()
        copied, copied_sched = copy.deepcopy((ref, sched))
        opt = clr_ext.from_torch(copied, copied_sched, backend=backend)
        params = [p for g in opt.param_groups for p in g["params"]]
        assert opt.iteration == 7
        if isinstance(opt, (clr_ext.SGD, clr_ext.AdamW)):  # (a plain CyclicLR / OneCycleLR: a Cyclic* class)
            assert _flat_form(opt.schedule) == _flat_form(value)  # the same numbers, maybe another spelling
        for t in range(7, 40):
            assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in ref.param_groups], rel=1e-13)
            for ps in (ref_params, params):
                for p, g in zip(ps, _grads(t, ps)):
                    p.grad = g
            ref.step()
            sched.step()
            opt.step()
    _assert_params(params, [p.detach() for p in ref_params], recursive)


def _flat_form(value):
    flat = value.flatten(LRS)
    return flat.kinds, flat.starts, flat.params, str(flat.held_momentum)  # (str: NaN == NaN)


def test_from_torch_refuses_a_scheduler_it_cannot_run():
    sgd = torch.optim.SGD(_params(torch.float32), lr=0.1)
    with pytest.raises(TypeError, match="scheduler"):
        clr_ext.from_torch(sgd, L.LambdaLR(sgd, lambda t: 0.5**t))
    with pytest.raises(TypeError, match="scheduler"):
        clr_ext.from_torch(sgd, L.StepLR(sgd, 10))


# The four classes of the cyclical and 1cycle pairs: clr_ext.SGD / AdamW with their schedule.
FOUR = {
    "CyclicSGD": (
        "sgd",
        lambda groups, backend: clr_ext.CyclicSGD(groups, *BOUNDS, 9, momentum=0.9, weight_decay=1e-3, backend=backend),
        lambda o: L.CyclicLR(o, *BOUNDS, 9),
        S.Cyclic(*BOUNDS, 9),
    ),
    "OneCycleSGD": (
        "sgd",
        lambda groups, backend: clr_ext.OneCycleSGD(
            groups, BOUNDS[1], 95, momentum=0.9, weight_decay=1e-3, backend=backend
        ),
        lambda o: L.OneCycleLR(o, BOUNDS[1], 95),
        S.OneCycle(BOUNDS[1], 95),
    ),
    "CyclicAdamW": (
        "adamw",
        lambda groups, backend: clr_ext.CyclicAdamW(groups, *BOUNDS, 9, weight_decay=1e-2, backend=backend),
        lambda o: L.CyclicLR(o, *BOUNDS, 9),
        S.Cyclic(*BOUNDS, 9),
    ),
    "OneCycleAdamW": (
        "adamw",
        lambda groups, backend: clr_ext.OneCycleAdamW(groups, BOUNDS[1], 95, weight_decay=1e-2, backend=backend),
        lambda o: L.OneCycleLR(o, BOUNDS[1], 95),
        S.OneCycle(BOUNDS[1], 95),
    ),
}


@pytest.mark.parametrize("name", sorted(FOUR))
def test_the_four_classes_are_the_rules_with_their_schedule(backend, name):
    """isinstance of clr_ext.SGD / AdamW, ``schedule`` the value with the same numbers, and
    ``scale_schedule`` as for any value: against the PyTorch pair whose LRs are scaled from
    step 17, params and LRs bit for bit; the factor is saved and restored; an unscaled state
    dict is what it was before scale_schedule existed (no lr_scale entry)."""
    rule, make, build, value = FOUR[name]
    params = _params(torch.float32)
    opt = make(_groups(params), backend)
    assert isinstance(opt, clr_ext.SGD if rule == "sgd" else clr_ext.AdamW)
    assert _flat_form(opt.schedule) == _flat_form(value)
    assert "lr_scale" not in opt.state_dict()["schedule"]
    theirs, ref_lrs = _reference(rule, build, torch.float32, 40, scale_at=17, factor=0.5)
    lrs = _run(opt, params, 0, 30, scale_at=17, factor=0.5)
    saved = copy.deepcopy(opt.state_dict())
    assert saved["schedule"]["lr_scale"] == 0.5
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = make(_groups(resumed_params), backend)
    resumed.load_state_dict(saved)
    assert resumed.schedule_scale == 0.5
    lrs_after = _run(resumed, resumed_params, 30, 40)
    assert lrs + lrs_after == ref_lrs
    _assert_params(resumed_params, theirs, False)


@pytest.mark.slow  # (~70 s: CI's slow section runs it once, on the cpp backend)
@pytest.mark.parametrize("rule, build, value, recursive", PARITY)
def test_ten_thousand_steps_as_pytorchs_pair(rule, build, value, recursive):
    """Every composition of tests/schedules/compositions.py (three groups of different LRs, per-group
    bounds) for its 10,000 steps on the default backend: the params of clr_ext.SGD / AdamW and
    of PyTorch's optimizer with the scheduler(s), bit for bit in float64 outside LinearLR's
    recursive steps (within their bound there), and the LRs of every step."""
    lrs = (0.1, 0.037, 1.3e-3)
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(2, generator=gen, dtype=torch.float64) for _ in lrs]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    mine = [torch.nn.Parameter(t.clone()) for t in init]
    if rule == "sgd":
        ref = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(theirs, lrs)], lr=0.5, momentum=0.9)
        opt = clr_ext.SGD([{"params": [p], "lr": lr} for p, lr in zip(mine, lrs)], lr=0.5, schedule=value, momentum=0.9)
    else:
        ref = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(theirs, lrs)], lr=0.5)
        opt = clr_ext.AdamW([{"params": [p], "lr": lr} for p, lr in zip(mine, lrs)], lr=0.5, schedule=value)
    grads = torch.randn(STEPS, len(lrs), 2, generator=gen, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = build(ref)
        ours, pytorch = [], []
        for t in range(STEPS):
            ours.append([g["lr"] for g in opt.param_groups])
            pytorch.append([g["lr"] for g in ref.param_groups])
            for a, b, g in zip(mine, theirs, grads[t]):
                a.grad, b.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
            sched.step()
    if recursive:
        assert sum(ours, []) == pytest.approx(sum(pytorch, []), rel=1e-12, abs=0)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    else:
        assert ours == pytorch
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b), (a - b).abs().max()
