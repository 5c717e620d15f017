"""The PyTorch schedulers and compositions that clr_ext.schedules values stand for, each with
its value: the cases of the schedule-value tests (tests/schedules/test_schedule_values.py, the LR of every
step) and of the optimizer tests (tests/schedules/test_schedule_optimizers.py, the params of every step).

``recursive`` lists the step ranges where PyTorch runs LinearLR's recursive ``step()`` (a
product of per-step factors, not its closed form): there the numbers may differ by one rounding
per factor; everywhere else they must be bit-identical.
"""

from __future__ import annotations

import pytest
import torch  # noqa: F401  (the builders run on torch optimizers)
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


def _hf(name):
    optimization = pytest.importorskip("transformers.optimization")
    return getattr(optimization, name)


def _case(id, rule, build, value, recursive=()):
    """``recursive``: (first step, end step, total_iters) of the step ranges where PyTorch runs
    LinearLR's recursive step(); everything else must be bit-identical."""
    return pytest.param(rule, build, value, recursive, id=id)


#: transformers' helper -> the value that stands for it, called with the same arguments
_HF_VALUES = {
    "get_linear_schedule_with_warmup": S.hf_linear_with_warmup,
    "get_cosine_schedule_with_warmup": S.hf_cosine_with_warmup,
    "get_wsd_schedule": S.hf_wsd,
}


def _hf_case(id, rule, helper, *args, **kwargs):
    """transformers' ``helper`` against its value, both given ``args`` and ``kwargs``."""
    return _case(id, rule, lambda o: _hf(helper)(o, *args, **kwargs), _HF_VALUES[helper](*args, **kwargs))


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
    _hf_case("hf-linear", "adamw", "get_linear_schedule_with_warmup", WARMUP, 8000),
    _hf_case("hf-linear-nowarmup", "sgd", "get_linear_schedule_with_warmup", 0, STEPS),
    _hf_case("hf-cosine", "adamw", "get_cosine_schedule_with_warmup", WARMUP, 9000),
    _hf_case("hf-cosine-cycles", "sgd", "get_cosine_schedule_with_warmup", 123, STEPS, num_cycles=2.25),
    _hf_case("hf-wsd", "adamw", "get_wsd_schedule", WARMUP, 2000, num_training_steps=9000),
    _hf_case(
        "hf-wsd-cosine-1sqrt",
        "sgd",
        "get_wsd_schedule",
        700,
        3000,
        num_stable_steps=4000,
        warmup_type="cosine",
        decay_type="1-sqrt",
        min_lr_ratio=0.1,
    ),
    _hf_case(
        "hf-wsd-1sqrt-linear",
        "sgd",
        "get_wsd_schedule",
        300,
        2500,
        num_training_steps=9500,
        warmup_type="1-sqrt",
        decay_type="linear",
        min_lr_ratio=0.05,
        num_cycles=0.7,
    ),
]
