"""CyclicAdamW and OneCycleAdamW against torch.optim.AdamW + CyclicLR / OneCycleLR (docs/api.md,
"The 1cycle policy and AdamW": one ``opt.step()`` is ``adamw.step(); sched.step()``, beta1
cycled in ``group["betas"][0]``), for every CPU backend: every flag, several groups with
per-group bounds, params that miss steps; state dicts, AMP skips, from_torch, errors."""

from __future__ import annotations

import itertools
import pickle
import warnings

import pytest
import torch
import torch._dynamo.testing
from conftest import HALF_DTYPES, assert_close_rel, compiled_step_against_eager, torch_state_dict_continues
from test_parity import Problem, assert_every_param_moved, step_both

import clr_ext

CyclicLR = torch.optim.lr_scheduler.CyclicLR
OneCycleLR = torch.optim.lr_scheduler.OneCycleLR

BASE_LR = [0.001, 0.0005, 0.002]
MAX_LR = [0.01, 0.004, 0.02]
BASE_MOMENTUM = [0.8, 0.85, 0.7]
MAX_MOMENTUM = [0.9, 0.95, 0.9]
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}


class AdamWReference:
    """torch.optim.AdamW + a scheduler on copies of the initial values. Half-precision
    params run on float32 shadows, params and state rounded to the half type once per
    step (the fused kernels' semantics; torch.optim.AdamW itself rounds after every op),
    except under AdamW(fused=True), whose kernel has those semantics itself."""

    def __init__(self, groups, adamw_kwargs, scheduler, sched_kwargs):
        self.params = [t.detach().clone() for g in groups for t in g]
        shadow = not adamw_kwargs.get("fused")
        self.compute = [
            p.float().requires_grad_(True) if shadow and p.dtype in HALF_DTYPES else p.requires_grad_(True)
            for p in self.params
        ]
        it = iter(self.compute)
        adamw_groups = [{"params": [next(it) for _ in g]} for g in groups]
        self.opt = torch.optim.AdamW(adamw_groups, lr=0.0, **adamw_kwargs)
        self.sched = scheduler(self.opt, **sched_kwargs)
        self.last = False

    def step(self, grads):
        for p, c, g in zip(self.params, self.compute, grads):
            if c is not p:
                c.data.copy_(p)  # exact: every half value is a float32 value
            c.grad = None if g is None else g.detach().to(c.dtype).clone()
        self.opt.step()
        if not self.last:
            self.sched.step()
        for p, c in zip(self.params, self.compute):
            if c is not p:
                p.copy_(c.detach())
                for k, v in self.opt.state.get(c, {}).items():
                    if k != "step":
                        v.copy_(v.to(p.dtype).float())

    def state(self, i, key):
        value = self.opt.state.get(self.compute[i], {}).get(key)
        return None if value is None else value.to(self.params[i].dtype if key != "step" else value.dtype)


def run_adamw(
    backend,
    dtype,
    kind,
    amsgrad,
    maximize,
    weight_decay,
    cycle_momentum,
    steps=40,
    bounds_as="lists",
    mode="triangular",
    fused=None,
):
    problem = Problem(dtype)
    adamw_kwargs = dict(
        betas=(0.9, 0.99), eps=1e-6, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, fused=fused
    )
    # beta1's cycle, the same for both schedules
    sched_kwargs = dict(
        max_lr=MAX_LR, cycle_momentum=cycle_momentum, base_momentum=BASE_MOMENTUM, max_momentum=MAX_MOMENTUM
    )
    if kind == "cyclic":
        sched_kwargs.update(base_lr=BASE_LR, step_size_up=5, step_size_down=8, mode=mode, gamma=0.97)
        scheduler = CyclicLR
    else:
        sched_kwargs.update(total_steps=steps, pct_start=0.3, anneal_strategy="cos")
        scheduler = OneCycleLR
    ref = AdamWReference(problem.groups, adamw_kwargs, scheduler, sched_kwargs)
    params, groups = [], []
    for g in problem.groups:
        ps = [t.clone().requires_grad_(True) for t in g]
        params += ps
        groups.append({"params": ps})
    kwargs = dict(sched_kwargs)
    bound_keys = (
        ("base_lr", "max_lr", "base_momentum", "max_momentum")
        if kind == "cyclic"
        else ("max_lr", "base_momentum", "max_momentum")
    )
    if bounds_as == "dict":  # per-group dict values win over the constructor's (different) scalars
        for gi, d in enumerate(groups):
            for key in bound_keys:
                d[key] = kwargs[key][gi]
        kwargs.update({key: 0.5 if "lr" in key else 0.1 for key in bound_keys})
    if kind == "cyclic":
        opt = clr_ext.CyclicAdamW(
            groups, kwargs.pop("base_lr"), kwargs.pop("max_lr"), backend=backend, **adamw_kwargs, **kwargs
        )
    else:
        opt = clr_ext.OneCycleAdamW(
            groups, kwargs.pop("max_lr"), kwargs.pop("total_steps"), backend=backend, **adamw_kwargs, **kwargs
        )

    def check_reported(where):
        for gi, (mine, theirs) in enumerate(zip(opt.param_groups, ref.opt.param_groups)):
            assert mine["lr"] == theirs["lr"], (where, gi, mine["lr"], theirs["lr"])
            assert mine["betas"] == theirs["betas"], (where, gi, mine["betas"], theirs["betas"])

    check_reported("after construction")
    for k in range(steps):
        ref.last = kind == "one_cycle" and k == steps - 1  # OneCycleLR raises past its end
        step_both(problem, ref, opt, params, k, maximize)
        if not ref.last:
            check_reported("after step %d" % k)
    assert_close_rel(params, ref.params)
    keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
    for key in keys:
        mine = [opt.state[p][key] for p in params if p in opt.state]
        theirs = [ref.state(i, key) for i, p in enumerate(params) if p in opt.state]
        assert_close_rel(mine, theirs, what=key, half_factor=2.0)
    for i, p in enumerate(params):  # each param's own step count (params miss steps)
        assert float(opt.state[p]["step"]) == float(ref.state(i, "step")), i
    assert_every_param_moved(params, problem)
    return opt, params, ref


def _cases():
    out = []
    for kind, amsgrad, maximize, wd, cycle, dtype in itertools.product(
        ("cyclic", "one_cycle"),
        (False, True),
        (False, True),
        (0.0, 0.01),
        (True, False),
        (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    ):
        if maximize and (wd == 0.0 or not cycle):
            continue
        bounds_as = "dict" if amsgrad != maximize else "lists"
        cid = "%s%s%s-wd%g-%s-%s-%s" % (
            kind,
            "-ams" if amsgrad else "",
            "-max" if maximize else "",
            wd,
            "cyc" if cycle else "nocyc",
            DTYPE_IDS[dtype],
            bounds_as,
        )
        out.append(pytest.param(kind, amsgrad, maximize, wd, cycle, dtype, bounds_as, id=cid))
    return out


@pytest.mark.parametrize("kind,amsgrad,maximize,weight_decay,cycle_momentum,dtype,bounds_as", _cases())
def test_parity_with_torch_adamw_and_scheduler(
    backend, kind, amsgrad, maximize, weight_decay, cycle_momentum, dtype, bounds_as
):
    run_adamw(backend, dtype, kind, amsgrad, maximize, weight_decay, cycle_momentum, bounds_as=bounds_as)


@pytest.mark.parametrize("kind", ["cyclic", "one_cycle"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_over_1000_steps_within_api_tolerance(backend, kind, dtype):
    """api.md: fp32 within 1e-5, fp64 within 1e-12 relative, over 1,000 steps."""
    run_adamw(backend, dtype, kind, True, False, 0.01, True, steps=1000, mode="triangular2")


@pytest.mark.parametrize("mode", ["triangular2", "exp_range"])
def test_cyclic_modes(backend, mode):
    run_adamw(backend, torch.float32, "cyclic", False, False, 0.01, True, steps=30, mode=mode)


def _train(opt, params, gen, steps):
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize("cls", ["CyclicAdamW", "OneCycleAdamW"])
def test_state_dict_resumes_bit_for_bit(backend, cls):
    init = [torch.randn(17, dtype=torch.float32), torch.randn(3, 4, dtype=torch.float32)]

    def make(ps):
        if cls == "CyclicAdamW":
            return clr_ext.CyclicAdamW(ps, 1e-3, 1e-2, step_size_up=4, amsgrad=True, backend=backend)
        return clr_ext.OneCycleAdamW(ps, 1e-2, 30, amsgrad=True, backend=backend)

    full = [torch.nn.Parameter(t.clone()) for t in init]
    a = make(full)
    _train(a, full, torch.Generator().manual_seed(0), 30)
    half = [torch.nn.Parameter(t.clone()) for t in init]
    b = make(half)
    gen = torch.Generator().manual_seed(0)
    _train(b, half, gen, 11)
    saved = pickle.loads(pickle.dumps(b.state_dict()))
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in half]
    c = make(resumed)
    c.load_state_dict(saved)
    _train(c, resumed, gen, 19)
    for p, q in zip(resumed, full):
        assert torch.equal(p, q)
    assert c.get_last_lr() == a.get_last_lr()


def test_torch_adamw_state_dict_loads_and_continues(backend):
    p = torch.nn.Parameter(torch.randn(25, dtype=torch.float64))
    adamw = torch.optim.AdamW([p], lr=0.1, weight_decay=0.05)
    sched = CyclicLR(adamw, 1e-3, 1e-2, step_size_up=3)
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(25, generator=gen, dtype=torch.float64) for _ in range(20)]

    def make(params):
        return clr_ext.CyclicAdamW(params, 1e-3, 1e-2, step_size_up=3, weight_decay=0.05, backend=backend)

    def loaded(opt, q):
        assert opt.state[q]["step"].dtype == torch.float32 and float(opt.state[q]["step"]) == 9

    torch_state_dict_continues(adamw, sched, make, grads, 9, "betas", loaded)


@pytest.mark.parametrize("scheduler", ["cyclic", "one_cycle"])
def test_from_torch_converts_a_running_adamw_pair(backend, scheduler):
    init = [torch.randn(9), torch.randn(4, 4)]
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    twin = [torch.nn.Parameter(t.clone()) for t in init]
    pairs = []
    for params in (ps, twin):
        adamw = torch.optim.AdamW(
            [{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.1}], lr=0.1, amsgrad=True
        )
        sched = (
            CyclicLR(adamw, [1e-3, 2e-3], [1e-2, 3e-2], step_size_up=4)
            if scheduler == "cyclic"
            else OneCycleLR(adamw, [1e-2, 3e-2], total_steps=40, three_phase=True)
        )
        pairs.append((adamw, sched))
    gen = torch.Generator().manual_seed(1)
    for _ in range(13):
        for p, t in zip(ps, twin):
            g = torch.randn(p.shape, generator=gen)
            p.grad, t.grad = g.clone(), g.clone()
        for adamw, sched in pairs:
            adamw.step()
            sched.step()
    opt = clr_ext.from_torch(*pairs[0], backend=backend)
    assert type(opt).__name__ == ("CyclicAdamW" if scheduler == "cyclic" else "OneCycleAdamW")
    assert opt.iteration == 13 and opt.get_last_lr() == pairs[1][1].get_last_lr()
    for _ in range(20):
        for p, t in zip(ps, twin):
            g = torch.randn(p.shape, generator=gen)
            p.grad, t.grad = g.clone(), g.clone()
        opt.step()
        pairs[1][0].step()
        pairs[1][1].step()
        assert opt.get_last_lr() == pairs[1][1].get_last_lr()
        assert [g["betas"] for g in opt.param_groups] == [g["betas"] for g in pairs[1][0].param_groups]
        for p, t in zip(ps, twin):
            assert torch.equal(p, t)


def test_grad_scaler_skip_changes_nothing_step_counts_included(backend):
    init = torch.randn(40)
    p = torch.nn.Parameter(init.clone())
    opt = clr_ext.CyclicAdamW([p], 1e-3, 1e-2, step_size_up=5, backend=backend)
    p.grad = torch.full_like(p, 64.0)
    opt.grad_scale = torch.tensor(64.0)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), init) and opt.iteration == 1
    assert not opt.state.get(p) or float(opt.state[p]["step"]) == 0.0
    opt.found_inf = torch.tensor(0.0)
    opt.step()  # unscaled in the step: AdamW's first step moves every element by lr (sign of g)
    assert float(opt.state[p]["step"]) == 1.0
    assert torch.equal(p.grad, torch.ones_like(p))
    lr = clr_ext.cyclic_lr(1, 1e-3, 1e-2, 5)
    expected = init * (1 - lr * 0.01) - lr * 1.0 / (1.0 + 1e-8)
    assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(betas=(1.0, 0.999)), "betas"),
        (dict(betas=(0.9, -0.1)), "betas"),
        (dict(betas=(0.9,)), "betas"),
        (dict(eps=-1e-8), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(weight_decay=float("inf")), "weight_decay"),
        (dict(max_momentum=1.0), "max_momentum"),
        (dict(base_momentum=float("nan")), "base_momentum"),
        (dict(base_lr=float("nan")), "base_lr"),
        (dict(max_lr=-1.0), "max_lr"),
        (dict(step_size_up=0), "step_size_up"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    kwargs = dict(kwargs)
    base_lr, max_lr = kwargs.pop("base_lr", 1e-3), kwargs.pop("max_lr", 1e-2)
    with pytest.raises(ValueError, match=name):
        clr_ext.CyclicAdamW([torch.nn.Parameter(torch.zeros(2))], base_lr, max_lr, **kwargs)


def test_one_cycle_adamw_errors_and_end():
    with pytest.raises(ValueError, match="total_steps"):
        clr_ext.OneCycleAdamW([torch.nn.Parameter(torch.zeros(2))], 0.01)
    with pytest.raises(ValueError, match="anneal_strategy"):
        clr_ext.OneCycleAdamW([torch.nn.Parameter(torch.zeros(2))], 0.01, 10, anneal_strategy="exp")
    p = torch.nn.Parameter(torch.zeros(2))
    opt = clr_ext.OneCycleAdamW([p], 0.01, 5)
    p.grad = torch.ones(2)
    for _ in range(5):
        opt.step()
    final = (opt.get_last_lr(), opt.param_groups[0]["betas"])
    with pytest.warns(UserWarning, match="total_steps=5"):
        opt.step()
    assert (opt.get_last_lr(), opt.param_groups[0]["betas"]) == final


def test_from_range_test_for_both_classes():
    result = clr_ext.RangeTestResult(
        lrs=[1e-4 * (i + 1) for i in range(50)],
        losses=[1.0] * 50,
        smoothed_losses=[1.0] * 50,
        metrics=None,
        diverged=False,
        base_lr=1e-3,
        max_lr=4e-3,
    )
    cyc = clr_ext.CyclicAdamW.from_range_test([torch.nn.Parameter(torch.zeros(3))], result, 25)
    assert (cyc.param_groups[0]["base_lr"], cyc.param_groups[0]["max_lr"]) == (1e-3, 4e-3)
    assert cyc.step_size_up == result.step_size(25)
    one = clr_ext.OneCycleAdamW.from_range_test([torch.nn.Parameter(torch.zeros(3))], result, 300)
    assert one.param_groups[0]["max_lr"] == 4e-3 and one.total_steps == 300


@pytest.mark.parametrize("fused", [None, True])
def test_compiled_step_is_traced_twice_and_matches_eager(backend, fused):
    kwargs = dict(step_size_up=3, amsgrad=True, fused=fused, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        counter = compiled_step_against_eager(
            lambda params, steps: clr_ext.CyclicAdamW(params, 1e-3, 1e-2, **kwargs), "betas"
        )
    assert counter.frame_count <= 2


@pytest.mark.parametrize("kind", ["cyclic", "one_cycle"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("amsgrad,maximize", [(False, False), (True, True)])
def test_fp32_fp64_are_bit_identical_to_torch_adamw(backend, kind, dtype, amsgrad, maximize):
    """Every op rounds as torch.optim.AdamW's single-tensor CPU step: params, moments and
    step counts equal bit for bit, over three groups and params that miss steps."""
    opt, params, ref = run_adamw(backend, dtype, kind, amsgrad, maximize, 0.01, True, steps=300)
    for i, p in enumerate(params):
        assert torch.equal(p.detach(), ref.params[i]), i
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            assert torch.equal(opt.state[p][key], ref.state(i, key)), (i, key)


@pytest.mark.parametrize("kind", ["cyclic", "one_cycle"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize(
    "amsgrad,maximize,weight_decay", [(False, False, 0.0), (True, True, 0.01), (False, True, 0.01)]
)
def test_fused_true_is_bit_identical_to_torch_fused_adamw(backend, kind, dtype, amsgrad, maximize, weight_decay):
    """fused=True reproduces torch.optim.AdamW(fused=True) bit for bit on the CPU, half
    precision included: its IEEE square roots and its scalar loop over each tensor's
    last numel % vector-width elements (Problem's tensors have such tails), with beta1
    cycled on both sides of the lerp's 0.5 switch, three groups and params that miss steps."""
    opt, params, ref = run_adamw(backend, dtype, kind, amsgrad, maximize, weight_decay, True, steps=150, fused=True)
    assert all(g["fused"] is True for g in opt.param_groups)
    for i, p in enumerate(params):
        assert torch.equal(p.detach(), ref.params[i]), i
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            assert torch.equal(opt.state[p][key], ref.state(i, key)), (i, key)


def test_fused_numbers_differ_from_the_default_paths():
    """The two CPU roundings are distinct (MKL's square root against IEEE's), so the
    bit-for-bit tests above could not pass with the wrong one."""
    init = torch.randn(4099, generator=torch.Generator().manual_seed(3))
    out = {}
    for fused in (None, True):
        p = torch.nn.Parameter(init.clone())
        opt = clr_ext.CyclicAdamW([p], 1e-3, 1e-2, step_size_up=3, fused=fused)
        gen = torch.Generator().manual_seed(4)
        for _ in range(30):
            p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        out[fused] = p.detach()
    assert not torch.equal(out[None], out[True])
    assert_close_rel([out[True]], [out[None]])


def test_fused_per_group_and_through_state_dicts(backend):
    """``fused`` is a group key, as in torch.optim.AdamW: a group may set it, a torch
    AdamW state dict brings it, and from_torch takes it over with the numbers."""
    init = [torch.randn(37), torch.randn(5, 7)]
    sets = [[torch.nn.Parameter(t.clone()) for t in init] for _ in range(3)]
    pairs = []
    for params in sets[1:]:  # two torch pairs: one to follow, one to convert midway
        adamw = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "fused": True}], lr=0.1)
        pairs.append((adamw, CyclicLR(adamw, 1e-3, 1e-2, step_size_up=4)))
    groups = [{"params": sets[0][:1]}, {"params": sets[0][1:], "fused": True}]
    opts = [clr_ext.CyclicAdamW(groups, 1e-3, 1e-2, step_size_up=4, backend=backend)]
    assert [g["fused"] for g in opts[0].param_groups] == [None, True]
    gen = torch.Generator().manual_seed(5)

    def step_all(n, stepped, torch_pairs):
        for _ in range(n):
            for tensors in zip(*sets):
                g = torch.randn(tensors[0].shape, generator=gen)
                for t in tensors:
                    t.grad = g.clone()
            for opt in stepped:
                opt.step()
            for adamw, sched in torch_pairs:
                adamw.step()
                sched.step()
            for mine, theirs in zip(sets[0], sets[1]):
                assert torch.equal(mine, theirs)
            for converted, theirs in zip(sets[2], sets[1]):
                assert torch.equal(converted, theirs)

    step_all(6, opts, pairs)
    fresh = clr_ext.CyclicAdamW([{"params": sets[0][:1]}, {"params": sets[0][1:]}], 1e-3, 1e-2, backend=backend)
    fresh.load_state_dict(pairs[0][0].state_dict())
    assert [g["fused"] for g in fresh.param_groups] == [None, True]
    converted = clr_ext.from_torch(*pairs[1], backend=backend)
    assert [g["fused"] for g in converted.param_groups] == [None, True]
    step_all(5, opts + [converted], pairs[:1])


def test_fused_must_be_a_bool_or_none():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="fused"):
        clr_ext.CyclicAdamW([p], 1e-3, 1e-2, fused="yes")
    with pytest.raises(ValueError, match="fused"):
        clr_ext.OneCycleAdamW([{"params": [p], "fused": 1}], 1e-2, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_IDS.get)
def test_fused_width_is_where_torch_fused_adamw_rounds_otherwise(dtype):
    """Element by element, one torch._fused_adamw_ step on a tensor of 3 widths minus one:
    the scalar code's contraction (the second moment as fma(v, beta2, ((1 - beta2) * g) * g))
    shows on exactly the last numel % width elements, where the two roundings differ."""
    width = clr_ext.backends.fused_adamw_width(dtype)
    n = 3 * width - 1
    gen = torch.Generator().manual_seed(11)
    seen_body = seen_tail = 0
    for _ in range(30):
        g = torch.randn(n, generator=gen, dtype=dtype) * 3
        v = torch.rand(n, generator=gen, dtype=dtype)
        out = v.clone()
        torch._fused_adamw_(
            [torch.randn(n, dtype=dtype)], [g.clone()], [torch.zeros(n, dtype=dtype)], [out], [], [torch.tensor(3.0)],
            lr=1e-3, beta1=0.9, beta2=0.97, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
        )  # fmt: skip
        beta2, c2 = torch.tensor(0.97, dtype=dtype), torch.tensor(1 - 0.97, dtype=dtype)
        body = torch.addcmul(v * beta2, c2 * g, g)  # ATen's addcmul: fma(c2 * g, g, v * beta2)
        tail = torch.addcmul((c2 * g) * g, v, beta2.expand(n))  # fma(v, beta2, (c2 * g) * g)
        differ = body != tail
        for k in differ.nonzero().reshape(-1).tolist():
            if k < n - n % width:
                assert out[k] == body[k], k
                seen_body += 1
            else:
                assert out[k] == tail[k], k
                seen_tail += 1
    assert seen_body > 0 and seen_tail > 0
