"""What every step guarantees, for every class, rule, schedule and CPU backend (issue 21):

- all or nothing: whatever is wrong (a sparse gradient, one of the wrong dtype, shape or
  device, a non-floating param, a state tensor that does not match its param), wherever it
  sits (another group, the same group, another dtype bucket of the same group), on the
  first step or a later one, ``step()`` raises an error naming the group and the param,
  and nothing has changed; with the cause removed, training goes on bit for bit as if the
  failed step never happened;
- the version counters of what a step writes are bumped, as PyTorch's in-place ops bump
  them, so autograd refuses a backward through tensors the step changed (as with
  ``torch.optim.SGD``);
- any non-zero ``found_inf`` skips the step (GradScaler passes the sum of the devices' flags);
- capturing a CUDA graph of a step whose schedule has a Python ``scale_fn`` raises.

The all-or-nothing property is tested twice over: on a fixed grid of places and breakages,
and searched by hypothesis over random layouts (groups of float32 and float64 params, so a
group may hold several buckets). ``CLR_EXT_STEP_EXAMPLES`` sets the number of examples per
class and backend (CI: the default; ``-m slow`` searches twenty times longer).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clr_ext
from clr_ext.optim import schedules

CLASSES = ("CyclicSGD", "OneCycleSGD", "CyclicAdamW", "OneCycleAdamW")


def _make(cls_name, groups, backend, **kw):
    cls = getattr(clr_ext, cls_name)
    if cls_name.endswith("SGD"):
        kw.setdefault("momentum", 0.9)
    kw.setdefault("weight_decay", 0.01)
    if cls_name.startswith("Cyclic"):
        return cls(groups, 0.01, 0.1, step_size_up=3, backend=backend, **kw)
    return cls(groups, 0.1, total_steps=50, backend=backend, **kw)


def _state_key(cls_name):
    return "momentum_buffer" if cls_name.endswith("SGD") else "exp_avg"


def _snapshot(opt, params):
    return dict(
        params=[p.detach().clone() for p in params],
        state={
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
            for i, p in enumerate(params)
            if opt.state.get(p)
        },
        iteration=opt.iteration,
        groups=[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        counters={d: int(c) for d, c in opt._counters.items()},
    )


def _assert_same(a, b):
    assert len(a["params"]) == len(b["params"])
    for x, y in zip(a["params"], b["params"]):
        assert x.dtype == y.dtype and torch.equal(x, y), "a parameter differs"
    assert a["state"].keys() == b["state"].keys(), "state was created or removed"
    for i, entry in a["state"].items():
        assert entry.keys() == b["state"][i].keys()
        for k, v in entry.items():
            if torch.is_tensor(v):
                assert torch.equal(v, b["state"][i][k]), f"state {k} of param {i} differs"
            else:
                assert v == b["state"][i][k]
    assert a["iteration"] == b["iteration"]
    assert a["groups"] == b["groups"]
    assert a["counters"] == b["counters"]


def _break_sparse(p, opt, key):
    p.grad = torch.ones_like(p).to_sparse()


def _break_grad_dtype(p, opt, key):
    p.grad.data = torch.ones(p.shape, dtype=torch.float64 if p.dtype != torch.float64 else torch.float32)


def _break_grad_shape(p, opt, key):
    p.grad.data = torch.ones(p.numel() + 1, dtype=p.dtype)


def _break_state_shape(p, opt, key):
    opt.state[p][key] = torch.zeros(p.numel() + 2, dtype=p.dtype)


def _break_state_dtype(p, opt, key):
    opt.state[p][key] = torch.zeros(p.shape, dtype=torch.float64 if p.dtype != torch.float64 else torch.float32)


BREAKS = {
    "sparse-grad": _break_sparse,
    "grad-dtype": _break_grad_dtype,
    "grad-shape": _break_grad_shape,
    "int-param": None,  # the bad param is an integer tensor with an integer gradient
    "state-shape": _break_state_shape,
    "state-dtype": _break_state_dtype,
}


def _setup(cls_name, backend, where, int_param):
    """Two identical optimizers over copies of the same params: one meets the failing
    step, its twin never does. Returns (opt, params, bad index, twin, twin params)."""
    gen = torch.Generator().manual_seed(11)
    init = [torch.randn(n, generator=gen) for n in (5, 33, 4)]
    other_dtype = torch.randn(6, generator=gen, dtype=torch.float64)

    def build():
        good = [t.clone().requires_grad_() for t in init]
        extra = other_dtype.clone().requires_grad_()
        bad = torch.arange(4) if int_param else torch.randn(4, generator=torch.Generator().manual_seed(5))
        if not int_param:
            bad.requires_grad_()
        if where == "second-group":
            params = good + [extra, bad]
            groups = [{"params": good + [extra]}, {"params": [bad]}]
        elif where == "same-group":
            params = good[:1] + [bad] + good[1:] + [extra]
            groups = [{"params": params}]
        else:  # "other-bucket": in the float64 bucket of a group that also has float32 params
            bad = bad if int_param else bad.detach().double().requires_grad_()
            params = good + [extra, bad]
            groups = [{"params": good[:1]}, {"params": good[1:] + [extra, bad]}]
        return params, groups, next(i for i, p in enumerate(params) if p is bad)

    params, groups, bad = build()
    twin_params, twin_groups, _ = build()
    return (
        _make(cls_name, groups, backend),
        params,
        bad,
        _make(cls_name, twin_groups, backend),
        twin_params,
    )


def _grads(params, step, int_bad):
    gen = torch.Generator().manual_seed(100 + step)
    return [None if i == int_bad else torch.randn(p.shape, generator=gen, dtype=p.dtype) for i, p in enumerate(params)]


def _set(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


@pytest.mark.parametrize("warm", (False, True), ids=("first-step", "later-step"))
@pytest.mark.parametrize("where", ("second-group", "same-group", "other-bucket"))
@pytest.mark.parametrize("breakage", list(BREAKS))
@pytest.mark.parametrize("cls_name", CLASSES)
def test_a_failing_step_changes_nothing(backend, cls_name, breakage, where, warm):
    if breakage.startswith("state") and not warm:
        pytest.skip("no state before the first step")
    int_param = breakage == "int-param"
    opt, params, bad, twin, twin_params = _setup(cls_name, backend, where, int_param)
    int_bad = bad if int_param else None
    steps_before = 3 if warm else 0
    for k in range(steps_before):
        grads = _grads(params, k, int_bad)
        _set(params, grads)
        _set(twin_params, grads)
        opt.step()
        twin.step()

    grads = _grads(params, steps_before, int_bad)
    _set(params, grads)
    key = _state_key(cls_name)
    saved_state = opt.state[params[bad]].get(key) if breakage.startswith("state") else None
    checked = [p for i, p in enumerate(params) if i != bad or not int_param]
    before = _snapshot(opt, checked)
    if int_param:
        params[bad].grad = torch.zeros(4, dtype=torch.int64)
    else:
        BREAKS[breakage](params[bad], opt, key)
    with pytest.raises(RuntimeError) as info:
        opt.step()
    message = str(info.value)
    assert "param group" in message and "param" in message.replace("param group", ""), message
    if breakage == "sparse-grad":
        assert "sparse" in message
    if saved_state is not None:
        opt.state[params[bad]][key] = saved_state  # (put back before comparing)
    _assert_same(_snapshot(opt, checked), before)

    # The cause removed: the run goes on as the twin's, which never saw the failed step.
    if int_param:
        params[bad].grad = None
    else:
        params[bad].grad = grads[bad].clone()
    for k in range(steps_before, steps_before + 3):
        if k > steps_before:
            grads = _grads(params, k, int_bad)
            _set(params, grads)
        _set(twin_params, grads)
        opt.step()
        twin.step()
    twin_checked = [p for i, p in enumerate(twin_params) if i != bad or not int_param]
    _assert_same(_snapshot(opt, checked), _snapshot(twin, twin_checked))


@pytest.mark.parametrize("cls_name", CLASSES)
def test_a_step_bumps_the_version_counters_as_torch_optim_does(backend, cls_name):
    """A backward through a param that the step changed raises, as with torch.optim.SGD."""

    def backward_after_step(make_opt):
        w = torch.nn.Parameter(torch.randn(3, generator=torch.Generator().manual_seed(0)))
        w.grad = torch.ones(3)
        opt = make_opt([w])
        opt.step()  # (the state exists from here on)
        y = (w * w).sum()
        state = {k: (v, v._version) for k, v in opt.state[w].items() if torch.is_tensor(v)}
        opt.step()
        for key, (tensor, version) in state.items():
            assert tensor._version > version, f"the step wrote {key} and left its version"
        with pytest.raises(RuntimeError) as info:
            y.backward()
        return str(info.value)

    theirs = backward_after_step(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    mine = backward_after_step(lambda ps: _make(cls_name, ps, backend))
    assert "modified by an inplace operation" in theirs
    assert "modified by an inplace operation" in mine


@pytest.mark.parametrize("cls_name", CLASSES)
def test_any_non_zero_found_inf_skips_the_step(backend, cls_name):
    params = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 3))]
    opt = _make(cls_name, params, backend)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    state = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params)}
    opt.grad_scale = torch.tensor(2.0)
    opt.found_inf = torch.tensor(2.0)  # two devices overflowed
    opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    for i, p in enumerate(params):
        for k, v in state[i].items():
            assert torch.equal(opt.state[p][k], v), f"{k} changed in a skipped step"
    assert opt.iteration == 2  # the schedule advances either way


@pytest.mark.parametrize("cls_name", ("CyclicSGD", "CyclicAdamW"))
def test_capturing_a_step_with_a_python_scale_fn_raises(backend, cls_name, monkeypatch):
    params = [torch.nn.Parameter(torch.randn(4))]
    opt = _make(cls_name, params, backend, scale_fn=lambda cycle: 0.5**cycle)
    params[0].grad = torch.randn(4)
    opt.step()
    before = _snapshot(opt, params)
    monkeypatch.setattr(schedules, "_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="scale_fn is a Python function"):
        opt.step()
    _assert_same(_snapshot(opt, params), before)
    monkeypatch.setattr(schedules, "_capturing", lambda: False)
    opt.step()
    assert opt.iteration == 2


def test_the_capture_flag_is_torch_cuda_s(monkeypatch):
    """``schedules._capturing`` reads torch's flag (as the test above patches it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert schedules._capturing()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert not schedules._capturing()


def test_a_traced_step_bumps_the_version_counters(backend):
    """The same through torch.compile: the ops run through the dispatcher (which bumps
    what a mutable schema argument names) or the Python ops' own bump."""
    w = torch.nn.Parameter(torch.randn(3))
    w.grad = torch.ones(3)
    opt = _make("CyclicSGD", [w], backend)
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    step()
    y = (w * w).sum()
    step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


# ----------------------------------------- the same property, over random layouts

STEP_EXAMPLES = int(os.environ.get("CLR_EXT_STEP_EXAMPLES", "10"))


@st.composite
def _layouts(draw):
    """(sizes and dtypes per group, the breakage, its group and position, steps before)."""
    n_groups = draw(st.integers(1, 3))
    layout = [
        [(draw(st.integers(1, 9)), draw(st.sampled_from([torch.float32, torch.float64]))) for _ in range(k)]
        for k in draw(st.lists(st.integers(1, 3), min_size=n_groups, max_size=n_groups))
    ]
    breakage = draw(st.sampled_from(list(BREAKS)))
    group = draw(st.integers(0, n_groups - 1))
    position = draw(st.integers(0, len(layout[group]) - (0 if breakage == "int-param" else 1)))
    steps_before = draw(st.integers(1 if breakage.startswith("state") else 0, 3))
    return layout, breakage, group, position, steps_before


def _check_random_layout(cls_name, backend, layout, breakage, group_index, position, steps_before):
    gen = torch.Generator().manual_seed(len(layout) * 31 + position)
    groups = [[torch.randn(n, generator=gen).to(dtype).requires_grad_() for n, dtype in g] for g in layout]
    int_param = torch.arange(6)
    if breakage == "int-param":  # torch lets an integer tensor into an optimizer; its grad comes later
        groups[group_index].insert(position, int_param)
    opt = _make(cls_name, [{"params": g} for g in groups], backend)
    params = [p for g in groups for p in g if p.is_floating_point()]
    for k in range(steps_before):
        _set(params, _grads(params, k, None))
        opt.step()
    grads = _grads(params, 100, None)
    _set(params, grads)
    key = _state_key(cls_name)
    if breakage == "int-param":
        int_param.grad = torch.ones(6, dtype=torch.int64)
        bad = None
    else:
        bad = groups[group_index][position]
        if breakage.startswith("state") and key not in opt.state[bad]:
            return  # (this param has no such state tensor to break)
        saved_state = opt.state[bad].get(key)
        before = _snapshot(opt, params)
        BREAKS[breakage](bad, opt, key)
    if bad is None:
        before = _snapshot(opt, params)
    with pytest.raises(RuntimeError) as info:
        opt.step()
    message = str(info.value)
    assert "param group" in message, message
    if bad is not None and breakage.startswith("state"):
        opt.state[bad][key] = saved_state  # (put back before comparing)
    _assert_same(_snapshot(opt, params), before)

    # The cause removed: the optimizer steps as a copy that never saw the failed step.
    if bad is None:
        int_param.grad = None
    else:
        bad.grad = grads[next(i for i, p in enumerate(params) if p is bad)].clone()
    twin = copy.deepcopy(opt)
    twin_params = [p for g in twin.param_groups for p in g["params"] if p.is_floating_point()]
    for k in (100, 101, 102):
        grads = _grads(params, k, None)
        _set(params, grads)
        _set(twin_params, grads)
        opt.step()
        twin.step()
    _assert_same(_snapshot(opt, params), _snapshot(twin, twin_params))
    assert opt.iteration == steps_before + 3


def _search(cls_name, backend, examples):
    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_layouts())
    def check(drawn):
        _check_random_layout(cls_name, backend, *drawn)

    check()


@pytest.mark.parametrize("cls_name", CLASSES)
def test_a_failing_step_changes_nothing_on_random_layouts(backend, cls_name):
    _search(cls_name, backend, STEP_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("cls_name", CLASSES)
def test_a_failing_step_changes_nothing_on_random_layouts_long_search(backend, cls_name):
    _search(cls_name, backend, 20 * STEP_EXAMPLES)
