"""The compiled AdamW op on CPU tensors, through each of its entry points: the dispatcher op
torch.ops.clr_ext.cyclic_adamw_, the pybind fast path clr_ext._C.cyclic_adamw_cpu_, and the
Cython fallback clr_ext._cython._cpu.cyclic_adamw_.

The reference is torch.optim.AdamW(foreach=False) itself (its default CPU path,
_single_tensor_adam). The schedule is mode 3 ("fixed": lr = bounds[0], momentum =
bounds[3]) with cycle_momentum off unless a test says otherwise, so lr and beta1 are the
AdamW constants. fp32/fp64 must match bit for bit; half types are checked against an fp32
AdamW step on float32 copies of the half values, rounded once per step.
"""

from __future__ import annotations

import itertools
from typing import Dict, List

import pytest
import torch
from support.adamw_op import FLAGS, op_args

from clr_ext import backends as _backends

_C = _backends._C
_cython_cpu = _backends._cython_cpu

CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
HALF_DTYPES = (torch.float16, torch.bfloat16)
ALL_DTYPES = tuple(CODES)
# 1, 7, 17: scalar tails of ATen's vector loops; 1031: vector body + tail, and past one of our
# 512-element blocks; 2-D; 70001: the bucket is split between threads (grain 32768).
SHAPES = [(1,), (7,), (17,), (1031,), (33, 65), (70001,)]
FIXED = 3  # schedule mode "fixed"
UNIT_SHAPE = [1.0, 1.0, 1.0, 1.0]  # step sizes, gamma and scale: unused by the fixed mode
LR = 0.01
EPS = 1e-8


def entry_points() -> List[str]:
    names = []
    if _C is not None:
        names += ["op", "pybind"]
    if _cython_cpu is not None:
        names.append("cython")
    return names


ENTRY_POINTS = entry_points()
CPP_ENTRY_POINTS = [e for e in ENTRY_POINTS if e != "cython"]
pytestmark = pytest.mark.skipif(not ENTRY_POINTS, reason="neither clr_ext._C nor the Cython fallback is built")


def call(entry, *args):
    """The op through ``entry`` with its positional arguments (each list passed as a copy)."""
    args = tuple(list(a) if isinstance(a, list) else a for a in args)
    if entry == "op":
        torch.ops.clr_ext.cyclic_adamw_(*args)
        return
    *args, grad_scale, found_inf = args  # keywords of the pybind and Cython entries
    if entry == "pybind":
        _C.cyclic_adamw_cpu_(*args, grad_scale=grad_scale, found_inf=found_inf)
    else:
        code = CODES[args[0][0].dtype] if args[0] else 0
        _cython_cpu.cyclic_adamw_(
            code, *args, grad_scale=grad_scale, found_inf=found_inf, num_threads=torch.get_num_threads()
        )


class State:
    """One bucket of AdamW state as the op takes it, for params of the given shapes."""

    def __init__(self, dtype, shapes=SHAPES, amsgrad=False, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.max_exp_avg_sqs = [torch.zeros_like(p) for p in self.params] if amsgrad else []
        self.state_steps = [torch.tensor(0.0) for _ in self.params]
        self.amsgrad = amsgrad

    def subset(self, keep):
        """The lists restricted to params whose index is in keep (a step that skips others)."""
        pick = lambda xs: [x for i, x in enumerate(xs) if i in keep]  # noqa: E731
        return (
            pick(self.params),
            pick(self.exp_avgs),
            pick(self.exp_avg_sqs),
            pick(self.max_exp_avg_sqs),
            pick(self.state_steps),
        )

    def snapshot(self):
        return [
            t.clone()
            for t in itertools.chain(
                self.params, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs, self.state_steps
            )
        ]

    def tensors(self):
        return list(
            itertools.chain(self.params, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs, self.state_steps)
        )


def make_grads(shapes, dtype, step, gen):
    # Magnitudes from 1e-3 to 1e2, so that the second moment spans a wide range.
    return [(torch.randn(s, generator=gen) * 10.0 ** (step % 6 - 3)).to(dtype) for s in shapes]


def step_op(entry, st: State, grads, keep=None, iteration=0, bounds=None, shape=UNIT_SHAPE, mode=FIXED, **flags):
    """One step of the params whose index is in ``keep`` (all by default); ``flags``:
    support.adamw_op.FLAGS's, amsgrad as ``st``'s unless given. Without ``bounds``, the
    fixed schedule's lr = LR and beta1 = ``flags``' beta1."""
    keep = set(range(len(st.params))) if keep is None else keep
    params, exp_avgs, exp_avg_sqs, max_sqs, steps = st.subset(keep)
    grads = [g for i, g in enumerate(grads) if i in keep]
    flags.setdefault("amsgrad", st.amsgrad)
    if bounds is None:
        bounds = [LR, LR, 0.8, flags.get("beta1", FLAGS["beta1"])]
    tensors = (params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps)
    call(entry, *op_args(tensors, iteration, bounds, shape, mode, **flags))


def assert_same_as_adamw(st: State, ref: List[torch.Tensor], opt: torch.optim.AdamW, what=""):
    for i, (p, r) in enumerate(zip(st.params, ref)):
        s = opt.state[r]
        assert torch.equal(p, r.detach()), f"{what} param {i}"
        assert torch.equal(st.exp_avgs[i], s["exp_avg"]), f"{what} exp_avg {i}"
        assert torch.equal(st.exp_avg_sqs[i], s["exp_avg_sq"]), f"{what} exp_avg_sq {i}"
        if st.amsgrad:
            assert torch.equal(st.max_exp_avg_sqs[i], s["max_exp_avg_sq"]), f"{what} max_exp_avg_sq {i}"
        assert torch.equal(st.state_steps[i], s["step"]), f"{what} step {i}"
        assert st.state_steps[i].dtype == torch.float32


# ------------------------------------------------------------------ fp32 / fp64 parity


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("amsgrad", (False, True), ids=("adam", "amsgrad"))
@pytest.mark.parametrize("maximize", (False, True), ids=("min", "max"))
@pytest.mark.parametrize("weight_decay", (0.0, 0.05), ids=("wd0", "wd"))
def test_bitwise_vs_torch_adamw(entry, dtype, amsgrad, maximize, weight_decay):
    st = State(dtype, amsgrad=amsgrad)
    ref = [p.clone().requires_grad_() for p in st.params]
    opt = torch.optim.AdamW(
        ref,
        lr=LR,
        betas=(0.9, 0.999),
        eps=EPS,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        foreach=False,
    )
    gen = torch.Generator().manual_seed(1)
    for k in range(12):
        grads = make_grads(SHAPES, dtype, k, gen)
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        step_op(entry, st, grads, weight_decay=weight_decay, maximize=maximize)
        assert_same_as_adamw(st, ref, opt, f"step {k}")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("beta1", (0.0, 0.3, 0.5, 0.95))
def test_bitwise_lerp_weights(entry, dtype, beta1):
    """exp_avg.lerp_(g, 1 - beta1) takes ATen's other formula for weights >= 0.5."""
    st = State(dtype, shapes=[(7,), (1031,)], amsgrad=True)
    ref = [p.clone().requires_grad_() for p in st.params]
    opt = torch.optim.AdamW(ref, lr=LR, betas=(beta1, 0.99), eps=1e-6, weight_decay=0.01, amsgrad=True, foreach=False)
    gen = torch.Generator().manual_seed(2)
    for k in range(6):
        grads = make_grads([(7,), (1031,)], dtype, k, gen)
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        step_op(entry, st, grads, beta1=beta1, beta2=0.99, eps=1e-6, weight_decay=0.01)
        assert_same_as_adamw(st, ref, opt, f"step {k}")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
def test_per_param_steps(entry, dtype):
    """A param without a gradient is left out of a step, as torch.optim.AdamW skips it: its
    step count falls behind and its bias corrections differ from the others'."""
    shapes = [(7,), (17,), (1031,), (5, 3)]
    st = State(dtype, shapes=shapes, amsgrad=True)
    ref = [p.clone().requires_grad_() for p in st.params]
    opt = torch.optim.AdamW(ref, lr=LR, weight_decay=0.01, amsgrad=True, foreach=False)
    gen = torch.Generator().manual_seed(3)
    for k in range(10):
        keep = {i for i in range(len(shapes)) if not (i == 1 and k in (2, 3, 4)) and not (i == 3 and k < 5)}
        grads = make_grads(shapes, dtype, k, gen)
        for i, (r, g) in enumerate(zip(ref, grads)):
            r.grad = g.clone() if i in keep else None
        opt.step()
        step_op(entry, st, grads, keep=keep, weight_decay=0.01)
        for i in keep:  # a param skipped so far has no torch state yet
            assert torch.equal(st.params[i], ref[i].detach()), f"step {k} param {i}"
            assert torch.equal(st.state_steps[i], opt.state[ref[i]]["step"])
    assert [s.item() for s in st.state_steps] == [10.0, 7.0, 10.0, 5.0]
    assert_same_as_adamw(st, ref, opt)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("mode", ("triangular2", "one_cycle_cos"))
def test_bitwise_cycled_schedule_1000_steps(entry, mode):
    """lr and beta1 from the schedule at the iteration counter, against AdamW + CyclicLR /
    OneCycleLR (which cycle betas[0]), 1,000 steps in fp32."""
    shapes = [(1,), (7,), (17,), (1031,)]
    st = State(torch.float32, shapes=shapes)
    ref = [p.clone().requires_grad_() for p in st.params]
    opt = torch.optim.AdamW(ref, lr=0.001, betas=(0.9, 0.999), weight_decay=0.01, foreach=False)
    if mode == "triangular2":
        bounds = dict(base_lr=0.001, max_lr=0.01, base_momentum=0.8, max_momentum=0.95)
        sched = torch.optim.lr_scheduler.CyclicLR(opt, step_size_up=70, step_size_down=50, mode=mode, **bounds)
        schedule = dict(bounds=list(bounds.values()), shape=[70.0, 50.0, 1.0, 1.0], mode=mode)
    else:
        total, max_lr, div, final_div = 1000, 0.01, 25.0, 1e4
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=max_lr,
            total_steps=total,
            pct_start=0.3,
            div_factor=div,
            final_div_factor=final_div,
            base_momentum=0.8,
            max_momentum=0.95,
        )
        initial = max_lr / div
        bounds = [initial, max_lr, 0.8, 0.95, initial / final_div]
        schedule = dict(bounds=bounds, shape=[float(0.3 * total) - 1, float(total - 1), 0.0, 2.0], mode=7)
    iteration = torch.tensor(0)
    gen = torch.Generator().manual_seed(4)
    for k in range(1000):
        grads = make_grads(shapes, torch.float32, k, gen)
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        sched.step()
        step_op(entry, st, grads, iteration=iteration, cycle_momentum=True, weight_decay=0.01, beta1=0.9, **schedule)
        iteration += 1
        if k % 100 == 99:
            assert_same_as_adamw(st, ref, opt, f"step {k}")
    assert_same_as_adamw(st, ref, opt)


# ------------------------------------------------------------------------- half types


def fp32_reference_step(st: State, grads, weight_decay, maximize, beta1=0.9, beta2=0.999):
    """torch.optim.AdamW on float32 copies of the half state, results rounded once."""
    dtype = st.params[0].dtype
    ref = [p.float().requires_grad_() for p in st.params]
    opt = torch.optim.AdamW(
        ref,
        lr=LR,
        betas=(beta1, beta2),
        eps=EPS,
        weight_decay=weight_decay,
        amsgrad=st.amsgrad,
        maximize=maximize,
        foreach=False,
    )
    for i, r in enumerate(ref):
        r.grad = grads[i].float()
        opt.state[r] = {
            "step": st.state_steps[i].clone(),
            "exp_avg": st.exp_avgs[i].float(),
            "exp_avg_sq": st.exp_avg_sqs[i].float(),
        }
        if st.amsgrad:
            opt.state[r]["max_exp_avg_sq"] = st.max_exp_avg_sqs[i].float()
    opt.step()
    out = []
    for r in ref:
        s = opt.state[r]
        out.append(
            (
                r.detach().to(dtype),
                s["exp_avg"].to(dtype),
                s["exp_avg_sq"].to(dtype),
                s["max_exp_avg_sq"].to(dtype) if st.amsgrad else None,
                s["step"],
            )
        )
    return out


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("amsgrad", (False, True), ids=("adam", "amsgrad"))
@pytest.mark.parametrize("maximize", (False, True), ids=("min", "max"))
@pytest.mark.parametrize("weight_decay", (0.0, 0.05), ids=("wd0", "wd"))
def test_half_vs_fp32_step(entry, dtype, amsgrad, maximize, weight_decay):
    """Half params are updated in float32 registers and stored once: each step equals an fp32
    AdamW step on float copies, rounded to the half type. The kernel's fp32 arithmetic is
    torch's bit for bit, so the results agree exactly here; the assertion allows one half
    ulp, the most a different (equally valid) fp32 rounding could move a stored value."""
    st = State(dtype, amsgrad=amsgrad)
    gen = torch.Generator().manual_seed(5)
    for k in range(8):
        grads = make_grads(SHAPES, dtype, k, gen)
        expected = fp32_reference_step(st, grads, weight_decay, maximize)
        step_op(entry, st, grads, weight_decay=weight_decay, maximize=maximize)
        ulp = torch.finfo(dtype).eps
        for i, (p, m, v, vmax, step) in enumerate(expected):
            torch.testing.assert_close(st.params[i], p, rtol=ulp, atol=0, msg=f"step {k} param {i}")
            torch.testing.assert_close(st.exp_avgs[i], m, rtol=ulp, atol=0)
            torch.testing.assert_close(st.exp_avg_sqs[i], v, rtol=ulp, atol=0)
            if amsgrad:
                torch.testing.assert_close(st.max_exp_avg_sqs[i], vmax, rtol=ulp, atol=0)
            assert torch.equal(st.state_steps[i], step)


# ---------------------------------------------------------------- AMP: scale and skip


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_found_inf_changes_nothing(entry, dtype):
    st = State(dtype, amsgrad=True)
    gen = torch.Generator().manual_seed(6)
    step_op(entry, st, make_grads(SHAPES, dtype, 0, gen), weight_decay=0.01)  # nonzero moments, step 1
    grads = make_grads(SHAPES, dtype, 1, gen)
    before, grads_before = st.snapshot(), [g.clone() for g in grads]
    step_op(entry, st, grads, weight_decay=0.01, grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(before, st.snapshot()))
    assert all(torch.equal(a, b) for a, b in zip(grads_before, grads))  # grads stay scaled
    assert [s.item() for s in st.state_steps] == [1.0] * len(SHAPES)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
def test_grad_scale_unscales_and_writes_back(entry, dtype):
    st = State(dtype, amsgrad=True)
    ref = [p.clone().requires_grad_() for p in st.params]
    opt = torch.optim.AdamW(ref, lr=LR, weight_decay=0.01, amsgrad=True, foreach=False)
    gen = torch.Generator().manual_seed(7)
    for k in range(4):
        grads = make_grads(SHAPES, dtype, k, gen)
        unscaled = [g / 3.0 for g in grads]
        for r, g in zip(ref, unscaled):
            r.grad = g.clone()
        opt.step()
        step_op(entry, st, grads, weight_decay=0.01, grad_scale=torch.tensor(3.0), found_inf=torch.tensor(0.0))
        assert all(torch.equal(g, u) for g, u in zip(grads, unscaled))
        assert_same_as_adamw(st, ref, opt, f"step {k}")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_iteration_is_not_advanced(entry):
    st = State(torch.float32, shapes=[(3,)])
    iteration = torch.tensor(41)
    step_op(entry, st, [torch.ones(3)], iteration=iteration)
    assert iteration.item() == 41 and st.state_steps[0].item() == 1.0


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_empty_bucket_and_zero_element_params(entry):
    step_op(entry, State(torch.float32, shapes=[]), [])
    st = State(torch.float32, shapes=[(0,), (5,), (0, 3)])
    step_op(entry, st, [torch.ones(0), torch.ones(5), torch.ones(0, 3)])
    # Every param's step counts, with or without elements, as in torch.optim.AdamW.
    assert [s.item() for s in st.state_steps] == [1.0, 1.0, 1.0]


# -------------------------------------------------------------------- layouts (C++ only)


@pytest.mark.parametrize("entry", CPP_ENTRY_POINTS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: DTYPE_IDS[d])
def test_mixed_layouts_are_staged(entry, dtype):
    """A transposed param with a contiguous gradient runs through dense copies."""
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(65, 33, generator=gen).to(dtype)
    st = State(dtype, shapes=[(7,)], amsgrad=True)
    st.params.append(base.t())  # (33, 65), strides (1, 33)
    st.exp_avgs.append(torch.zeros_like(st.params[-1]))  # keeps the transposed strides
    st.exp_avg_sqs.append(torch.zeros(33, 65, dtype=dtype))
    st.max_exp_avg_sqs.append(torch.zeros(33, 65, dtype=dtype).t().contiguous().t())
    st.state_steps.append(torch.tensor(0.0))
    dense = State(dtype, shapes=[(7,)], amsgrad=True)
    dense.params.append(base.t().contiguous())
    for xs in (dense.exp_avgs, dense.exp_avg_sqs, dense.max_exp_avg_sqs):
        xs.append(torch.zeros(33, 65, dtype=dtype))
    dense.state_steps.append(torch.tensor(0.0))
    for k in range(3):
        grads = make_grads([(7,), (33, 65)], dtype, k, gen)
        step_op(entry, st, [g.clone() for g in grads], weight_decay=0.01, grad_scale=torch.tensor(2.0))
        step_op(entry, dense, [g.clone() for g in grads], weight_decay=0.01, grad_scale=torch.tensor(2.0))
    assert st.params[-1].data_ptr() == base.data_ptr()  # updated in place, through the view
    for a, b in zip(st.tensors(), dense.tensors()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------ bad input


def _good_args(dtype=torch.float32, amsgrad=True):
    st = State(dtype, shapes=[(7,), (4, 5), (3,)], amsgrad=amsgrad)
    grads = [torch.randn(p.shape).to(dtype) for p in st.params]
    return st, grads


BAD_INPUTS = {
    # (what to break, expected message fragment); the last param is broken so that a
    # kernel which wrote param 0 before checking param 2 would be caught.
    "grads-length": (lambda st, g, kw: g.pop(), "grads"),
    "exp-avgs-length": (lambda st, g, kw: st.exp_avgs.pop(), "exp_avgs"),
    "state-steps-length": (lambda st, g, kw: st.state_steps.pop(), "state_steps"),
    "max-missing": (lambda st, g, kw: st.max_exp_avg_sqs.pop(), "max_exp_avg_sq"),
    "max-without-amsgrad": (lambda st, g, kw: kw.update(amsgrad=False), "max_exp_avg_sqs must be empty"),
    "grad-dtype": (lambda st, g, kw: g.__setitem__(2, g[2].double()), "grad of param 2"),
    "grad-shape": (lambda st, g, kw: g.__setitem__(2, torch.zeros(4)), "grad of param 2"),
    "exp-avg-dtype": (lambda st, g, kw: st.exp_avgs.__setitem__(2, st.exp_avgs[2].double()), "exp_avg of param 2"),
    "exp-avg-sq-shape": (lambda st, g, kw: st.exp_avg_sqs.__setitem__(2, torch.zeros(2)), "exp_avg_sq of param 2"),
    "max-shape": (lambda st, g, kw: st.max_exp_avg_sqs.__setitem__(2, torch.zeros(1)), "max_exp_avg_sq of param 2"),
    "param-dtype": (lambda st, g, kw: st.params.__setitem__(2, st.params[2].double()), "share a dtype"),
    "int-params": (
        lambda st, g, kw: [
            xs.__setitem__(i, xs[i].long())
            for xs in (st.params, g, st.exp_avgs, st.exp_avg_sqs, st.max_exp_avg_sqs)
            for i in range(3)
        ],
        "dtype",
    ),
    "step-dtype": (
        lambda st, g, kw: st.state_steps.__setitem__(2, torch.tensor(0.0, dtype=torch.float64)),
        "state_steps 2",
    ),
    "step-numel": (lambda st, g, kw: st.state_steps.__setitem__(2, torch.zeros(2)), "state_steps 2"),
    # Through the dispatcher a sparse tensor picks the (absent) SparseCPU kernel: it raises too.
    "sparse-grad": (lambda st, g, kw: g.__setitem__(2, g[2].to_sparse()), "grad of param 2|SparseCPU"),
    "beta1": (lambda st, g, kw: kw.update(beta1=1.0), "beta1"),
    "beta2": (lambda st, g, kw: kw.update(beta2=-0.1), "beta2"),
    "beta2-nan": (lambda st, g, kw: kw.update(beta2=float("nan")), "beta2"),
    "eps": (lambda st, g, kw: kw.update(eps=-1e-8), "eps"),
    "cycled-beta1": (lambda st, g, kw: kw.update(cycle_momentum=True, bounds=[LR, LR, 0.8, 1.0]), "momentum"),
    "mode": (lambda st, g, kw: kw.update(mode=99), "mode"),
    "iteration-dtype": (lambda st, g, kw: kw.update(iteration=torch.tensor(0.0)), "iteration"),
    "grad-scale-numel": (lambda st, g, kw: kw.update(grad_scale=torch.ones(2)), "grad_scale"),
}


@pytest.mark.parametrize("entry", CPP_ENTRY_POINTS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_before_writing(entry, case):
    st, grads = _good_args()
    # valid arguments that each case breaks one of; the others (beta1 0.9, beta2 0.999, eps
    # 1e-8, mode fixed, iteration 0, no grad_scale) as step_op's defaults
    kw: Dict[str, object] = dict(amsgrad=True, cycle_momentum=False, bounds=[LR, LR, 0.8, 0.9])
    before, grads_before = st.snapshot(), [g.clone() for g in grads]
    breaker, fragment = BAD_INPUTS[case]
    breaker(st, grads, kw)
    with pytest.raises(RuntimeError, match=fragment):
        step_op(entry, st, grads, weight_decay=0.01, **kw)
    after = st.snapshot()
    same = [torch.equal(a, b) for a, b in zip(before, after) if a.shape == b.shape and a.dtype == b.dtype]
    assert all(same)
    assert all(
        torch.equal(a, b)
        for a, b in zip(grads_before, grads)
        if a.shape == b.shape and a.dtype == b.dtype and b.layout == torch.strided
    )


@pytest.mark.skipif(_cython_cpu is None, reason="the Cython fallback is not built")
@pytest.mark.parametrize(
    "change",
    [dict(beta1=1.0), dict(beta2=-0.5), dict(eps=-1.0), dict(drop_max=True), dict(amsgrad=False), dict(mode=99)],
)
def test_cython_bad_arguments_raise_before_writing(change):
    st, grads = _good_args()
    max_sqs = st.max_exp_avg_sqs[:-1] if change.get("drop_max") else st.max_exp_avg_sqs
    before = st.snapshot()
    with pytest.raises(ValueError):
        _cython_cpu.cyclic_adamw_(
            0,
            st.params,
            grads,
            st.exp_avgs,
            st.exp_avg_sqs,
            max_sqs,
            st.state_steps,
            torch.tensor(0),
            [LR, LR, 0.8, 0.9],
            [1.0, 1.0, 1.0, 1.0],
            change.get("mode", FIXED),
            change.get("beta1", 0.9),
            change.get("beta2", 0.999),
            change.get("eps", EPS),
            0.0,
            change.get("amsgrad", True),
            False,
            False,
        )
    assert all(torch.equal(a, b) for a, b in zip(before, st.snapshot()))


@pytest.mark.skipif(_C is None, reason="clr_ext._C is not built")
def test_check_adamw_bucket():
    st, grads = _good_args()
    _C.check_adamw_bucket(st.params, grads, st.exp_avgs, st.exp_avg_sqs, st.max_exp_avg_sqs, st.state_steps, True)
    with pytest.raises(RuntimeError, match="state_steps 1"):
        _C.check_adamw_bucket(
            st.params,
            grads,
            st.exp_avgs,
            st.exp_avg_sqs,
            st.max_exp_avg_sqs,
            [st.state_steps[0], torch.tensor(0), st.state_steps[2]],
            True,
        )
    assert all(s.item() == 0.0 for s in st.state_steps)


# ---------------------------------------------------------------------------- opcheck


OPCHECK_VARIANTS = {
    "plain": dict(),
    "amsgrad-wd-max": dict(amsgrad=True, weight_decay=0.01, maximize=True),
    "grad-scale": dict(grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0)),
    "found-inf": dict(grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0)),
    "cycled": dict(mode=0, shape=[5.0, 7.0, 1.0, 1.0], cycle_momentum=True, iteration=3),
    "one-cycle": dict(
        mode=7, shape=[29.0, 99.0, 0.0, 2.0], bounds=[0.0004, 0.01, 0.85, 0.95, 4e-8], cycle_momentum=True, iteration=40
    ),
}


@pytest.mark.skipif(_C is None, reason="clr_ext._C (the compiled op) is not built")
@pytest.mark.parametrize("variant", list(OPCHECK_VARIANTS))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_opcheck(dtype, variant):
    kw = dict(OPCHECK_VARIANTS[variant])
    amsgrad = kw.get("amsgrad", False)
    st = State(dtype, shapes=[(1,), (7,), (17,), (1031,), (4, 5), (0,)], amsgrad=amsgrad)
    for i, s in enumerate(st.state_steps):
        s.fill_(float(i))
    grads = [torch.randn(p.shape).to(dtype) for p in st.params]
    tensors = (st.params, grads, st.exp_avgs, st.exp_avg_sqs, st.max_exp_avg_sqs, st.state_steps)
    schedule = (kw.pop("iteration", 0), kw.pop("bounds", [LR, 0.1, 0.8, 0.9]), kw.pop("shape", UNIT_SHAPE))
    args = op_args(tensors, *schedule, kw.pop("mode", FIXED), **kw)
    torch.library.opcheck(torch.ops.clr_ext.cyclic_adamw_.default, args)


@pytest.mark.skipif(_C is None, reason="clr_ext._C (the compiled op) is not built")
def test_op_schema_mutations():
    schema = torch.ops.clr_ext.cyclic_adamw_.default._schema
    mutated = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert mutated == ["params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps"]
    assert len(schema.returns) == 0
