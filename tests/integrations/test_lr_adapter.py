"""Outside writes to ``group["lr"]`` and ``opt.as_scheduler()`` (issue 16), no framework needed.

- The warning: a step whose ``group["lr"]`` is not what the optimizer last wrote there
  warns once per group, naming the group and both values, and the optimizer's own
  schedule wins (the trajectory is that of a twin left alone). Torch's own schedulers
  (LambdaLR, ReduceLROnPlateau, SWALR) on a CyclicSGD or OneCycleSGD trigger it; a
  scheduled optimizer alone, ZeroRedundancyOptimizer's equal-value copies,
  load_state_dict, deepcopy, pickle and the adapter itself do not.
- The adapter: an LRScheduler that changes nothing, reports what torch's CyclicLR /
  OneCycleLR report at every point of a loop, and whose state dict round-trips.
- GradScaler with ``scaler.unscale_(opt)`` before clipping (the fp16 rule of docs/guide/frameworks.md):
  bit-identical to torch.optim.SGD + CyclicLR, inf steps included.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import (
    CyclicLR,
    LambdaLR,
    LRScheduler,
    OneCycleLR,
    ReduceLROnPlateau,
)
from torch.optim.swa_utils import SWALR

import clr_ext
from clr_ext._lr_adapter import ScheduleAdapter

OUTSIDE = "from outside"  # in the warning's text


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _groups(net):
    return [{"params": net[0].parameters()}, {"params": net[2].parameters(), "weight_decay": 1e-3}]


CLASSES = {
    "cyclic": (clr_ext.CyclicSGD, {"base_lr": [0.01, 0.02], "max_lr": [0.1, 0.2], "step_size_up": 3, "momentum": 0.9}),
    "one_cycle": (clr_ext.OneCycleSGD, {"max_lr": [0.1, 0.2], "total_steps": 20, "momentum": 0.9}),
    "cyclic_adamw": (clr_ext.CyclicAdamW, {"base_lr": [0.001, 0.002], "max_lr": [0.01, 0.02], "step_size_up": 3}),
    "one_cycle_adamw": (clr_ext.OneCycleAdamW, {"max_lr": [0.01, 0.02], "total_steps": 20}),
}
KINDS = list(CLASSES)


def _make(kind: str, net: torch.nn.Module, backend: str = "auto"):
    cls, kwargs = CLASSES[kind]
    return cls(_groups(net), backend=backend, **kwargs)


def _one_group_kwargs(kind: str):
    """The constructor's arguments for a single group (ZeroRedundancyOptimizer, add_param_group)."""
    return {k: v[0] if isinstance(v, list) else v for k, v in CLASSES[kind][1].items()}


def _torch_pair(kind: str, net: torch.nn.Module):
    """The torch optimizer + scheduler each class fuses (what the adapter must report like)."""
    kwargs = CLASSES[kind][1]
    if kind.endswith("adamw"):
        opt = torch.optim.AdamW(_groups(net), lr=0.001)
    else:
        opt = torch.optim.SGD(_groups(net), lr=0.01, momentum=0.9)
    if kind.startswith("cyclic"):
        return opt, CyclicLR(opt, base_lr=kwargs["base_lr"], max_lr=kwargs["max_lr"], step_size_up=3)
    return opt, OneCycleLR(opt, max_lr=kwargs["max_lr"], total_steps=20)


def _batch(k: int):
    g = torch.Generator().manual_seed(100 + k)
    return torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)


def _backward(net, k: int) -> None:
    x, y = _batch(k)
    torch.nn.functional.mse_loss(net(x), y).backward()


def _step(net, opt, k: int) -> None:
    opt.zero_grad()
    _backward(net, k)
    opt.step()


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _assert_same(a, b) -> None:
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def _clr_warnings(record):
    return [str(w.message) for w in record if "clr_ext" in str(w.message) or "lr_scheduler.step()" in str(w.message)]


class _Record(warnings.catch_warnings):
    """Records every warning (``always``), so that a once-only warning is not hidden by an earlier test."""

    def __init__(self):
        super().__init__(record=True)

    def __enter__(self):
        log = super().__enter__()
        warnings.simplefilter("always")
        return log


# ------------------------------------------------------------------- the warning


@pytest.mark.parametrize("kind", KINDS)
def test_outside_write_warns_once_per_group_naming_group_and_values_and_schedule_wins(kind):
    net, twin = _net(), _net()
    opt, twin_opt = _make(kind, net), _make(kind, twin)
    for k in range(2):
        _step(net, opt, k), _step(twin, twin_opt, k)
    mine = opt.param_groups[1]["lr"]
    opt.param_groups[1]["lr"] = 0.123
    with _Record() as log:
        _step(net, opt, 2), _step(twin, twin_opt, 2)
    messages = _clr_warnings(log)
    assert len(messages) == 1
    assert "param group 1" in messages[0] and "0.123" in messages[0] and repr(mine) in messages[0]
    assert type(opt).__name__ in messages[0] and "as_scheduler" in messages[0]
    assert all(issubclass(w.category, UserWarning) for w in log)
    # The schedule won: same parameters as the twin, and group["lr"] is the schedule's again.
    _assert_same(_params(net), _params(twin))
    assert opt.get_last_lr() == twin_opt.get_last_lr()

    # Once per group: another write to group 1 is overwritten without a second warning ...
    opt.param_groups[1]["lr"] = 0.5
    with _Record() as log:
        _step(net, opt, 3), _step(twin, twin_opt, 3)
    assert _clr_warnings(log) == []
    # ... while group 0 has its own warning.
    opt.param_groups[0]["lr"] = 7.0
    with _Record() as log:
        _step(net, opt, 4), _step(twin, twin_opt, 4)
    messages = _clr_warnings(log)
    assert len(messages) == 1 and "param group 0" in messages[0] and "7.0" in messages[0]
    _assert_same(_params(net), _params(twin))
    assert opt.iteration == twin_opt.iteration == 5


def _lambda(opt):
    return LambdaLR(opt, lambda k: 0.5**k)


def _plateau(opt):
    return ReduceLROnPlateau(opt, factor=0.5, patience=0)


def _swalr(opt):
    return SWALR(opt, swa_lr=0.005, anneal_epochs=2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make_scheduler", [_lambda, _plateau, _swalr], ids=["LambdaLR", "ReduceLROnPlateau", "SWALR"])
def test_torch_schedulers_on_a_scheduled_optimizer_warn_and_are_overruled(kind, make_scheduler):
    net, twin = _net(), _net()
    opt, twin_opt = _make(kind, net), _make(kind, twin)
    with _Record() as log:
        sched = make_scheduler(opt)
        for k in range(6):
            _step(net, opt, k)
            if isinstance(sched, ReduceLROnPlateau):
                sched.step(1.0 + k)  # a rising loss: it halves the LR at every call after the first
            else:
                sched.step()
            _step(twin, twin_opt, k)
    messages = [m for m in _clr_warnings(log) if OUTSIDE in m]
    assert messages, "an outside scheduler's writes passed in silence"
    assert len(messages) <= 2  # once per group at most
    assert any("param group 0" in m for m in messages)
    _assert_same(_params(net), _params(twin))
    # (after the outside scheduler's last step group["lr"] is its value again; the next step overrules it)
    _step(net, opt, 6), _step(twin, twin_opt, 6)
    assert opt.get_last_lr() == twin_opt.get_last_lr()


# ------------------------------------------------------------- no false alarms


def _no_clr_warning(fn):
    with _Record() as log:
        result = fn()
    assert _clr_warnings(log) == []
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_no_warning_alone_with_equal_copies_load_deepcopy_pickle(kind):
    net = _net()
    opt = _make(kind, net)

    def run():
        for k in range(3):
            _step(net, opt, k)
        # ZeroRedundancyOptimizer-style copies: equal values, other float objects
        for group in opt.param_groups:
            group["lr"] = float(repr(group["lr"])) + 0.0
        _step(net, opt, 3)
        # load_state_dict, from a run at another iteration
        other_net = _net(1)
        other = _make(kind, other_net)
        for k in range(5):
            _step(other_net, other, k)
        opt.load_state_dict(other.state_dict())
        assert opt.iteration == 5
        _step(net, opt, 5)
        # deepcopy and pickle (of the optimizer with its params, so the copy is a working optimizer)
        net2, opt2 = copy.deepcopy((net, opt))
        _step(net2, opt2, 6)
        net3, opt3 = pickle.loads(pickle.dumps((net, opt)))
        _step(net3, opt3, 6)
        _step(net, opt, 6)
        _assert_same(_params(net), _params(net2))
        _assert_same(_params(net), _params(net3))
        # a param group added mid-run
        extra = torch.nn.Parameter(torch.ones(3))
        bounds = {k: v for k, v in _one_group_kwargs(kind).items() if k in ("base_lr", "max_lr")}
        opt.add_param_group({"params": [extra], **bounds})
        opt.zero_grad()
        _backward(net, 7)
        extra.grad = torch.ones(3)
        opt.step()

    _no_clr_warning(run)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_redundancy_optimizer_syncs_equal_values_without_warning(kind, tmp_path):
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        net, twin = _net(), _net()
        cls, kwargs = CLASSES[kind][0], _one_group_kwargs(kind)
        zero = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=cls, **kwargs)
        twin_opt = cls(twin.parameters(), **kwargs)

        def run():
            for k in range(6):
                _step(net, zero, k), _step(twin, twin_opt, k)

        _no_clr_warning(run)
        _assert_same(_params(net), _params(twin))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ the adapter


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_is_an_lr_scheduler_that_changes_nothing(kind):
    net = _net()
    opt = _make(kind, net)
    before = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    step_before = opt.step
    sched = _no_clr_warning(opt.as_scheduler)
    assert isinstance(sched, ScheduleAdapter) and isinstance(sched, LRScheduler)
    assert sched.optimizer is opt
    # LRScheduler.__init__ did not run: no group value changed, optimizer.step is not wrapped
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before
    assert opt.step == step_before and not hasattr(opt.step, "_wrapped_by_lr_sched")
    kwargs = CLASSES[kind][1]
    assert sched.base_lrs == (kwargs["base_lr"] if "base_lr" in kwargs else [lr / 25 for lr in kwargs["max_lr"]])

    def calls():
        # step() before any optimizer step (torch would warn "Detected call of lr_scheduler.step()
        # before optimizer.step()"), with an epoch, with a metric: all change nothing.
        sched.step()
        sched.step(3)
        sched.step(epoch=4)
        sched.step(0.25)
        sched.step(metrics=0.5)
        assert opt.iteration == 0 and sched.last_epoch == 0
        for k in range(4):
            _step(net, opt, k)
            sched.step()

    _no_clr_warning(calls)
    assert opt.iteration == 4
    assert [
        {k: v for k, v in g.items() if k not in ("params", "lr", "momentum", "betas", "iteration")}
        for g in opt.param_groups
    ] == [{k: v for k, v in g.items() if k not in ("lr", "momentum", "betas", "iteration")} for g in before]


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_reports_what_torchs_scheduler_reports_at_every_point(kind):
    """Before the optimizer's step, between it and the scheduler's step (where the HF
    Trainer logs), and after both: get_last_lr() and last_epoch equal the torch pair's."""
    net, ref_net = _net(), _net()
    opt = _make(kind, net)
    sched = opt.as_scheduler()
    sgd, ref = _torch_pair(kind, ref_net)
    assert sched.get_last_lr() == ref.get_last_lr() and sched.last_epoch == ref.last_epoch == 0
    assert sched.get_lr() == sched.get_last_lr()
    applied = []
    for k in range(12):
        assert sched.get_last_lr() == ref.get_last_lr() == opt.get_last_lr()
        applied.append(opt.get_last_lr())
        _step(net, opt, k)
        _step(ref_net, sgd, k)
        # between the optimizer's step and the scheduler's: the LR that step used
        assert sched.get_last_lr() == ref.get_last_lr() == applied[-1]
        assert sched.last_epoch == ref.last_epoch == k
        sched.step(), ref.step()
        assert sched.get_last_lr() == ref.get_last_lr() == opt.get_last_lr()
        assert sched.last_epoch == ref.last_epoch == opt.iteration == k + 1
    if kind.endswith("adamw"):  # (AdamW's parity is to a relative tolerance: tests/rules/test_adamw.py)
        torch.testing.assert_close(_params(net), _params(ref_net), rtol=1e-5, atol=1e-7)
    else:
        _assert_same(_params(net), _params(ref_net))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("between", [False, True], ids=["after_step", "between_steps"])
def test_adapter_state_dict_round_trips(kind, between, tmp_path):
    net = _net()
    opt = _make(kind, net)
    sched = opt.as_scheduler()
    for k in range(5):
        _step(net, opt, k)
        if not (between and k == 4):
            sched.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "net": net.state_dict()}, path)
    saved = torch.load(path, weights_only=True)  # plain numbers only
    assert saved["sched"] == sched.state_dict()
    assert saved["sched"]["iteration"] == 5

    # A fresh run, resumed the way frameworks resume: optimizer state, then scheduler state.
    net2 = _net(7)
    opt2 = _make(kind, net2)
    sched2 = opt2.as_scheduler()

    def resume():
        net2.load_state_dict(saved["net"])
        opt2.load_state_dict(saved["opt"])
        sched2.load_state_dict(saved["sched"])

    _no_clr_warning(resume)
    assert sched2.state_dict() == sched.state_dict()
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == sched.last_epoch
    for k in range(5, 9):
        sched.step(), sched2.step()
        _step(net, opt, k), _step(net2, opt2, k)
        assert sched2.get_last_lr() == sched.get_last_lr()
    _assert_same(_params(net), _params(net2))

    # pickle and deepcopy keep it working
    for copied in (pickle.loads(pickle.dumps(sched)), copy.deepcopy(sched)):
        assert copied.state_dict() == sched.state_dict()
        assert copied.get_last_lr() == sched.get_last_lr()
        assert isinstance(copied.optimizer, type(opt))


def test_adapter_state_without_the_optimizers_warns_and_changes_nothing():
    net = _net()
    opt = _make("cyclic", net)
    sched = opt.as_scheduler()
    for k in range(3):
        _step(net, opt, k)
        sched.step()
    fresh = _make("cyclic", _net(1))
    fresh_sched = fresh.as_scheduler()
    with pytest.warns(UserWarning, match=r"saved at iteration 3, but the CyclicSGD is at iteration 0"):
        fresh_sched.load_state_dict(sched.state_dict())
    assert fresh.iteration == 0 and fresh_sched.last_epoch == 0
    assert fresh_sched.get_last_lr() == fresh.get_last_lr() == [0.01, 0.02]


def test_adapter_last_epoch_cannot_be_moved():
    opt = _make("cyclic", _net())
    sched = opt.as_scheduler()
    sched.last_epoch = 0  # its own value: accepted
    with pytest.raises(AttributeError, match="iteration"):
        sched.last_epoch = 5
    assert opt.iteration == 0 and "ScheduleAdapter(CyclicSGD, iteration=0)" == repr(sched)


# ---------------------------------------------------------- GradScaler and clipping


def test_gradscaler_unscale_before_clipping_bit_identical_to_torch_pair(backend):
    """The rule (docs/guide/frameworks.md) for fp16 with clipping in a plain loop: ``scaler.unscale_(opt)``,
    clip, ``scaler.step(opt)``. CyclicSGD then gets unscaled gradients (GradScaler passes
    no scale, only the inf flag) and skips the steps with infs, as SGD + CyclicLR does."""
    net, ref_net = _net(), _net()
    opt = clr_ext.CyclicSGD(
        net.parameters(), base_lr=0.01, max_lr=0.1, step_size_up=3, momentum=0.9, weight_decay=1e-4, backend=backend
    )
    sgd = torch.optim.SGD(ref_net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    ref = CyclicLR(sgd, base_lr=0.01, max_lr=0.1, step_size_up=3)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3) for _ in range(2)]
    inf_steps = {2, 7}
    skipped = 0
    for k in range(10):
        for model, optimizer, scaler in ((net, opt, scalers[0]), (ref_net, sgd, scalers[1])):
            optimizer.zero_grad()
            x, y = _batch(k)
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            if k in inf_steps:
                model[0].weight.grad[0, 0] = float("inf")
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scale_before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if optimizer is sgd:
                ref.step()
                skipped += scaler.get_scale() < scale_before
        _assert_same(_params(net), _params(ref_net))
        assert opt.get_last_lr() == ref.get_last_lr()
        assert scalers[0].get_scale() == scalers[1].get_scale()
    assert skipped == len(inf_steps)
    assert opt.iteration == 10


# ------------------------------------- a PyTorch pair's checkpoint, resumed (issue 21)


def _pair_checkpoint(kind: str, steps: int, total: int):
    """A run of the PyTorch pair: its state dicts after ``steps`` steps and its params after ``total``."""
    net = _net()
    opt, sched = _torch_pair(kind, net)
    saved = None
    for k in range(total):
        if k == steps:
            saved = (copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict()), _params(net))
        _step(net, opt, k)
        sched.step()
    return saved, _params(net)


@pytest.mark.parametrize("kind", KINDS)
def test_a_pair_checkpoint_resumed_through_the_adapter_continues_bit_for_bit(kind):
    """A framework that switches from SGD/AdamW + CyclicLR/OneCycleLR to the fused class
    resumes the pair's checkpoint: optimizer state into the optimizer, scheduler state into
    ``as_scheduler()``. The scheduler's last_epoch carries the position; the run continues
    exactly as the pair's own."""
    (opt_sd, sched_sd, at_5), final = _pair_checkpoint(kind, 5, 12)
    net = _net(1)
    with torch.no_grad():
        for p, v in zip(net.parameters(), at_5):
            p.copy_(v)
    opt = _make(kind, net)
    sched = opt.as_scheduler()
    with _Record() as log:
        opt.load_state_dict(opt_sd)
        sched.load_state_dict(sched_sd)
    assert opt.iteration == 5 and sched.last_epoch == 5
    for k in range(5, 12):
        _step(net, opt, k)
        sched.step()
    assert _clr_warnings(log) == []  # (the position came with the scheduler's state)
    _assert_same(_params(net), final)


@pytest.mark.parametrize("kind", ["cyclic", "one_cycle_adamw"])
def test_a_pair_optimizer_state_loaded_without_its_scheduler_says_the_schedule_restarts(kind):
    (opt_sd, _, _), _ = _pair_checkpoint(kind, 5, 6)
    net = _net()
    opt = _make(kind, net)
    with _Record() as log:
        opt.load_state_dict(opt_sd)
        for k in range(3):
            _step(net, opt, k)
    messages = _clr_warnings(log)
    assert len(messages) == 1 and "held no schedule position" in messages[0] and "from_torch" in messages[0]
    assert opt.iteration == 3


@pytest.mark.parametrize("kind", ["cyclic", "one_cycle_adamw"])
def test_a_pair_checkpoint_of_another_schedule_is_refused_and_changes_nothing(kind):
    (opt_sd, sched_sd, _), _ = _pair_checkpoint(kind, 5, 6)
    other = dict(sched_sd)
    if kind == "cyclic":
        other["total_size"] = 10.0
        words = "total_size"
    else:
        other["total_steps"] = 30
        words = "total_steps"
    net = _net()
    opt = _make(kind, net)
    sched = opt.as_scheduler()
    with pytest.raises(ValueError, match=words):
        sched.load_state_dict(other)
    assert opt.iteration == 0
    # a CyclicLR state for a 1cycle optimizer (and the reverse) is refused too
    wrong_kind = "one_cycle" if kind == "cyclic" else "cyclic_adamw"
    opt2 = _make(wrong_kind, _net())
    with pytest.raises(ValueError, match="cannot move"):
        opt2.as_scheduler().load_state_dict(sched_sd)
    assert opt2.iteration == 0


def test_a_pair_checkpoint_behind_the_adamw_step_counts_is_refused():
    """The AdamW step counts say how many steps were taken: a scheduler state saved at an
    earlier step belongs to another checkpoint."""
    (opt_sd, sched_sd, _), _ = _pair_checkpoint("cyclic_adamw", 5, 6)
    early = dict(sched_sd, last_epoch=3)
    opt = _make("cyclic_adamw", _net())
    with _Record():
        opt.load_state_dict(opt_sd)
    with pytest.raises(ValueError, match="step count is 5"):
        opt.as_scheduler().load_state_dict(early)
    assert opt.iteration == 0


def test_a_pair_scheduler_state_disagreeing_with_the_optimizers_own_position_is_refused():
    net = _net()
    opt = _make("cyclic", net)
    for k in range(2):
        _step(net, opt, k)
    (_, sched_sd, _), _ = _pair_checkpoint("cyclic", 5, 6)
    with pytest.raises(ValueError, match="disagree"):
        opt.as_scheduler().load_state_dict(sched_sd)
    assert opt.iteration == 2


# ------------------------------------------ outside writes to the cycled momentum


@pytest.mark.parametrize("kind", KINDS)
def test_outside_write_to_the_cycled_momentum_warns_and_schedule_wins(kind):
    net, twin = _net(), _net()
    opt, twin_opt = _make(kind, net), _make(kind, twin)
    _step(net, opt, 0), _step(twin, twin_opt, 0)
    group = opt.param_groups[1]
    if kind.endswith("adamw"):
        group["betas"] = (0.5, group["betas"][1])
        key = "betas[0]"
    else:
        group["momentum"] = 0.5
        key = "momentum"
    with _Record() as log:
        _step(net, opt, 1), _step(twin, twin_opt, 1)
    messages = _clr_warnings(log)
    assert len(messages) == 1 and f"param group 1's {key} was set to 0.5" in messages[0], messages
    _assert_same(_params(net), _params(twin))
    assert opt.param_groups[1] == {**twin_opt.param_groups[1], "params": opt.param_groups[1]["params"]}


@pytest.mark.parametrize("kind", ["one_cycle", "cyclic_adamw"])
def test_an_outside_value_one_rounding_away_does_not_warn_but_a_real_difference_does(kind):
    """A framework's closed form of the same LR (one ulp off in double) changes nothing
    in an fp32 step: no warning, so that the warning is left for a real divergence."""
    net = _net()
    opt = _make(kind, net)
    _step(net, opt, 0)
    lr = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = lr * (1 + 2**-52)
    assert opt.param_groups[0]["lr"] != lr
    with _Record() as log:
        _step(net, opt, 1)
    assert _clr_warnings(log) == []
    opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 1.01
    with _Record() as log:
        _step(net, opt, 2)
    assert len(_clr_warnings(log)) == 1
