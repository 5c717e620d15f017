"""Which step starts a momentum buffer (buffer = gradient, no dampening), when the op
decides it.

On CUDA the host never reads GradScaler's overflow flag, and a step traced by
torch.compile does not know its cycled momentum: there each buffer carries a start
iteration and the op decides, param by param (csrc/op/sgd_op.h, ``momentum_start``).
These tests run that path on the CPU (``_host_decided_types``) next to the host path,
both against torch.optim.SGD + CyclicLR, with dampening != 0: the case where starting
a buffer from zeros instead of the gradient would show.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import ReferencePair, assert_close_rel

import clr_ext

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")

SIZES = (3, 1031)
DECIDED = {"device-decided": True, "host-decided": False}


def make(backend, decided, params, **kwargs):
    kwargs.setdefault("step_size_up", 2)
    opt = clr_ext.CyclicSGD(params, 0.01, 0.05, backend=backend, **kwargs)
    if decided:
        opt._host_decided_types = ()
    return opt


def step_with_scaler_flags(opt, params, grads, skip):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()
    opt.grad_scale = torch.tensor(1.0)
    opt.found_inf = torch.tensor(1.0 if skip else 0.0)
    opt.step()
    del opt.grad_scale, opt.found_inf


def problem(seed, sizes, sgd):
    """(generator, initial values, torch.optim.SGD + CyclicLR on them, our params)."""
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(n, generator=gen) for n in sizes]
    ref = ReferencePair([{"params": init}], sgd, dict(base_lr=0.01, max_lr=0.05, step_size_up=2, cycle_momentum=False))
    return gen, init, ref, [t.clone().requires_grad_(True) for t in init]


def saved_buffers(state_dict):
    return sorted(i for i, s in state_dict["state"].items() if "momentum_buffer" in s)


@pytest.mark.parametrize("decided", list(DECIDED), ids=list(DECIDED))
def test_steps_skipped_on_overflow_start_no_buffer(backend, decided):
    """GradScaler skips the first steps: the first applied step starts the buffers with
    the gradient itself; state_dict() has no buffer before then, as torch.optim.SGD."""
    sgd = dict(momentum=0.9, dampening=0.3)
    gen, init, ref, params = problem(31, SIZES, sgd)
    opt = make(backend, DECIDED[decided], params, cycle_momentum=False, **sgd)
    for k in range(9):
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        skip = k in (0, 1, 5)
        step_with_scaler_flags(opt, params, grads, skip)
        if skip:
            ref.sched.step()
        else:
            ref.step(grads)
        assert saved_buffers(opt.state_dict()) == saved_buffers(ref.sgd.state_dict()), k
        assert_close_rel(params, ref.params)
        for i, p in enumerate(params):
            if ref.buffer(i) is not None:
                assert_close_rel([opt.state[p]["momentum_buffer"]], [ref.buffer(i)], "buffer")


@pytest.mark.parametrize("decided", list(DECIDED), ids=list(DECIDED))
def test_cycled_momentum_zero_on_the_first_step(backend, decided):
    """Cycled momentum rises from 0 (max_momentum=0 at the cycle's start): torch.optim.SGD
    keeps no buffer in that step, and the next step starts it with the gradient."""
    gen = torch.Generator().manual_seed(32)
    init = [torch.randn(n, generator=gen) for n in SIZES]
    ref = ReferencePair(
        [{"params": init}],
        dict(momentum=0.9, dampening=0.4),
        dict(base_lr=0.01, max_lr=0.05, step_size_up=3, base_momentum=0.9, max_momentum=0.0),
    )
    params = [t.clone().requires_grad_(True) for t in init]
    opt = make(
        backend,
        DECIDED[decided],
        params,
        momentum=0.9,
        dampening=0.4,
        base_momentum=0.9,
        max_momentum=0.0,
        step_size_up=3,
    )
    for k in range(10):
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        assert opt.get_last_lr() == ref.last_lr()
        assert saved_buffers(opt.state_dict()) == saved_buffers(ref.sgd.state_dict()), k
        assert_close_rel(params, ref.params)


def test_params_that_get_gradients_later(backend):
    """Starts are per param: one param's buffer starts in a skipped step's aftermath,
    another's only when its first gradient arrives."""
    sgd = dict(momentum=0.8, dampening=0.25, weight_decay=0.01)
    gen, init, ref, params = problem(33, (5, 64, 7), sgd)
    opt = make(backend, True, params, cycle_momentum=False, **sgd)
    plan = [({0}, True), ({0, 1}, False), ({0, 1}, True), ({0, 1, 2}, False), ({1, 2}, False), ({0, 1, 2}, False)]
    for has_grad, skip in plan:
        grads = [torch.randn(t.shape, generator=gen) if i in has_grad else None for i, t in enumerate(init)]
        step_with_scaler_flags(opt, params, grads, skip)
        if skip:
            ref.sched.step()
        else:
            ref.step(grads)
        assert saved_buffers(opt.state_dict()) == saved_buffers(ref.sgd.state_dict())
        assert_close_rel(params, ref.params)


def test_host_started_buffers_continue_on_the_device_path(backend):
    """Buffers started on the host (or loaded) get a start that says "begun": moving to
    the device-decided path (e.g. compiling later) must not restart them."""
    sgd = dict(momentum=0.9, dampening=0.3)
    gen, init, ref, params = problem(34, SIZES, sgd)
    opt = make(backend, False, params, cycle_momentum=False, **sgd)
    for k in range(6):
        if k == 3:
            opt._host_decided_types = ()
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        step_with_scaler_flags(opt, params, grads, False)
        ref.step(grads)
        assert_close_rel(params, ref.params)
    assert len(opt._momentum_start) == len(params)


def test_starts_survive_copies_and_checkpoints(backend):
    """A buffer that has not started stays so through deepcopy and pickling, and a
    checkpoint leaves it out, so a loaded optimizer starts it at the next step."""
    sgd = dict(momentum=0.9, dampening=0.5)
    gen, init, ref, params = problem(35, SIZES, sgd)
    opt = make(backend, True, params, cycle_momentum=False, **sgd)
    first = [torch.randn(t.shape, generator=gen) for t in init]
    step_with_scaler_flags(opt, params, first, True)
    ref.sched.step()
    assert all("momentum_buffer" in opt.state[p] for p in params)  # exists, not started

    copied_params, copied_opt = copy.deepcopy((params, opt))
    buf = io.BytesIO()
    torch.save((params, opt), buf)
    buf.seek(0)
    pickled_params, pickled_opt = torch.load(buf, weights_only=False)
    loaded_params = [t.detach().clone().requires_grad_(True) for t in params]
    loaded_opt = make(backend, True, loaded_params, cycle_momentum=False, **sgd)
    loaded_opt.load_state_dict(opt.state_dict())
    assert loaded_opt.iteration == 1
    assert all("momentum_buffer" not in s for s in loaded_opt.state.values())

    candidates = [
        (params, opt),
        (copied_params, copied_opt),
        (pickled_params, pickled_opt),
        (loaded_params, loaded_opt),
    ]
    for k in range(4):
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        for ps, o in candidates:
            step_with_scaler_flags(o, ps, grads, False)
        ref.step(grads)
        for ps, _ in candidates:
            assert_close_rel(ps, ref.params)


def test_iteration_moved_back_keeps_begun_buffers(backend):
    """A start is an iteration: when a wrapper sets the iteration back (group
    "iteration", as ZeroRedundancyOptimizer's load does), begun buffers stay begun."""
    results = []
    for decided in (True, False):
        gen = torch.Generator().manual_seed(36)
        params = [torch.randn(n, generator=gen).requires_grad_(True) for n in SIZES]
        opt = make(backend, decided, params, momentum=0.9, dampening=0.3, cycle_momentum=False)
        for k in range(8):
            if k == 5:
                for group in opt.param_groups:
                    group["iteration"] = 1
            grads = [torch.randn(p.shape, generator=gen) for p in params]
            step_with_scaler_flags(opt, params, grads, False)
        assert opt.iteration == 4
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_starts_reach_the_op_as_one_tensor(backend, monkeypatch):
    """In the usual case (every param of a bucket has its gradient) the op gets the
    bucket's starts as one tensor: a traced step then has one more input, not one per
    param. With a param missing its gradient, it gets a view per param."""
    seen = []
    backend_class = type(clr_ext.backends._instance(backend))
    original = backend_class.run

    def recording_run(self, tensors, hyper, inputs):
        starts = tensors.momentum_start
        seen.append((len(tensors.params), len(starts), [tuple(s.shape) for s in starts]))
        return original(self, tensors, hyper, inputs)

    monkeypatch.setattr(backend_class, "run", recording_run)
    gen = torch.Generator().manual_seed(37)
    params = [torch.randn(n, generator=gen).requires_grad_(True) for n in (3, 5, 7)]
    opt = make(backend, True, params, momentum=0.9, cycle_momentum=False)
    for k in range(3):
        for i, p in enumerate(params):
            p.grad = None if (k == 2 and i == 1) else torch.randn(p.shape, generator=gen)
        opt.step()
    assert seen == [(3, 1, [(3,)]), (3, 1, [(3,)]), (2, 2, [(), ()])]


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def scenarios(draw):
    n_params = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 9))
    cycle_momentum = draw(st.booleans())
    return dict(
        sizes=draw(st.lists(st.sampled_from([1, 3, 17]), min_size=n_params, max_size=n_params)),
        dampening=draw(st.sampled_from([0.0, 0.3])),
        cycle_momentum=cycle_momentum,
        # with cycling, a bound of 0 makes some steps' momentum exactly 0
        base_momentum=draw(st.sampled_from([0.0, 0.8])) if cycle_momentum else 0.8,
        max_momentum=draw(st.sampled_from([0.0, 0.9])) if cycle_momentum else 0.9,
        skips=draw(st.lists(st.booleans(), min_size=steps, max_size=steps)),
        has_grad=draw(
            st.lists(st.lists(st.booleans(), min_size=n_params, max_size=n_params), min_size=steps, max_size=steps)
        ),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_any_sequence_of_skips_gaps_and_zero_momentum(backend, scenario):
    """Property: whatever mix of skipped steps, missing gradients and momentum-0 steps,
    the op's per-param decisions give torch.optim.SGD + CyclicLR's params and the same
    saved buffers, as the host's decisions do."""
    s = scenario
    sgd = dict(momentum=0.9, dampening=s["dampening"])
    sched = dict(
        base_lr=0.01,
        max_lr=0.05,
        step_size_up=2,
        cycle_momentum=s["cycle_momentum"],
        base_momentum=s["base_momentum"],
        max_momentum=s["max_momentum"],
    )
    gen = torch.Generator().manual_seed(s["seed"])
    init = [torch.randn(n, generator=gen, dtype=torch.float64) for n in s["sizes"]]
    ref = ReferencePair([{"params": init}], sgd, sched)
    runs = []
    for decided in (True, False):
        params = [t.clone().requires_grad_(True) for t in init]
        kwargs = {k: v for k, v in sched.items() if k not in ("base_lr", "max_lr")}
        runs.append((params, make(backend, decided, params, **sgd, **kwargs)))
    for skip, mask in zip(s["skips"], s["has_grad"]):
        grads = [torch.randn(t.shape, generator=gen, dtype=t.dtype) if has else None for t, has in zip(init, mask)]
        for params, opt in runs:
            step_with_scaler_flags(opt, params, grads, skip)
        if skip:
            ref.sched.step()
        else:
            ref.step(grads)
        for params, opt in runs:
            assert saved_buffers(opt.state_dict()) == saved_buffers(ref.sgd.state_dict())
            assert_close_rel(params, ref.params)
