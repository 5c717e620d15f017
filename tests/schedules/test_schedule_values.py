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
from compositions import BASE, LRS, MAX, PARITY, SGD_MOMENTUM, STEPS, ULP
from torch.optim import lr_scheduler as L

from clr_ext import schedules as S


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
