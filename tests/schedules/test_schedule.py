"""The schedule: the Python oracle against torch's CyclicLR (bit for bit), and the
compiled schedule (csrc/math/schedule.h through clr_ext._C and clr_ext._cython._cpu) against
the oracle (bit for bit), including the paper's extra modes and huge iteration counts."""

from __future__ import annotations

import math
import random
import zlib

import pytest
import torch
from conftest import same_float

import clr_ext
from clr_ext import backends as _backends
from clr_ext import schedule as S
from clr_ext.schedule import CUSTOM_MODE, MODES, cyclic_point

PYTORCH_MODES = ("triangular", "triangular2", "exp_range")

#: (step_size_up, step_size_down): symmetric, asymmetric both ways, a sawtooth
#: (down = 0), fractional sizes, and up = 1.
RAMPS = [(4, None), (5, 11), (13, 3), (6, 0), (2.5, 3.5), (1, 1), (1, 4), (2000, None)]
GAMMAS = {"triangular": 1.0, "triangular2": 1.0, "exp_range": 0.99}
BOUNDS = [(0.001, 0.1, 0.8, 0.9), (1e-5, 1.0, 0.85, 0.95), (0.3, 0.3, 0.9, 0.9), (0.0, 3.0, 0.0, 0.99)]


def _cycles(up, down):
    total = up + (up if down is None else down)
    return int(math.ceil(3.5 * total)) + 3  # 3+ full cycles


def _cyclic_lr_trace(mode, up, down, gamma, bounds, steps, cycle_momentum=True, scale_fn=None, scale_mode="cycle"):
    """(lr, momentum) CyclicLR leaves in the group at last_epoch = 0, 1, ..., steps-1."""
    base_lr, max_lr, base_m, max_m = bounds
    p = torch.zeros(1, requires_grad=True)
    sgd = torch.optim.SGD([p], lr=base_lr, momentum=0.5)
    sched = torch.optim.lr_scheduler.CyclicLR(
        sgd,
        base_lr,
        max_lr,
        step_size_up=up,
        step_size_down=down,
        mode=mode,
        gamma=gamma,
        scale_fn=scale_fn,
        scale_mode=scale_mode,
        cycle_momentum=cycle_momentum,
        base_momentum=base_m,
        max_momentum=max_m,
    )
    out = []
    for i in range(steps):
        assert sched.last_epoch == i
        out.append((sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"]))
        sgd.step()
        sched.step()
    return out


@pytest.mark.parametrize("bounds", BOUNDS, ids=lambda b: "lr%g-%g" % b[:2])
@pytest.mark.parametrize("up,down", RAMPS, ids=lambda v: str(v))
@pytest.mark.parametrize("mode", PYTORCH_MODES)
def test_oracle_is_cycliclr_bit_for_bit(mode, up, down, bounds):
    steps = _cycles(up, down) if up < 100 else 9000
    gamma = GAMMAS[mode] if up < 100 else 0.9995
    trace = _cyclic_lr_trace(mode, up, down, gamma, bounds, steps)
    base_lr, max_lr, base_m, max_m = bounds
    for i, (lr, momentum) in enumerate(trace):
        assert same_float(clr_ext.cyclic_lr(i, base_lr, max_lr, up, down, mode, gamma), lr), (i, lr)
        got_lr, got_m = cyclic_point(i, base_lr, max_lr, up, down, mode, gamma, base_m, max_m)
        assert same_float(got_lr, lr) and same_float(got_m, momentum), (i, got_lr, lr, got_m, momentum)


@pytest.mark.parametrize("gamma", (0.5, 0.9, 0.999, 1.0, 1.001))
def test_oracle_exp_range_gamma_uses_global_iteration(gamma):
    trace = _cyclic_lr_trace("exp_range", 3, 7, gamma, (0.01, 0.1, 0.8, 0.9), 200)
    for i, (lr, _) in enumerate(trace):
        assert same_float(clr_ext.cyclic_lr(i, 0.01, 0.1, 3, 7, "exp_range", gamma), lr)


def test_oracle_defaults_match_cycliclr():
    trace = _cyclic_lr_trace("triangular", 2000, None, 1.0, (0.001, 0.006, 0.8, 0.9), 8001)
    for i in (0, 1, 999, 1000, 1999, 2000, 2001, 3999, 4000, 6000, 8000):
        assert same_float(clr_ext.cyclic_lr(i, 0.001, 0.006), trace[i][0])
        assert same_float(cyclic_point(i, 0.001, 0.006)[1], trace[i][1])


def test_oracle_known_values():
    # Hand-computed anchors: triangular, up = 4, down = 6 (total 10).
    lrs = [clr_ext.cyclic_lr(i, 1.0, 2.0, 4, 6) for i in range(11)]
    approx = pytest.approx
    assert lrs == approx([1.0, 1.25, 1.5, 1.75, 2.0, 1 + 5 / 6, 1 + 4 / 6, 1.5, 1 + 2 / 6, 1 + 1 / 6, 1.0])
    # triangular2 halves the amplitude every cycle.
    assert clr_ext.cyclic_lr(14, 1.0, 2.0, 4, 6, "triangular2") == approx(1.5)
    assert clr_ext.cyclic_lr(24, 1.0, 2.0, 4, 6, "triangular2") == approx(1.25)
    # exp_range: the amplitude is gamma ** iteration (global, not per cycle).
    assert clr_ext.cyclic_lr(14, 1.0, 2.0, 4, 6, "exp_range", 0.5) == approx(1.0 + 0.5**14)


class _PicklableScale:
    def __call__(self, x):
        return 1.0 / (1.0 + 0.1 * x)


@pytest.mark.parametrize("scale_mode", ("cycle", "iterations"))
@pytest.mark.parametrize(
    "scale_fn", (_PicklableScale(), lambda x: 0.5 * (1 + math.cos(x / 9.0))), ids=("callable", "lambda")
)
def test_oracle_custom_scale_fn_matches_cycliclr(scale_fn, scale_mode):
    trace = _cyclic_lr_trace(
        "triangular", 5, 8, 1.0, (0.01, 0.2, 0.7, 0.95), 120, scale_fn=scale_fn, scale_mode=scale_mode
    )
    for i, (lr, momentum) in enumerate(trace):
        got = cyclic_point(i, 0.01, 0.2, 5, 8, "triangular", 1.0, 0.7, 0.95, scale_fn=scale_fn, scale_mode=scale_mode)
        assert same_float(got[0], lr) and same_float(got[1], momentum), i


def test_oracle_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        clr_ext.cyclic_lr(3, 0.1, 1.0, mode="cosine")


def test_oracle_needs_no_torch():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(S))
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch" not in imported


def test_extra_modes_oracle_definitions():
    for i in (0, 1, 7, 100, 10_000):
        assert cyclic_point(i, 0.01, 0.1, 50, None, "fixed", 0.9, 0.8, 0.95) == (0.01, 0.95)
        assert cyclic_point(i, 0.01, 0.1, 50, None, "exp", 0.999, 0.8, 0.95) == (0.01 * 0.999**i, 0.95)
    assert cyclic_point(0, 0.01, 0.1, 50, None, "decay", 1.0, 0.8, 0.95) == (0.1, 0.8)
    assert cyclic_point(25, 0.01, 0.1, 50, None, "decay")[0] == pytest.approx(0.055)
    for i in (50, 51, 10**6):
        assert cyclic_point(i, 0.01, 0.1, 50, None, "decay", 1.0, 0.8, 0.95) == (0.01, 0.95)
    lrs = [cyclic_point(i, 0.01, 0.1, 50, None, "decay")[0] for i in range(60)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# ------------------------------------------------------------ the compiled schedule


def _compiled_schedules():
    out = []
    if _backends._C is not None:
        out.append(pytest.param(_backends._C.schedule, id="_C"))
    else:
        out.append(pytest.param(None, id="_C", marks=pytest.mark.skip(reason="clr_ext._C not built")))
    if _backends._cython_cpu is not None:
        out.append(pytest.param(_backends._cython_cpu.schedule, id="cython"))
    else:
        out.append(pytest.param(None, id="cython", marks=pytest.mark.skip(reason="clr_ext._cython not built")))
    return out


COMPILED = _compiled_schedules()

HUGE = [
    2**24 - 1,
    2**24,
    2**24 + 1,
    2**31 - 1,
    2**31,
    2**32 + 7,
    2**40,
    2**40 + 12_345,
    3 * 2**40 + 1,
    2**52 - 1,
    2**53,
]


def _iterations(up, down, rng):
    total = up + (up if down is None else down)
    its = list(range(0, int(4 * total) + 2))
    its += HUGE
    its += [rng.randrange(0, 2**45) for _ in range(200)]
    # around multiples of the cycle far out (floor / ratio boundaries)
    for k in (10**6, 2**33, 2**40):
        c = int(k // total * total)
        its += [c - 1, c, c + 1, c + int(up), c + int(up) + 1]
    return its


def _check_compiled(fn, mode_name, up, down, gamma, bounds, iterations):
    base_lr, max_lr, base_m, max_m = bounds
    mode = MODES[mode_name]
    d = up if down is None else down
    for i in iterations:
        want = cyclic_point(i, base_lr, max_lr, up, down, mode_name, gamma, base_m, max_m)
        got = fn(i, base_lr, max_lr, base_m, max_m, float(up), float(d), mode, gamma)
        assert same_float(got[0], want[0]) and same_float(got[1], want[1]), (mode_name, i, got, want)


@pytest.mark.parametrize("fn", COMPILED)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("up,down", RAMPS, ids=lambda v: str(v))
def test_compiled_schedule_is_the_oracle(fn, mode, up, down):
    rng = random.Random(zlib.crc32(repr((mode, up, down)).encode()))  # the same in every run
    gammas = {
        "exp_range": (0.99, 0.9999, 1.0),
        "exp": (0.999, 1.0, 0.5),
        "triangular": (1.0,),
        "triangular2": (1.0,),
        "fixed": (0.9,),
        "decay": (1.0,),
    }[mode]
    its = _iterations(up, down, rng)
    for gamma in gammas:
        for bounds in BOUNDS:
            _check_compiled(fn, mode, up, down, gamma, bounds, its)


@pytest.mark.parametrize("fn", COMPILED)
def test_compiled_schedule_huge_iterations(fn):
    """64-bit counts in double precision: the cycle position stays right past 2**24 (where
    a float32 counter would stop counting) and at 2**40."""
    up, down = 1000.0, 1000.0
    for i, want_lr in ((2**40, None), (2**40 + 500, None), (2**40 + 1000, None)):
        got = fn(i, 0.0, 1.0, 0.8, 0.9, up, down, MODES["triangular"], 1.0)
        ref = cyclic_point(i, 0.0, 1.0, up, down, "triangular", 1.0, 0.8, 0.9)
        assert same_float(got[0], ref[0]) and same_float(got[1], ref[1])
    # 2**40 = 1099511627776 = 549755813 * 2000 + 1776: on the way down, 224 from the end
    lr = fn(2**40, 0.0, 1.0, 0.8, 0.9, up, down, MODES["triangular"], 1.0)[0]
    assert lr == pytest.approx(224 / 1000, abs=1e-6)  # i / total ~ 5.5e8 keeps ~7 digits of x
    lr = fn(2**24 + 1, 0.0, 1.0, 0.8, 0.9, 2**23, 2**23, MODES["triangular"], 1.0)[0]
    assert lr == pytest.approx(1 / 2**23, rel=1e-6)


@pytest.mark.parametrize("fn", COMPILED)
def test_compiled_custom_mode_uses_the_given_scale(fn):
    scale_fn = _PicklableScale()
    for scale_mode in ("cycle", "iterations"):
        for i in list(range(100)) + HUGE:
            want = cyclic_point(
                i, 0.01, 0.2, 5, 8, "triangular", 1.0, 0.7, 0.95, scale_fn=scale_fn, scale_mode=scale_mode
            )
            arg = math.floor(1 + i / 13.0) if scale_mode == "cycle" else i
            got = fn(i, 0.01, 0.2, 0.7, 0.95, 5.0, 8.0, CUSTOM_MODE, 1.0, float(scale_fn(arg)))
            assert same_float(got[0], want[0]) and same_float(got[1], want[1]), (scale_mode, i)


@pytest.mark.parametrize("fn", COMPILED)
def test_compiled_schedule_rejects_bad_shape(fn):
    with pytest.raises((RuntimeError, ValueError)):
        fn(0, 0.01, 0.1, 0.8, 0.9, 0.0, 4.0, 0, 1.0)
    with pytest.raises((RuntimeError, ValueError)):
        fn(0, 0.01, 0.1, 0.8, 0.9, 4.0, 4.0, 99, 1.0)
    with pytest.raises((RuntimeError, ValueError)):
        fn(0, 0.01, 0.1, 0.8, 0.9, 4.0, 4.0, -1, 1.0)


def test_mode_numbers_are_stable():
    # The numbers are part of the op's schema (csrc/math/schedule.h): append, never renumber.
    assert MODES == {"triangular": 0, "triangular2": 1, "exp_range": 2, "fixed": 3, "exp": 4, "decay": 5}
    assert CUSTOM_MODE == 6


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(
        i=st.integers(min_value=0, max_value=2**53),
        up=st.integers(1, 10**6),
        down=st.integers(0, 10**6),
        mode=st.sampled_from(sorted(MODES)),
        base=st.floats(0, 1, allow_nan=False),
        span=st.floats(0, 10, allow_nan=False),
        gamma=st.floats(0.5, 1.0, exclude_min=True),
    )
    def test_compiled_schedule_property(i, up, down, mode, base, span, gamma):
        fns = [
            f
            for f in (getattr(_backends._C, "schedule", None), getattr(_backends._cython_cpu, "schedule", None))
            if f is not None
        ]
        want = cyclic_point(i, base, base + span, up, down, mode, gamma, 0.8, 0.9)
        for fn in fns:
            got = fn(i, base, base + span, 0.8, 0.9, float(up), float(down), MODES[mode], gamma)
            assert same_float(got[0], want[0]) and same_float(got[1], want[1])
except ImportError:  # pragma: no cover
    pass


def test_cyclic_lr_works_without_torch():
    """api.md: cyclic_lr is pure Python, no torch needed. In a process where torch cannot
    be imported, ``import clr_ext`` still gives cyclic_lr (equal to this process's), and
    the torch-bound names raise an ImportError that says so."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import clr_ext\n"
        "print(repr(clr_ext.cyclic_lr(1234, 0.001, 0.1, 300, 200, 'exp_range', 0.999)))\n"
        "try:\n    clr_ext.CyclicSGD\nexcept ImportError as e:\n    print('ImportError', 'PyTorch' in str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lr_line, error_line = out.stdout.strip().splitlines()
    assert float(lr_line) == clr_ext.cyclic_lr(1234, 0.001, 0.1, 300, 200, "exp_range", 0.999)
    assert error_line == "ImportError True"
