"""The eager step's per-param reads (clr_ext.optim.functional.grads_of / entries_of): one pass
of ``_C`` where it is built, the Python passes where it is not, with the same results as
``p.grad`` and ``dict.get``, torch function subclasses and modes included."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch.overrides import TorchFunctionMode

from clr_ext import backends
from clr_ext.optim import functional

GRADS_OF = {"python": functional._grads_of}
ENTRIES_OF = {"python": functional._entries_of}
if backends._C is not None:
    GRADS_OF["_C"] = backends._C.grads_of
    ENTRIES_OF["_C"] = backends._C.entries_of


class Traced(torch.Tensor):
    """A subclass whose __torch_function__ sees every attribute read, .grad included."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", repr(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


class Recording(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


def _params():
    params = [
        torch.nn.Parameter(torch.randn(3)),
        torch.randn(2, requires_grad=True),
        torch.nn.Parameter(torch.randn(1)),
    ]
    params[0].grad = torch.ones(3)
    params[1].grad = torch.full((2,), 2.0)
    return params  # params[2] has no gradient


@pytest.mark.parametrize("impl", sorted(GRADS_OF))
def test_grads_of_reads_each_grad_as_python_does(impl):
    grads_of = GRADS_OF[impl]
    params = _params()
    grads, missing = grads_of(params)
    assert missing and grads[2] is None
    assert all(g is p.grad for g, p in zip(grads, params))
    params[2].grad = torch.zeros(1)
    grads, missing = grads_of(params)
    assert not missing and grads[2] is params[2].grad
    assert grads_of([]) == ([], False)


@pytest.mark.parametrize("impl", sorted(GRADS_OF))
def test_grads_of_goes_through_torch_function(impl):
    """A subclass's __torch_function__ and an active mode see the read, as with ``p.grad``."""
    grads_of = GRADS_OF[impl]
    sub = torch.randn(2).as_subclass(Traced).requires_grad_()
    sub.grad = torch.ones(2).as_subclass(Traced)
    Traced.seen.clear()
    grads, missing = grads_of([sub])
    assert Traced.seen == ["__get__"], Traced.seen
    assert not missing and torch.equal(grads[0], torch.ones(2))
    params = _params()
    with Recording() as mode:
        grads, _ = grads_of(params)
    assert mode.seen == ["__get__"] * 3, mode.seen
    assert all(g is p.grad for g, p in zip(grads, params))


@pytest.mark.parametrize("impl", sorted(ENTRIES_OF))
def test_entries_of_is_dict_get(impl):
    entries_of = ENTRIES_OF[impl]
    buffers = [torch.zeros(1), torch.ones(2)]
    states = [{"momentum_buffer": buffers[0]}, defaultdict(dict, momentum_buffer=buffers[1])]
    values, missing = entries_of(states, "momentum_buffer")
    assert not missing and values[0] is buffers[0] and values[1] is buffers[1]
    lacking = states + [defaultdict(dict)]
    values, missing = entries_of(lacking, "momentum_buffer")
    assert missing and values[2] is None
    assert "momentum_buffer" not in lacking[2]  # (read as dict.get: no default made)
    values, missing = entries_of([{"momentum_buffer": None}], "momentum_buffer")
    assert missing and values == [None]
