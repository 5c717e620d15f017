"""State that a captured CUDA graph would freeze (issue 15): the device counter, momentum
buffers and their starts (AdamW: moments and step counts) must exist before capture, or the
step refuses, with nothing changed; for every class. Run on the CPU by making every device look as if it were being captured (the
real capture is in tests/cuda/test_cuda_rules.py)."""

from __future__ import annotations

import pytest
import torch

import clr_ext
from clr_ext.optim import core


@pytest.fixture
def capturing(monkeypatch):
    """Every device looks as if a CUDA graph were being captured on it."""
    state = {"on": False}
    monkeypatch.setattr(core, "_capturing", lambda device: state["on"])
    return state


#: every class, with the arguments of a short run (SGD: momentum, so that there are buffers)
CLASSES = {
    "CyclicSGD": lambda ps, b: clr_ext.CyclicSGD(ps, 0.01, 0.1, step_size_up=4, momentum=0.9, dampening=0.1, backend=b),
    "OneCycleSGD": lambda ps, b: clr_ext.OneCycleSGD(ps, 0.1, 20, momentum=0.9, dampening=0.1, backend=b),
    "CyclicAdamW": lambda ps, b: clr_ext.CyclicAdamW(ps, 0.001, 0.01, step_size_up=4, backend=b),
    "OneCycleAdamW": lambda ps, b: clr_ext.OneCycleAdamW(ps, 0.01, 20, backend=b),
}


def _opt(cls, backend):
    params = [torch.nn.Parameter(torch.randn(9)), torch.nn.Parameter(torch.randn(3, 3))]
    opt = CLASSES[cls](params, backend)
    opt._host_decided_types = ()  # the CUDA path: buffers and starts decided by the op
    for p in params:
        p.grad = torch.randn_like(p)
    return opt, params


@pytest.mark.parametrize("cls", list(CLASSES))
def test_first_step_under_capture_raises_and_changes_nothing(backend, capturing, cls):
    opt, params = _opt(cls, backend)
    before = [p.detach().clone() for p in params]
    lr = opt.get_last_lr()
    capturing["on"] = True
    with pytest.raises(RuntimeError, match="one eager opt.step"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert opt.iteration == 0 and opt.get_last_lr() == lr and not opt._counters
    assert not any(opt.state.get(p) for p in params)
    capturing["on"] = False
    opt.step()  # the eager warm-up step
    assert opt.iteration == 1 and all(not torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("cls", list(CLASSES))
def test_steps_after_an_eager_step_create_nothing_and_may_be_captured(backend, capturing, cls):
    opt, params = _opt(cls, backend)
    opt.step()
    counters = dict(opt._counters)
    state = [dict(opt.state[p]) for p in params]  # momentum buffers; moments and step counts
    assert all(state)
    capturing["on"] = True
    for _ in range(3):
        opt.step()
    assert opt._counters == counters and all(c is counters[d] for d, c in opt._counters.items())
    for p, before in zip(params, state):
        assert opt.state[p].keys() == before.keys()
        assert all(opt.state[p][k] is v for k, v in before.items() if isinstance(v, torch.Tensor)), sorted(before)


def test_a_param_that_gets_its_first_gradient_under_capture_raises(backend, capturing):
    opt, params = _opt("CyclicSGD", backend)
    late = torch.nn.Parameter(torch.randn(4))
    opt.add_param_group({"params": [late]})
    opt.step()  # `late` has no gradient yet: no buffer
    late.grad = torch.randn(4)
    snapshot = [p.detach().clone() for p in params + [late]]
    capturing["on"] = True
    with pytest.raises(RuntimeError, match="momentum buffers"):
        opt.step()
    assert all(torch.equal(p, s) for p, s in zip(params + [late], snapshot))
    assert opt.iteration == 1
