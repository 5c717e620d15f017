"""PyTorch's generic optimizer tests, run on clr_ext's four scheduled optimizers.

PyTorch checks every optimizer in ``optim_db`` with the same generic tests (test/test_optim.py,
``TestOptimRenewed``: state dicts, hooks, param groups, complex params, errors, implementation
parity, ...). That file is not in the wheel; what is, is ``torch.testing._internal.common_optimizers``:
``OptimizerInfo``, ``OptimizerInput``, ``optim_db`` with each optimizer's input and error-input
functions, and ``_get_optim_inputs_including_global_cliquey_kwargs``. This file describes
``CyclicSGD``, ``OneCycleSGD``, ``CyclicAdamW`` and ``OneCycleAdamW`` with those same
``OptimizerInfo`` objects (``CLR_OPTIM_DB``) and checks the generic properties on them, written
here for this project (the test names follow PyTorch's, so a reader can find the original).

Where our classes legitimately differ from what the generic tests assume, the test says so and
checks the property that does make sense:
- The constructor takes the schedule (``base_lr``/``max_lr``/``step_size_up``, or ``max_lr``/
  ``total_steps``) instead of ``lr``; ``group["lr"]`` is the schedule's output, recomputed by
  every step and by ``load_state_dict`` (api.md), so an ``lr`` written into a group or a loaded
  state dict does not stick: the tests pin the schedule's bounds instead.
- An outside LR scheduler is overruled, with a warning (api.md, "Outside writes to group["lr"]"):
  the with-scheduler runs must equal the runs without.
- The implementation flags (``foreach``/``fused``/``differentiable``) do not exist; the
  implementation parity test compares our backends (cpp, cython, torch) instead.

Not run here, and why:
- tensor LR (``lr=torch.tensor(...)``): the LR is the schedule's, a host float per step.
- sparse gradients (``test_rosenbrock_sparse``): not supported (a clear error, api.md).
- CUDA / multi-GPU / fused-kernel / peak-memory / large-tensor tests: no GPU here
  (tests/cuda/ covers the CUDA backend), and there is no fused/foreach flag.
- second-order optimizers (closure-requiring): none of ours is one.
- from optim_db's own SGD / AdamW inputs (test_matches_torch_optim_with_constant_lr): the
  "tensor lr" input, and the foreach / fused / differentiable variants the helper adds (their
  flags-off twin is compared); capturable and decoupled_weight_decay would be left out too.
- from torch's error inputs: those about tensor LRs / betas and the implementation flags.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import pickle
import warnings
from typing import Any, Dict, List

import pytest
import torch
from conftest import RTOL
from torch.nn import Parameter
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import clr_ext

_flags_were_frozen = torch.backends.flags_frozen()
try:
    from torch.testing._internal import common_optimizers as co

    OptimizerInfo = co.OptimizerInfo
    OptimizerInput = co.OptimizerInput
    ErrorOptimizerInput = co.ErrorOptimizerInput
    OptimizerErrorEnum = co.OptimizerErrorEnum
    optim_db = co.optim_db
    all_optim_inputs = co._get_optim_inputs_including_global_cliquey_kwargs
except Exception as err:  # not in this torch, or a test-only dependency (expecttest) missing
    pytest.skip(f"torch.testing._internal.common_optimizers unusable: {err!r}", allow_module_level=True)
finally:
    # common_utils freezes torch.backends flags for PyTorch's own suite when imported; the rest
    # of this session's tests never asked for that.
    if not _flags_were_frozen and torch.backends.flags_frozen():
        setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)


DEVICE = "cpu"
CPU_BACKENDS = [b for b in clr_ext.available_backends() if b != "cuda"]

# ----------------------------------------------------------------------------- OptimizerInfos

_TORCH_INFO = {info.name: info for info in optim_db}
_SGD_INFO = _TORCH_INFO["SGD"]
_ADAMW_INFO = _TORCH_INFO["AdamW"]

_SGD_RULE_KEYS = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")
_ADAMW_RULE_KEYS = ("betas", "eps", "weight_decay", "amsgrad", "maximize")

# Schedules short enough that 20 steps see the LR (and momentum) rise and fall, with LRs small
# enough for the quadratic losses below to descend under every update rule.
_CYCLIC = dict(base_lr=1e-3, max_lr=1e-2, step_size_up=4)
_ONE_CYCLE = dict(max_lr=1e-2, total_steps=100, pct_start=0.1)

_SGD_RULES = [
    ("default (cycled momentum)", {}),
    ("plain", dict(cycle_momentum=False)),
    ("momentum", dict(momentum=0.9, cycle_momentum=False)),
    ("dampening", dict(momentum=0.9, dampening=0.5, cycle_momentum=False)),
    ("maximize, weight_decay", dict(momentum=0.9, weight_decay=0.1, maximize=True, cycle_momentum=False)),
    # (nesterov needs a momentum argument > 0 even when it is cycled, as SGD + CyclicLR does)
    ("nesterov, weight_decay (cycled momentum)", dict(momentum=0.9, nesterov=True, weight_decay=0.1)),
]
_ADAMW_RULES = [
    ("default (cycled beta1)", {}),
    ("constant betas, eps", dict(betas=(0.8, 0.99), eps=1e-6, cycle_momentum=False)),
    ("no weight_decay", dict(weight_decay=0.0)),
    ("amsgrad, weight_decay", dict(amsgrad=True, weight_decay=0.1)),
    ("maximize", dict(maximize=True, cycle_momentum=False)),
]
_CYCLIC_SHAPES = [("triangular2", dict(mode="triangular2")), ("exp_range", dict(mode="exp_range", gamma=0.97))]
_ONE_CYCLE_SHAPES = [("linear", dict(anneal_strategy="linear")), ("three_phase", dict(three_phase=True))]


def _inputs_func(schedule: Dict[str, Any], rules, shapes):
    """An ``optim_inputs_func``: fresh ``OptimizerInput``s (the tests edit their kwargs) whose
    kwargs are complete constructor keywords, the schedule included (ours has no default LR)."""

    def optim_inputs_func(device, dtype=None):
        out = [OptimizerInput(params=None, kwargs={**schedule, **kw}, desc=desc) for desc, kw in rules]
        out += [OptimizerInput(params=None, kwargs={**schedule, **kw}, desc=desc) for desc, kw in shapes]
        return out

    return optim_inputs_func


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(_holds_tensor(v) for v in value)


#: torch's error inputs that our constructors have no counterpart for (what the run leaves out).
_IMPL_FLAGS = ("foreach", "fused", "differentiable", "capturable", "decoupled_weight_decay")
SKIPPED_ERROR_INPUTS: List[str] = []


def _error_inputs_func(torch_info, schedule: Dict[str, Any]):
    """torch's error inputs for the matching optimizer, as our constructor takes them.

    The generic ones (param types, duplicates, names) keep torch's own message. ``lr`` goes:
    the LR is scheduled (the schedule's own bounds are checked by tests/rules/test_optimizer.py).
    Inputs about tensor LRs/betas or the implementation flags have no counterpart and are left
    out. A rule-specific one keeps its error type; the message names the argument (api.md)
    where torch's says "Invalid ... value"."""

    def optim_error_inputs_func(device, dtype):
        out = []
        for error in torch_info.optim_error_inputs_func(device=device, dtype=dtype):
            given = error.optimizer_error_input
            kwargs = dict(given.kwargs)
            if any(_holds_tensor(v) for v in kwargs.values()) or any(k in kwargs for k in _IMPL_FLAGS):
                SKIPPED_ERROR_INPUTS.append(given.desc)
                continue
            kwargs.pop("lr", None)
            regex = error.error_regex if not kwargs else "|".join(sorted(kwargs))
            params = given.params if given.params is not None else [Parameter(torch.randn(2, device=device))]
            out.append(
                ErrorOptimizerInput(
                    OptimizerInput(params=params, kwargs={**schedule, **kwargs}, desc=given.desc),
                    error_on=error.error_on,
                    error_type=error.error_type,
                    error_regex=regex,
                )
            )
        out.append(
            ErrorOptimizerInput(
                OptimizerInput(params=[], kwargs=dict(schedule), desc="empty parameter list"),
                error_type=ValueError,
                error_regex="optimizer got an empty parameter list",
            )
        )
        return out

    return optim_error_inputs_func


def _clr_info(cls, schedule, rules, shapes, torch_info):
    return OptimizerInfo(
        cls,
        optim_inputs_func=_inputs_func(schedule, rules, shapes),
        optim_error_inputs_func=_error_inputs_func(torch_info, schedule),
        # (an outside scheduler is overruled: test_outside_lr_scheduler_is_overruled)
        scheduler_inputs=torch_info.scheduler_inputs,
        # no foreach / fused / differentiable flags: the backends take their place
        supported_impls=(),
        not_og_supported_flags=torch_info.not_og_supported_flags,
        supports_complex=True,
        supports_param_groups=True,
    )


CLR_OPTIM_DB = [
    _clr_info(clr_ext.CyclicSGD, _CYCLIC, _SGD_RULES, _CYCLIC_SHAPES, _SGD_INFO),
    _clr_info(clr_ext.OneCycleSGD, _ONE_CYCLE, _SGD_RULES, _ONE_CYCLE_SHAPES, _SGD_INFO),
    _clr_info(clr_ext.CyclicAdamW, _CYCLIC, _ADAMW_RULES, _CYCLIC_SHAPES, _ADAMW_INFO),
    _clr_info(clr_ext.OneCycleAdamW, _ONE_CYCLE, _ADAMW_RULES, _ONE_CYCLE_SHAPES, _ADAMW_INFO),
]

optims = pytest.mark.parametrize("optim_info", CLR_OPTIM_DB, ids=lambda info: info.name)


def _is_sgd(optim_info) -> bool:
    return optim_info.name.endswith("SGD")


def _is_cyclic(optim_info) -> bool:
    return "base_lr" in inspect.signature(optim_info.optim_cls).parameters


def _inputs(optim_info, dtype=torch.float32):
    return all_optim_inputs(DEVICE, dtype, optim_info)


def _hook_test_optimizers(optim_info):
    """One optimizer per input on one fresh 2x3 tensor: what torch's hook tests step."""
    for optim_input in _inputs(optim_info):
        yield optim_info.optim_cls([torch.rand(2, 3, requires_grad=True)], **optim_input.kwargs)


# --------------------------------------------------------------------------------- helpers


def _weight_bias(dtype=torch.float32, contiguous=True):
    """torch's generic problem: loss = sum((weight @ input + bias)^2), weight 10x5."""
    if contiguous:
        weight = Parameter(torch.randn((10, 5), dtype=dtype))
        bias = Parameter(torch.randn(10, dtype=dtype))
    else:
        weight = Parameter(torch.randn((10, 5, 2), dtype=dtype)[..., 0])
        bias = Parameter(torch.randn((10, 2), dtype=dtype)[..., 0])
    return weight, bias, torch.randn(5, dtype=dtype)


def _fwd_bwd(optimizer, weight, bias, inpt):
    optimizer.zero_grad()
    loss = (weight.mv(inpt) + bias).pow(2).sum()
    loss.backward()
    return loss


def _clones(tensors):
    return [Parameter(t.detach().clone()) for t in tensors]


def _assert_identical(actual: Any, expected: Any, where: str = "value") -> None:
    """Bit-for-bit equality of nested state dicts, tensors and numbers (types included)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert (actual.dtype, actual.shape, actual.device) == (expected.dtype, expected.shape, expected.device), where
        assert torch.equal(actual, expected), f"{where}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (where, actual, expected)
        for key in expected:
            _assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), (where, actual, expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_identical(a, e, f"{where}[{i}]")
    else:
        assert type(actual) is type(expected) and actual == expected, (where, actual, expected)


def _state_of(optimizer, params):
    return [dict(optimizer.state[p]) if p in optimizer.state else {} for p in params]


def _pin_lr(state_dict, lr):
    """What writing ``lr`` into a saved group means for a scheduled optimizer: every LR bound
    of its schedule set to ``lr``, so that the recomputed ``group["lr"]`` is ``lr``."""
    for group in state_dict["param_groups"]:
        for key in ("base_lr", "max_lr", "initial_lr", "min_lr"):
            if key in group:
                group[key] = lr


def _constant_lr_kwargs(optim_info, lr):
    """Our schedule held at ``lr`` (and the momentum / beta1 not cycled)."""
    if _is_cyclic(optim_info):
        return dict(base_lr=lr, max_lr=lr, cycle_momentum=False)
    return dict(max_lr=lr, total_steps=1000, div_factor=1.0, final_div_factor=1.0, cycle_momentum=False)


def _torch_pair(optim_info, kwargs, params):
    """The PyTorch pair that api.md defines each class to be: torch.optim.SGD / AdamW +
    CyclicLR / OneCycleLR, with the same arguments."""
    kwargs = dict(kwargs)
    kwargs.pop("backend", None)
    sgd = _is_sgd(optim_info)
    rule = {k: kwargs.pop(k) for k in (_SGD_RULE_KEYS if sgd else _ADAMW_RULE_KEYS) if k in kwargs}
    torch_cls = torch.optim.SGD if sgd else torch.optim.AdamW
    if _is_cyclic(optim_info):
        optimizer = torch_cls(params, lr=kwargs["base_lr"], foreach=False, **rule)
        return optimizer, CyclicLR(optimizer, **kwargs)
    optimizer = torch_cls(params, lr=kwargs["max_lr"], foreach=False, **rule)
    return optimizer, OneCycleLR(optimizer, **kwargs)


# ------------------------------------------------------------------------ the OptimizerInfos


@optims
def test_optim_infos_do_not_specify_global_cliquey_kwargs(optim_info):
    # torch's rule for optim_inputs_func, plus ours: no `lr` (the schedule gives it).
    for optim_input in optim_info.optim_inputs_func(device=DEVICE):
        assert not any(flag in optim_input.kwargs for flag in ("foreach", "fused", "differentiable", "lr"))
    assert _inputs(optim_info)  # every input, none added (supported_impls is empty)


@optims
def test_errors(optim_info):
    error_inputs = optim_info.optim_error_inputs_func(device=DEVICE, dtype=torch.float32)
    assert len(error_inputs) >= 7
    for error_input in error_inputs:
        optim_input = error_input.optimizer_error_input
        params, kwargs = optim_input.params, optim_input.kwargs
        if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            action = functools.partial(optim_info.optim_cls, params, **kwargs)
        else:
            action = optim_info.optim_cls(params, **kwargs).step
        if issubclass(error_input.error_type, Warning):
            with pytest.warns(error_input.error_type, match=error_input.error_regex):
                action()
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                action()
    # What torch's list holds that ours cannot take: tensor LRs / betas, implementation flags.
    assert SKIPPED_ERROR_INPUTS and all("Tensor" in desc for desc in SKIPPED_ERROR_INPUTS)


@optims
def test_optimizer_can_be_printed(optim_info):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for optim_input in _inputs(optim_info):
        text = repr(optim_info.optim_cls(params, **optim_input.kwargs))
        assert text.startswith(optim_info.name) and "Parameter Group 0" in text


# ------------------------------------------------------------------------ right direction


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "noncontiguous"])
@optims
def test_forloop_goes_right_direction(optim_info, contiguous, backend):
    for optim_input in _inputs(optim_info):
        weight, bias, inpt = _weight_bias(contiguous=contiguous)
        optimizer = optim_info.optim_cls([weight, bias], backend=backend, **optim_input.kwargs)
        closure = functools.partial(_fwd_bwd, optimizer, weight, bias, inpt)
        initial_value = closure().item()
        for _ in range(20):
            optimizer.step(closure)
        if optim_input.kwargs.get("maximize", False):
            assert closure().item() > initial_value, optim_input.desc
        else:
            assert closure().item() < initial_value, optim_input.desc


@optims
def test_outside_lr_scheduler_is_overruled(optim_info):
    # torch's with_lrsched variant composes the optimizer with torch's LR schedulers (its
    # OptimizerInfo's scheduler_inputs). Ours follows its own schedule and overrules them with
    # a warning (api.md): the run must be the run without them, bit for bit.
    def run(schedulers_constructor, optim_input):
        torch.manual_seed(7)
        weight, bias, inpt = _weight_bias()
        optimizer = optim_info.optim_cls([weight, bias], **optim_input.kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            schedulers = [s(optimizer) for s in schedulers_constructor]
            for _ in range(20):
                loss = optimizer.step(functools.partial(_fwd_bwd, optimizer, weight, bias, inpt))
                for scheduler in schedulers:
                    scheduler.step(loss.detach()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        return [weight, bias], [w for w in caught if issubclass(w.category, UserWarning)]

    for optim_input in optim_info.optim_inputs_func(device=DEVICE):
        expected, _ = run([], optim_input)
        overruled = 0
        for schedulers_constructor in optim_info.scheduler_inputs:
            actual, caught = run(schedulers_constructor, optim_input)
            _assert_identical(actual, expected, optim_input.desc)
            for w in caught:
                assert "from outside" in str(w.message), str(w.message)
            overruled += len(caught)
        assert overruled > 0  # never silently (issue 16)


@optims
def test_param_groups_weight_decay(optim_info):
    for optim_input in _inputs(optim_info):
        weight, bias, inpt = _weight_bias()
        optimizer = optim_info.optim_cls(
            [dict(params=[weight]), dict(params=[bias], weight_decay=0.0)], **optim_input.kwargs
        )
        assert optimizer.param_groups[1]["weight_decay"] == 0.0
        initial_value = _fwd_bwd(optimizer, weight, bias, inpt).item()
        for _ in range(20):
            loss = _fwd_bwd(optimizer, weight, bias, inpt)
            optimizer.step()
        if optim_input.kwargs.get("maximize", False):
            assert loss.item() > initial_value
        else:
            assert loss.item() < initial_value


@optims
def test_param_groups_lr(optim_info):
    # torch: a group's `lr` beats the constructor's near-zero one. Ours: a group's schedule
    # bounds beat the constructor's, which are exactly 0 here, so the other group must not move.
    for optim_input in _inputs(optim_info):
        kwargs = dict(optim_input.kwargs)
        bound_keys = [k for k in ("base_lr", "max_lr") if k in kwargs]
        group_bounds = {k: kwargs.pop(k) for k in bound_keys}
        outer = dict.fromkeys(bound_keys, 0.0)
        weight, bias, inpt = _weight_bias()
        irrelevant = Parameter(torch.randn(2))
        irrelevant_clone = irrelevant.detach().clone()
        optimizer = optim_info.optim_cls(
            [dict(params=[weight, bias], **group_bounds), dict(params=[irrelevant])], **outer, **kwargs
        )
        initial_value = _fwd_bwd(optimizer, weight, bias, inpt).item()
        for _ in range(20):
            loss = _fwd_bwd(optimizer, weight, bias, inpt)
            irrelevant.grad = torch.rand_like(irrelevant)
            optimizer.step()
        if kwargs.get("maximize", False):
            assert loss.item() > initial_value
        else:
            assert loss.item() < initial_value
        assert torch.equal(irrelevant, irrelevant_clone), optim_input.desc
        assert optimizer.param_groups[1]["lr"] == 0.0


# --------------------------------------------------------------------- grads None / zero


@optims
def test_step_is_noop_when_params_have_no_grad(optim_info):
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old_params = [p.detach().clone() for p in params]
    loss = torch.tensor([1.0])
    for optim_input in _inputs(optim_info):
        optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
        assert optimizer.step(lambda: loss) is loss
        _assert_identical(params, old_params)
        assert len(optimizer.state) == 0
        assert optimizer.iteration == 1  # the schedule advances all the same (api.md)


@optims
def test_requires_grad_but_grad_none_is_skipped(optim_info, backend):
    # The forloop/foreach parity tests of torch leave some grads None mid-run (a frozen layer):
    # such a param and its state are untouched, and its state starts when its grad comes.
    for optim_input in _inputs(optim_info):
        moving, frozen = Parameter(torch.randn(4)), Parameter(torch.randn(3))
        frozen_before = frozen.detach().clone()
        optimizer = optim_info.optim_cls([moving, frozen], backend=backend, **optim_input.kwargs)
        for _ in range(3):
            moving.grad = torch.randn(4)
            optimizer.step()
        assert frozen.grad is None and frozen not in optimizer.state
        _assert_identical(frozen.detach(), frozen_before)
        frozen.grad = torch.randn(3)
        state_before = copy.deepcopy(_state_of(optimizer, [moving]))
        moving.grad = None
        optimizer.step()
        _assert_identical(_state_of(optimizer, [moving]), state_before)
        assert not torch.equal(frozen, frozen_before)


@optims
def test_step_is_noop_for_zero_grads(optim_info):
    # torch skips inputs with weight decay, and for AdamW (whose default decays) shrinks the LR
    # and compares with a tolerance. Ours: no decay at all, so the params must not move a bit.
    param = Parameter(torch.randn((5, 1)))
    old_param = param.detach().clone()
    for optim_input in _inputs(optim_info):
        optimizer = optim_info.optim_cls([param], **dict(optim_input.kwargs, weight_decay=0.0))
        for _ in range(3):
            param.grad = torch.zeros_like(param)
            optimizer.step(lambda: torch.tensor([1.0]))
        _assert_identical(param.detach(), old_param, optim_input.desc)


@optims
def test_zero_grad(optim_info):
    weight, bias, inpt = _weight_bias()
    optimizer = optim_info.optim_cls([weight, bias], **_inputs(optim_info)[0].kwargs)
    _fwd_bwd(optimizer, weight, bias, inpt)
    optimizer.zero_grad()  # set_to_none=True is the default, as in torch
    assert weight.grad is None and bias.grad is None
    _fwd_bwd(optimizer, weight, bias, inpt)
    grads = [weight.grad, bias.grad]
    optimizer.zero_grad(set_to_none=False)
    assert weight.grad is grads[0] and bias.grad is grads[1]  # zeroed in place
    assert not weight.grad.any() and not bias.grad.any()


@optims
def test_step_with_closure_returns_its_loss(optim_info):
    # torch.optim's contract: the closure runs once, with grad enabled, and step returns its result.
    weight, bias, inpt = _weight_bias()
    for optim_input in _inputs(optim_info):
        optimizer = optim_info.optim_cls([weight, bias], **optim_input.kwargs)
        calls = []

        def closure():
            calls.append(torch.is_grad_enabled())
            return _fwd_bwd(optimizer, weight, bias, inpt)

        with torch.no_grad():
            loss = optimizer.step(closure)
        assert calls == [True]
        assert isinstance(loss, torch.Tensor) and loss.requires_grad
        assert optimizer.step() is None


@optims
def test_non_empty_state(optim_info):
    model = torch.nn.Linear(5, 5)
    inpt = torch.rand(2, 5)
    for optim_input in optim_info.optim_inputs_func(device=DEVICE):
        optimizer = optim_info.optim_cls(model.parameters(), **optim_input.kwargs)
        optimizer.zero_grad()
        model(inpt).sum().backward()
        optimizer.step()
        for state in optimizer.state.values():
            assert len(state) > 0, optim_input.desc


# ---------------------------------------------------------------------------- param groups


@optims
def test_add_param_group(optim_info, backend):
    # A group added after k steps behaves as if it had been there with no grads for k steps:
    # its state starts at its first step, its schedule is the optimizer's (api.md).
    k = 4
    for optim_input in _inputs(optim_info):
        torch.manual_seed(3)
        first, second = torch.randn(6), torch.randn(3)
        grads = [(torch.randn(6), torch.randn(3)) for _ in range(10)]
        a1, a2 = Parameter(first.clone()), Parameter(second.clone())
        b1, b2 = Parameter(first.clone()), Parameter(second.clone())
        extra = {"weight_decay": 0.0}
        together = optim_info.optim_cls(
            [{"params": [a1]}, {"params": [a2], **extra}], backend=backend, **optim_input.kwargs
        )
        added = optim_info.optim_cls([b1], backend=backend, **optim_input.kwargs)
        for i, (g1, g2) in enumerate(grads):
            if i == k:
                added.add_param_group({"params": [b2], **extra})
                assert added.param_groups[1]["lr"] == together.param_groups[1]["lr"]
            a1.grad, b1.grad = g1.clone(), g1.clone()
            a2.grad = g2.clone() if i >= k else None
            b2.grad = g2.clone()
            together.step()
            added.step()
        _assert_identical([b1, b2], [a1, a2], optim_input.desc)
        _assert_identical(_state_of(added, [b1, b2]), _state_of(together, [a1, a2]), optim_input.desc)
        with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
            added.add_param_group({"params": [b1]})


# ------------------------------------------------------------------------------- state dicts


@optims
def test_state_dict_deterministic(optim_info, backend):
    for optim_input in _inputs(optim_info):
        torch.manual_seed(5)
        weight, bias, inpt = _weight_bias()
        optimizer = optim_info.optim_cls([weight, bias], backend=backend, **optim_input.kwargs)
        closure = functools.partial(_fwd_bwd, optimizer, weight, bias, inpt)
        for _ in range(10):
            optimizer.step(closure)

        weight_c, bias_c = _clones([weight, bias])
        optimizer_c = optim_info.optim_cls([weight_c, bias_c], backend=backend, **optim_input.kwargs)
        closure_c = functools.partial(_fwd_bwd, optimizer_c, weight_c, bias_c, inpt)
        saved = copy.deepcopy(optimizer.state_dict())
        given = copy.deepcopy(saved)
        optimizer_c.load_state_dict(given)
        # loading leaves the given dict as it was, and the loaded optimizer saves what was saved
        _assert_identical(given, saved, "given state dict")
        _assert_identical(optimizer_c.state_dict(), saved, "loaded optimizer's state dict")
        assert optimizer_c.get_last_lr() == optimizer.get_last_lr()

        for _ in range(10):
            optimizer.step(closure)
            optimizer_c.step(closure_c)
            _assert_identical([weight_c, bias_c], [weight, bias], optim_input.desc)
        _assert_identical(optimizer_c.state_dict(), optimizer.state_dict(), optim_input.desc)

        # repeated param groups are saved alike (pytorch#36831)
        optimizer_c.param_groups.extend(optimizer_c.param_groups)
        _assert_identical(optimizer_c.state_dict()["param_groups"][-1], optimizer.state_dict()["param_groups"][-1])


@optims
def test_load_state_dict_aliasing_as_torch(optim_info):
    # torch.optim's load_state_dict keeps the given tensors where their device and dtype already
    # fit (deepcopying the dict is the caller's job, as torch's own tests do): ours must share
    # exactly what the matching torch optimizer shares, and copy the rest (groups, schedule).
    def aliasing(make):
        param = Parameter(torch.randn(4))
        optimizer = make([param])
        for _ in range(2):
            param.grad = torch.randn(4)
            optimizer.step()
        saved = copy.deepcopy(optimizer.state_dict())
        fresh = Parameter(param.detach().clone())
        loaded = make([fresh])
        loaded.load_state_dict(saved)
        shared = {key: loaded.state[fresh][key] is value for key, value in saved["state"][0].items()}
        saved["param_groups"][0]["weight_decay"] = 123.0
        assert loaded.param_groups[0]["weight_decay"] != 123.0
        if "schedule" in saved:
            saved["schedule"]["mode" if "mode" in saved["schedule"] else "anneal_strategy"] = "changed"
            assert loaded.state_dict()["schedule"] != saved["schedule"]
        return shared

    kwargs = dict(_inputs(optim_info)[0].kwargs)
    rule = dict(momentum=0.9) if _is_sgd(optim_info) else {}
    torch_cls = torch.optim.SGD if _is_sgd(optim_info) else torch.optim.AdamW
    ours = aliasing(lambda params: optim_info.optim_cls(params, **kwargs, **rule))
    theirs = aliasing(lambda params: torch_cls(params, lr=1e-3, **rule))
    assert ours == theirs


@optims
def test_can_load_older_state_dict(optim_info):
    # torch: a state dict without the flags added after an optimizer's release loads. Ours
    # keeps the constructor's values for the keys missing, so the run goes on unchanged.
    for optim_input in _inputs(optim_info):
        torch.manual_seed(1)
        weight, bias, inpt = _weight_bias()
        optimizer = optim_info.optim_cls([weight, bias], **optim_input.kwargs)
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, weight, bias, inpt))
        old_state_dict = copy.deepcopy(optimizer.state_dict())
        for group in old_state_dict["param_groups"]:
            for flag in optim_info.not_og_supported_flags:
                group.pop(flag, None)
        weight_c, bias_c = _clones([weight, bias])
        optimizer_c = optim_info.optim_cls([weight_c, bias_c], **optim_input.kwargs)
        optimizer_c.load_state_dict(old_state_dict)
        optimizer.step(functools.partial(_fwd_bwd, optimizer, weight, bias, inpt))
        optimizer_c.step(functools.partial(_fwd_bwd, optimizer_c, weight_c, bias_c, inpt))
        _assert_identical([weight_c, bias_c], [weight, bias], optim_input.desc)


@pytest.mark.parametrize("is_named_optim1", [True, False], ids=["named1", "unnamed1"])
@pytest.mark.parametrize("is_named_optim0", [True, False], ids=["named0", "unnamed0"])
@optims
def test_can_load_from_to_named_state_dict(optim_info, is_named_optim0, is_named_optim1):
    for optim_input in _inputs(optim_info):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        inpt = torch.rand(5, 4)

        def fwd_bwd(optimizer):
            optimizer.zero_grad()
            model(inpt).pow(2).sum().backward()

        params = model.named_parameters() if is_named_optim0 else model.parameters()
        optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
        for _ in range(3):
            fwd_bwd(optimizer)
            optimizer.step()
        old_state_dict = copy.deepcopy(optimizer.state_dict())
        params = model.named_parameters() if is_named_optim1 else model.parameters()
        optimizer2 = optim_info.optim_cls(params, **optim_input.kwargs)
        optimizer2.load_state_dict(old_state_dict)
        fwd_bwd(optimizer2)
        optimizer2.step()
        assert optimizer2.iteration == 4
        if is_named_optim0 or is_named_optim1:
            names = ["0.weight", "0.bias", "1.weight", "1.bias"]
            assert optimizer2.state_dict()["param_groups"][0]["param_names"] == names


@pytest.mark.parametrize("is_named_optim", [True, False], ids=["named", "unnamed"])
@optims
def test_save_load_equality_with_weights_only(optim_info, is_named_optim):
    # A checkpoint must load under torch.load's default weights_only=True: the state dict holds
    # tensors, numbers, strings, tuples and dicts only (api.md: no lambdas inside).
    weight, bias, inpt = _weight_bias()
    for optim_input in _inputs(optim_info):
        params = [("name0", weight), ("name1", bias)] if is_named_optim else [weight, bias]
        optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
        for _ in range(3):
            optimizer.step(functools.partial(_fwd_bwd, optimizer, weight, bias, inpt))
        state_dict = optimizer.state_dict()
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        _assert_identical(torch.load(buffer, weights_only=False), state_dict)
        buffer.seek(0)
        _assert_identical(torch.load(buffer, weights_only=True), state_dict)
        _assert_identical(pickle.loads(pickle.dumps(state_dict)), state_dict)


# This found a defect (fixed): AdamW's `_loaded` made a tensor of a number `step` but kept the
# number for float32 CPU params (a TypeError on cpp, a stale bias correction on torch).
@optims
def test_load_nontensor_step(optim_info):
    # AdamW's per-param `step` saved as a Python number (older checkpoints) loads; the run then
    # goes on exactly as from the tensor step. (SGD's state has no step: a plain round trip.)
    for optim_input in _inputs(optim_info):
        params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
        grads = [torch.rand(2, 3) for _ in params]
        optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        state_dict = copy.deepcopy(optimizer.state_dict())
        for p_state in state_dict["state"].values():
            if "step" in p_state and torch.is_tensor(p_state["step"]):
                p_state["step"] = p_state["step"].item()
        clones = _clones(params)
        loaded = optim_info.optim_cls(clones, **optim_input.kwargs)
        loaded.load_state_dict(state_dict)
        for _ in range(3):
            for p, c, g in zip(params, clones, grads):
                p.grad, c.grad = g.clone(), g.clone()
            optimizer.step()
            loaded.step()
            _assert_identical(clones, params, optim_input.desc)
            _assert_identical(_state_of(loaded, clones), _state_of(optimizer, params), optim_input.desc)


@optims
def test_torch_optimizer_state_dict_loads(optim_info):
    # api.md: the matching torch optimizer's state dict loads (same per-param state); with the
    # schedule held constant, the run then continues exactly as torch's would. Driven by
    # optim_db's inputs for that optimizer (see test_matches_torch_optim_with_constant_lr).
    torch_info = _SGD_INFO if _is_sgd(optim_info) else _ADAMW_INFO
    for torch_kwargs, ours_kwargs in _torch_and_ours_kwargs(torch_info, optim_info):
        torch.manual_seed(2)
        weight, bias, inpt = _weight_bias()
        theirs = torch_info.optim_cls([weight, bias], **torch_kwargs)
        for _ in range(3):
            theirs.step(functools.partial(_fwd_bwd, theirs, weight, bias, inpt))
        weight_c, bias_c = _clones([weight, bias])
        ours = optim_info.optim_cls([weight_c, bias_c], **ours_kwargs)
        ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
        for _ in range(3):
            theirs.step(functools.partial(_fwd_bwd, theirs, weight, bias, inpt))
            ours.step(functools.partial(_fwd_bwd, ours, weight_c, bias_c, inpt))
        _assert_identical([weight_c, bias_c], [weight, bias], str(torch_kwargs))


@optims
def test_state_dict_loads_into_other_dtype(optim_info, backend):
    # torch's state dict tests also load into params cast to another type (and device: CUDA,
    # not here): the state is cast to the params' dtype as torch.optim casts it, AdamW's `step`
    # stays float32, and the run goes on within the float32 tolerance of the float64 one.
    for optim_input in _inputs(optim_info):
        torch.manual_seed(11)
        double = Parameter(torch.randn(5, 3, dtype=torch.float64))
        optimizer = optim_info.optim_cls([double], backend=backend, **optim_input.kwargs)
        for _ in range(3):
            double.grad = torch.randn(5, 3, dtype=torch.float64)
            optimizer.step()
        single = Parameter(double.detach().float())
        loaded = optim_info.optim_cls([single], backend=backend, **optim_input.kwargs)
        loaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for key, value in loaded.state[single].items():
            assert value.dtype == (torch.float32 if key == "step" else single.dtype), key
        for _ in range(3):
            double.grad = torch.randn(5, 3, dtype=torch.float64)
            single.grad = double.grad.float()
            optimizer.step()
            loaded.step()
        err = float((single.detach().double() - double.detach()).abs().max() / double.detach().abs().max())
        assert err <= RTOL[torch.float32], (optim_input.desc, err)


# ------------------------------------------------------------------------------------- hooks


def _state_dict_pre_hook(optimizer) -> None:
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer, state_dict):
    if "test" in state_dict["state"]:
        state_dict["state"].pop("test")
        state_dict["ran_state_dict_pre_hook"] = True
    else:
        state_dict["ran_state_dict_pre_hook"] = False
    return state_dict


@optims
def test_state_dict_pre_hook(optim_info):
    for optimizer in _hook_test_optimizers(optim_info):
        optimizer.register_state_dict_pre_hook(_state_dict_pre_hook)
        assert optimizer.state_dict()["state"]["test"] == 1


@optims
def test_state_dict_post_hook(optim_info):
    for optimizer in _hook_test_optimizers(optim_info):
        optimizer.register_state_dict_post_hook(_state_dict_post_hook)
        state_dict = optimizer.state_dict()
        assert state_dict["ran_state_dict_pre_hook"] is False
        assert "schedule" in state_dict  # our addition is made before the post-hooks see the dict


@optims
def test_state_dict_pre_post_hook(optim_info):
    for optimizer in _hook_test_optimizers(optim_info):
        optimizer.register_state_dict_pre_hook(_state_dict_pre_hook)
        optimizer.register_state_dict_post_hook(_state_dict_post_hook)
        state_dict = optimizer.state_dict()
        assert "test" not in state_dict["state"]
        assert state_dict["ran_state_dict_pre_hook"] is True


# torch's load hooks write `lr` into the saved group; ours recomputes `lr` from the schedule
# (api.md), so they pin the schedule's LR bounds instead, which the recomputed `lr` shows.
def _load_state_dict_pre_hook1(optimizer, state_dict) -> None:
    _pin_lr(state_dict, 0.002)


def _load_state_dict_pre_hook2(optimizer, state_dict):
    my_state_dict = copy.deepcopy(state_dict)
    _pin_lr(my_state_dict, 0.003)
    return my_state_dict


def _load_state_dict_post_hook(optimizer) -> None:
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


@optims
def test_load_state_dict_pre_hook_and_prepend(optim_info):
    for optimizer in _hook_test_optimizers(optim_info):
        state_dict = optimizer.state_dict()
        optimizer.register_load_state_dict_pre_hook(_load_state_dict_pre_hook1)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002
        # prepended, hook2 runs first: hook1 then pins the copy hook2 returned
        optimizer.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2, prepend=True)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002


@optims
def test_load_state_dict_post_hook(optim_info):
    for optimizer in _hook_test_optimizers(optim_info):
        optimizer.register_load_state_dict_post_hook(_load_state_dict_post_hook)
        optimizer.load_state_dict(optimizer.state_dict())
        assert optimizer.state["ran_load_state_dict_pre_hook2"] is False
        assert optimizer.state["ran_load_state_dict_post_hook"] is True


@optims
def test_load_state_dict_pre_post_hook(optim_info):
    for optimizer in _hook_test_optimizers(optim_info):
        optimizer.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2)
        optimizer.register_load_state_dict_post_hook(_load_state_dict_post_hook)
        optimizer.load_state_dict(optimizer.state_dict())
        assert optimizer.state["ran_load_state_dict_pre_hook2"] is True
        assert optimizer.state["ran_load_state_dict_post_hook"] is True


@optims
@pytest.mark.parametrize("when, first, last", [("post", 2, 6), ("pre", 5, 9)])
def test_step_hook(optim_info, when, first, last):
    params = [torch.tensor([1.0, 1.0])]
    for optim_input in _inputs(optim_info):
        optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
        data = [first]
        register = getattr(optimizer, "register_step_%s_hook" % when)
        handle = register(lambda opt, args, kwargs: data.append(data[-1] + 2))
        optimizer.step()
        optimizer.step()
        assert data[-1] == last
        handle.remove()
        optimizer.step()
        assert data[-1] == last


@optims
def test_step_all_hooks(optim_info):
    # Ours takes a faster path without hooks (clr_ext.optim.core): the hooks, global and local,
    # must still fire in torch's order around the step, also right after one is registered.
    params = [torch.tensor([1.0, 1.0])]
    for optim_input in _inputs(optim_info):
        optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
        optimizer2 = torch.optim.SGD(params)
        optimizer.step()
        data = []
        handles = [
            register_optimizer_step_pre_hook(lambda opt, args, kwargs: data.append(0)),
            register_optimizer_step_post_hook(lambda opt, args, kwargs: data.append(5)),
        ]
        try:
            for opt in (optimizer, optimizer2):
                handles.append(opt.register_step_pre_hook(lambda opt, args, kwargs: data.append(1)))
                handles.append(opt.register_step_post_hook(lambda opt, args, kwargs: data.append(2)))
            optimizer.step()
            assert data == [0, 1, 2, 5]
            optimizer2.step()
            assert data == [0, 1, 2, 5] * 2
            optimizer.step()
            assert data == [0, 1, 2, 5] * 3
        finally:
            for handle in handles:
                handle.remove()
        optimizer.step()
        optimizer2.step()
        assert data == [0, 1, 2, 5] * 3
        assert optimizer.iteration == 4


# ------------------------------------------------------------------------------------ copies


@optims
def test_deepcopy_copies_all_public_attrs(optim_info):
    def public_attrs(obj):
        return {k for k in obj.__dict__ if not k.startswith("_")}

    for optim_input in _inputs(optim_info):
        params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
        optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
        for _ in range(3):
            for p in params:
                p.grad = torch.rand_like(p)
            optimizer.step()
        duplicate = copy.deepcopy(optimizer)
        assert public_attrs(duplicate) == public_attrs(optimizer)
        # The copy is another optimizer on copies of the params: stepped alike, it stays alike,
        # and neither touches the other's tensors.
        copied = duplicate.param_groups[0]["params"]
        assert all(c is not p for c, p in zip(copied, params))
        _assert_identical(duplicate.state_dict(), optimizer.state_dict())
        for _ in range(3):
            for p, c in zip(params, copied):
                p.grad = torch.rand_like(p)
                c.grad = p.grad.clone()
            optimizer.step()
            duplicate.step()
        _assert_identical(copied, params, optim_input.desc)
        _assert_identical(duplicate.state_dict(), optimizer.state_dict(), optim_input.desc)
        assert duplicate.iteration == optimizer.iteration == 6


# ----------------------------------------------------------------------------------- complex


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["complex64", "complex128"])
@optims
def test_complex(optim_info, dtype, backend):
    # torch's generic test: complex params (mixed with a real one) step exactly as their real
    # views. And ours is its PyTorch pair on the same complex params (api.md): bit for bit for
    # AdamW, which steps real views itself; torch.optim.SGD steps complex tensors with complex
    # arithmetic, a rounding away from its own real-view result, so there the bound is the
    # contract's tolerance and the bits are checked against the pair on the real views.
    real_dtype = dtype.to_real()
    for optim_input in _inputs(optim_info):
        torch.manual_seed(4)
        init = [torch.randn(10, 5, dtype=dtype), torch.randn(10, dtype=dtype), torch.randn(10, 5, dtype=real_dtype)]
        complex_params = [Parameter(t.clone()) for t in init]
        real_params = [Parameter((torch.view_as_real(t) if t.is_complex() else t).clone()) for t in init]
        pair_params = [Parameter(t.clone()) for t in init]
        pair_real_params = [Parameter(p.detach().clone()) for p in real_params]
        complex_optimizer = optim_info.optim_cls(complex_params, backend=backend, **optim_input.kwargs)
        real_optimizer = optim_info.optim_cls(real_params, backend=backend, **optim_input.kwargs)
        pair = _torch_pair(optim_info, optim_input.kwargs, pair_params)
        pair_real = _torch_pair(optim_info, optim_input.kwargs, pair_real_params)

        def as_real(params):
            return [torch.view_as_real(p.detach()) if p.is_complex() else p.detach() for p in params]

        for _ in range(5):
            grads = [torch.randn_like(t) for t in init]
            for params in (complex_params, pair_params):
                for p, g in zip(params, grads):
                    p.grad = g.clone()
            for params in (real_params, pair_real_params):
                for p, g in zip(params, as_real(grads)):
                    p.grad = g.clone()
            for optimizer, scheduler in (pair, pair_real):
                optimizer.step()
                scheduler.step()
            complex_optimizer.step()
            real_optimizer.step()
            _assert_identical(as_real(complex_params), as_real(real_params), optim_input.desc)
            _assert_identical(as_real(complex_params), as_real(pair_real_params), optim_input.desc)
            if _is_sgd(optim_info):
                for ours, theirs in zip(as_real(complex_params), as_real(pair_params)):
                    err = float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max())
                    assert err <= RTOL[real_dtype], (optim_input.desc, err)
            else:
                _assert_identical(as_real(complex_params), as_real(pair_params), optim_input.desc)
        assert complex_optimizer.get_last_lr() == pair[1].get_last_lr()


def _rosenbrock(tensor):
    x, y = tensor
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@optims
def test_complex_2d(optim_info):
    # A complex param and its real and imaginary parts as two real params follow the same path.
    # The gradients come from different autograd graphs (complex vs split), so the comparison has
    # torch's default tolerances, as in torch's test.
    for optim_input in _inputs(optim_info):
        torch.manual_seed(2024)
        a1 = Parameter(torch.randn(2, dtype=torch.complex64))
        a1_real = Parameter(a1.detach().real.clone())
        a1_imag = Parameter(a1.detach().imag.clone())
        optim1 = optim_info.optim_cls([a1], **optim_input.kwargs)
        optim2 = optim_info.optim_cls([a1_real, a1_imag], **optim_input.kwargs)
        for _ in range(3):
            optim1.zero_grad()
            optim2.zero_grad()
            _rosenbrock(a1).abs().backward()
            _rosenbrock(torch.complex(a1_real, a1_imag)).abs().backward()
            torch.testing.assert_close(a1.grad.real, a1_real.grad)
            torch.testing.assert_close(a1.grad.imag, a1_imag.grad)
            optim1.step()
            optim2.step()
            torch.testing.assert_close(a1.detach().real, a1_real.detach())
            torch.testing.assert_close(a1.detach().imag, a1_imag.detach())


# --------------------------------------------------------------------------- layouts, dtypes


@optims
def test_noncontiguous_matches_contiguous(optim_info, backend):
    for optim_input in _inputs(optim_info):
        torch.manual_seed(6)
        strided = [Parameter(torch.randn(10, 5, 2)[..., 0]), Parameter(torch.randn(5, 10).t())]
        strides = [p.stride() for p in strided]
        assert not any(p.is_contiguous() for p in strided)
        dense = [Parameter(p.detach().contiguous()) for p in strided]
        optimizers = [optim_info.optim_cls(ps, backend=backend, **optim_input.kwargs) for ps in (strided, dense)]
        for _ in range(5):
            grads = [torch.randn(p.shape) for p in dense]
            for params, optimizer in zip((strided, dense), optimizers):
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                optimizer.step()
        _assert_identical([p.detach().contiguous() for p in strided], [p.detach() for p in dense])
        assert [p.stride() for p in strided] == strides  # updated in place


@optims
def test_mixed_dtypes_match_separate_optimizers(optim_info, backend):
    # torch's test_mixed_device_dtype (multi-GPU there): params of every floating dtype in one
    # optimizer. Ours buckets them by dtype (api.md: dtypes may be mixed): each param must end
    # exactly where an optimizer holding only that param's dtype puts it.
    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    torch.manual_seed(10)
    init = [torch.rand(2, 3).to(dtype) for dtype in dtypes]
    grads = [[torch.rand(2, 3).to(dtype) for dtype in dtypes] for _ in range(7)]
    for optim_input in _inputs(optim_info):
        mixed = [Parameter(t.clone()) for t in init]
        alone = [Parameter(t.clone()) for t in init]
        optimizers = [optim_info.optim_cls(mixed, backend=backend, **optim_input.kwargs)]
        optimizers += [optim_info.optim_cls([p], backend=backend, **optim_input.kwargs) for p in alone]
        for step_grads in grads:
            for params in (mixed, alone):
                for p, g in zip(params, step_grads):
                    p.grad = g.clone()
            for optimizer in optimizers:
                optimizer.step()
        _assert_identical(mixed, alone, optim_input.desc)
        _assert_identical(
            _state_of(optimizers[0], mixed), [_state_of(o, [p])[0] for o, p in zip(optimizers[1:], alone)]
        )


@optims
def test_float64_matches_float32(optim_info):
    # The same run in float32 and in float64 (from the same, float32-exact values): the float32
    # run stays within api.md's float32 tolerance of the float64 one (seen: 5e-7 at most).
    for optim_input in _inputs(optim_info):
        torch.manual_seed(8)
        weight, bias, inpt = _weight_bias(dtype=torch.float64)
        runs = {}
        for dtype in (torch.float32, torch.float64):
            w, b = (Parameter(t.detach().float().to(dtype)) for t in (weight, bias))
            x = inpt.float().to(dtype)
            optimizer = optim_info.optim_cls([w, b], **optim_input.kwargs)
            for _ in range(20):
                optimizer.step(functools.partial(_fwd_bwd, optimizer, w, b, x))
            runs[dtype] = [w.detach(), b.detach()]
        for single, double in zip(runs[torch.float32], runs[torch.float64]):
            assert single.dtype == torch.float32
            err = float((single.double() - double).abs().max() / double.abs().max())
            assert err <= RTOL[torch.float32], (optim_input.desc, err)


# ------------------------------------------------ implementation parity ("foreach == forloop")


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[1]
)
@optims
def test_backends_match(optim_info, dtype):
    # torch's test_foreach_matches_forloop / test_fused_matches_forloop: every implementation of
    # one optimizer gives the same params and state. Ours are the backends, and they must agree
    # bit for bit: they share the schedule's formula and the update's (csrc/, clr_ext.schedule).
    # As in torch's protocol: a step with no grads at all, a layer frozen for two steps, a
    # 0-dim param, and a zero-size one.
    if len(CPU_BACKENDS) < 2:
        pytest.skip("one CPU backend built")
    shapes = [(3, 2), (3,), (1, 3), (1,), (), (0,)]
    torch.manual_seed(9)
    init = [torch.randn(shape).to(dtype) for shape in shapes]
    grads = []
    for i in range(7):
        frozen = (2, 3) if i in (3, 4) else ()
        grads.append([None if i == 2 or k in frozen else torch.randn(s).to(dtype) for k, s in enumerate(shapes)])
    for optim_input in _inputs(optim_info):
        results = {}
        for backend in CPU_BACKENDS:
            params = [Parameter(t.clone()) for t in init]
            optimizer = optim_info.optim_cls(params, backend=backend, **optim_input.kwargs)
            for step_grads in grads:
                for p, g in zip(params, step_grads):
                    p.grad = None if g is None else g.clone()
                optimizer.step()
            results[backend] = (params, _state_of(optimizer, params), optimizer.get_last_lr())
        reference = CPU_BACKENDS[0]
        for backend in CPU_BACKENDS[1:]:
            _assert_identical(results[backend], results[reference], f"{backend} vs {reference}: {optim_input.desc}")


# ------------------------------------------------ optim_db's own inputs: torch.optim at constant LR


def _torch_and_ours_kwargs(torch_info, optim_info):
    """optim_db's inputs for torch's SGD / AdamW (with every implementation flag the helper
    adds), as (torch kwargs, our kwargs) pairs: the same update rule, our schedule held at
    torch's LR. Left out, as ours has no such argument: implementation variants (foreach /
    fused / differentiable set: their torch twin with the flags off is compared), capturable
    (CUDA graphs: tests/cuda/test_cuda_rules.py), tensor LRs and betas, decoupled_weight_decay (Adam's)."""
    default_lr = inspect.signature(torch_info.optim_cls).parameters["lr"].default
    pairs = []
    for optim_input in all_optim_inputs(DEVICE, torch.float32, torch_info):
        kwargs = dict(optim_input.kwargs)
        if any(kwargs.get(flag) for flag in _IMPL_FLAGS) or any(_holds_tensor(v) for v in kwargs.values()):
            continue
        torch_kwargs = {k: v for k, v in kwargs.items() if k not in _IMPL_FLAGS}
        torch_kwargs["foreach"] = False  # the single-tensor loop: the reference for every impl
        ours = {k: v for k, v in torch_kwargs.items() if k not in ("lr", "foreach")}
        ours.update(_constant_lr_kwargs(optim_info, kwargs.get("lr", default_lr)))
        pairs.append((torch_kwargs, ours))
    return pairs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@optims
def test_matches_torch_optim_with_constant_lr(optim_info, dtype, backend):
    # With the schedule held constant (and momentum / beta1 not cycled), a step of ours is a
    # step of torch.optim.SGD / AdamW, for every configuration optim_db tests them with: the
    # params and the per-param state must be identical bit for bit, grads-None steps included.
    torch_info = _SGD_INFO if _is_sgd(optim_info) else _ADAMW_INFO
    pairs = _torch_and_ours_kwargs(torch_info, optim_info)
    assert {"foreach": False} in [t for t, _ in pairs]  # torch's default configuration is among them
    for torch_kwargs, ours_kwargs in pairs:
        torch.manual_seed(1)
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
        ).to(dtype)
        inpt = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
        reference = list(model.parameters())
        mine = _clones(reference)
        theirs = torch_info.optim_cls(reference, **torch_kwargs)
        ours = optim_info.optim_cls(mine, backend=backend, **ours_kwargs)
        for i in range(20):
            theirs.zero_grad()
            ours.zero_grad()
            if i != 2:  # a step without grads, as in torch's protocol
                model(inpt).sum().backward()
                for p, q in zip(mine, reference):
                    p.grad = None if q.grad is None else q.grad.clone()
            ours.step()
            theirs.step()
            _assert_identical(mine, reference, f"{torch_kwargs} step {i}")
        for p, q in zip(mine, reference):
            ours_state, theirs_state = ours.state[p], theirs.state[q]
            assert ours_state.keys() == theirs_state.keys(), torch_kwargs
            for key in theirs_state:
                # (torch keeps AdamW's `step` as a CPU float32 tensor too)
                _assert_identical(ours_state[key], theirs_state[key], f"{torch_kwargs} state {key}")
