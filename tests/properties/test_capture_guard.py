"""State that a captured CUDA graph would freeze (issue 15): the device counter, momentum
buffers and their starts must exist before capture, or the step refuses, with nothing
changed. Run on the CPU by making every device look as if it were being captured (the
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


def _opt(cls, backend):
    params = [torch.nn.Parameter(torch.randn(9)), torch.nn.Parameter(torch.randn(3, 3))]
    if cls is clr_ext.CyclicSGD:
        opt = cls(params, 0.01, 0.1, step_size_up=4, momentum=0.9, dampening=0.1, backend=backend)
    else:
        opt = cls(params, 0.1, 20, momentum=0.9, dampening=0.1, backend=backend)
    opt._host_decided_types = ()  # the CUDA path: buffers and starts decided by the op
    for p in params:
        p.grad = torch.randn_like(p)
    return opt, params


@pytest.mark.parametrize("cls", [clr_ext.CyclicSGD, clr_ext.OneCycleSGD])
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


@pytest.mark.parametrize("cls", [clr_ext.CyclicSGD, clr_ext.OneCycleSGD])
def test_steps_after_an_eager_step_create_nothing_and_may_be_captured(backend, capturing, cls):
    opt, params = _opt(cls, backend)
    opt.step()
    counters = dict(opt._counters)
    buffers = [opt.state[p]["momentum_buffer"] for p in params]
    capturing["on"] = True
    for _ in range(3):
        opt.step()
    assert opt._counters == counters and all(c is counters[d] for d, c in opt._counters.items())
    assert all(opt.state[p]["momentum_buffer"] is b for p, b in zip(params, buffers))


def test_a_param_that_gets_its_first_gradient_under_capture_raises(backend, capturing):
    opt, params = _opt(clr_ext.CyclicSGD, backend)
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
