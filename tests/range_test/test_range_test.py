"""Tests of clr_ext.range_test and RangeTestResult."""

import copy
import json
import math
import random

import pytest
import torch
from torch import nn

from clr_ext.range_test import RangeTestResult, _suggest_bounds, range_test

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- helpers
class ListLoader:
    """Re-iterable fixed list of (inputs, targets) batches."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def least_squares(seed, d=10, n=512, cond=30.0, noise=0.01):
    """A linear least-squares problem with a spread of curvatures. The loss is
    nn.MSELoss() (mean over samples) of a bias-free nn.Linear(d, 1)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, math.log10(math.sqrt(cond)), d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    w_true = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = x @ w_true + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def lambda_max(x, y):
    """Largest eigenvalue of the Hessian of the loss exactly as range_test sees it:
    nn.MSELoss()(x @ w, y) as a function of w (full batch)."""
    loss = nn.MSELoss()
    h = torch.autograd.functional.hessian(
        lambda w: loss(x @ w.unsqueeze(1), y), torch.zeros(x.shape[1], dtype=torch.float64)
    )
    # The closed form, as a cross-check of the definition: H = 2/n X^T X.
    assert torch.allclose(h, 2.0 / len(x) * x.T @ x, rtol=1e-10, atol=1e-12)
    return torch.linalg.eigvalsh(h)[-1].item()


def least_squares_sweep(seed, momentum):
    """An exponential range test over edge*1e-4 .. edge*100 (200 steps, torch's SGD with
    ``momentum``) of a bias-free nn.Linear on least_squares(seed) in batches of 64, where
    edge = 2(1 + momentum)/lambda_max(H) is where that SGD diverges: the result and edge."""
    x, y = least_squares(seed)
    edge = 2.0 * (1.0 + momentum) / lambda_max(x, y)
    loader = ListLoader([(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)])
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], 1, bias=False).double()
    result = range_test(
        model,
        loader,
        nn.MSELoss(),
        start_lr=edge * 1e-4,
        end_lr=edge * 100,
        num_iters=200,
        sweep="exp",
        momentum=momentum,
        progress=False,
    )
    return result, edge


def small_bn_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    model.register_buffer("scratch", torch.zeros(3), persistent=False)  # state_dict() misses it
    return model


def classification_batches(seed=0, n_batches=4, bs=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 6, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n_batches)]


def classification_range_test(model, loss_fn=nn.functional.cross_entropy, **kwargs):
    """range_test of ``model`` on classification_batches() with ``loss_fn`` (cross-entropy),
    from lr 1e-3, without a progress bar."""
    return range_test(model, ListLoader(classification_batches()), loss_fn, start_lr=1e-3, progress=False, **kwargs)


def full_state(model, optimizer=None):
    """Everything restore promises to keep, deep-copied."""
    state = {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "grads": {k: (None if v.grad is None else v.grad.clone()) for k, v in model.named_parameters()},
        "modes": {k: m.training for k, m in model.named_modules()},
        "ids": {k: id(v) for k, v in list(model.named_parameters()) + list(model.named_buffers())},
    }
    if optimizer is not None:
        state["opt"] = copy.deepcopy(optimizer.state_dict())
    return state


def assert_same_state(a, b):
    for key in ("params", "buffers"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert a[key][k].dtype == b[key][k].dtype and torch.equal(a[key][k], b[key][k]), (key, k)
    for k in a["grads"]:
        ga, gb = a["grads"][k], b["grads"][k]
        assert (ga is None) == (gb is None), k
        if ga is not None:
            assert torch.equal(ga, gb), k
    assert a["modes"] == b["modes"]
    assert a["ids"] == b["ids"]
    if "opt" in a:
        _assert_nested_equal(a["opt"], b["opt"])


def _assert_nested_equal(x, y):
    if torch.is_tensor(x):
        assert torch.is_tensor(y) and x.dtype == y.dtype and torch.equal(x, y)
    elif isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            _assert_nested_equal(x[k], y[k])
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            _assert_nested_equal(u, v)
    else:
        assert x == y


def range_test_recording_group_lrs(model, loader, optimizer, **sweep):
    """range_test(optimizer=optimizer) on nn.MSELoss() that never stops early, recording
    every group's lr at each optimizer step; checks that the first group's are the lrs
    the result reports: the result, the optimizer and the second group's lrs."""
    seen = []
    record = optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups])
    )
    try:
        result = range_test(
            model, loader, nn.MSELoss(), optimizer=optimizer, diverge_factor=math.inf, progress=False, **sweep
        )
    finally:
        record.remove()
    assert [s[0] for s in seen] == result.lrs
    return result, optimizer, [s[1] for s in seen]


def prepared_model_and_optimizer():
    """A BatchNorm model with non-trivial state: running stats moved, a grad present, one
    submodule in eval mode, and an optimizer that has momentum buffers."""
    model = small_bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    for xb, yb in classification_batches(seed=5, n_batches=2):
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model[3].eval()  # a dropout the user switched off: must stay off afterwards
    return model, opt


# ------------------------------------------------------------------ the known-edge test
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_least_squares_divergence_edge_plain_sgd(seed):
    """For plain SGD on a quadratic, LRs above edge = 2/lambda_max(H) diverge. An exponential
    sweep over edge*1e-4 .. edge*100 must stop soon after the edge and suggest a max_lr
    within [edge/2, 1.2 edge] (tests/range_test/test_range_test_edge.py: more problem shapes)."""
    result, edge = least_squares_sweep(seed, momentum=0.0)
    assert result.diverged and result.stop_reason in ("diverged", "nan")
    assert len(result.lrs) < 200
    # It stopped after the edge, and soon: within a factor 3 (16 steps of this sweep).
    assert edge < result.lrs[-1] <= 3 * edge
    assert 0.5 * edge <= result.max_lr <= 1.2 * edge
    assert edge * 1e-4 <= result.base_lr < result.max_lr
    # The lag matters here: the causal EMA's minimum lies well past the edge. The suggestion
    # must not be read from it.
    ema_argmin = min(range(len(result.smoothed_losses)), key=lambda i: result.smoothed_losses[i])
    assert result.lrs[ema_argmin] > result.max_lr


def test_least_squares_divergence_edge_heavy_ball():
    """With heavy-ball momentum m (torch's SGD), a quadratic diverges above 2(1+m)/lambda_max.
    With momentum the loss reaches its floor long before that edge, so "where the loss stops
    improving" is read well below it; only the upper side is pinned here."""
    result, edge = least_squares_sweep(7, momentum=0.9)
    assert result.diverged
    assert edge < result.lrs[-1] <= 3 * edge
    assert result.base_lr < result.max_lr <= 1.5 * edge


# ------------------------------------------------------------------------ the sweep
@pytest.mark.parametrize("sweep", ["linear", "exp"])
def test_sweep_shape_and_endpoints(sweep):
    model = nn.Linear(2, 1)
    loader = ListLoader([(torch.randn(4, 2), torch.randn(4, 1))])
    result = range_test(
        model,
        loader,
        nn.MSELoss(),
        start_lr=1e-6,
        end_lr=1e-3,
        num_iters=9,
        sweep=sweep,
        diverge_factor=math.inf,
        progress=False,
    )
    lrs = result.lrs
    assert len(lrs) == 9 and lrs[0] == 1e-6 and lrs[-1] == 1e-3
    if sweep == "linear":
        steps = [b - a for a, b in zip(lrs, lrs[1:])]
        assert all(math.isclose(s, (1e-3 - 1e-6) / 8, rel_tol=1e-9) for s in steps)
    else:
        ratios = [b / a for a, b in zip(lrs, lrs[1:])]
        assert all(math.isclose(r, 1000 ** (1 / 8), rel_tol=1e-9) for r in ratios)
    assert loader.passes == 9  # one batch per pass: the loader was cycled


def test_given_optimizer_lr_is_overwritten_and_restored():
    """Discriminative LRs: every group is scaled by the same factor (the second group keeps
    its 14x ratio to the first); the result reports the first group's LRs."""
    model = nn.Linear(3, 1)
    result, opt, second_group_lrs = range_test_recording_group_lrs(
        model,
        ListLoader([(torch.randn(8, 3), torch.randn(8, 1))] * 2),
        torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 7.0}], lr=0.5),
        start_lr=1e-4,
        end_lr=1e-2,
        num_iters=5,
        sweep="linear",
    )
    assert second_group_lrs == pytest.approx([14.0 * lr for lr in result.lrs], rel=1e-15)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 7.0]
    assert opt.state_dict()["state"] == {}


def test_cyclic_sgd_is_refused():
    clr_ext = pytest.importorskip("clr_ext")
    model = nn.Linear(2, 1)
    opt = clr_ext.CyclicSGD(model.parameters(), 0.01, 0.1)
    with pytest.raises(TypeError, match="CyclicSGD"):
        range_test(
            model, ListLoader([(torch.randn(2, 2), torch.randn(2, 1))]), nn.MSELoss(), optimizer=opt, progress=False
        )


# ---------------------------------------------------------------------------- restore
def test_restore_is_exact_after_a_normal_run():
    model, opt = prepared_model_and_optimizer()
    before = full_state(model, opt)
    result = classification_range_test(
        model,
        end_lr=1.0,
        num_iters=12,
        optimizer=opt,
    )
    assert len(result.lrs) >= 2
    assert_same_state(before, full_state(model, opt))
    # The same run without restore does change the model: the check above is not vacuous.
    classification_range_test(
        model,
        end_lr=1.0,
        num_iters=12,
        optimizer=opt,
        restore=False,
    )
    after = full_state(model, opt)
    assert not torch.equal(before["buffers"]["1.running_mean"], after["buffers"]["1.running_mean"])
    assert not torch.equal(before["params"]["0.weight"], after["params"]["0.weight"])


def test_restore_with_the_default_optimizer_and_eval_model():
    model = small_bn_model()
    model.eval()  # range_test trains in train mode, then puts eval mode back
    before = full_state(model)
    classification_range_test(
        model,
        end_lr=0.5,
        num_iters=10,
    )
    assert_same_state(before, full_state(model))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_restore_is_exact_after_an_exception_mid_test(exc):
    model, opt = prepared_model_and_optimizer()
    before = full_state(model, opt)
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        if calls["n"] == 6:  # five steps have updated weights, BN stats and momentum
            raise exc("boom")
        return nn.functional.cross_entropy(out, target)

    with pytest.raises(exc):
        classification_range_test(model, loss_fn, end_lr=1.0, num_iters=20, optimizer=opt)
    assert calls["n"] == 6
    assert_same_state(before, full_state(model, opt))


def test_restore_after_an_exception_in_the_validation_pass():
    model = small_bn_model()
    before = full_state(model)

    class BrokenVal:
        def __iter__(self):
            yield classification_batches(seed=3, n_batches=1)[0]
            raise ValueError("broken validation data")

    with pytest.raises(ValueError, match="broken validation"):
        range_test(
            model,
            ListLoader(classification_batches()),
            nn.functional.cross_entropy,
            val_loader=BrokenVal(),
            num_iters=5,
            progress=False,
        )
    assert_same_state(before, full_state(model))


# ------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_loss_stops_the_test(bad):
    model = small_bn_model()
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, target)
        return loss * bad if calls["n"] == 8 else loss

    result = range_test(
        model,
        ListLoader(classification_batches()),
        loss_fn,
        start_lr=1e-4,
        end_lr=1e-2,
        num_iters=50,
        diverge_factor=math.inf,
        progress=False,
    )
    assert result.diverged and result.stop_reason == "nan"
    assert len(result.lrs) == len(result.losses) == len(result.smoothed_losses) == 8
    # the raw loss, as it came: inf stays inf (it was recorded as NaN)
    assert math.isnan(result.losses[-1]) if math.isnan(bad) else result.losses[-1] == bad
    assert math.isnan(result.smoothed_losses[-1])
    assert all(math.isfinite(v) for v in result.losses[:-1])
    assert result.lrs[0] <= result.base_lr < result.max_lr <= result.lrs[-1]


@pytest.mark.filterwarnings("ignore:the range-test curve never improves")
def test_ratio_divergence_and_the_documented_ema():
    model = nn.Linear(3, 1)
    data = ListLoader([(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(3)])
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        loss = nn.functional.mse_loss(out, target) + 1.0
        return loss * (50.0 if calls["n"] > 30 else 1.0)

    result = range_test(
        model, data, loss_fn, start_lr=1e-5, end_lr=1e-4, num_iters=100, smooth=0.1, diverge_factor=4.0, progress=False
    )
    assert result.diverged and result.stop_reason == "diverged"
    assert 31 <= len(result.lrs) < 40
    # smoothed = bias-corrected EMA with weight `smooth` on the newest loss.
    avg, beta = 0.0, 0.9
    for k, (raw, sm) in enumerate(zip(result.losses, result.smoothed_losses), start=1):
        avg = beta * avg + 0.1 * raw
        assert math.isclose(sm, avg / (1 - beta**k), rel_tol=1e-12)
    assert result.smoothed_losses[-1] > 4.0 * min(result.smoothed_losses[:-1])
    assert all(s <= 4.0 * min(result.smoothed_losses[: i + 1]) for i, s in enumerate(result.smoothed_losses[:-1]))


def test_smooth_zero_means_raw():
    model = nn.Linear(3, 1)
    data = ListLoader([(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(3)])
    result = range_test(
        model,
        data,
        nn.MSELoss(),
        start_lr=1e-5,
        end_lr=1e-4,
        num_iters=6,
        smooth=0.0,
        diverge_factor=math.inf,
        progress=False,
    )
    assert result.smoothed_losses == result.losses


# -------------------------------------------------------------------------- metrics
def test_accuracy_metric_on_training_batches():
    result = classification_range_test(small_bn_model(), end_lr=0.3, num_iters=15, metric="accuracy")
    assert result.metric == "accuracy" and result.reading == "metric" and result.measured_on == "train"
    assert len(result.metrics) == len(result.lrs)
    assert all(0.0 <= a <= 1.0 for a in result.metrics)
    # The first batch's accuracy, computed by hand from the untouched model.
    model = small_bn_model()
    xb, yb = classification_batches()[0]
    model.train()
    with torch.no_grad():
        expected = (model(xb).argmax(-1) == yb).float().mean().item()
    assert result.metrics[0] == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:the range-test curve never improves")
def test_callable_metric_and_val_loader_every_step():
    val = ListLoader(classification_batches(seed=9, n_batches=3, bs=10))
    seen = {"calls": 0, "training": set()}
    model = small_bn_model()

    def neg_mae(out, target):
        seen["calls"] += 1
        seen["training"].add(model.training)
        return -float((out.softmax(-1).argmax(-1) - target).abs().float().mean())

    result = classification_range_test(
        model,
        end_lr=0.1,
        num_iters=7,
        metric=neg_mae,
        val_loader=val,
        diverge_factor=math.inf,
    )
    assert result.metric == "neg_mae" and result.measured_on == "val"
    assert seen["calls"] == 7 * 3  # the whole val loader, after every step (stride 1)
    assert seen["training"] == {False}  # evaluated in eval mode
    assert len(result.metrics) == 7 and all(v <= 0 for v in result.metrics)
    # With a val loader, `losses` are validation losses: the first one by hand.
    ref = small_bn_model()
    opt = torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9)
    xb, yb = classification_batches()[0]
    ref.train()
    nn.functional.cross_entropy(ref(xb), yb).backward()
    opt.step()
    ref.eval()
    with torch.no_grad():
        total = sum(nn.functional.cross_entropy(ref(x), y).item() * len(y) for x, y in val.batches)
    assert result.losses[0] == pytest.approx(total / 30, rel=1e-6)


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(start_lr=0.0), "start_lr"),
        (dict(start_lr=-1.0), "start_lr"),
        (dict(start_lr=math.nan), "start_lr"),
        (dict(end_lr=1e-6), "end_lr"),
        (dict(end_lr=math.inf), "end_lr"),
        (dict(num_iters=1), "num_iters"),
        (dict(num_iters=2.5), "num_iters"),
        (dict(num_iters=True), "num_iters"),
        (dict(sweep="log"), "sweep"),
        (dict(metric="f1"), "metric"),
        (dict(smooth=1.0), "smooth"),
        (dict(smooth=-0.1), "smooth"),
        (dict(diverge_factor=1.0), "diverge_factor"),
        (dict(diverge_factor=math.nan), "diverge_factor"),
        (dict(momentum=1.5), "momentum"),
        (dict(weight_decay=-1.0), "weight_decay"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    model = nn.Linear(2, 1)
    before = full_state(model)
    with pytest.raises(ValueError, match=name):
        range_test(model, ListLoader([(torch.randn(2, 2), torch.randn(2, 1))]), nn.MSELoss(), progress=False, **kwargs)
    assert_same_state(before, full_state(model))


def test_bad_batches_and_empty_loader():
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="inputs, targets"):
        range_test(model, [torch.randn(2, 2)], nn.MSELoss(), progress=False)
    with pytest.raises(ValueError, match="no batches"):
        range_test(model, [], nn.MSELoss(), progress=False)


# ----------------------------------------------------------- the result object
def _some_result():
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, target)
        return loss * math.nan if calls["n"] == 20 else loss

    return range_test(
        small_bn_model(),
        ListLoader(classification_batches()),
        loss_fn,
        start_lr=1e-4,
        end_lr=1.0,
        num_iters=30,
        sweep="exp",
        metric="accuracy",
        progress=False,
    )


def test_save_load_round_trip(tmp_path):
    result = _some_result()
    assert result.diverged and math.isnan(result.losses[-1])
    path = tmp_path / "rt.json"
    result.save(path)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    loaded = RangeTestResult.load(path)
    for name in ("lrs", "losses", "smoothed_losses", "metrics", "trend"):
        a, b = getattr(result, name), getattr(loaded, name)
        assert len(a) == len(b)
        assert all((math.isnan(u) and math.isnan(v)) or u == v for u, v in zip(a, b)), name
    for name in (
        "diverged",
        "base_lr",
        "max_lr",
        "sweep",
        "metric",
        "reading",
        "measured_on",
        "start_lr",
        "end_lr",
        "num_iters",
        "smooth",
        "diverge_factor",
        "stop_reason",
    ):
        assert getattr(result, name) == getattr(loaded, name), name
    assert loaded.to_dict() == result.to_dict()
    with pytest.raises(ValueError):
        RangeTestResult.from_dict({"lrs": []})


def test_plot_writes_a_png(tmp_path):
    result = _some_result()
    path = tmp_path / "rt.png"
    fig = result.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes[0].get_xscale() == "log"  # exponential sweep
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(lbl.startswith("base_lr") for lbl in labels) and any(lbl.startswith("max_lr") for lbl in labels)
    linear = _one_batch_range_test(num_iters=5, progress=False)
    assert linear.plot().axes[0].get_xscale() == "linear"


def test_step_size_advice():
    result = _some_result()
    assert result.step_size(35.5) == 142  # 4 epochs by default
    assert result.step_size(500, epochs_per_half_cycle=2) == 1000
    assert result.step_size(0.1, 1) == 1
    for bad in (0, -3, math.nan, "10"):
        with pytest.raises(ValueError, match="iters_per_epoch"):
            result.step_size(bad)


def test_from_range_test_uses_the_bounds():
    clr_ext = pytest.importorskip("clr_ext")
    if not hasattr(clr_ext.CyclicSGD, "from_range_test"):
        pytest.skip("CyclicSGD.from_range_test not built yet")
    result = _some_result()
    model = nn.Linear(2, 1)
    opt = clr_ext.CyclicSGD.from_range_test(model.parameters(), result, iters_per_epoch=50)
    group = opt.param_groups[0]
    assert group["base_lr"] == result.base_lr and group["max_lr"] == result.max_lr
    assert opt.step_size_up == result.step_size(50)


def _one_batch_range_test(num_iters, progress):
    """A linear sweep of a tiny regression over one batch (the plot and the progress bar)."""
    return range_test(
        nn.Linear(2, 1),
        ListLoader([(torch.randn(4, 2), torch.randn(4, 1))]),
        nn.MSELoss(),
        num_iters=num_iters,
        start_lr=1e-4,
        end_lr=1e-3,
        progress=progress,
    )


def test_progress_bar_runs():
    result = _one_batch_range_test(num_iters=4, progress=True)
    assert len(result.lrs) == 4


# ------------------------------------------------------- the reading of the curve
def test_suggestion_has_no_lag_on_a_known_curve():
    """A noisy loss curve with its minimum at step 120 of 200 (a slow fall, then a faster
    rise, in log scale): the suggestion must not be right of the minimum, where a causal EMA
    (lag ~1/smooth steps) would put it. It may be somewhat left of it: the reading is "where
    the curve stops improving" (within 5% of the total fall: 6 steps on this slow slope), and
    a centred window reaching into the steep side pulls the trend's minimum a few steps left."""
    rng = random.Random(0)
    n, k = 200, 120
    lrs = [1e-4 * (1e4 ** (i / (n - 1))) for i in range(n)]
    losses = [math.exp((k - i) * 0.02 if i <= k else (i - k) * 0.05) * (1 + 0.1 * rng.uniform(-1, 1)) for i in range(n)]
    base, mx, trend, reading = _suggest_bounds(lrs, losses, smooth=0.05, measured_on="val")
    i_max = lrs.index(mx)
    assert reading == "loss" and k - 16 <= i_max <= k
    # What a causal EMA would have said: clearly to the right.
    avg, ema = 0.0, []
    for j, v in enumerate(losses, start=1):
        avg = 0.95 * avg + 0.05 * v
        ema.append(avg / (1 - 0.95**j))
    assert min(range(n), key=ema.__getitem__) >= k + 8
    assert base == pytest.approx(max(mx / 4, lrs[0]), rel=0.5)
    # The training-batch reading is taken before the step: one step to the left.
    _, mx_train, _, _ = _suggest_bounds(lrs, losses, smooth=0.05, measured_on="train")
    assert lrs.index(mx_train) == i_max - 1


def test_suggestion_on_a_symmetric_valley():
    """No asymmetry, no noise: the trend's best point is the true minimum, and the loss is
    read at the valley's bottom: max_lr is exactly there, base_lr a quarter of it."""
    n, k = 150, 90
    lrs = [0.01 * (i + 1) for i in range(n)]
    losses = [math.exp(0.02 * abs(i - k)) for i in range(n)]
    base, mx, trend, _ = _suggest_bounds(lrs, losses, smooth=0.05, measured_on="val")
    assert min(range(n), key=trend.__getitem__) == k
    assert lrs.index(mx) == k and base == pytest.approx(mx / 4)


def test_valley_bottom_is_not_pulled_left_by_a_blow_up():
    """A slow fall, then a rise 20 times steeper (a blow-up): the wide centred window's
    minimum sits about a half-width (10 steps) left of the bottom; the bottom is placed by
    the window of half that width, which halves the shift."""
    n, k = 200, 150
    lrs = [1e-4 * (1e4 ** (i / (n - 1))) for i in range(n)]
    losses = [math.exp(0.01 * (k - i) if i <= k else 0.2 * (i - k)) for i in range(n)]
    _, mx, trend, _ = _suggest_bounds(lrs, losses, smooth=0.05, measured_on="val")
    assert min(range(n), key=trend.__getitem__) <= k - 8
    assert k - 6 <= lrs.index(mx) <= k


def test_suggestion_on_an_accuracy_curve():
    """The paper's reading: accuracy flat (chance), rising from step 30, levelling off at
    step 70, ragged and falling after 110. base_lr near the rise, max_lr where it levels."""
    rng = random.Random(1)
    n = 160
    lrs = [0.001 + 0.5 * i / (n - 1) for i in range(n)]

    def acc(i):
        if i < 30:
            v = 0.1
        elif i < 70:
            v = 0.1 + 0.8 * (i - 30) / 40
        elif i < 110:
            v = 0.9
        else:
            v = max(0.1, 0.9 - 0.02 * (i - 110))
        return v + 0.02 * rng.uniform(-1, 1)

    metrics = [acc(i) for i in range(n)]
    losses = [2.3 - 2 * m for m in metrics]
    base, mx, trend, reading = _suggest_bounds(lrs, losses, metrics, smooth=0.05, measured_on="val")
    assert reading == "metric"
    assert lrs[28] <= base <= lrs[38]
    assert lrs[62] <= mx <= lrs[75]


@pytest.mark.parametrize("seed", range(8))
def test_a_metric_still_improving_beyond_five_percent_of_its_rise_is_read_where_it_stops(seed):
    """A convex model's validation accuracy (softmax regression on the digits, bench/finders.py)
    rises fast, then goes on gaining its last few points over a wide range of LRs: here
    0.10 + 0.84 (1 - exp(-lr / 0.08)), on a linear sweep to 1, with little noise. Read where
    the trend came within 5% of its rise of its best (4.2 points), max_lr was ~0.25, where
    the accuracy is still 4 points below what higher LRs reach (and CLR from it lost a point
    against the best constant LR). Those points are far above the noise, and the curve never
    falls: max_lr is now where the rest of the gain is within the trend's noise, at most 1.5
    points below the best."""
    rng = random.Random(seed)
    n = 200
    lrs = [1e-4 + (1.0 - 1e-4) * i / (n - 1) for i in range(n)]

    def true_accuracy(lr):
        return 0.10 + 0.84 * (1.0 - math.exp(-lr / 0.08))

    metrics = [true_accuracy(lr) + rng.gauss(0.0, 0.005) for lr in lrs]
    losses = [2.3 - 2 * m for m in metrics]
    _, mx, _, _ = _suggest_bounds(lrs, losses, metrics, smooth=0.05, measured_on="val")
    assert true_accuracy(1.0) - true_accuracy(mx) <= 0.015
    assert mx <= 0.8  # not the end of the sweep: where the gain has become noise
    # The same curve collapsing past LR 0.7 (as a CNN's does): the last gains come at the
    # edge of stability and are not chased; max_lr is where it came within 5% of its rise.
    collapsing = [m if lr <= 0.7 else m - 3.0 * (lr - 0.7) for m, lr in zip(metrics, lrs)]
    _, mx_collapsing, _, _ = _suggest_bounds(lrs, losses, collapsing, smooth=0.05, measured_on="val")
    assert 0.18 <= mx_collapsing <= 0.3
    assert true_accuracy(0.7) - true_accuracy(mx_collapsing) >= 0.02


#: any curve (values of the log loss along the sweep), where it was measured, whether it is
#: read as a metric, the smoothing: hypothesis's strategies for the reading's properties
ANY_CURVE = (
    st.lists(st.floats(min_value=-5, max_value=5, allow_nan=False), min_size=2, max_size=80),
    st.sampled_from(["train", "val"]),
    st.booleans(),
    st.sampled_from([0.0, 0.05, 0.3]),
)


def curve_of(values, as_metric):
    """(lrs, losses, metrics) of a sweep from 1e-3 to 1 whose log losses are ``values``,
    with a metric (a sigmoid of them) when ``as_metric``."""
    n = len(values)
    lrs = [1e-3 * (1000 ** (i / (n - 1))) for i in range(n)]
    losses = [math.exp(v) for v in values]
    metrics = [1 / (1 + math.exp(-v)) for v in values] if as_metric else None
    return lrs, losses, metrics


@settings(max_examples=60, deadline=None)
@given(*ANY_CURVE)
def test_bounds_are_always_ordered_and_inside_the_sweep(values, measured_on, as_metric, smooth):
    n = len(values)
    lrs, losses, metrics = curve_of(values, as_metric)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base, mx, trend, _ = _suggest_bounds(lrs, losses, metrics, smooth=smooth, measured_on=measured_on)
    assert lrs[0] <= base < mx <= lrs[-1]
    assert len(trend) == n
