"""CyclicSGD's contract beyond the numbers (api.md): argument validation at construction,
reported values, closure, params without grad, failing steps that change nothing,
state_dict round trips (bit-exact resume), torch.optim.SGD state dicts, pickling."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from conftest import ALL_DTYPES, ReferencePair, assert_close_rel, mlp_pair, step_both

import clr_ext
from clr_ext import backends as _backends
from clr_ext.schedule import cyclic_point

DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}


def _params(n=2):
    return [torch.randn(5, requires_grad=True) for _ in range(n)]


# ------------------------------------------------------------------ validation

NAN, INF = float("nan"), float("inf")

INVALID = [
    # (kwargs, the argument the ValueError must name)
    (dict(base_lr=-0.1), "base_lr"),
    (dict(base_lr=NAN), "base_lr"),
    (dict(base_lr=INF), "base_lr"),
    (dict(base_lr=-INF), "base_lr"),
    (dict(max_lr=-1.0, base_lr=-2.0), "base_lr"),
    (dict(max_lr=NAN), "max_lr"),
    (dict(max_lr=INF), "max_lr"),
    (dict(base_lr=0.1, max_lr=0.01), "max_lr"),
    (dict(momentum=-0.1), "momentum"),
    (dict(momentum=NAN), "momentum"),
    (dict(momentum=INF), "momentum"),
    (dict(base_momentum=-0.5), "base_momentum"),
    (dict(base_momentum=NAN), "base_momentum"),
    (dict(max_momentum=INF), "max_momentum"),
    (dict(max_momentum=-0.1), "max_momentum"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(weight_decay=NAN), "weight_decay"),
    (dict(step_size_up=0), "step_size_up"),
    (dict(step_size_up=-3), "step_size_up"),
    (dict(step_size_up=NAN), "step_size_up"),
    (dict(step_size_up=INF), "step_size_up"),
    (dict(step_size_down=-1), "step_size_down"),
    (dict(step_size_down=NAN), "step_size_down"),
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=-0.5), "gamma"),
    (dict(gamma=NAN), "gamma"),
    (dict(mode="cosine"), "mode"),
    (dict(mode="Triangular"), "mode"),
    (dict(scale_mode="epochs", scale_fn=lambda c: 1.0), "scale_mode"),
    (dict(nesterov=True), "nesterov"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    (dict(base_lr=[0.01, 0.02, 0.03]), "base_lr"),
    (dict(max_lr=[0.1]), "max_lr"),
    (dict(base_momentum=[0.8, 0.8, 0.8]), "base_momentum"),
    (dict(max_momentum=[0.9]), "max_momentum"),
    (dict(backend="fortran"), "backend"),
    (dict(backend="CPP"), "backend"),
]


@pytest.mark.parametrize("kwargs,name", INVALID, ids=["%s=%r" % (n, kw.get(n, kw)) for kw, n in INVALID])
def test_invalid_arguments_raise_at_construction(kwargs, name):
    args = dict(base_lr=0.01, max_lr=0.1)
    args.update(kwargs)
    groups = [{"params": _params(1)}, {"params": _params(1)}]  # two groups (for the list lengths)
    with pytest.raises(ValueError) as info:
        clr_ext.CyclicSGD(groups, **args)
    message = str(info.value)
    assert name in message, "the ValueError must name %r: %s" % (name, message)


def test_torch_sgd_agrees_these_are_invalid():
    # The same settings torch.optim.SGD / CyclicLR reject (sanity of the list above).
    with pytest.raises(ValueError):
        torch.optim.SGD(_params(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        torch.optim.SGD(_params(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError):
        torch.optim.SGD(_params(), lr=0.1, momentum=-0.1)


@pytest.mark.parametrize(
    "key,value,name",
    [
        ("base_lr", -0.01, "base_lr"),
        ("max_lr", NAN, "max_lr"),
        ("max_lr", 0.001, "max_lr"),
        ("momentum", -1.0, "momentum"),
        ("base_momentum", INF, "base_momentum"),
        ("weight_decay", -0.1, "weight_decay"),
        ("nesterov", True, "nesterov"),
    ],
)
def test_invalid_per_group_values(key, value, name):
    groups = [{"params": _params(1)}, {"params": _params(1), key: value}]
    with pytest.raises(ValueError, match=name):
        clr_ext.CyclicSGD(groups, 0.01, 0.1)


def test_unknown_mode_with_scale_fn_is_fine():
    opt = clr_ext.CyclicSGD(_params(), 0.01, 0.1, mode="anything", scale_fn=lambda c: 0.5)
    assert opt.param_groups[0]["lr"] == 0.01


def test_momentum_above_one_only_warns():
    for kwargs in (
        dict(momentum=1.5, cycle_momentum=False),
        dict(max_momentum=1.2),
        dict(base_momentum=1.1, max_momentum=1.2),
    ):
        with pytest.warns(UserWarning, match="momentum"):
            opt = clr_ext.CyclicSGD(_params(), 0.01, 0.1, **kwargs)
        assert isinstance(opt, torch.optim.Optimizer)


def test_valid_edge_values_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clr_ext.CyclicSGD(
            _params(), 0.0, 0.0, step_size_up=1, step_size_down=0, momentum=1.0, base_momentum=0.0, max_momentum=1.0
        )
        clr_ext.CyclicSGD(_params(), 0.1, 0.1, gamma=1e-9, mode="exp_range")


def test_empty_params():
    with pytest.raises(ValueError):
        clr_ext.CyclicSGD([], 0.01, 0.1)


def test_a_bare_tensor_as_params_is_a_type_error_as_in_torch():
    weight = torch.nn.Linear(3, 2).weight
    with pytest.raises(TypeError) as torch_error:
        torch.optim.SGD(weight, lr=0.01)
    with pytest.raises(TypeError, match="params") as ours:
        clr_ext.CyclicSGD(weight, 0.01, 0.1)
    assert "iterable of Tensors or dicts" in str(ours.value) and "iterable" in str(torch_error.value)


def test_unbuilt_backend_raises_runtime_error_saying_how_to_build():
    missing = [b for b in ("cuda", "cpp", "cython") if b not in clr_ext.available_backends()]
    if not missing:
        pytest.skip("every backend is built here")
    with pytest.raises(RuntimeError, match="build"):
        clr_ext.CyclicSGD(_params(), 0.01, 0.1, backend=missing[0])


def test_available_backends():
    names = clr_ext.available_backends()
    assert names[-1] == "torch"
    assert all(n in ("cuda", "cpp", "cython", "torch") for n in names)
    assert names == [n for n in ("cuda", "cpp", "cython", "torch") if n in names]  # fastest first


@pytest.mark.parametrize("name", [b for b in clr_ext.available_backends() if b != "cuda"])
def test_env_var_overrides_auto(monkeypatch, name):
    monkeypatch.setenv("CLR_EXT_BACKEND", name)
    opt = clr_ext.CyclicSGD(_params(), 0.01, 0.1)
    assert _backends.backend_for(opt._backend_request, torch.device("cpu")).name == name
    # an explicit name is not overridden
    other = "torch" if name != "torch" else clr_ext.available_backends()[0]
    opt = clr_ext.CyclicSGD(_params(), 0.01, 0.1, backend=other)
    if other != "cuda":
        assert _backends.backend_for(opt._backend_request, torch.device("cpu")).name == other


def test_env_var_unknown_backend(monkeypatch):
    monkeypatch.setenv("CLR_EXT_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="CLR_EXT_BACKEND"):
        clr_ext.CyclicSGD(_params(), 0.01, 0.1)


def test_auto_without_env_picks_the_fastest_cpu_backend(monkeypatch):
    monkeypatch.delenv("CLR_EXT_BACKEND", raising=False)
    opt = clr_ext.CyclicSGD(_params(), 0.01, 0.1)
    fastest = [b for b in clr_ext.available_backends() if b != "cuda"][0]
    assert _backends.backend_for(opt._backend_request, torch.device("cpu")).name == fastest


def test_add_param_group_validates_and_joins_at_the_current_iteration(backend):
    p = _params(1)
    opt = clr_ext.CyclicSGD(p, 0.01, 0.1, step_size_up=4, backend=backend)
    for _ in range(3):
        p[0].grad = torch.ones(5)
        opt.step()
    q = _params(1)
    opt.add_param_group({"params": q, "base_lr": 0.001, "max_lr": 0.002})
    assert opt.param_groups[1]["lr"] == cyclic_point(3, 0.001, 0.002, 4)[0]
    with pytest.raises(ValueError, match="max_lr"):
        opt.add_param_group({"params": _params(1), "base_lr": 0.5, "max_lr": 0.1})
    assert len(opt.param_groups) == 2
    listed = clr_ext.CyclicSGD([{"params": _params(1)}], [0.01], [0.1])
    with pytest.raises(ValueError, match="base_lr"):
        listed.add_param_group({"params": _params(1)})


# ------------------------------------------------------------- reported values


@pytest.mark.parametrize("cycle_momentum", (True, False))
def test_reported_values_follow_the_oracle(backend, cycle_momentum):
    p = _params(1)
    shape = dict(step_size_up=3, step_size_down=5, mode="triangular2")
    opt = clr_ext.CyclicSGD(p, 0.01, 0.1, momentum=0.5, cycle_momentum=cycle_momentum, backend=backend, **shape)
    assert opt.iteration == 0
    for k in range(30):
        lr, m = cyclic_point(k, 0.01, 0.1, 3, 5, "triangular2", 1.0, 0.8, 0.9)
        assert opt.param_groups[0]["lr"] == lr and type(opt.param_groups[0]["lr"]) is float
        assert opt.get_last_lr() == [lr]
        assert opt.param_groups[0]["momentum"] == (m if cycle_momentum else 0.5)
        if k % 4 == 1:
            p[0].grad = None  # the schedule advances without gradients too
        else:
            p[0].grad = torch.ones(5)
        opt.step()
        assert opt.iteration == k + 1


def test_triangular2_past_a_thousand_cycles(backend):
    """2.0 ** (cycle - 1) overflows a Python float past cycle 1024 (torch's CyclicLR raises
    OverflowError there); the schedule must go on, with the amplitude at 0 (lr = base_lr),
    as the compiled kernels compute it."""
    p = _params(1)
    opt = clr_ext.CyclicSGD(
        p, 0.01, 0.1, step_size_up=1, step_size_down=1, mode="triangular2", momentum=0.9, backend=backend
    )
    for k in range(2 * 1030):
        p[0].grad = torch.ones(5)
        opt.step()
    assert opt.iteration == 2060
    assert opt.get_last_lr() == [0.01]
    assert opt.param_groups[0]["momentum"] == 0.9
    assert torch.isfinite(p[0]).all()


def test_closure_returns_the_loss(backend):
    model, ref_model, x, y, opt, sgd, sched = mlp_pair(backend, (6, 5, 2), batch=16, max_lr=0.2, step_size_up=4)

    def closure_for(m, o):
        def closure():
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss

        return closure

    for k in range(25):
        loss = opt.step(closure_for(model, opt))
        ref_loss = sgd.step(closure_for(ref_model, sgd))
        sched.step()
        assert isinstance(loss, torch.Tensor) and loss.requires_grad
        assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    assert_close_rel(list(model.parameters()), list(ref_model.parameters()))
    assert opt.step() is None  # no closure: None, like torch optimizers


def test_params_without_grad_are_untouched(backend):
    a, b, c = (torch.randn(9, requires_grad=True) for _ in range(3))
    opt = clr_ext.CyclicSGD([a, b, c], 0.01, 0.1, momentum=0.9, backend=backend)
    b0 = b.detach().clone()
    for k in range(5):
        a.grad = torch.ones(9)
        c.grad = torch.ones(9) if k >= 3 else None
        opt.step()
    assert torch.equal(b.detach(), b0)
    assert b not in opt.state or "momentum_buffer" not in opt.state[b]
    assert "momentum_buffer" in opt.state[a] and "momentum_buffer" in opt.state[c]
    # c's buffer started at its first gradient (step 3): buffer = g, then (step 4) m * g + g
    m4 = cyclic_point(4, 0.01, 0.1)[1]
    torch.testing.assert_close(opt.state[c]["momentum_buffer"], torch.full((9,), m4 * 1.0 + 1.0))
    assert opt.iteration == 5


def test_no_grads_at_all_still_advances(backend):
    p = _params(2)
    opt = clr_ext.CyclicSGD(p, 0.01, 0.1, step_size_up=2, backend=backend)
    before = [t.detach().clone() for t in p]
    for _ in range(3):
        opt.step()
    assert opt.iteration == 3
    assert opt.get_last_lr() == [cyclic_point(3, 0.01, 0.1, 2)[0]]
    assert all(torch.equal(t.detach(), b) for t, b in zip(p, before))


# --------------------------------------------------- failing steps change nothing


def _snapshot(opt, params):
    state = {}
    for p in params:
        if p in opt.state:
            state[id(p)] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
    return dict(
        params=[p.detach().clone() for p in params],
        state=state,
        iteration=opt.iteration,
        groups=[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        counters={d: int(c) for d, c in getattr(opt, "_counters", {}).items()},
    )


def _assert_unchanged(opt, params, snap):
    for p, b in zip(params, snap["params"]):
        assert torch.equal(p.detach(), b), "a failing step changed a parameter"
    now = {}
    for p in params:
        if p in opt.state:
            now[id(p)] = opt.state[p]
    assert set(k for k, v in now.items() if v) == set(k for k, v in snap["state"].items() if v), (
        "a failing step created or removed optimizer state"
    )
    for key, st in snap["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                assert torch.equal(now[key][k], v), "a failing step changed a momentum buffer"
    assert opt.iteration == snap["iteration"], "a failing step advanced the iteration"
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == snap["groups"]
    assert {d: int(c) for d, c in getattr(opt, "_counters", {}).items()} == snap["counters"]


def _break_sparse(p):
    p.grad = torch.ones_like(p).to_sparse()


def _break_int_param(p):
    p.grad = torch.ones(p.shape, dtype=p.dtype)  # an int64 param (see the test) gets an int grad


def _break_grad_shape(p):
    p.grad = torch.ones_like(p)
    p.grad.data = torch.ones(p.numel() + 1, dtype=p.dtype)


def _break_grad_dtype(p):
    p.grad = torch.ones_like(p)
    p.grad.data = torch.ones(p.shape, dtype=torch.float64 if p.dtype != torch.float64 else torch.float32)


BREAKS = {
    "sparse-grad": _break_sparse,
    "int64-param": _break_int_param,
    "grad-shape": _break_grad_shape,
    "grad-dtype": _break_grad_dtype,
}


@pytest.mark.parametrize("warm", (False, True), ids=("first-step", "after-steps"))
@pytest.mark.parametrize("where", ("second-group", "same-group"))
@pytest.mark.parametrize("breakage", list(BREAKS))
def test_failing_step_changes_nothing(backend, breakage, where, warm):
    """A bad gradient (or a non-floating param) in the second group while the first is
    fine, or next to good params in one group: step() raises, and no parameter, buffer,
    counter or group value has changed; fixed up, the optimizer continues exactly like a
    reference pair that never saw the failed step."""
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(n, generator=gen) for n in (7, 1031, 17)]
    good = [t.clone().requires_grad_(True) for t in init]
    bad = torch.randn(6, generator=gen).requires_grad_(True)
    if breakage == "int64-param":
        bad = torch.arange(6)  # torch lets an integer tensor into an optimizer, with an integer grad
    if where == "second-group":
        groups = [{"params": good}, {"params": [bad]}]
    else:
        groups = [{"params": good[:2] + [bad] + good[2:]}]
    opt = clr_ext.CyclicSGD(groups, 0.01, 0.1, step_size_up=3, momentum=0.9, weight_decay=0.01, backend=backend)
    ref = ReferencePair(
        [{"params": init}], dict(momentum=0.9, weight_decay=0.01), dict(base_lr=0.01, max_lr=0.1, step_size_up=3)
    )
    steps_before = 4 if warm else 0
    for k in range(steps_before + 6):
        gs = [torch.randn(t.shape, generator=gen) for t in init]
        for p, g in zip(good, gs):
            p.grad = g.clone()
        if k == steps_before:
            BREAKS[breakage](bad)
            snap = _snapshot(opt, good + ([bad] if bad.is_floating_point() else []))
            with pytest.raises(RuntimeError) as info:
                opt.step()
            assert "sparse" in str(info.value) if breakage == "sparse-grad" else True
            _assert_unchanged(opt, good + ([bad] if bad.is_floating_point() else []), snap)
            bad.grad = None  # remove the bad gradient and carry on
        ref.step(gs)
        opt.step()
        assert opt.get_last_lr()[0] == ref.last_lr()[0]
    assert opt.iteration == steps_before + 6
    assert_close_rel(good, ref.params)
    for i, p in enumerate(good):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref.buffer(i), rtol=1e-5, atol=1e-6)


def test_failing_step_error_names_the_parameter(backend):
    a = torch.randn(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    opt = clr_ext.CyclicSGD([{"params": [a]}, {"params": [b]}], 0.01, 0.1, backend=backend)
    a.grad = torch.ones(4)
    b.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    q = torch.zeros(3, dtype=torch.int64)
    q.grad = torch.zeros(3, dtype=torch.int64)
    opt2 = clr_ext.CyclicSGD([q], 0.01, 0.1, backend=backend)
    with pytest.raises(RuntimeError, match="int64|float"):
        opt2.step()


@pytest.mark.skipif(clr_ext.backends._C is None, reason="the C++ validator is in clr_ext._C")
def test_the_validator_and_its_python_copy_say_the_same(monkeypatch):
    """The optimizers' tensor checks are _C.validate_group; core.py's Python copy (for
    builds without _C and traced steps) must raise the same errors word for word."""
    ok = torch.nn.Parameter(torch.randn(2, 3))
    ok.grad = torch.randn(2, 3)
    cplx = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    cplx.grad = torch.randn(3, dtype=torch.complex64)
    sparse = torch.nn.Parameter(torch.randn(5))
    sparse.grad = torch.randn(5).to_sparse()
    ints = torch.zeros(4, dtype=torch.int64)
    ints.grad = torch.zeros(4, dtype=torch.int64)
    bools = torch.zeros(1, dtype=torch.bool)
    bools.grad = torch.zeros(1, dtype=torch.bool)
    wrong_dtype = torch.nn.Parameter(torch.randn(2))
    wrong_dtype.grad = torch.randn(2)
    wrong_dtype.grad.data = torch.randn(2, dtype=torch.float64)  # (.grad = refuses it)
    wrong_shape = torch.nn.Parameter(torch.randn(2, 2))
    wrong_shape.grad = torch.randn(2, 2)
    wrong_shape.grad.data = torch.randn(4)
    opt = clr_ext.CyclicSGD([ok], 0.01, 0.1)
    cases = [[ok, cplx], [ok, sparse], [ints], [cplx, bools], [wrong_dtype], [ok, ok, wrong_shape]]

    def outcome(params):
        try:
            opt._validate(7, params)
        except RuntimeError as err:
            return str(err)
        return None

    compiled = [outcome(c) for c in cases]
    monkeypatch.setattr(clr_ext.backends, "_C", None)
    assert [outcome(c) for c in cases] == compiled
    assert compiled[0] is None  # complex params are stepped as real views
    assert compiled[1] == (
        "CyclicSGD: the gradient of parameter 1 of param group 7 is sparse; sparse gradients are not supported"
    )
    assert compiled[2].startswith("CyclicSGD: parameter 0 of param group 7 has dtype torch.int64; only floating")
    assert "parameter 1 of param group 7 has dtype torch.bool" in compiled[3]
    # Both read their words from one place, clr_ext/_checks.py.
    where = clr_ext._checks.where_param
    assert compiled[1] == clr_ext._checks.sparse_grad_message("CyclicSGD", where(1, 7))
    assert compiled[2] == clr_ext._checks.param_dtype_message("CyclicSGD", where(0, 7), torch.int64)
    assert compiled[4] == clr_ext._checks.unlike_message(
        "CyclicSGD", "gradient", where(0, 7), "dtype", torch.float64, torch.float32
    )
    assert compiled[5] == clr_ext._checks.unlike_message("CyclicSGD", "gradient", where(2, 7), "shape", (4,), (2, 2))


# ---------------------------------------------------------------- state dicts


def _train(opt, params, gen, steps, none_every=0):
    for k in range(steps):
        for i, p in enumerate(params):
            if none_every and (k + i) % none_every == 0:
                p.grad = None
            else:
                p.grad = (0.5 * p.detach().float() + torch.randn(p.shape, generator=gen)).to(p.dtype)
        opt.step()


def _build(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(n, generator=gen).to(dtype) for n in (1, 17, 1031)] + [
        torch.randn(3, 5, generator=gen).to(dtype)
    ]
    return values


def _make_opt(values, backend, **overrides):
    params = [v.clone().requires_grad_(True) for v in values]
    # each of the two groups with its own bounds
    kwargs = dict(base_lr=[0.01, 0.002], max_lr=[0.08, 0.02], base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.95])
    kwargs.update(step_size_up=7, step_size_down=11, mode="exp_range", gamma=0.995)
    kwargs.update(momentum=0.9, nesterov=True, weight_decay=0.01, backend=backend)
    kwargs.update(overrides)
    opt = clr_ext.CyclicSGD([{"params": params[:2]}, {"params": params[2:]}], **kwargs)
    return opt, params


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_resume_is_bit_identical(backend, dtype):
    values = _build(dtype)
    # uninterrupted
    opt_a, pa = _make_opt(values, backend)
    gen = torch.Generator().manual_seed(1)
    _train(opt_a, pa, gen, 23, none_every=5)
    _train(opt_a, pa, gen, 40, none_every=7)
    # interrupted mid-cycle (23 = 7 + 11 + 5: on the way up in cycle 2), saved, loaded
    opt_b, pb = _make_opt(values, backend)
    gen = torch.Generator().manual_seed(1)
    _train(opt_b, pb, gen, 23, none_every=5)
    sd = _roundtrip(opt_b.state_dict())
    saved = [p.detach().clone() for p in pb]
    del opt_b, pb
    # a fresh optimizer built with other bounds: the loaded ones must win
    opt_c, pc = _make_opt(saved, backend, base_lr=[0.5, 0.5], max_lr=[0.9, 0.9], momentum=0.5)
    opt_c.load_state_dict(sd)
    assert opt_c.iteration == 23
    assert opt_c.get_last_lr() == [
        cyclic_point(23, b, m, 7, 11, "exp_range", 0.995)[0] for b, m in ((0.01, 0.08), (0.002, 0.02))
    ]
    _train(opt_c, pc, gen, 40, none_every=7)
    assert opt_c.iteration == opt_a.iteration == 63
    assert opt_c.get_last_lr() == opt_a.get_last_lr()
    for g_a, g_c in zip(opt_a.param_groups, opt_c.param_groups):
        assert g_a["momentum"] == g_c["momentum"]
    for a, c in zip(pa, pc):
        assert torch.equal(a.detach(), c.detach()), "resume must be bit-identical"
        assert torch.equal(opt_a.state[a]["momentum_buffer"], opt_c.state[c]["momentum_buffer"])


def test_state_dict_format(backend):
    values = _build(torch.float32)
    opt, params = _make_opt(values, backend)
    _train(opt, params, torch.Generator().manual_seed(0), 5)
    sd = opt.state_dict()
    # As CyclicLR's own state dict, the schedule's shape travels with it (issue 11).
    assert set(sd) == {"state", "param_groups", "schedule"}
    assert sd["schedule"]["kind"] == "cyclic" and sd["schedule"]["mode"] == opt.mode
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    for i, p in enumerate(params):
        assert set(sd["state"][i]) == {"momentum_buffer"}
        assert torch.equal(sd["state"][i]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    for g in sd["param_groups"]:
        for key in (
            "lr",
            "momentum",
            "dampening",
            "weight_decay",
            "nesterov",
            "maximize",
            "base_lr",
            "max_lr",
            "base_momentum",
            "max_momentum",
        ):
            assert key in g
    pickle.loads(pickle.dumps(sd))  # no lambdas inside
    again = _roundtrip(sd)  # weights_only=True
    assert again["param_groups"] == sd["param_groups"]
    assert again["schedule"] == sd["schedule"]


def test_state_dict_with_lambda_scale_fn_pickles(backend):
    p = _params(1)
    opt = clr_ext.CyclicSGD(p, 0.01, 0.1, scale_fn=lambda c: 0.5**c, momentum=0.9, backend=backend)
    p[0].grad = torch.ones(5)
    opt.step()
    sd = opt.state_dict()
    pickle.dumps(sd)
    _roundtrip(sd)


def test_load_torch_sgd_state_dict(backend):
    """A torch.optim.SGD state dict (with momentum_buffer) loads; the buffers are used as
    they are (the next step is not a first step) and training continues like SGD + CyclicLR
    started on that SGD."""
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(n, generator=gen) for n in (3, 1031)]
    sgd_params = [t.clone().requires_grad_(True) for t in init]
    sgd = torch.optim.SGD(sgd_params, lr=0.05, momentum=0.9, weight_decay=0.01)
    for _ in range(6):
        for p in sgd_params:
            p.grad = torch.randn(p.shape, generator=gen)
        sgd.step()
    sd = _roundtrip(sgd.state_dict())
    params = [p.detach().clone().requires_grad_(True) for p in sgd_params]
    opt = clr_ext.CyclicSGD(params, 0.01, 0.1, step_size_up=4, momentum=0.9, weight_decay=0.01, backend=backend)
    opt.load_state_dict(sd)
    for p, q in zip(params, sgd_params):
        assert torch.equal(opt.state[p]["momentum_buffer"], sgd.state[q]["momentum_buffer"])
    assert opt.iteration == 0 and opt.get_last_lr() == [0.01]
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, 0.01, 0.1, step_size_up=4)
    for _ in range(12):
        step_both(opt, sgd, sched, params, sgd_params, [torch.randn(p.shape, generator=gen) for p in params])
        assert opt.get_last_lr() == sched.get_last_lr()
    assert_close_rel(params, sgd_params)
    for p, q in zip(params, sgd_params):
        assert_close_rel([opt.state[p]["momentum_buffer"]], [sgd.state[q]["momentum_buffer"]])


def test_state_dict_round_trip_into_torch_sgd(backend):
    """The other way: a CyclicSGD state dict loads into torch.optim.SGD (same format)."""
    values = _build(torch.float32)
    opt, params = _make_opt(values, backend)
    _train(opt, params, torch.Generator().manual_seed(0), 5)
    sgd = torch.optim.SGD(
        [
            {"params": [v.clone().requires_grad_(True) for v in values[:2]]},
            {"params": [v.clone().requires_grad_(True) for v in values[2:]]},
        ],
        lr=0.1,
        momentum=0.9,
    )
    sgd.load_state_dict(_roundtrip(opt.state_dict()))
    for p, q in zip(params, [q for g in sgd.param_groups for q in g["params"]]):
        assert torch.equal(sgd.state[q]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_pickle_and_deepcopy_the_optimizer(backend):
    """The optimizer object itself survives pickle / copy.deepcopy (as torch optimizers
    do): the copy continues bit-identically to the original."""
    values = _build(torch.float32)
    opt, params = _make_opt(values, backend)
    gen = torch.Generator().manual_seed(0)
    _train(opt, params, gen, 9)
    copies = [copy.deepcopy(opt)]
    blob = pickle.dumps((opt, params))
    opt_p, params_p = pickle.loads(blob)
    copies.append(opt_p)
    params_d = [p for g in copies[0].param_groups for p in g["params"]]
    for c, cp in ((copies[0], params_d), (opt_p, params_p)):
        assert c.iteration == 9
        assert c.get_last_lr() == opt.get_last_lr()
    state = gen.get_state()
    _train(opt, params, gen, 10)
    for c, cp in ((copies[0], params_d), (opt_p, params_p)):
        g2 = torch.Generator()
        g2.set_state(state)
        _train(c, cp, g2, 10)
        assert c.iteration == opt.iteration == 19
        for a, b in zip(params, cp):
            assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("edit", ("replace", "zero-in-place", "delete", "clear-state"))
def test_edits_to_momentum_buffers_are_honoured(backend, edit):
    """opt.state holds the buffers as torch.optim.SGD does; code that resets momentum by
    editing it (replacing, zeroing or deleting a buffer) gets SGD's behaviour."""
    gen = torch.Generator().manual_seed(9)
    init = [torch.randn(n, generator=gen) for n in (5, 1031)]
    params = [t.clone().requires_grad_(True) for t in init]
    opt = clr_ext.CyclicSGD(params, 0.01, 0.1, step_size_up=3, momentum=0.9, backend=backend)
    ref = ReferencePair([{"params": init}], dict(momentum=0.9), dict(base_lr=0.01, max_lr=0.1, step_size_up=3))
    for k in range(12):
        if k == 6:
            for o, ps in ((opt, params), (ref.sgd, ref.compute)):
                p = ps[1]
                if edit == "replace":
                    o.state[p]["momentum_buffer"] = torch.zeros_like(p)
                elif edit == "zero-in-place":
                    o.state[p]["momentum_buffer"].zero_()
                elif edit == "delete":
                    del o.state[p]["momentum_buffer"]
                else:
                    o.state[p].clear()
        gs = [torch.randn(t.shape, generator=gen) for t in init]
        ref.step(gs)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    assert_close_rel(params, ref.params)
    for i, p in enumerate(params):
        assert_close_rel([opt.state[p]["momentum_buffer"]], [ref.buffer(i)], what="momentum buffer")


def test_load_into_an_optimizer_that_already_stepped(backend):
    """Loading replaces everything a used optimizer had: its buffers, iteration, device
    counters and cached buckets; it then continues exactly like the saved one."""
    values = _build(torch.float32)
    opt_a, pa = _make_opt(values, backend)
    _train(opt_a, pa, torch.Generator().manual_seed(1), 13)
    sd = _roundtrip(opt_a.state_dict())
    saved = [p.detach().clone() for p in pa]
    opt_b, pb = _make_opt(_build(torch.float32, seed=7), backend, base_lr=[0.2, 0.2], max_lr=[0.3, 0.3])
    _train(opt_b, pb, torch.Generator().manual_seed(2), 30)
    with torch.no_grad():
        for p, s in zip(pb, saved):
            p.copy_(s)
    opt_b.load_state_dict(sd)
    assert opt_b.iteration == 13
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    _train(opt_a, pa, gen_a, 20)
    _train(opt_b, pb, gen_b, 20)
    assert opt_a.get_last_lr() == opt_b.get_last_lr()
    for a, b in zip(pa, pb):
        assert torch.equal(a.detach(), b.detach())
        assert torch.equal(opt_a.state[a]["momentum_buffer"], opt_b.state[b]["momentum_buffer"])


@pytest.mark.parametrize("cls", ["CyclicSGD", "OneCycleSGD", "CyclicAdamW"])
def test_step_hooks_and_profiler_label_still_work(backend, cls):
    """The step skips torch's wrapper only when nothing would see it: step pre/post hooks
    (per optimizer and global) still run, and a profiler still sees the step's label."""
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.ones(4)
    opt = {
        "CyclicSGD": lambda: clr_ext.CyclicSGD([p], 0.01, 0.1, backend=backend),
        "OneCycleSGD": lambda: clr_ext.OneCycleSGD([p], 0.1, 10, backend=backend),
        "CyclicAdamW": lambda: clr_ext.CyclicAdamW([p], 0.01, 0.1, backend=backend),
    }[cls]()
    calls = []
    pre = opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o.iteration)))
    post = opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o.iteration)))
    opt.step()
    pre.remove()
    post.remove()
    opt.step()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global", 0)))
    opt.step()
    handle.remove()
    opt.step()
    assert calls == [("pre", 0), ("post", 1), ("global", 0)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert any(e.name == f"Optimizer.step#{cls}.step" for e in prof.events())
    assert opt.iteration == 5


def test_step_runs_without_grad_and_restores_grad_mode(backend):
    """The step turns grad mode off itself (no autograd record of its updates, as
    @torch.no_grad()) and restores the caller's mode, also when it raises."""
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = clr_ext.CyclicSGD([p], 0.01, 0.1, backend=backend)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: None)  # (the hooked path too)
    opt.step(closure=lambda: seen.append(torch.is_grad_enabled()))
    assert seen == [True] and torch.is_grad_enabled()
    assert p.grad_fn is None and p.is_leaf
    with torch.no_grad():
        opt.step()
        assert not torch.is_grad_enabled()
    p.grad = torch.ones(3).to_sparse()  # a sparse gradient: the step raises
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.is_grad_enabled()
