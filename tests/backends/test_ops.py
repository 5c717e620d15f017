"""The compiled op torch.ops.clr_ext.cyclic_sgd_ on CPU tensors: torch.library.opcheck
(schema, fake/meta registration, aot dispatch), and direct calls checked against values
computed here from the oracle and torch.optim.SGD's update rule."""

from __future__ import annotations

import pytest
import torch
from conftest import ALL_DTYPES, HALF_DTYPES, RTOL
from support.sgd_op import BOUNDS, FLAGS, SHAPE, op_args

from clr_ext import backends as _backends
from clr_ext.schedule import MODES, cyclic_point

pytestmark = pytest.mark.skipif(_backends._C is None, reason="clr_ext._C (the compiled op) is not built")

NOT_STARTED = 2**63 - 1  # a momentum_start before the buffer's first step
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
SIZES = (1, 7, 17, 1031)


def op():
    return torch.ops.clr_ext.cyclic_sgd_


def make_tensors(dtype, sizes=SIZES, seed=0, buffers=True):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    bufs = [torch.randn(n, generator=gen).to(dtype) for n in sizes] if buffers else []
    return params, grads, bufs


# ------------------------------------------------------------------------ opcheck


OPCHECK_VARIANTS = {
    "momentum-steady": dict(),
    "momentum-first": dict(first_step=True),
    "nesterov-wd-max": dict(nesterov=True, weight_decay=0.01, maximize=True),
    "no-buffers": dict(momentum=0.0, cycle_momentum=False),
    "grad-scale": dict(grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0)),
    "found-inf": dict(grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0)),
    "exp-range-damp": dict(mode="exp_range", dampening=0.1, cycle_momentum=False),
    "custom-mode": dict(mode=6, shape=[5.0, 7.0, 1.0, 0.25]),
    "momentum-start": dict(starts=[torch.tensor(v) for v in (NOT_STARTED, -1, 3, 1)]),  # not started,
    # begun before it had a start, started in this step, started earlier
    "momentum-start-packed": dict(starts=[torch.tensor([NOT_STARTED, -1, 3, 1])]),
}


@pytest.mark.parametrize("variant", list(OPCHECK_VARIANTS))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_opcheck(dtype, variant):
    kwargs = dict(OPCHECK_VARIANTS[variant])
    no_buffers = kwargs.get("momentum", 0.9) == 0.0 and not kwargs.get("cycle_momentum", True)
    params, grads, bufs = make_tensors(dtype, buffers=not no_buffers)
    torch.library.opcheck(op(), op_args(params, grads, bufs, **kwargs))


def test_opcheck_empty_and_zero_element():
    params, grads, bufs = make_tensors(torch.float32, sizes=(0, 3, 0))
    torch.library.opcheck(op(), op_args(params, grads, bufs))
    torch.library.opcheck(op(), op_args([], [], []))


@pytest.mark.parametrize("entry", ["dispatcher", "pybind"])
def test_lr_scale_multiplies_the_schedules_lr(entry):
    """The op's lr_scale (scale_schedule's device tensor) multiplies the schedule's LR: a
    "fixed" schedule at 0.1 scaled by 0.5 steps exactly as one at 0.05 (a halving is exact);
    it is checked like grad_scale."""
    call = op() if entry == "dispatcher" else _backends._C.cyclic_sgd_cpu_
    runs = []
    for base, scale in ((0.1, torch.tensor([0.5], dtype=torch.float64)), (0.05, None)):
        params, grads, bufs = make_tensors(torch.float32)
        call(*op_args(params, grads, bufs, mode="fixed", bounds=[base, 0.2, 0.8, 0.9]), scale)
        runs.append(params)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    params, grads, bufs = make_tensors(torch.float32)
    args = op_args(params, grads, bufs)
    before = [p.clone() for p in params]
    for bad in (torch.tensor([0.5, 0.5]), torch.tensor([1], dtype=torch.int64)):
        with pytest.raises(RuntimeError, match="lr_scale"):
            call(*args, bad)
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    torch.library.opcheck(op(), (*args, torch.tensor([0.25], dtype=torch.float64)))


def test_op_schema_mutations():
    schema = op().default._schema
    mutated = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert mutated == ["params", "grads", "momentum_buffers", "momentum_start"]
    assert len(schema.returns) == 0


# ---------------------------------------------------------------- direct op calls


def expected_step(params, grads, bufs, iteration, mode="triangular", **flags):
    """One step of torch.optim.SGD's rule (fp32 compute for half types, fp64 for fp64)
    with the oracle's lr / momentum at ``iteration``, the op's FLAGS (op_args's defaults)
    overridden by ``flags``; returns (params, grads, bufs)."""
    f = {**FLAGS, **flags}
    momentum, dampening, weight_decay, nesterov, maximize = (f[k] for k in list(FLAGS)[:5])
    cycle_momentum, first_step, grad_scale = f["cycle_momentum"], f["first_step"], f["grad_scale"]
    lr, cycled = cyclic_point(iteration, BOUNDS[0], BOUNDS[1], SHAPE[0], SHAPE[1], mode, SHAPE[2], BOUNDS[2], BOUNDS[3])
    mom = cycled if cycle_momentum else momentum
    out_p, out_g, out_b = [], [], []
    for i, (p, g) in enumerate(zip(params, grads)):
        ct = torch.float64 if p.dtype == torch.float64 else torch.float32
        pc, gc = p.to(ct), g.to(ct)
        if grad_scale is not None:
            gc = gc / float(grad_scale)
            out_g.append(gc.to(p.dtype))
        else:
            out_g.append(g.clone())
        d = -gc if maximize else gc
        if weight_decay:
            d = d + weight_decay * pc
        if bufs and mom != 0:
            b = d.clone() if first_step else mom * bufs[i].to(ct) + (1 - dampening) * d
            out_b.append(b.to(p.dtype))
            d = d + mom * b if nesterov else b
        elif bufs:
            out_b.append(bufs[i].clone())
        out_p.append((pc - lr * d).to(p.dtype))
    return out_p, out_g, out_b


def assert_tensors_close(actual, expected, dtype):
    for a, e in zip(actual, expected):
        if dtype in HALF_DTYPES:
            # fp32 compute, one rounding: at most one unit in the half type's last place.
            ulp = torch.finfo(dtype).eps * e.float().abs().clamp_min(torch.finfo(dtype).tiny)
            assert bool(((a.float() - e.float()).abs() <= ulp).all())
        else:
            torch.testing.assert_close(a, e, rtol=RTOL[dtype], atol=RTOL[dtype])


CALL_VARIANTS = {
    "steady": dict(),
    "first": dict(first_step=True),
    "nesterov-wd": dict(nesterov=True, weight_decay=0.05),
    "maximize-damp-fixed-momentum": dict(maximize=True, dampening=0.2, cycle_momentum=False, momentum=0.5),
    "no-momentum": dict(momentum=0.0, cycle_momentum=False),
    "exp_range": dict(mode="exp_range"),
    "triangular2": dict(mode="triangular2"),
    "unscale": dict(grad_scale=torch.tensor(64.0)),
}


@pytest.mark.parametrize("entry", ("dispatcher", "pybind"))
@pytest.mark.parametrize("variant", list(CALL_VARIANTS))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_direct_call(dtype, variant, entry):
    kwargs = dict(CALL_VARIANTS[variant])
    params, grads, bufs = make_tensors(dtype, seed=1)
    if "grad_scale" in kwargs:
        grads = [(g.float() * 64).to(dtype) for g in grads]
    iteration = 23  # mid-cycle in the second cycle
    want_p, want_g, want_b = expected_step(params, grads, bufs, iteration, **kwargs)
    args = op_args(params, grads, bufs, iteration=iteration, **kwargs)
    counter = args[4]
    if entry == "dispatcher":
        op()(*args)
    else:
        _backends._C.cyclic_sgd_cpu_(*args)
    assert int(counter) == iteration, "the op must not advance the counter"
    assert_tensors_close(params, want_p, dtype)
    assert_tensors_close(bufs, want_b, dtype)
    for g, w in zip(grads, want_g):
        assert torch.equal(g, w)


def test_dispatcher_and_pybind_agree_bit_for_bit():
    for dtype in ALL_DTYPES:
        a = make_tensors(dtype, seed=2)
        b = tuple([t.clone() for t in ts] for ts in a)
        op()(*op_args(*a, iteration=11, nesterov=True, weight_decay=0.01))
        _backends._C.cyclic_sgd_cpu_(*op_args(*b, iteration=11, nesterov=True, weight_decay=0.01))
        for x, y in zip(a[0] + a[2], b[0] + b[2]):
            assert torch.equal(x, y)


def test_op_reads_the_iteration_from_the_counter():
    for it in (0, 5, 6, 12, 2**40 + 3):
        params, grads, _ = make_tensors(torch.float64, sizes=(4,))
        p0 = params[0].clone()
        op()(*op_args(params, grads, [], iteration=it, momentum=0.0, cycle_momentum=False))
        lr = cyclic_point(it, BOUNDS[0], BOUNDS[1], SHAPE[0], SHAPE[1], "triangular")[0]
        torch.testing.assert_close(params[0], p0 - lr * grads[0], rtol=1e-15, atol=1e-15)


def test_found_inf_changes_nothing():
    params, grads, bufs = make_tensors(torch.float32)
    before = [t.clone() for t in params + grads + bufs]
    op()(*op_args(params, grads, bufs, grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0)))
    for t, b in zip(params + grads + bufs, before):
        assert torch.equal(t, b)


def test_momentum_zero_step_leaves_buffers_alone():
    # Cycled momentum exactly 0 (base_momentum 0 at the peak): torch.optim.SGD uses no buffer.
    params, grads, bufs = make_tensors(torch.float32, sizes=(9,))
    b0 = bufs[0].clone()
    args = list(op_args(params, grads, bufs, iteration=5, bounds=[0.01, 0.1, 0.0, 0.9]))
    op()(*args)
    assert torch.equal(bufs[0], b0)


def _bad_calls():
    cases = {}
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["fewer grads"] = op_args(p, g[:1], b)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["fewer buffers"] = op_args(p, g, b[:1])
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    g[1] = g[1].to_sparse()
    cases["sparse grad"] = op_args(p, g, b)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    p[1], g[1], b[1] = torch.arange(4), torch.ones(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    cases["int64 param"] = op_args(p, g, b)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    g[1] = torch.zeros(5)
    cases["grad shape"] = op_args(p, g, b)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    g[1] = g[1].double()
    cases["grad dtype"] = op_args(p, g, b)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    p[1], g[1], b[1] = p[1].double(), g[1].double(), b[1].double()
    cases["mixed dtypes"] = op_args(p, g, b)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    b[1] = torch.zeros(7)
    cases["buffer shape"] = op_args(p, g, b)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["mode"] = op_args(p, g, b, mode=7)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["bounds length"] = op_args(p, g, b, bounds=[0.1, 0.2])
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["step_size_up"] = op_args(p, g, b, shape=[0.0, 1.0, 1.0, 1.0])
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    args = list(op_args(p, g, b))
    args[4] = torch.tensor(3.0)
    cases["float counter"] = tuple(args)
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["starts length"] = op_args(p, g, b, starts=[torch.tensor(0)])
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["starts dtype"] = op_args(p, g, b, starts=[torch.tensor(0), torch.tensor(0.0)])
    p, g, _ = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["starts without buffers"] = op_args(p, g, [], starts=[torch.tensor(0), torch.tensor(0)])
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["packed starts length"] = op_args(p, g, b, starts=[torch.zeros(3, dtype=torch.int64)])
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["packed starts strided"] = op_args(p, g, b, starts=[torch.zeros(4, dtype=torch.int64)[::2]])
    p, g, b = make_tensors(torch.float32, sizes=(3, 4), seed=4)
    cases["grad_scale shape"] = op_args(p, g, b, grad_scale=torch.ones(2))
    return cases


BAD = _bad_calls()


@pytest.mark.parametrize("entry", ("dispatcher", "pybind"))
@pytest.mark.parametrize("case", list(BAD))
def test_bad_calls_raise_before_writing(case, entry):
    args = BAD[case]
    params, grads, bufs = args[0], args[1], args[2]
    before = [t.clone() for t in params + grads + bufs if t.layout == torch.strided]
    with pytest.raises(RuntimeError):
        if entry == "dispatcher":
            op()(*args)
        else:
            _backends._C.cyclic_sgd_cpu_(*args)
    after = [t for t in params + grads + bufs if t.layout == torch.strided]
    for t, b in zip(after, before):
        assert torch.equal(t, b), "a failing call wrote into a tensor"


def test_check_bucket():
    p, g, b = make_tensors(torch.float32, sizes=(3, 4))
    _backends._C.check_bucket(p, g, b, [])
    _backends._C.check_bucket(p, g, b, [torch.tensor(0), torch.tensor(0)])
    with pytest.raises(RuntimeError, match="momentum_start"):
        _backends._C.check_bucket(p, g, b, [torch.tensor(0)])
    g[0] = g[0].to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        _backends._C.check_bucket(p, g, b, [])


def test_op_under_torch_compile():
    """The fake registration lets torch.compile trace the mutating op (fullgraph)."""
    params, grads, bufs = make_tensors(torch.float32, seed=6)
    ref = tuple([t.clone() for t in ts] for ts in (params, grads, bufs))
    counter = torch.tensor(9, dtype=torch.int64)

    def f(ps, gs, bs, c):
        torch.ops.clr_ext.cyclic_sgd_(
            ps, gs, bs, [], c, BOUNDS, SHAPE, 0, 0.9, 0.0, 0.01, False, False, True, False, None, None
        )

    try:
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    except Exception as e:  # pragma: no cover
        pytest.skip("torch.compile unavailable: %s" % e)
    compiled(params, grads, bufs, counter)
    f(*ref, torch.tensor(9, dtype=torch.int64))
    for a, b in zip(params + bufs, ref[0] + ref[2]):
        assert torch.equal(a, b)


# ------------------------------------------------------------- momentum_start


START_CASES = {
    # name: (starts before, iteration 23's update as "first" or "steady", starts after)
    "not started": (NOT_STARTED, "first", 23),
    "started this step": (23, "first", 23),
    "started before": (5, "steady", 5),
    "begun before it had a start": (-1, "steady", -1),
}


@pytest.mark.parametrize("layout", ("per-param", "packed"))
@pytest.mark.parametrize("entry", ("dispatcher", "pybind"))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_momentum_start_decides_each_param(dtype, entry, layout):
    """With momentum_start, each param's buffer starts (buffer = g) or continues by its
    own start value, whatever first_step says, and a start records the iteration. The
    starts come one tensor per param, or packed in one tensor (an element per param)."""
    names = list(START_CASES)
    params, grads, bufs = make_tensors(dtype, sizes=(3, 17, 1031, 8), seed=7)
    if layout == "packed":
        packed = torch.tensor([START_CASES[n][0] for n in names])
        starts = list(packed)  # views, read after the call
        op_starts = [packed]
    else:
        starts = op_starts = [torch.tensor(START_CASES[n][0]) for n in names]
    want = [
        expected_step(
            [p],
            [g],
            [b],
            23,
            dampening=0.3,
            cycle_momentum=False,
            momentum=0.7,
            first_step=START_CASES[n][1] == "first",
        )
        for n, p, g, b in zip(names, params, grads, bufs)
    ]
    flags = dict(momentum=0.7, dampening=0.3, cycle_momentum=False, first_step=True)
    args = op_args(params, grads, bufs, iteration=23, starts=op_starts, **flags)
    (op() if entry == "dispatcher" else _backends._C.cyclic_sgd_cpu_)(*args)
    # (a scale-relative absolute floor: one half-precision value cancels to 0 in the
    # reference and to 1e-8 in the fused multiply-add)
    tol = RTOL[dtype] if dtype not in HALF_DTYPES else torch.finfo(dtype).eps
    for n, p, b, s, (wp, _, wb) in zip(names, params, bufs, starts, want):
        torch.testing.assert_close(p.double(), wp[0].double(), rtol=tol, atol=tol * 1e-3)
        torch.testing.assert_close(b.double(), wb[0].double(), rtol=tol, atol=tol * 1e-3)
        assert int(s) == START_CASES[n][2], n


@pytest.mark.parametrize("case", ("found_inf", "momentum 0"))
def test_momentum_start_stays_when_no_buffer_is_used(case):
    """A step skipped on overflow, or whose momentum is 0, starts no buffer: the starts
    keep their values and the buffers are untouched."""
    params, grads, bufs = make_tensors(torch.float32, sizes=(5, 6), seed=8)
    starts = [torch.tensor(NOT_STARTED), torch.tensor(2)]
    before = [b.clone() for b in bufs]
    if case == "found_inf":
        args = op_args(
            params, grads, bufs, iteration=23, starts=starts, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(1.0)
        )
    else:
        args = op_args(params, grads, bufs, iteration=23, starts=starts, momentum=0.0, cycle_momentum=False)
    op()(*args)
    assert [int(s) for s in starts] == [NOT_STARTED, 2]
    for b, b0 in zip(bufs, before):
        assert torch.equal(b, b0)


def _call_each_rule(rule, entry, params, grads, state, found_inf=None):
    """One step of `rule` ("sgd" or "adamw") over params with the given state lists, through
    the dispatcher or the pybind fast path (both rules' ops take the same schedule)."""
    counter = torch.tensor(3, dtype=torch.int64)
    if rule == "sgd":
        args = (params, grads, state, [], counter, BOUNDS, SHAPE, MODES["triangular"], 0.9, 0.0, 0.0)
        args += (False, False, True, False, None, found_inf)
        (op() if entry == "dispatcher" else _backends._C.cyclic_sgd_cpu_)(*args)
        return
    exp_avgs, exp_avg_sqs, steps = state
    args = (params, grads, exp_avgs, exp_avg_sqs, [], steps, counter, BOUNDS, SHAPE, MODES["triangular"])
    args += (0.9, 0.999, 1e-8, 0.01, False, False, True, None, found_inf)
    (torch.ops.clr_ext.cyclic_adamw_ if entry == "dispatcher" else _backends._C.cyclic_adamw_cpu_)(*args)


def _state_of(rule, params):
    if rule == "sgd":
        return [torch.randn_like(p) for p in params]
    return ([torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params], [torch.tensor(2.0)])


@pytest.mark.parametrize("rule", ("sgd", "adamw"))
@pytest.mark.parametrize("entry", ("dispatcher", "pybind"))
def test_a_step_bumps_the_version_counters_of_what_it_writes(rule, entry):
    """Issue 21: a step writes its tensors in place as torch.optim.SGD's does, so it bumps
    their autograd version counters (the dispatcher through the ops' ADInplaceOrView
    kernel, the pybind fast path itself): a backward through a param the step changed
    raises instead of using the stale saved value, with the same error as after
    torch.optim.SGD.step()."""
    reference = torch.randn(3, requires_grad=True)
    y_ref = (reference * reference).sum()
    reference.grad = torch.ones(3)
    torch.optim.SGD([reference], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation") as torch_error:
        y_ref.backward()

    w = torch.randn(3, requires_grad=True)
    y = (w * w).sum()
    grads = [torch.ones(3)]
    state = _state_of(rule, [w])
    state_tensors = state if rule == "sgd" else [t for ts in state for t in ts]
    versions = [t._version for t in [w, *state_tensors]]
    with torch.no_grad():
        _call_each_rule(rule, entry, [w], grads, state)
    assert [t._version for t in [w, *state_tensors]] == [v + 1 for v in versions]
    with pytest.raises(RuntimeError, match="modified by an inplace operation") as ours:
        y.backward()
    assert type(ours.value) is type(torch_error.value)


@pytest.mark.parametrize("rule", ("sgd", "adamw"))
@pytest.mark.parametrize("entry", ("dispatcher", "pybind"))
def test_any_nonzero_found_inf_skips_the_step(rule, entry):
    """Issue 21: GradScaler hands a fused optimizer the sum of its per-device overflow
    flags, so found_inf = 2.0 (two devices overflowed) must skip the step as 1.0 does:
    params, grads, state and step counts unchanged; found_inf = 0.0 steps."""
    for flag, skipped in ((2.0, True), (0.5, True), (0.0, False)):
        params = [torch.randn(7, dtype=torch.float32)]
        grads = [torch.randn(7, dtype=torch.float32)]
        state = _state_of(rule, params)
        state_tensors = state if rule == "sgd" else [t for ts in state for t in ts]
        before = [t.clone() for t in [*params, *grads, *state_tensors]]
        _call_each_rule(rule, entry, params, grads, state, found_inf=torch.tensor(flag))
        after = [*params, *grads, *state_tensors]
        assert torch.equal(params[0], before[0]) == skipped, flag
        if skipped:
            assert all(torch.equal(a, b) for a, b in zip(after, before)), flag
