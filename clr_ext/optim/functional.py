"""The step as functions: the one pre-check of every op call, and running them.

The optimizer classes collect a step's op calls (``Work``: a bucket's backend, its tensors
and the records of ``clr_ext.optim.records``) and keep the new state once they ran; what
happens between is here, the same for every rule, schedule and backend:

- ``check``: before the first call writes anything, every call is checked (the op's own
  checks in ``_C``, or the Python twin below where ``_C`` is missing or dynamo traces the
  step), so that a failing step changes nothing. One bucket on a compiled op is checked by
  the op itself, before it writes.
- ``run``: the calls, each followed by the version-counter bump of what it wrote (the
  kernels write through raw pointers, as a PyTorch in-place op would not: autograd's
  "modified by an inplace operation" check then sees the step).

Traced vs eager is decided once, by ``StepInputs.iteration`` (None in a traced step).
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from .. import _checks
from .. import backends as _backends
from .records import StepInputs, written

_COMPLEX_DTYPES = (torch.complex64, torch.complex128)
_GRAD = operator.attrgetter("grad")


def _grads_of(params: List[torch.Tensor]) -> Tuple[List[Optional[torch.Tensor]], bool]:
    grads = list(map(_GRAD, params))
    return grads, any(map(operator.is_, grads, repeat(None)))


def _entries_of(dicts: List[Dict[str, Any]], key: str) -> Tuple[List[Any], bool]:
    values = list(map(dict.get, dicts, repeat(key)))
    return values, any(map(operator.is_, values, repeat(None)))


#: ``([p.grad for p in params], whether any is None)`` and ``([d.get(key) for d in dicts],
#: whether any is None)``: the eager step's reads of every param's gradient and state, in one
#: pass of ``_C`` (~5 ns a param; the Python passes above, for builds without it, ~60 ns).
#: Dynamo traces neither: a traced step reads them in Python.
grads_of: Callable[[List[torch.Tensor]], Tuple[List[Optional[torch.Tensor]], bool]] = getattr(
    _backends._C, "grads_of", _grads_of
)
entries_of: Callable[[List[Dict[str, Any]], str], Tuple[List[Any], bool]] = getattr(
    _backends._C, "entries_of", _entries_of
)

#: Whether torch.compile is tracing the step: the one helper that decides traced vs eager.
#: ``step()`` asks it once and passes the answer on (``compiling``, and ``StepInputs.
#: iteration`` None for the backends); the helpers that a traced step shares with other
#: callers ask it themselves. (torch's own function, so that asking costs no Python frame.)
traced = torch.compiler.is_compiling


class Work(NamedTuple):
    """One op call of a step."""

    backend: Any
    device: torch.device
    tensors: Any  # SgdTensors / AdamwTensors
    hyper: Any  # SgdHyper / AdamwHyper
    group_index: int


class StalePlan(Exception):
    """A step's plan does not fit its tensors (the cached buckets may be stale); nothing
    was written. ``group_index``: the group whose call failed."""

    def __init__(self, group_index: int) -> None:
        super().__init__(group_index)
        self.group_index = group_index


def check(work: List[Work], traced: bool, validate_all: Callable[[], None]) -> None:
    """The pre-check of every call of a step (see the module's docstring; the caller
    skips it for one call that its op checks)."""
    item = None
    try:
        if _backends._C is not None and not traced:
            for item in work:
                _backends.check(item.tensors, item.hyper)
        else:
            validate_all()
            for item in work:
                check_state(item.tensors)
    except RuntimeError as err:
        raise StalePlan(-1 if item is None else item.group_index) from err


def run(work: List[Work], inputs_of: Dict[torch.device, StepInputs]) -> None:
    for position, item in enumerate(work):
        inputs = inputs_of[item.device]
        try:
            item.backend.run(item.tensors, item.hyper, inputs)
        except RuntimeError as err:
            if position == 0:  # the op checks before it writes: nothing has changed yet
                raise StalePlan(item.group_index) from err
            raise
        if inputs.iteration is not None and not item.backend.bumps_versions:
            torch._C._increment_version(written(item.tensors, inputs))


def validate_group(params: List[torch.Tensor], group_index: int, owner: str) -> None:
    """The twin of ``_C.validate_group``: the params and grads of one group, each error
    naming its param."""
    for i, p in enumerate(params):
        g = p.grad
        where = _checks.where_param(i, group_index)
        if p.dtype not in _backends.SUPPORTED_DTYPES and p.dtype not in _COMPLEX_DTYPES:
            raise RuntimeError(_checks.param_dtype_message(owner, where, p.dtype))
        if p.layout != torch.strided:
            raise RuntimeError(_checks.param_layout_message(owner, where))
        if g.layout != torch.strided or g.is_sparse:
            raise RuntimeError(_checks.sparse_grad_message(owner, where))
        _check_like(owner, "gradient", where, g, p)


def _check_like(owner: str, what: str, where: str, t: torch.Tensor, p: torch.Tensor) -> None:
    for key, theirs, mine in (
        ("dtype", t.dtype, p.dtype),
        ("shape", tuple(t.shape), tuple(p.shape)),
        ("device", t.device, p.device),
    ):
        if theirs != mine:
            raise RuntimeError(_checks.unlike_message(owner, what, where, key, theirs, mine))


def check_state(tensors: Any) -> None:
    """The state tensors of one call against their params (the twin of the ops' own state
    checks, for builds without ``_C`` and traced steps)."""
    params = tensors[0]
    for name in tensors.like_params:
        for i, (t, p) in enumerate(zip(getattr(tensors, name), params)):
            if t.layout != torch.strided:
                raise RuntimeError(f"clr_ext: the {name} entry of param {i} is not a dense (strided) tensor")
            _check_like("clr_ext", f"{name} entry", f"param {i}", t, p)
