"""CyclicSGD against torch.optim.SGD + torch.optim.lr_scheduler.CyclicLR (api.md: one
``opt.step()`` is ``sgd.step(); sched.step()``), for every CPU backend.

- ``test_parity_product``: the full cartesian product (mode x momentum/nesterov/dampening
  x weight decay x maximize x cycle_momentum x dtype) at a moderate step count (3 cycles).
- ``test_parity_long``: >= 1,000 steps (4 asymmetric cycles) on a representative subset.
- ``test_parity_product_long`` (slow): the full product at 1,000 steps, less the 48 cases
  that repeat another case's arithmetic exactly (see ``LONG_PRODUCT``).
Every run has several param groups with different bounds (given per group or as lists),
sizes below and above the SIMD width with tails, and params whose grad is None on some
steps. After every step the groups' lr / momentum must equal the reference pair's exactly.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch
from conftest import ALL_DTYPES, HALF_DTYPES, ReferencePair, assert_close_rel, mlp_pair

import clr_ext
from clr_ext.schedule import cyclic_point

MODES = ("triangular", "triangular2", "exp_range")
#: (momentum, nesterov, dampening): every valid combination (nesterov needs momentum > 0
#: and no dampening, in torch.optim.SGD as in CyclicSGD).
MOMENTUM_VARIANTS = ((0.0, False, 0.0), (0.0, False, 0.1), (0.9, False, 0.0), (0.9, False, 0.1), (0.9, True, 0.0))
WEIGHT_DECAYS = (0.0, 0.01)
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}

#: Three groups: sizes below, at and above the SIMD width (AVX-512: 16 fp32 / 8 fp64
#: lanes) with tails, a 2-D param, and different bounds per group. Group 2's
#: base_momentum is 0, so in triangular mode the cycled momentum is exactly 0 at the
#: peaks: torch.optim.SGD then skips the buffer for that step.
GROUP_SIZES = ([(1,), (7,), (17,), (1031,)], [(5, 3), (33,)], [(64,), (9,)])
BASE_LR = [0.01, 0.002, 0.005]
MAX_LR = [0.05, 0.03, 0.04]
BASE_MOMENTUM = [0.8, 0.85, 0.0]
MAX_MOMENTUM = [0.9, 0.95, 0.9]


def none_grad(i: int, k: int) -> bool:
    """Whether param ``i`` has no gradient at step ``k``: param 0 gets its first gradient
    at step 5 (so its momentum buffer starts after the others'), and every param skips
    about one step in eleven."""
    if i == 0 and k < 5:
        return True
    return (7 * k + 3 * i) % 11 == 0


class Problem:
    """Initial values, targets and the gradient rule of one run (deterministic)."""

    def __init__(self, dtype, group_sizes=GROUP_SIZES, seed=0, dtypes=None, layouts=None):
        gen = torch.Generator().manual_seed(seed)
        self.groups: List[List[torch.Tensor]] = []
        self.targets: List[torch.Tensor] = []
        n = 0
        for sizes in group_sizes:
            group = []
            for shape in sizes:
                dt = dtype if dtypes is None else dtypes[n]
                value = torch.randn(shape, generator=gen, dtype=torch.float64).to(dt)
                if layouts is not None and layouts[n] is not None:
                    value = layouts[n](value)
                group.append(value)
                self.targets.append(torch.randn(shape, generator=gen, dtype=torch.float64))
                n += 1
            self.groups.append(group)
        self.n_params = n
        self.gen = torch.Generator().manual_seed(seed + 1)

    def noise(self) -> List[torch.Tensor]:
        return [0.1 * torch.randn(t.shape, generator=self.gen, dtype=torch.float64) for t in self.targets]

    def grads(self, params: Sequence[torch.Tensor], noise, k: int, maximize: bool) -> List[Optional[torch.Tensor]]:
        """A quadratic pull towards the targets plus shared noise, in each param's dtype,
        computed from that optimizer's own params (so differences propagate, as in
        training). Under maximize the sign flips so that the ascent still converges."""
        sign = -1.0 if maximize else 1.0
        out = []
        for i, (p, t, z) in enumerate(zip(params, self.targets, noise)):
            if none_grad(i, k):
                out.append(None)
            else:
                g = sign * 0.5 * (p.detach().double() - t) + z
                out.append(g.to(p.dtype))
        return out


def make_cyclic(
    problem: Problem,
    backend: str,
    bounds_as: str,
    sgd_kwargs: Dict[str, Any],
    sched_kwargs: Dict[str, Any],
    group_extra: Optional[List[Dict[str, Any]]] = None,
):
    params = []
    groups = []
    for gi, group in enumerate(problem.groups):
        ps = [t.clone().requires_grad_(True) for t in group]
        params += ps
        d = {"params": ps}
        if group_extra:
            d.update(group_extra[gi])
        groups.append(d)
    kwargs = dict(sched_kwargs)
    bounds = {k: kwargs.pop(k) for k in ("base_lr", "max_lr", "base_momentum", "max_momentum")}
    if bounds_as == "lists":
        kwargs.update(bounds)
    else:
        # Per-group dict values; the constructor's (different) scalars must lose.
        for gi, d in enumerate(groups):
            for key, value in bounds.items():
                d[key] = value[gi]
        kwargs.update(base_lr=0.5, max_lr=0.75, base_momentum=0.1, max_momentum=0.2)
    opt = clr_ext.CyclicSGD(groups, backend=backend, **sgd_kwargs, **kwargs)
    return opt, params


def check_reported(opt, ref: ReferencePair, cycle_momentum: bool, where: str) -> None:
    """group["lr"] / group["momentum"] are the reference's, exactly, as Python floats."""
    assert len(opt.param_groups) == len(ref.last_lr())
    for gi, mine in enumerate(opt.param_groups):
        lr, momentum = ref.group_lr(gi), ref.group_momentum(gi)
        assert type(mine["lr"]) is float, (where, gi, type(mine["lr"]))
        assert mine["lr"] == lr, (where, gi, mine["lr"], lr)
        assert mine["momentum"] == momentum, (where, gi, mine["momentum"], momentum)
        if cycle_momentum:
            assert type(mine["momentum"]) is float
    assert opt.get_last_lr() == ref.last_lr(), where


def check_state(opt, params, ref: ReferencePair) -> None:
    assert_close_rel(params, ref.params, what="param")
    mine_b, ref_b = [], []
    for i, p in enumerate(params):
        theirs = ref.buffer(i)
        buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
        assert (buf is None) == (theirs is None), ("momentum buffer presence differs", i)
        if buf is not None:
            mine_b.append(buf)
            ref_b.append(theirs)
    if mine_b:
        assert_close_rel(mine_b, ref_b, what="momentum buffer", half_factor=2.0)


def cyclic_lr_kwargs(n_groups, step_size_up, step_size_down, **kwargs):
    """CyclicLR's arguments for the first ``n_groups`` groups' bounds (BASE_LR, MAX_LR,
    BASE_MOMENTUM, MAX_MOMENTUM) and the given steps and ``kwargs``."""
    return dict(
        base_lr=BASE_LR[:n_groups],
        max_lr=MAX_LR[:n_groups],
        step_size_up=step_size_up,
        step_size_down=step_size_down,
        base_momentum=BASE_MOMENTUM[:n_groups],
        max_momentum=MAX_MOMENTUM[:n_groups],
        **kwargs,
    )


def run_parity(
    backend,
    dtype,
    mode,
    momentum,
    nesterov,
    dampening,
    weight_decay,
    maximize,
    cycle_momentum,
    steps,
    step_size_up,
    step_size_down,
    gamma,
    bounds_as="lists",
    group_sizes=GROUP_SIZES,
    check_every=None,
    seed=0,
):
    problem = Problem(dtype, group_sizes, seed=seed)
    n_groups = len(group_sizes)
    sgd_kwargs = dict(
        momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize
    )
    sched_kwargs = cyclic_lr_kwargs(
        n_groups, step_size_up, step_size_down, mode=mode, gamma=gamma, cycle_momentum=cycle_momentum
    )
    ref = ReferencePair([{"params": g} for g in problem.groups], sgd_kwargs, sched_kwargs)
    opt, params = make_cyclic(problem, backend, bounds_as, sgd_kwargs, sched_kwargs)
    check_reported(opt, ref, cycle_momentum, "after construction")
    for k in range(steps):
        step_both(problem, ref, opt, params, k, maximize)
        check_reported(opt, ref, cycle_momentum, "after step %d" % k)
        if check_every and (k + 1) % check_every == 0:
            check_state(opt, params, ref)
    check_state(opt, params, ref)
    assert_every_param_moved(params, problem)
    return opt, params, ref


def step_both(problem, ref, opt, params, k, maximize):
    """Step k of the reference and of ``opt`` on the same (noisy) gradients of ``problem``."""
    noise = problem.noise()
    ref.step(problem.grads(ref.params, noise, k, maximize))
    for p, g in zip(params, problem.grads(params, noise, k, maximize)):
        p.grad = g
    opt.step()
    assert opt.iteration == k + 1


def assert_every_param_moved(params, problem):
    """The run really moved every parameter (the comparison is not vacuous)."""
    for p, p0 in zip(params, [t for g in problem.groups for t in g]):
        assert not torch.equal(p.detach(), p0), "a parameter never changed"


def sgd_case_id(momentum, nesterov, dampening, weight_decay, maximize, cycle_momentum):
    """The part of a parity case's id that names the SGD flags (both schedules' products)."""
    flags = ("-nest" if nesterov else "") + ("-damp" if dampening else "")
    return "m%g%s-wd%g%s-%s" % (
        momentum,
        flags,
        weight_decay,
        "-max" if maximize else "",
        "cyc" if cycle_momentum else "nocyc",
    )


def _product():
    cases = []
    for mi, mode in enumerate(MODES):
        for vi, (momentum, nesterov, dampening) in enumerate(MOMENTUM_VARIANTS):
            for wd, maximize, cycle, dtype in itertools.product(
                WEIGHT_DECAYS, (False, True), (True, False), ALL_DTYPES
            ):
                bounds_as = "lists" if (mi + vi + int(maximize)) % 2 == 0 else "dict"
                cid = "-".join(
                    (mode, sgd_case_id(momentum, nesterov, dampening, wd, maximize, cycle), DTYPE_IDS[dtype], bounds_as)
                )
                case = dict(
                    mode=mode,
                    momentum=momentum,
                    nesterov=nesterov,
                    dampening=dampening,
                    weight_decay=wd,
                    maximize=maximize,
                    cycle_momentum=cycle,
                    dtype=dtype,
                    bounds_as=bounds_as,
                )
                cases.append(pytest.param(case, id=cid))
    return cases


PRODUCT = _product()


#: 3 full asymmetric cycles (7 up, 13 down); exp_range decays visibly (0.97**60 = 0.16).
SHORT_RUN = dict(steps=60, step_size_up=7, step_size_down=13, gamma=0.97)
#: 1,000 steps = 4 cycles of 100 up + 150 down; exp_range: 0.999**1000 = 0.37.
LONG_RUN = dict(steps=1000, step_size_up=100, step_size_down=150, gamma=0.999)


@pytest.mark.parametrize("case", PRODUCT)
def test_parity_product(backend, case):
    run_parity(backend, **case, **SHORT_RUN)


#: The representative subset run for >= 1,000 steps, in every mode and dtype.
LONG_CONFIGS = {
    # name: (momentum, nesterov, dampening, weight_decay, maximize, cycle_momentum, bounds_as)
    "nesterov-wd-cycled": (0.9, True, 0.0, 0.01, False, True, "lists"),
    "damp-wd-max-fixedmom": (0.9, False, 0.1, 0.01, True, False, "dict"),
    "plain-sgd": (0.0, False, 0.0, 0.0, False, False, "lists"),
    "mom0-cycled-max": (0.0, False, 0.0, 0.0, True, True, "dict"),
}


@pytest.mark.parametrize("config", list(LONG_CONFIGS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_parity_long(backend, dtype, mode, config):
    *flags, bounds_as = LONG_CONFIGS[config]  # run_parity's order, after the mode
    run_parity(backend, dtype, mode, *flags, bounds_as=bounds_as, check_every=250, **LONG_RUN)


def _repeats_another_case(case: Dict[str, Any]) -> bool:
    """Dampening with momentum 0 that is not cycled: neither torch.optim.SGD nor CyclicSGD
    keeps a momentum buffer, so dampening is never read and the run is, bit for bit, the same
    case with dampening 0 (test_left_out_cases_repeat_their_twin). The twin in the product
    takes its bounds in the other form (lists or per-group dicts), which only the constructor
    reads; the 60-step product runs both forms of every case."""
    return case["momentum"] == 0.0 and case["dampening"] != 0.0 and not case["cycle_momentum"]


#: The slow product: every case of PRODUCT whose arithmetic is not another case's. The 60-step
#: product keeps the repeats (a backend that read dampening without momentum fails there at
#: the first step); 1,000 steps of them would repeat the same numbers (432 of 480 cases run).
LONG_PRODUCT = [p for p in PRODUCT if not _repeats_another_case(p.values[0])]


@pytest.mark.slow
@pytest.mark.parametrize("case", LONG_PRODUCT)
def test_parity_product_long(backend, case):
    run_parity(backend, **case, **LONG_RUN)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=lambda d: DTYPE_IDS[d])
def test_left_out_cases_repeat_their_twin(backend, dtype):
    """What LONG_PRODUCT leaves out computes the kept twin's numbers exactly, in CyclicSGD
    and in the reference pair."""
    left_out = [p.values[0] for p in PRODUCT if _repeats_another_case(p.values[0])]
    assert len(left_out) == len(PRODUCT) - len(LONG_PRODUCT) == 48
    case = next(c for c in left_out if c["dtype"] == dtype and c["mode"] == "exp_range" and c["weight_decay"])
    twin = dict(case, dampening=0.0)
    other_form = "dict" if case["bounds_as"] == "lists" else "lists"
    assert any(p.values[0] == dict(twin, bounds_as=other_form) for p in LONG_PRODUCT)
    _, params, ref = run_parity(backend, **case, **SHORT_RUN)
    _, twin_params, twin_ref = run_parity(backend, **twin, **SHORT_RUN)
    for mine, theirs in zip(params + ref.params, twin_params + twin_ref.params):
        assert torch.equal(mine.detach(), theirs.detach())


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_parity_large_tensors(backend, dtype):
    """Buckets big enough to be split over threads (the C++ kernel cuts the flattened
    elements of all tensors into 1024-element blocks from 32768 elements on)."""
    sizes = ([(40_000,), (1023,), (1,), (33_333,)], [(1025,), (64, 65)])
    run_parity(
        backend,
        dtype,
        "triangular2",
        0.9,
        False,
        0.1,
        0.01,
        False,
        True,
        steps=16,
        step_size_up=2,
        step_size_down=3,
        gamma=1.0,
        group_sizes=sizes,
    )


@pytest.mark.parametrize("mode", ("triangular", "exp_range"))
def test_parity_step_size_down_zero_and_fractional(backend, mode):
    # step_size_down=0 (a sawtooth) and fractional step sizes, as CyclicLR accepts them.
    run_parity(
        backend,
        torch.float64,
        mode,
        0.9,
        True,
        0.0,
        0.0,
        False,
        True,
        steps=40,
        step_size_up=5,
        step_size_down=0,
        gamma=0.99,
    )
    run_parity(
        backend,
        torch.float64,
        mode,
        0.9,
        False,
        0.0,
        0.01,
        False,
        True,
        steps=40,
        step_size_up=2.5,
        step_size_down=3.5,
        gamma=0.99,
    )


# ----------------------------------------------------------------- per-group SGD values


def test_per_group_sgd_values(backend):
    """momentum, dampening, weight_decay, nesterov and maximize given per group."""
    problem = Problem(torch.float32, seed=3)
    extra = [
        dict(momentum=0.9, nesterov=True, weight_decay=0.02),
        dict(momentum=0.5, dampening=0.3, maximize=True),
        dict(momentum=0.0, weight_decay=0.0),
    ]
    sgd_kwargs = dict(momentum=0.7, dampening=0.0, weight_decay=0.01)
    sched_kwargs = cyclic_lr_kwargs(len(BASE_LR), 5, 9, mode="triangular", cycle_momentum=False)
    ref = ReferencePair([dict(params=g, **e) for g, e in zip(problem.groups, extra)], sgd_kwargs, sched_kwargs)
    opt, params = make_cyclic(problem, backend, "lists", sgd_kwargs, sched_kwargs, group_extra=extra)
    for k in range(100):
        step_both(problem, ref, opt, params, k, False)
        check_reported(opt, ref, False, "step %d" % k)
    check_state(opt, params, ref)


# ------------------------------------------------------------------ custom scale_fn


class HalvingEveryCycle:
    """A picklable scale_fn of the cycle number."""

    def __call__(self, cycle):
        return 1.0 / (1.5 ** (cycle - 1))


def cosine_of_iteration(iteration):
    return 0.5 * (1.0 + math.cos(iteration / 40.0))


@pytest.mark.parametrize(
    "scale_fn,scale_mode",
    [(HalvingEveryCycle(), "cycle"), (cosine_of_iteration, "iterations"), (lambda c: 0.9**c, "cycle")],
    ids=["cycle", "iterations", "lambda-cycle"],
)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
def test_custom_scale_fn(backend, scale_fn, scale_mode, dtype):
    problem = Problem(dtype, seed=5)
    sgd_kwargs = dict(momentum=0.9, weight_decay=0.01)
    sched_kwargs = cyclic_lr_kwargs(
        len(BASE_LR), 6, 10, mode="triangular", scale_fn=scale_fn, scale_mode=scale_mode, cycle_momentum=True
    )
    ref = ReferencePair([{"params": g} for g in problem.groups], sgd_kwargs, sched_kwargs)
    opt, params = make_cyclic(problem, backend, "lists", sgd_kwargs, sched_kwargs)
    check_reported(opt, ref, True, "construction")
    for k in range(200):
        step_both(problem, ref, opt, params, k, False)
        check_reported(opt, ref, True, "step %d" % k)
    check_state(opt, params, ref)


# ------------------------------------------------ the paper's extra modes (no CyclicLR)


def _extra_mode_lr(mode, i, base_lr, max_lr, up, gamma):
    """Written out from the api.md / docstring definitions, independently of clr_ext."""
    if mode == "fixed":
        return base_lr
    if mode == "exp":
        return base_lr * gamma**i
    return base_lr + (max_lr - base_lr) * max(0.0, 1.0 - i / up)


@pytest.mark.parametrize("mode", ("fixed", "exp", "decay"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
def test_extra_modes_parity(backend, mode, dtype):
    """fixed / exp / decay: torch.optim.SGD with its lr (and momentum) set before every
    step from the policy's definition."""
    problem = Problem(dtype, seed=7)
    up, gamma = 30.0, 0.98
    opt, params = make_cyclic(
        problem,
        backend,
        "lists",
        dict(momentum=0.9, weight_decay=0.01),
        dict(
            base_lr=BASE_LR,
            max_lr=MAX_LR,
            step_size_up=up,
            mode=mode,
            gamma=gamma,
            cycle_momentum=True,
            base_momentum=BASE_MOMENTUM,
            max_momentum=MAX_MOMENTUM,
        ),
    )
    ref_params = [t.clone().requires_grad_(True) for g in problem.groups for t in g]
    it = iter(ref_params)
    sgd = torch.optim.SGD(
        [{"params": [next(it) for _ in g]} for g in problem.groups], lr=0.0, momentum=0.9, weight_decay=0.01
    )
    for k in range(80):
        for gi, group in enumerate(sgd.param_groups):
            group["lr"] = _extra_mode_lr(mode, k, BASE_LR[gi], MAX_LR[gi], up, gamma)
            group["momentum"] = cyclic_point(
                k, BASE_LR[gi], MAX_LR[gi], up, None, mode, gamma, BASE_MOMENTUM[gi], MAX_MOMENTUM[gi]
            )[1]
            assert opt.param_groups[gi]["lr"] == pytest.approx(group["lr"], rel=1e-15, abs=0)
            assert opt.param_groups[gi]["momentum"] == group["momentum"]
        if mode == "decay" and k >= up:
            assert opt.get_last_lr() == BASE_LR
            assert [g["momentum"] for g in opt.param_groups] == MAX_MOMENTUM
        noise = problem.noise()
        for p, g in zip(ref_params, problem.grads(ref_params, noise, k, False)):
            p.grad = g
        sgd.step()
        for p, g in zip(params, problem.grads(params, noise, k, False)):
            p.grad = g
        opt.step()
    assert_close_rel(params, ref_params)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("momentum", (0.0, 0.9))
def test_half_every_element_changes(backend, dtype, momentum):
    """Sizes above any SIMD width update every element, not only a scalar tail (the
    failure of PyTorch's fused CPU SGD for these dtypes, issue #191763)."""
    gen = torch.Generator().manual_seed(11)
    sizes = (1, 7, 15, 16, 17, 31, 32, 33, 64, 1031, 4099)
    params = [torch.ones(n, dtype=dtype, requires_grad=True) for n in sizes]
    opt = clr_ext.CyclicSGD(params, 0.1, 0.1, step_size_up=10, momentum=momentum, cycle_momentum=False, backend=backend)
    grads = []
    for p in params:
        sign = torch.where(torch.rand(p.shape, generator=gen) < 0.5, -1.0, 1.0)
        grads.append((sign * (0.5 + 0.5 * torch.rand(p.shape, generator=gen))).to(dtype))
        p.grad = grads[-1].clone()
    opt.step()
    for n, p, g in zip(sizes, params, grads):
        expected = (1.0 - 0.1 * g.float()).to(dtype)  # one fp32 computation, one rounding
        assert bool((p.detach() != 1.0).all()), "size %d: some elements were not updated" % n
        assert torch.equal(p.detach(), expected), "size %d" % n


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_half_emulated_reference_agrees_with_fused_tail(dtype):
    """The fp32 emulation used as the half-precision reference agrees with PyTorch's fused
    SGD where that is correct (tensors smaller than a SIMD vector: the scalar loop)."""
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(n, generator=gen).to(dtype) for n in (1, 5, 7)]
    kw = dict(momentum=0.9, weight_decay=0.01, dampening=0.1)
    sk = dict(base_lr=0.01, max_lr=0.1, step_size_up=3, step_size_down=5, mode="triangular2")
    fused = ReferencePair([{"params": init}], kw, sk, fused=True)
    emulated = ReferencePair([{"params": init}], kw, sk, fused=False)
    assert emulated.emulate and not fused.emulate
    for k in range(50):
        grads = [torch.randn(t.shape, generator=gen).to(dtype) for t in init]
        fused.step(grads)
        emulated.step(grads)
    assert_close_rel(emulated.params, fused.params)


# -------------------------------------------------- layouts, empty and mixed params


LAYOUTS = {
    # name: (shape, make the value in that layout)
    "transposed": ((13, 7), lambda t: t.t().contiguous().t()),
    "channels_last": ((2, 3, 5, 7), lambda t: t.contiguous(memory_format=torch.channels_last)),
    "strided-view": ((8, 10), None),  # a non-dense view into a larger storage
}


@pytest.mark.parametrize("grad_layout", ("same", "contiguous"))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_non_contiguous_params(backend, dtype, layout, grad_layout):
    shape, make = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(4)
    base_storage = None
    if layout == "strided-view":
        base_storage = torch.randn(8, 20, generator=gen, dtype=torch.float64).to(dtype)
        p = base_storage[:, ::2]  # a leaf view with gaps in its storage
        assert not p.is_contiguous()
        untouched = base_storage[:, 1::2].clone()
    else:
        p = make(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype))
        assert not p.is_contiguous()
    p.requires_grad_(True)
    extra = torch.randn(1031, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    strides, ptr = p.stride(), p.data_ptr()
    ref = ReferencePair(
        [{"params": [p.detach(), extra.detach()]}],
        dict(momentum=0.9, weight_decay=0.01),
        dict(base_lr=0.01, max_lr=0.05, step_size_up=4, step_size_down=6),
    )
    opt = clr_ext.CyclicSGD(
        [p, extra], 0.01, 0.05, step_size_up=4, step_size_down=6, momentum=0.9, weight_decay=0.01, backend=backend
    )
    for k in range(30):
        gs = [
            (0.5 * t.detach().double() + torch.randn(t.shape, generator=gen, dtype=torch.float64)).to(dtype)
            for t in (p, extra)
        ]
        ref.step(gs)
        for t, g in zip((p, extra), gs):
            if grad_layout == "same":
                t.grad = torch.empty_like(t).copy_(g)
            else:
                t.grad = g.contiguous()
        opt.step()
    assert p.stride() == strides and p.data_ptr() == ptr, "the parameter must be updated in place"
    assert_close_rel([p, extra], ref.params)
    buf = opt.state[p]["momentum_buffer"]
    assert buf.shape == p.shape
    assert_close_rel([buf], [ref.buffer(0)], what="momentum buffer")
    if base_storage is not None:
        assert torch.equal(base_storage[:, 1::2], untouched), "elements between the view's strides changed"


@pytest.mark.parametrize("momentum", (0.0, 0.9))
def test_zero_element_params(backend, momentum):
    gen = torch.Generator().manual_seed(8)
    init = [torch.empty(0), torch.randn(17, generator=gen), torch.empty(3, 0), torch.randn(5, generator=gen)]
    ref = ReferencePair([{"params": init}], dict(momentum=momentum), dict(base_lr=0.01, max_lr=0.1, step_size_up=3))
    params = [t.clone().requires_grad_(True) for t in init]
    opt = clr_ext.CyclicSGD(params, 0.01, 0.1, step_size_up=3, momentum=momentum, backend=backend)
    for k in range(12):
        gs = [torch.randn(t.shape, generator=gen) for t in init]
        ref.step(gs)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        assert opt.param_groups[0]["lr"] == ref.group_lr(0)
    assert params[0].shape == (0,) and params[2].shape == (3, 0)
    assert_close_rel(params, ref.params)
    for i, p in enumerate(params):
        theirs = ref.buffer(i)
        mine = opt.state[p].get("momentum_buffer") if p in opt.state else None
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert mine.shape == p.shape


def test_mixed_dtypes_in_one_group(backend):
    """float32, float64, float16 and bfloat16 params in one group (and in two groups)."""
    problem = Problem(
        None, ([(17,), (1031,), (7,), (33,)], [(9,), (65,), (1,), (1030,)]), seed=9, dtypes=list(ALL_DTYPES) * 2
    )
    sgd_kwargs = dict(momentum=0.9, dampening=0.1, weight_decay=0.01)
    sched_kwargs = cyclic_lr_kwargs(2, 5, 8, mode="exp_range", gamma=0.99)
    ref = ReferencePair([{"params": g} for g in problem.groups], sgd_kwargs, sched_kwargs)
    opt, params = make_cyclic(problem, backend, "lists", sgd_kwargs, sched_kwargs)
    for k in range(120):
        step_both(problem, ref, opt, params, k, False)
        check_reported(opt, ref, True, "step %d" % k)
    assert [p.dtype for p in params] == list(ALL_DTYPES) * 2
    check_state(opt, params, ref)


# ------------------------------------------------------- GradScaler-style attributes


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("momentum", (0.0, 0.9))
def test_grad_scale_found_inf_vs_fused_sgd(backend, dtype, momentum):
    """opt.grad_scale / opt.found_inf set as torch.amp.GradScaler sets them on an optimizer
    with _step_supports_amp_scaling: compared with torch.optim.SGD(fused=True) given the
    same attributes. found_inf=1: params, buffers and grads untouched, the schedule still
    advances; otherwise the grads are divided by the scale and written back."""
    assert clr_ext.CyclicSGD._step_supports_amp_scaling is True
    gen = torch.Generator().manual_seed(12)
    init = [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) for n in (1, 7, 17, 1031)]
    sgd_kwargs = dict(momentum=momentum, weight_decay=0.01, nesterov=momentum > 0)
    sched_kwargs = dict(base_lr=0.01, max_lr=0.06, step_size_up=3, step_size_down=5, cycle_momentum=False)
    ref = ReferencePair([{"params": init}], sgd_kwargs, sched_kwargs, fused=True)
    params = [t.clone().requires_grad_(True) for t in init]
    opt = clr_ext.CyclicSGD(
        params, 0.01, 0.06, step_size_up=3, step_size_down=5, cycle_momentum=False, backend=backend, **sgd_kwargs
    )
    scale = 2.0**12
    for k in range(40):
        inf = k in (4, 5, 17)
        gs = [(scale * torch.randn(t.shape, generator=gen, dtype=torch.float64)).to(dtype) for t in init]
        before = [p.detach().clone() for p in params]
        bufs_before = [opt.state[p]["momentum_buffer"].clone() for p in params if "momentum_buffer" in opt.state[p]]

        def set_attrs(o):
            o.grad_scale = torch.tensor(scale, dtype=torch.float32)
            o.found_inf = torch.tensor(1.0 if inf else 0.0, dtype=torch.float32)

        ref.step(gs, before_step=set_attrs)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        set_attrs(opt)
        opt.step()
        assert opt.iteration == k + 1
        assert opt.get_last_lr() == ref.last_lr()
        if inf:
            for p, b, g in zip(params, before, gs):
                assert torch.equal(p.detach(), b)
                assert torch.equal(p.grad, g), "a skipped step leaves the grads scaled"
            bufs = [opt.state[p]["momentum_buffer"] for p in params if "momentum_buffer" in opt.state[p]]
            assert len(bufs) == len(bufs_before)
            for b, b0 in zip(bufs, bufs_before):
                assert torch.equal(b, b0)
        else:
            for p, c, g in zip(params, ref.compute, gs):
                assert torch.equal(p.grad, c.grad), "grads are unscaled in place, as fused SGD does"
                assert torch.equal(p.grad, g / scale)
        assert_close_rel(params, ref.params)
    del opt.grad_scale, opt.found_inf


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_found_inf_on_the_first_step_creates_no_buffer(backend):
    """A skipped first step leaves no momentum buffer behind: the next applied step is the
    parameter's first (buffer = gradient), as with GradScaler + torch.optim.SGD, which
    skips sgd.step() entirely while the scheduler still steps."""
    gen = torch.Generator().manual_seed(13)
    init = [torch.randn(n, generator=gen) for n in (3, 1031)]
    ref = ReferencePair([{"params": init}], dict(momentum=0.9), dict(base_lr=0.01, max_lr=0.05, step_size_up=2))
    params = [t.clone().requires_grad_(True) for t in init]
    opt = clr_ext.CyclicSGD(params, 0.01, 0.05, step_size_up=2, momentum=0.9, backend=backend)
    for k in range(8):
        gs = [torch.randn(t.shape, generator=gen) for t in init]
        skip = k in (0, 3)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.grad_scale = torch.tensor(1.0)
        opt.found_inf = torch.tensor(1.0 if skip else 0.0)
        opt.step()
        if skip:
            ref.sched.step()  # what GradScaler.step + sched.step() do on overflow
            if k == 0:
                assert all("momentum_buffer" not in opt.state[p] for p in params)
        else:
            ref.step(gs)
        assert opt.get_last_lr() == ref.last_lr()
        assert_close_rel(params, ref.params)


# ------------------------------------------------------------- backends agree exactly


def test_compiled_backends_bit_identical():
    """cpp and cython compile the same headers with -ffp-contract=off: bit-identical."""
    built = [b for b in ("cpp", "cython") if b in clr_ext.available_backends()]
    if len(built) < 2:
        pytest.skip("needs both compiled CPU backends")
    results = {}
    for name in built:
        for dtype in ALL_DTYPES:
            problem = Problem(dtype, seed=21)
            opt, params = make_cyclic(
                problem,
                name,
                "lists",
                dict(momentum=0.9, nesterov=True, weight_decay=0.01),
                dict(
                    base_lr=BASE_LR,
                    max_lr=MAX_LR,
                    step_size_up=5,
                    step_size_down=7,
                    mode="exp_range",
                    gamma=0.99,
                    base_momentum=BASE_MOMENTUM,
                    max_momentum=MAX_MOMENTUM,
                ),
            )
            for k in range(60):
                noise = problem.noise()
                for p, g in zip(params, problem.grads(params, noise, k, False)):
                    p.grad = g
                opt.step()
            results[name, dtype] = [p.detach().clone() for p in params]
    for dtype in ALL_DTYPES:
        for a, b in zip(results["cpp", dtype], results["cython", dtype]):
            assert torch.equal(a, b), dtype


def test_with_torch_amp_grad_scaler(backend):
    """A real torch.amp.GradScaler on the CPU drives CyclicSGD through grad_scale /
    found_inf exactly as it drives torch.optim.SGD(fused=True) + CyclicLR, overflow
    steps included."""
    model, ref_model, x, y, opt, sgd, sched = mlp_pair(backend, (8, 33, 3), 32, max_lr=0.1, step_size_up=3, fused=True)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=4) for _ in range(2)]
    history = [scalers[0].get_scale()]
    for k in range(20):
        for m, o, scaler in ((model, opt, scalers[0]), (ref_model, sgd, scalers[1])):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            if k in (2, 9):
                loss = loss * float("inf")  # an overflow step: skipped, the scale shrinks
            scaler.scale(loss).backward()
            scaler.step(o)
            scaler.update()
        sched.step()
        history.append(scalers[0].get_scale())
        assert scalers[0].get_scale() == scalers[1].get_scale()
        assert opt.get_last_lr() == sched.get_last_lr()
        assert_close_rel(list(model.parameters()), list(ref_model.parameters()))
    assert opt.iteration == 20
    assert history[3] == history[2] / 2 and history[10] == history[9] / 2  # the overflows were seen


# ------------------------------------------------------------ bit for bit on the CPU


def _aten_fuses_multiply_adds() -> bool:
    """ATen's AVX2 / AVX-512 kernels compute ``x.add_(y, alpha=a)`` as one fused
    multiply-add (Vectorized::fmadd); its DEFAULT build rounds the product first."""
    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    except AttributeError:  # pragma: no cover - older torch
        return False


@pytest.mark.skipif(not _aten_fuses_multiply_adds(), reason="ATen runs its DEFAULT (non-FMA) CPU kernels here")
@pytest.mark.parametrize("foreach", (False, True), ids=("for-loop", "foreach"))
@pytest.mark.parametrize("momentum,nesterov,dampening", MOMENTUM_VARIANTS)
@pytest.mark.parametrize(
    "weight_decay,maximize,cycle_momentum", ((0.0, False, True), (0.01, True, False), (0.01, False, True))
)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: DTYPE_IDS[d])
def test_bit_identical_to_torch_sgd(
    backend, dtype, momentum, nesterov, dampening, weight_decay, maximize, cycle_momentum, foreach
):
    """fp32 / fp64 on the CPU: the same bits as torch.optim.SGD + CyclicLR after every step
    (csrc/math/sgd_update.h rounds where ATen rounds: each add with alpha is one fma), for
    sizes with and without SIMD tails, 300 steps, params without a grad now and then."""
    sizes = (1, 7, 17, 1031, 5001)
    gen = torch.Generator().manual_seed(11)
    init = [torch.randn(n, generator=gen, dtype=dtype) for n in sizes]
    ours = [t.clone().requires_grad_() for t in init]
    theirs = [t.clone().requires_grad_() for t in init]
    sgd_kw = dict(
        momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize
    )
    sched_kw = dict(
        base_lr=0.002,
        max_lr=0.05,
        step_size_up=37,
        step_size_down=63,
        mode="triangular2",
        cycle_momentum=cycle_momentum,
        base_momentum=0.8,
        max_momentum=0.9,
    )
    opt = clr_ext.CyclicSGD(ours, backend=backend, **sched_kw, **sgd_kw)
    sgd = torch.optim.SGD(theirs, lr=0.002, foreach=foreach, **sgd_kw)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, **sched_kw)
    for k in range(300):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if (5 * k + i) % 13 == 0:
                a.grad = b.grad = None
                continue
            g = torch.randn(a.shape, generator=gen, dtype=dtype)
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
        sched.step()
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert torch.equal(a, b), (k, i, (a - b).abs().max().item())
        assert opt.get_last_lr() == sched.get_last_lr()
    for a, b in zip(ours, theirs):
        buf_a, buf_b = opt.state[a].get("momentum_buffer"), sgd.state[b].get("momentum_buffer")
        assert (buf_a is None) == (buf_b is None)
        if buf_a is not None:
            assert torch.equal(buf_a, buf_b)
