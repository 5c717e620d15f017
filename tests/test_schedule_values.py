"""Schedules as values (clr_ext.schedules) against the real PyTorch schedulers and transformers'
LambdaLR helpers, stepped on a real torch.optim.SGD / AdamW with param groups of different LRs.

For every step of 10,000 the value's LR (and momentum / betas[0] where it cycles it) must equal
what the scheduler leaves in each group, bit for bit, except where PyTorch's own formula is
recursive (LinearLR's step() multiplies a factor per step): there the relative difference must
stay within the bound docs/schedules.md derives, one rounding per recursive factor. Then:
validation, value semantics (immutable, picklable, state dicts), and the flat form (what a
device evaluates) against the value's own tree evaluation.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as L

from clr_ext import schedules as S

STEPS = 10_000
LRS = (0.1, 0.037, 1.3e-3)  # the groups' lr, hence their initial_lr
ULP = 2.0**-52
SGD_MOMENTUM = 0.9
WARMUP = 500

# Per-group bounds, as CyclicLR / OneCycleLR take lists.
BASE = [1e-3, 2e-4, 5e-3]
MAX = [0.1, 0.03, 0.2]


def _optimizer(rule: str) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]
    if rule == "sgd":
        return torch.optim.SGD(groups, lr=0.5, momentum=SGD_MOMENTUM)
    return torch.optim.AdamW(groups, lr=0.5)


def _momentum(group) -> float:
    return group["betas"][0] if "betas" in group else group["momentum"]


def _pytorch(rule, build, steps=STEPS):
    """The LR and momentum each group holds for step t: after construction and t scheduler steps
    (the optimizer step itself changes neither, so it is left out)."""
    opt = _optimizer(rule)
    lrs, moms = np.empty((steps, len(LRS))), np.empty((steps, len(LRS)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        sched = build(opt)
        for t in range(steps):
            lrs[t] = [group["lr"] for group in opt.param_groups]
            moms[t] = [_momentum(group) for group in opt.param_groups]
            sched.step()
    return opt, lrs, moms


def _ours(flat, steps=STEPS):
    lrs, moms = np.empty((steps, len(LRS))), np.empty((steps, len(LRS)))
    for t in range(steps):
        for g in range(len(LRS)):
            lr, momentum = flat.point(t, g)
            lrs[t, g], moms[t, g] = lr, (math.nan if momentum is None else momentum)
    return lrs, moms


def _hf(name):
    optimization = pytest.importorskip("transformers.optimization")
    return getattr(optimization, name)


def _case(id, rule, build, value, recursive=()):
    """``recursive``: (first step, end step, total_iters) of the step ranges where PyTorch runs
    LinearLR's recursive step(); everything else must be bit-identical."""
    return pytest.param(rule, build, value, recursive, id=id)


def _warmup(then):
    return lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, WARMUP), then(o)], [WARMUP])


WARM = [(0, WARMUP, WARMUP)]

PARITY = [
    # CosineAnnealingWarmRestarts, from each group's initial lr
    _case("cawr-T1", "sgd", lambda o: L.CosineAnnealingWarmRestarts(o, 37), S.CosineRestarts(37)),
    _case("cawr-T2-eta", "sgd", lambda o: L.CosineAnnealingWarmRestarts(o, 37, 2, 1e-4), S.CosineRestarts(37, 2, 1e-4)),
    _case("cawr-T3", "sgd", lambda o: L.CosineAnnealingWarmRestarts(o, 10, 3), S.CosineRestarts(10, 3)),
    # CyclicLR, its three modes, per-group bounds, momentum cycled (or not)
    _case("cyclic-tri", "sgd", lambda o: L.CyclicLR(o, BASE, MAX, 250), S.Cyclic(BASE, MAX, 250)),
    _case(
        "cyclic-tri2",
        "sgd",
        lambda o: L.CyclicLR(o, BASE, MAX, 250, 120, "triangular2"),
        S.Cyclic(BASE, MAX, 250, 120, "triangular2"),
    ),
    _case(
        "cyclic-exp",
        "sgd",
        lambda o: L.CyclicLR(o, BASE, MAX, 250, 400, "exp_range", 0.9997),
        S.Cyclic(BASE, MAX, 250, 400, "exp_range", 0.9997),
    ),
    _case(
        "cyclic-no-momentum",
        "sgd",
        lambda o: L.CyclicLR(o, 1e-3, 0.1, 300, cycle_momentum=False),
        S.Cyclic(1e-3, 0.1, 300, cycle_momentum=False),
    ),
    _case(
        "cyclic-scale-fn",
        "sgd",
        lambda o: L.CyclicLR(o, 1e-3, 0.1, 300, scale_fn=lambda x: 0.999**x, scale_mode="iterations"),
        S.Cyclic(1e-3, 0.1, 300, scale_fn=lambda x: 0.999**x, scale_mode="iterations"),
    ),
    _case(
        "adamw-cyclic-exp",
        "adamw",
        lambda o: L.CyclicLR(
            o, BASE, MAX, 333, None, "exp_range", 0.9999, base_momentum=[0.8, 0.85, 0.7], max_momentum=0.95
        ),
        S.Cyclic(BASE, MAX, 333, None, "exp_range", 0.9999, base_momentum=[0.8, 0.85, 0.7], max_momentum=0.95),
    ),
    # OneCycleLR
    _case("onecycle-cos", "sgd", lambda o: L.OneCycleLR(o, MAX, STEPS), S.OneCycle(MAX, STEPS)),
    _case(
        "onecycle-linear-3",
        "sgd",
        lambda o: L.OneCycleLR(o, MAX, epochs=10, steps_per_epoch=1000, anneal_strategy="linear", three_phase=True),
        S.OneCycle(MAX, epochs=10, steps_per_epoch=1000, anneal_strategy="linear", three_phase=True),
    ),
    _case(
        "adamw-onecycle-3",
        "adamw",
        lambda o: L.OneCycleLR(o, 0.01, STEPS, pct_start=0.25, div_factor=10.0, three_phase=True),
        S.OneCycle(0.01, STEPS, pct_start=0.25, div_factor=10.0, three_phase=True),
    ),
    # LinearLR (recursive in PyTorch) and ConstantLR (matched with its own roundings)
    _case("linear-up", "sgd", lambda o: L.LinearLR(o, 0.1, 1.0, 700), S.Linear(0.1, 1.0, 700), [(0, STEPS, 700)]),
    _case(
        "linear-down", "sgd", lambda o: L.LinearLR(o, 1.0, 0.05, 2500), S.Linear(1.0, 0.05, 2500), [(0, STEPS, 2500)]
    ),
    _case("linear-default", "sgd", lambda o: L.LinearLR(o), S.Linear(), [(0, STEPS, 5)]),
    _case("constant", "sgd", lambda o: L.ConstantLR(o, 0.3, 700), S.Constant(0.3, 700)),
    _case("constant-default", "sgd", lambda o: L.ConstantLR(o), S.Constant()),
    # SequentialLR([LinearLR, X]): the warmup is recursive, X is bit-identical from the milestone
    _case(
        "warmup-cyclic",
        "sgd",
        _warmup(lambda o: L.CyclicLR(o, BASE, MAX, 250, mode="triangular2")),
        S.Warmup(S.Cyclic(BASE, MAX, 250, mode="triangular2"), WARMUP, 0.1),
        WARM,
    ),
    _case(
        "warmup-onecycle",
        "sgd",
        _warmup(lambda o: L.OneCycleLR(o, MAX, STEPS - WARMUP)),
        S.Warmup(S.OneCycle(MAX, STEPS - WARMUP), WARMUP, 0.1),
        WARM,
    ),
    _case(
        "warmup-cawr",
        "sgd",
        _warmup(lambda o: L.CosineAnnealingWarmRestarts(o, 37, 2, 1e-5)),
        S.Sequential([S.Linear(0.1, 1.0, WARMUP), S.CosineRestarts(37, 2, 1e-5)], [WARMUP]),
        WARM,
    ),
    _case(
        "adamw-warmup-cyclic",
        "adamw",
        _warmup(lambda o: L.CyclicLR(o, 1e-4, 3e-3, 400, mode="exp_range", gamma=0.9998)),
        S.Warmup(S.Cyclic(1e-4, 3e-3, 400, mode="exp_range", gamma=0.9998), WARMUP, 0.1),
        WARM,
    ),
    _case(
        "adamw-warmup-onecycle",
        "adamw",
        _warmup(lambda o: L.OneCycleLR(o, MAX, STEPS - WARMUP, anneal_strategy="linear", three_phase=True)),
        S.Warmup(S.OneCycle(MAX, STEPS - WARMUP, anneal_strategy="linear", three_phase=True), WARMUP, 0.1),
        WARM,
    ),
    # Longer chains: a LinearLR after a milestone (closed form there, recursive after), three
    # segments with the momentum held across a non-cycling one, ConstantLR in a chain.
    _case(
        "cawr-then-linear",
        "sgd",
        lambda o: L.SequentialLR(o, [L.CosineAnnealingWarmRestarts(o, 37, 2), L.LinearLR(o, 0.5, 0.1, 300)], [1000]),
        S.Sequential([S.CosineRestarts(37, 2), S.Linear(0.5, 0.1, 300)], [1000]),
        [(1000, STEPS, 300)],
    ),
    _case(
        "linear-cyclic-cawr",
        "sgd",
        lambda o: L.SequentialLR(
            o,
            [L.LinearLR(o, 0.1, 1.0, WARMUP), L.CyclicLR(o, 1e-3, 0.1, 250), L.CosineAnnealingWarmRestarts(o, 100)],
            [WARMUP, 3000],
        ),
        S.Sequential([S.Linear(0.1, 1.0, WARMUP), S.Cyclic(1e-3, 0.1, 250), S.CosineRestarts(100)], [WARMUP, 3000]),
        WARM,
    ),
    _case(  # the OneCycleLR, built last, sets initial_lr and the momentum the warmup runs with
        "linear-cyclic-onecycle",
        "adamw",
        lambda o: L.SequentialLR(
            o,
            [L.LinearLR(o, 0.1, 1.0, WARMUP), L.CyclicLR(o, BASE, MAX, 250), L.OneCycleLR(o, MAX, 7000)],
            [WARMUP, 3000],
        ),
        S.Sequential([S.Linear(0.1, 1.0, WARMUP), S.Cyclic(BASE, MAX, 250), S.OneCycle(MAX, 7000)], [WARMUP, 3000]),
        WARM,
    ),
    _case(
        "constant-cyclic",
        "sgd",
        lambda o: L.SequentialLR(
            o, [L.ConstantLR(o, 0.25, 50), L.CyclicLR(o, 1e-3, 0.1, 250, mode="triangular2")], [100]
        ),
        S.Sequential([S.Constant(0.25, 50), S.Cyclic(1e-3, 0.1, 250, mode="triangular2")], [100]),
    ),
    _case(
        "adamw-cyclic-constant",
        "adamw",
        lambda o: L.SequentialLR(o, [L.CyclicLR(o, 1e-4, 1e-2, 250), L.ConstantLR(o, 0.25, 50)], [1100]),
        S.Sequential([S.Cyclic(1e-4, 1e-2, 250), S.Constant(0.25, 50)], [1100]),
    ),
    # transformers' LambdaLR helpers (run past num_training_steps, where they clamp)
    _case(
        "hf-linear",
        "adamw",
        lambda o: _hf("get_linear_schedule_with_warmup")(o, WARMUP, 8000),
        S.hf_linear_with_warmup(WARMUP, 8000),
    ),
    _case(
        "hf-linear-nowarmup",
        "sgd",
        lambda o: _hf("get_linear_schedule_with_warmup")(o, 0, STEPS),
        S.hf_linear_with_warmup(0, STEPS),
    ),
    _case(
        "hf-cosine",
        "adamw",
        lambda o: _hf("get_cosine_schedule_with_warmup")(o, WARMUP, 9000),
        S.hf_cosine_with_warmup(WARMUP, 9000),
    ),
    _case(
        "hf-cosine-cycles",
        "sgd",
        lambda o: _hf("get_cosine_schedule_with_warmup")(o, 123, STEPS, num_cycles=2.25),
        S.hf_cosine_with_warmup(123, STEPS, num_cycles=2.25),
    ),
    _case(
        "hf-wsd",
        "adamw",
        lambda o: _hf("get_wsd_schedule")(o, WARMUP, 2000, num_training_steps=9000),
        S.hf_wsd(WARMUP, 2000, num_training_steps=9000),
    ),
    _case(
        "hf-wsd-cosine-1sqrt",
        "sgd",
        lambda o: _hf("get_wsd_schedule")(
            o, 700, 3000, num_stable_steps=4000, warmup_type="cosine", decay_type="1-sqrt", min_lr_ratio=0.1
        ),
        S.hf_wsd(700, 3000, num_stable_steps=4000, warmup_type="cosine", decay_type="1-sqrt", min_lr_ratio=0.1),
    ),
    _case(
        "hf-wsd-1sqrt-linear",
        "sgd",
        lambda o: _hf("get_wsd_schedule")(
            o,
            300,
            2500,
            num_training_steps=9500,
            warmup_type="1-sqrt",
            decay_type="linear",
            min_lr_ratio=0.05,
            num_cycles=0.7,
        ),
        S.hf_wsd(
            300,
            2500,
            num_training_steps=9500,
            warmup_type="1-sqrt",
            decay_type="linear",
            min_lr_ratio=0.05,
            num_cycles=0.7,
        ),
    ),
]


@pytest.mark.parametrize("rule, build, value, recursive", PARITY)
def test_pytorch_parity(rule, build, value, recursive):
    opt, ref_lrs, ref_moms = _pytorch(rule, build)
    initial = [group["initial_lr"] for group in opt.param_groups]
    # the initial_lr PyTorch's schedulers leave in the groups is the one the value predicts
    assert [value.initial_lr(lr, g) for g, lr in enumerate(LRS)] == initial

    lrs, moms = _ours(value.flatten(initial))
    exact = np.ones(STEPS, dtype=bool)
    for start, end, total_iters in recursive:
        exact[start:end] = False
        rel = np.abs(lrs[start:end] - ref_lrs[start:end]) / ref_lrs[start:end]
        assert rel.max() <= (total_iters + 2) * ULP, (rel.max() / ULP, np.unravel_index(rel.argmax(), rel.shape))
    mismatch = np.argwhere(lrs[exact] != ref_lrs[exact])
    assert mismatch.size == 0, (
        f"{len(mismatch)} LRs differ, first at (step, group) {np.argwhere(exact)[mismatch[0][0]]}"
    )

    cycled = ~np.isnan(moms)
    cycles = any(getattr(leaf, "cycle_momentum", False) for leaf in value.leaves())
    assert cycled.all() if cycles else not cycled.any()
    assert np.array_equal(moms[cycled], ref_moms[cycled])  # cycled and held, bit for bit
    if not cycles:  # nothing touched the optimizer's own momentum
        assert np.all(ref_moms == (SGD_MOMENTUM if rule == "sgd" else 0.9))

    # the value's own (tree) evaluation gives the flat form's numbers
    for t in range(0, STEPS, 89):
        for g in range(len(LRS)):
            lr, momentum = value.point(t, initial[g], g)
            assert lr == lrs[t, g] and (momentum is None) == np.isnan(moms[t, g])
            assert momentum is None or momentum == moms[t, g]


def test_linear_recursion_differs_within_the_bound():
    """The bound above is one rounding per recursive factor; the measured difference stays well
    inside it but is real (so the exact comparisons elsewhere are not vacuous)."""
    _, ref, _ = _pytorch("sgd", lambda o: L.LinearLR(o, 1.0, 0.05, STEPS))
    lrs, _ = _ours(S.Linear(1.0, 0.05, STEPS).flatten(LRS))
    rel = np.abs(lrs - ref) / ref
    assert 0 < rel.max() <= (STEPS + 2) * ULP


def test_linear_is_linearlrs_closed_form():
    """Linear is LinearLR's closed form bit for bit: what LinearLR computes at a SequentialLR
    milestone and for step(epoch), and what its recursive step() approximates."""
    _, ref, _ = _pytorch("sgd", lambda o: _ClosedForm(L.LinearLR(o, 1.0 / 3, 0.8, 700)), 900)
    lrs, _ = _ours(S.Linear(1.0 / 3, 0.8, 700).flatten(LRS), 900)
    assert np.array_equal(lrs, ref)


class _ClosedForm:
    """Steps a scheduler with step(epoch), the deprecated form that uses its closed form."""

    def __init__(self, sched):
        self.sched, self.epoch = sched, 0

    def step(self):
        self.epoch += 1
        self.sched.step(self.epoch)


def test_warmup_is_its_sequential():
    inner = S.Cyclic(BASE, MAX, 250)
    warm = S.Warmup(inner, 300)  # from zero: LinearLR itself refuses start_factor 0
    chain = S.Sequential([S.Linear(0.0, 1.0, 300), inner], [300])
    initial = [warm.initial_lr(lr, g) for g, lr in enumerate(LRS)]
    assert initial == list(LRS)  # the LinearLR, built first, set it
    for t in list(range(0, 700)) + [5000, 9999]:
        for g in range(3):
            assert warm.point(t, initial[g], g) == chain.point(t, initial[g], g)
    assert warm.point(0, 0.5, 0)[0] == 0.0
    assert warm.point(300, 0.5, 0)[0] == BASE[0]


def test_initial_lr_rule():
    assert S.Cyclic(0.01, 0.1).initial_lr() == 0.01
    assert S.OneCycle(0.5, 100).initial_lr(7.0) == 0.5 / 25.0
    assert S.Warmup(S.OneCycle([0.5, 0.2], 100), 10).initial_lr(7.0, 1) == 0.2 / 25.0
    assert S.Sequential([S.Linear(), S.Cyclic(0.01, 0.1)], [5]).initial_lr(7.0) == 7.0
    assert not S.Cyclic(0.01, 0.1).needs_initial_lr and S.Warmup(S.Cyclic(0.01, 0.1), 5).needs_initial_lr
    with pytest.raises(ValueError, match="^lr:"):
        S.CosineRestarts(10).initial_lr()
    with pytest.raises(ValueError, match="^initial_lr:"):
        S.CosineRestarts(10).point(3)


def test_onecycle_holds_its_final_values_past_total_steps():
    value = S.OneCycle(0.1, 100)
    last = value.point(99)
    assert value.point(100) == last and value.point(10**6) == last
    assert last[0] == 0.1 / 25.0 / 1e4


# --------------------------------------------------------------------------- the flat form

COMPOSITIONS = [
    S.Cyclic(BASE, MAX, 40, 17, "exp_range", 0.999),
    S.Warmup(S.OneCycle(MAX, 900, three_phase=True), 100, 0.2),
    S.Sequential(
        [
            S.Sequential([S.Constant(0.5, 30), S.Cyclic(1e-3, 0.1, 25, base_momentum=[0.7, 0.8, 0.75])], [60]),
            S.Linear(0.2, 0.9, 40),
            S.OneCycle(0.3, 500, cycle_momentum=False),
            S.CosineRestarts(20, 2, 1e-4),
            S.Cyclic(BASE, MAX, 50, mode="triangular2"),
            S.hf_wsd(10, 100, num_stable_steps=50, decay_type="linear"),
        ],
        [200, 300, 700, 1500, 2500],
    ),
    S.Warmup(S.Sequential([S.hf_cosine_with_warmup(5, 300, 1.5), S.hf_linear_with_warmup(50, 400)], [300]), 40),
]


@pytest.mark.parametrize("value", COMPOSITIONS, ids=["cyclic", "warmup-onecycle", "long-chain", "nested-hf"])
def test_flat_form_evaluates_as_the_value(value):
    initial = [0.2, 0.05, 0.011]
    flat = value.flatten(initial)
    assert all(len(row) == S.WIDTH for group in flat.params for row in group)
    assert flat.starts[0] == 0 and list(flat.starts) == sorted(set(flat.starts))
    for t in range(3000):
        for g in range(3):
            assert flat.point(t, g) == value.point(t, initial[g], g), (t, g)


def test_flat_layout_of_a_nested_chain():
    inner = S.Sequential([S.Constant(0.5, 3), S.Linear(0.1, 1.0, 9)], [10])
    value = S.Sequential([inner, S.CosineRestarts(7, 2, 1e-3), S.Cyclic(0.01, 0.1, 4)], [5, 50])
    flat = value.flatten([0.3])
    # the inner chain's Linear starts at 10, after the outer milestone 5: it never runs
    assert flat.kinds == (S.CONSTANT, S.COSINE_RESTARTS, S.CYCLIC)
    assert flat.starts == (0, 5, 50)
    layout = S.LAYOUTS[S.COSINE_RESTARTS]
    row = flat.params[0][1]
    assert [row[layout.index(n)] for n in layout] == [0.3, 7.0, 2.0, 1e-3]
    # before the Cyclic segment, the group holds the momentum CyclicLR's construction wrote
    assert flat.held_momentum[0][:2] == (0.9, 0.9) and flat.point(3)[1] == 0.9
    assert S.Warmup(S.CosineRestarts(10), 5).flatten([0.1]).point(3)[1] is None


# --------------------------------------------------------------------------- values

VALUES = COMPOSITIONS + [
    S.Constant(),
    S.Linear(0.0, 1.0, 3),
    S.CosineRestarts(5),
    S.hf_wsd(1, 2, 10, warmup_type="cosine", min_lr_ratio=0.25),
    S.OneCycle([0.1, 0.2], epochs=3, steps_per_epoch=7, cycle_momentum=False),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_pickle_and_state_dict_round_trip(value):
    assert pickle.loads(pickle.dumps(value)) == value
    state = value.state_dict()
    json.dumps(state)  # plain data: numbers, strings, lists, dicts
    restored = S.from_state_dict(pickle.loads(pickle.dumps(state)))
    assert restored == value and hash(restored) == hash(value) and repr(restored) == repr(value)
    initial = [0.1] * (value.groups or 1)
    assert [restored.flatten(initial).point(t, 0) for t in range(0, 3000, 7)] == [
        value.flatten(initial).point(t, 0) for t in range(0, 3000, 7)
    ]


def test_values_are_immutable():
    value = S.Cyclic(0.01, 0.1)
    with pytest.raises(AttributeError):
        value.max_lr = 1.0
    with pytest.raises(AttributeError):
        del value.mode
    assert S.Cyclic([0.01], [0.1]).max_lr == (0.1,)  # lists are kept as tuples


def test_a_scale_fn_is_not_saved():
    def halving(cycle):
        return 0.5**cycle

    value = S.Warmup(S.Cyclic(0.01, 0.1, 10, scale_fn=halving), 5)
    state = value.state_dict()
    assert state["schedule"]["scale_fn"] == "test_a_scale_fn_is_not_saved.<locals>.halving"
    with pytest.raises(ValueError, match="^scale_fn:"):
        S.from_state_dict(state)
    assert S.from_state_dict(state, scale_fn=halving) == value


INVALID = [
    (lambda: S.Cyclic(-0.1, 0.1), "base_lr"),
    (lambda: S.Cyclic(float("nan"), 0.1), "base_lr"),
    (lambda: S.Cyclic(0.1, float("inf")), "max_lr"),
    (lambda: S.Cyclic(0.2, 0.1), "max_lr"),
    (lambda: S.Cyclic([0.01, 0.2], [0.1, 0.1]), "max_lr"),
    (lambda: S.Cyclic([0.01, 0.02], [0.1, 0.2, 0.3]), "max_lr"),
    (lambda: S.Cyclic(0.01, 0.1, 0), "step_size_up"),
    (lambda: S.Cyclic(0.01, 0.1, True), "step_size_up"),
    (lambda: S.Cyclic(0.01, 0.1, 10, -1), "step_size_down"),
    (lambda: S.Cyclic(0.01, 0.1, gamma=0.0), "gamma"),
    (lambda: S.Cyclic(0.01, 0.1, mode="sawtooth"), "mode"),
    (lambda: S.Cyclic(0.01, 0.1, scale_fn=3), "scale_fn"),
    (lambda: S.Cyclic(0.01, 0.1, scale_mode="epoch"), "scale_mode"),
    (lambda: S.Cyclic(0.01, 0.1, cycle_momentum=1), "cycle_momentum"),
    (lambda: S.Cyclic(0.01, 0.1, base_momentum=-0.1), "base_momentum"),
    (lambda: S.Cyclic(0.01, 0.1, max_momentum=[0.9, float("nan")]), "max_momentum[1]"),
    (lambda: S.OneCycle(-1.0, 100), "max_lr"),
    (lambda: S.OneCycle(0.1), "total_steps"),
    (lambda: S.OneCycle(0.1, 0), "total_steps"),
    (lambda: S.OneCycle(0.1, epochs=0, steps_per_epoch=3), "epochs"),
    (lambda: S.OneCycle(0.1, epochs=2, steps_per_epoch=2.5), "steps_per_epoch"),
    (lambda: S.OneCycle(0.1, 100, pct_start=1.5), "pct_start"),
    (lambda: S.OneCycle(0.1, 10, pct_start=0.1), "pct_start"),
    (lambda: S.OneCycle(0.1, 100, anneal_strategy="exp"), "anneal_strategy"),
    (lambda: S.OneCycle(0.1, 100, div_factor=0), "div_factor"),
    (lambda: S.OneCycle(0.1, 100, final_div_factor=-1), "final_div_factor"),
    (lambda: S.OneCycle(0.1, 100, three_phase="yes"), "three_phase"),
    (lambda: S.OneCycle(0.1, 100, base_momentum=float("inf")), "base_momentum"),
    (lambda: S.CosineRestarts(0), "T_0"),
    (lambda: S.CosineRestarts(10.0), "T_0"),
    (lambda: S.CosineRestarts(10, 0), "T_mult"),
    (lambda: S.CosineRestarts(10, 1.5), "T_mult"),
    (lambda: S.CosineRestarts(10, eta_min=-1e-3), "eta_min"),
    (lambda: S.Linear(-0.1), "start_factor"),
    (lambda: S.Linear(0.5, 1.5), "end_factor"),
    (lambda: S.Linear(0.5, 1.0, 0), "total_iters"),
    (lambda: S.Constant(0.0), "factor"),
    (lambda: S.Constant(1.2), "factor"),
    (lambda: S.Constant(0.5, -2), "total_iters"),
    (lambda: S.Sequential([], []), "schedules"),
    (lambda: S.Sequential([S.Constant(), "cosine"], [3]), "schedules[1]"),
    (lambda: S.Sequential([S.Constant(), S.Linear()], []), "milestones"),
    (lambda: S.Sequential([S.Constant(), S.Linear()], [0]), "milestones[0]"),
    (lambda: S.Sequential([S.Constant(), S.Linear(), S.Constant()], [5, 5]), "milestones"),
    (lambda: S.Sequential([S.Cyclic([0.1, 0.2], 0.3), S.OneCycle([0.1, 0.2, 0.3], 10)], [5]), "schedule"),
    (lambda: S.Warmup(S.Constant(), 0), "steps"),
    (lambda: S.Warmup(S.Constant(), 5, 2.0), "start_factor"),
    (lambda: S.Warmup(lambda t: 1.0, 5), "schedule"),
    (lambda: S.hf_linear_with_warmup(-1, 10), "num_warmup_steps"),
    (lambda: S.hf_linear_with_warmup(1, 10.5), "num_training_steps"),
    (lambda: S.hf_cosine_with_warmup(1, 10, num_cycles=float("nan")), "num_cycles"),
    (lambda: S.hf_wsd(10, 10), "num_training_steps"),
    (lambda: S.hf_wsd(10, 10, num_training_steps=15), "num_training_steps"),
    (lambda: S.hf_wsd(10, 10, 100, warmup_type="exp"), "warmup_type"),
    (lambda: S.hf_wsd(10, 10, 100, decay_type="step"), "decay_type"),
    (lambda: S.hf_wsd(10, 10, 100, min_lr_ratio=1.5), "min_lr_ratio"),
    (lambda: S.hf_wsd(10, -10, 100), "num_decay_steps"),
    (lambda: S.Cyclic(0.01, 0.1).point(-1), "iteration"),
    (lambda: S.Cyclic(0.01, 0.1).flatten().point(-1), "iteration"),
    (lambda: S.Cyclic([0.01, 0.02], 0.1).flatten([None]), "initial_lrs"),
    (lambda: S.CosineRestarts(5).flatten([0.1, None]), "initial_lrs"),
    (lambda: S.from_state_dict({"kind": "os.system"}), "state"),
    (lambda: S.from_state_dict({"kind": "Linear", "slope": 3}), "state"),
]


@pytest.mark.parametrize("make, name", INVALID, ids=[name for _, name in INVALID])
def test_invalid_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}:"):
        make()


def test_momentum_above_one_warns_as_pytorch_allows_it():
    with pytest.warns(UserWarning, match="max_momentum"):
        S.Cyclic(0.01, 0.1, max_momentum=1.5)
    with pytest.warns(UserWarning, match="num_stable_steps will be used"):
        assert S.hf_wsd(1, 2, num_training_steps=100, num_stable_steps=3).num_stable_steps == 3
