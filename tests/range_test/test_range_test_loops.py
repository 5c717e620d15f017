"""The range test in real training loops: gradient accumulation, AMP, step_fn with dict
batches, the CPU snapshot, AdamW, val_batches, discriminative LRs, the argument checks that
come before any training, and the single-LR suggestions."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_range_test import (
    ANY_CURVE,
    ListLoader,
    assert_same_state,
    classification_batches,
    classification_range_test,
    curve_of,
    full_state,
    prepared_model_and_optimizer,
    range_test_recording_group_lrs,
    small_bn_model,
)
from torch import nn

from clr_ext.range_test import SUGGEST_METHODS, RangeTestResult, range_test

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def regression_samples(seed=0, n=256, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        n, 1, generator=g, dtype=torch.float64
    )
    return x, y


def linear_model(d=5, out=1, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d, out).double()


def batches_of(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


# ------------------------------------------------------------------ accumulation
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_accumulation_of_4_batches_of_8_records_the_curve_of_batches_of_32(task):
    """A float64 linear model: accumulating 4 batches of 8 (each loss divided by 4) is the
    gradient of the mean over their 32 samples, and the recorded loss (the mean of the 4)
    is the loss of those 32: the same curve, and the same trained weights."""
    if task == "regression":
        x, y = regression_samples()
        loss_fn, metric, model_args = nn.MSELoss(), "loss", (5, 1)
    else:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(256, 5, generator=g, dtype=torch.float64)
        y = (x[:, :3] + 0.5 * torch.randn(256, 3, generator=g, dtype=torch.float64)).argmax(-1)
        loss_fn, metric, model_args = nn.functional.cross_entropy, "accuracy", (5, 3)
    runs = {}
    for size, accumulation in ((32, 1), (8, 4)):
        model = linear_model(*model_args)
        result = range_test(
            model,
            ListLoader(batches_of(x, y, size)),
            loss_fn,
            start_lr=1e-3,
            end_lr=0.3,
            num_iters=24,
            metric=metric,
            accumulation_steps=accumulation,
            diverge_factor=math.inf,
            restore=False,
            progress=False,
        )
        runs[accumulation] = (result, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    (big, w_big), (acc, w_acc) = runs[1], runs[4]
    assert len(big.lrs) == len(acc.lrs) == 24 and big.lrs == acc.lrs
    assert acc.losses == pytest.approx(big.losses, rel=1e-12, abs=0)
    torch.testing.assert_close(w_acc, w_big, rtol=1e-12, atol=1e-14)
    if metric == "accuracy":
        # Means of 4 accuracies out of 8 and accuracies out of 32: both exact binary fractions.
        assert acc.metrics == big.metrics
    # The curve really moved (the checks above are not of a frozen model).
    assert min(big.losses) < 0.5 * big.losses[0]


@pytest.mark.filterwarnings("ignore:the range-test curve never improves")
def test_accumulation_counts_batches_and_stops_on_a_nan_micro_batch():
    model, opt = prepared_model_and_optimizer()
    before = full_state(model, opt)
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, target)
        return loss * math.nan if calls["n"] == 3 * 4 + 2 else loss  # step 3 (0-based), 2nd batch

    result = range_test(
        model,
        ListLoader(classification_batches(n_batches=5)),
        loss_fn,
        start_lr=1e-3,
        end_lr=0.1,
        num_iters=20,
        optimizer=opt,
        accumulation_steps=4,
        progress=False,
    )
    assert calls["n"] == 14  # the rest of the NaN step's batches are not run
    assert result.diverged and result.stop_reason == "nan" and len(result.lrs) == 4
    assert math.isnan(result.losses[-1]) and all(math.isfinite(v) for v in result.losses[:-1])
    assert_same_state(before, full_state(model, opt))


# --------------------------------------------------------------------------- AMP
def test_amp_bfloat16_on_the_cpu_runs_and_restores_bit_exactly():
    model, opt = prepared_model_and_optimizer()  # BatchNorm, moved running stats, momentum state
    before = full_state(model, opt)
    dtypes = set()
    hook = model[0].register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    val = ListLoader(classification_batches(seed=4, n_batches=2, bs=12))

    def sweep(**amp):
        return classification_range_test(
            model, end_lr=1.0, num_iters=15, optimizer=opt, val_loader=val, metric="accuracy", **amp
        )

    result = sweep(amp=torch.bfloat16)
    hook.remove()
    assert dtypes == {torch.bfloat16}  # training and validation forwards ran under autocast
    assert len(result.lrs) >= 10 and all(math.isfinite(v) for v in result.losses[:10])
    assert_same_state(before, full_state(model, opt))
    # Not the fp32 curve: autocast really changed the arithmetic.
    ref = sweep()
    assert ref.losses[:3] != result.losses[:3]
    assert result.losses[:3] == pytest.approx(ref.losses[:3], rel=0.05)


def test_amp_float16_uses_a_grad_scaler(monkeypatch):
    scaled = []
    original = torch.amp.GradScaler.scale

    def spy(self, outputs):
        scaled.append(float(outputs.detach()))
        return original(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", spy)
    model = small_bn_model()
    before = full_state(model)
    result = classification_range_test(
        model,
        end_lr=0.3,
        num_iters=6,
        amp=torch.float16,
        accumulation_steps=2,
        diverge_factor=math.inf,
    )
    assert len(scaled) == 6 * 2  # every batch's (divided) loss went through the scaler
    # Each batch's loss divided by 2 was scaled; the recorded loss is the mean of the two.
    assert scaled[0] + scaled[1] == pytest.approx(result.losses[0], rel=1e-6)
    assert_same_state(before, full_state(model))


# --------------------------------------------------- step_fn, dict batches, CPU snapshot
class SelfLossNet(nn.Module):
    """A model that computes its own loss from a dict batch (as transformers models do)."""

    def __init__(self):
        super().__init__()
        self.body = small_bn_model()

    def forward(self, features, labels=None):
        logits = self.body(features)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def dict_batches(seed=0, n_batches=4, bs=16):
    return [{"features": x, "labels": y} for x, y in classification_batches(seed, n_batches, bs)]


@pytest.mark.filterwarnings("ignore:the range-test curve never improves")
def test_step_fn_with_dict_batches_and_a_cpu_snapshot_restores_bit_exactly():
    torch.manual_seed(0)
    net = SelfLossNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for b in dict_batches(seed=7, n_batches=2):  # non-trivial state: BN stats, momentum
        opt.zero_grad()
        net(**b)["loss"].backward()
        opt.step()
    net.body[3].eval()
    before = full_state(net, opt)
    seen = {"train": 0, "eval": 0, "grad_in_eval": set()}

    def step_fn(model, batch):
        assert isinstance(batch, dict) and set(batch) == {"features", "labels"}
        seen["train" if model.training else "eval"] += 1
        if not model.training:
            seen["grad_in_eval"].add(torch.is_grad_enabled())
        return model(**batch)["loss"]

    val = ListLoader(dict_batches(seed=9, n_batches=3, bs=10))
    result = range_test(
        net,
        ListLoader(dict_batches()),
        None,
        step_fn=step_fn,
        start_lr=1e-3,
        end_lr=0.5,
        num_iters=12,
        optimizer=opt,
        val_loader=val,
        snapshot="cpu",
        progress=False,
    )
    assert seen["train"] == len(result.lrs) and seen["eval"] == 3 * len(result.lrs)
    assert seen["grad_in_eval"] == {False}
    assert result.measured_on == "val" and result.metrics is None
    assert_same_state(before, full_state(net, opt))

    # The same numbers as the (inputs, targets) path with loss_fn: step_fn changes nothing else.
    ref = range_test(
        net.body,
        ListLoader(classification_batches()),
        nn.functional.cross_entropy,
        start_lr=1e-3,
        end_lr=0.5,
        num_iters=12,
        optimizer=torch.optim.SGD(net.body.parameters(), lr=0.05, momentum=0.9),
        val_loader=ListLoader(classification_batches(seed=9, n_batches=3, bs=10)),
        progress=False,
    )
    fresh = range_test(
        net,
        ListLoader(dict_batches()),
        step_fn=step_fn,
        start_lr=1e-3,
        end_lr=0.5,
        num_iters=12,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
        val_loader=val,
        progress=False,
    )
    assert fresh.losses == ref.losses and fresh.lrs == ref.lrs


def test_snapshot_cpu_matches_device_snapshot():
    results = {}
    for snap in ("device", "cpu"):
        model, opt = prepared_model_and_optimizer()
        before = full_state(model, opt)
        results[snap] = classification_range_test(
            model,
            end_lr=1.0,
            num_iters=10,
            optimizer=opt,
            snapshot=snap,
        )
        assert_same_state(before, full_state(model, opt))
    assert results["cpu"].losses == results["device"].losses


# --------------------------------------------------------------------------- AdamW
def test_adamw_sweeps_as_torch_adamw_with_the_planned_lrs():
    x, y = regression_samples(seed=2)
    batches = batches_of(x, y, 32)
    model = linear_model()
    result = range_test(
        model,
        ListLoader(batches),
        nn.MSELoss(),
        start_lr=1e-4,
        end_lr=1.0,
        num_iters=30,
        sweep="exp",
        optimizer="adamw",
        momentum=0.85,
        weight_decay=0.01,
        diverge_factor=math.inf,
        progress=False,
    )
    # By hand: torch.optim.AdamW(betas=(momentum, 0.999)), the LR set before each step.
    ref_model = linear_model()
    adamw = torch.optim.AdamW(ref_model.parameters(), lr=1e-4, betas=(0.85, 0.999), weight_decay=0.01)
    expected = []
    for i, lr in enumerate(result.lrs):
        for group in adamw.param_groups:
            group["lr"] = lr
        xb, yb = batches[i % len(batches)]
        loss = nn.MSELoss()(ref_model(xb), yb)
        expected.append(loss.item())
        adamw.zero_grad(set_to_none=True)
        loss.backward()
        adamw.step()
    assert result.losses == expected
    assert result.losses[-1] != result.losses[0]
    assert result.lrs[0] <= result.base_lr < result.max_lr <= result.lrs[-1]


def test_given_adamw_with_discriminative_lrs_keeps_the_ratios():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    result, opt, second_group_lrs = range_test_recording_group_lrs(
        model,
        ListLoader([(torch.randn(8, 4), torch.randn(8, 1))] * 3),
        torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-4}, {"params": model[2].parameters()}], lr=1e-3),
        start_lr=1e-5,
        end_lr=1e-1,
        num_iters=8,
        sweep="exp",
    )
    assert second_group_lrs == pytest.approx([10 * lr for lr in result.lrs], rel=1e-12)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]


# ----------------------------------------------------------------------- val_batches
def test_val_batches_bounds_the_measurement():
    val = ListLoader(classification_batches(seed=11, n_batches=5, bs=8))
    batches_read = []

    class CountingVal:
        def __iter__(self):
            for k, b in enumerate(val.batches):
                batches_read.append(k)
                yield b

    model = small_bn_model()
    result = classification_range_test(
        model,
        end_lr=0.1,
        num_iters=6,
        val_loader=CountingVal(),
        val_batches=2,
        metric="accuracy",
        diverge_factor=math.inf,
    )
    assert batches_read == [0, 1] * 6
    # The first measurement by hand: after one SGD step, the first 2 batches (16 samples).
    ref = small_bn_model()
    sgd = torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9)
    xb, yb = classification_batches()[0]
    nn.functional.cross_entropy(ref(xb), yb).backward()
    sgd.step()
    ref.eval()
    with torch.no_grad():
        x = torch.cat([b[0] for b in val.batches[:2]])
        y = torch.cat([b[1] for b in val.batches[:2]])
        out = ref(x)
        loss = nn.functional.cross_entropy(out, y).item()
        acc = (out.argmax(-1) == y).float().mean().item()
    assert result.losses[0] == pytest.approx(loss, rel=1e-6)
    assert result.metrics[0] == pytest.approx(acc)


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(accumulation_steps=0), "accumulation_steps"),
        (dict(accumulation_steps=-2), "accumulation_steps"),
        (dict(accumulation_steps=1.5), "accumulation_steps"),
        (dict(accumulation_steps=True), "accumulation_steps"),
        (dict(amp=torch.float32), "amp"),
        (dict(amp="bf16"), "amp"),
        (dict(step_fn=lambda m, b: m(b[0]).sum(), metric="accuracy"), "metric"),
        (dict(step_fn=lambda m, b: m(b[0]).sum(), metric=lambda o, t: 0.0), "metric"),
        (dict(snapshot="gpu"), "snapshot"),
        (dict(snapshot=None), "snapshot"),
        (dict(val_batches=0), "val_batches"),
        (dict(val_batches=2), "val_batches"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(optimizer="adamw", momentum=1.0), "momentum"),
        (dict(loss_fn=None), "loss_fn"),
    ],
)
def test_bad_combinations_raise_value_error_before_training(kwargs, name):
    model, opt = prepared_model_and_optimizer()
    before = full_state(model, opt)
    loader = ListLoader(classification_batches())
    kwargs = dict(kwargs)
    loss_fn = kwargs.pop("loss_fn", nn.functional.cross_entropy)
    with pytest.raises(ValueError, match=name):
        range_test(model, loader, loss_fn, progress=False, **kwargs)
    assert loader.passes == 0  # nothing was trained
    assert_same_state(before, full_state(model, opt))


def test_given_optimizer_with_undefined_ratios_is_refused():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[1].parameters()}], lr=0.1)
    loader = ListLoader([(torch.randn(4, 2), torch.randn(4, 1))])
    with pytest.raises(ValueError, match="optimizer"):
        range_test(model, loader, nn.MSELoss(), optimizer=opt, progress=False)
    assert loader.passes == 0


# ------------------------------------------------------------------- suggestions
def _curve_result(measured_on="val"):
    """A known curve: log-loss flat, falling fastest at step 60 (a logistic drop), bottom
    at 150, then a blow-up."""
    n = 180
    lrs = [1e-5 * (1e5 ** (i / (n - 1))) for i in range(n)]
    losses = []
    for i in range(n):
        log_loss = 2.0 - 3.0 / (1.0 + math.exp(-(i - 60) / 8.0)) - 0.004 * i
        if i > 150:
            log_loss += 0.15 * (i - 150)
        losses.append(math.exp(log_loss))
    return RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=losses,
        metrics=None,
        diverged=True,
        base_lr=0.0,
        max_lr=0.0,
        measured_on=measured_on,
        sweep="exp",
        smooth=0.05,
    )


def test_suggest_methods_on_a_known_curve():
    r = _curve_result()
    lrs = r.lrs
    # steepest: the upper end of the stretch within 2% of the steepest rate, 2-3 steps past
    # the steepest point of this logistic (its slope eases 2% within 0.14 of its scale, 8 steps).
    assert 60 <= lrs.index(r.suggest("steepest")) <= 64
    valley = lrs.index(r.suggest("valley"))
    assert 60 <= valley <= 120  # about halfway along the fall, which runs from ~0 to ~148
    from clr_ext.range_test import _suggest_bounds

    base, mx, _, _ = _suggest_bounds(lrs, r.losses, smooth=0.05, measured_on="val")
    assert 140 <= lrs.index(mx) <= 150
    # min/10: a tenth of where the loss stops falling, the curve's bottom (150), which the
    # centred trend reads a few steps early (its window meets the blow-up first); the
    # trailing mean turns where the curve crosses it, a step or two past the bottom.
    assert 149 <= lrs.index(r.suggest("min/10") * 10) <= 152
    # Training-batch readings move every suggestion one step left.
    t = _curve_result("train")
    assert t.suggest("steepest") == lrs[lrs.index(r.suggest("steepest")) - 1]
    assert r.suggest("clr") == (r.base_lr, r.max_lr)


@pytest.fixture(scope="module")
def real_results():
    one_thread_before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    x, y = regression_samples(seed=5)
    for sweep, end in (("exp", 10.0), ("linear", 1.0)):
        out.append(
            range_test(
                linear_model(),
                ListLoader(batches_of(x, y, 32)),
                nn.MSELoss(),
                start_lr=1e-4,
                end_lr=end,
                num_iters=60,
                sweep=sweep,
                progress=False,
            )
        )
    out.append(
        classification_range_test(
            small_bn_model(),
            end_lr=3.0,
            num_iters=40,
            metric="accuracy",
            val_loader=ListLoader(classification_batches(seed=2, n_batches=2)),
        )
    )
    torch.set_num_threads(one_thread_before)
    return out


@pytest.mark.filterwarnings("ignore:the range-test curve never improves")
def test_every_suggestion_is_inside_the_swept_range(real_results):
    for r in real_results:
        assert r.suggest() == (r.base_lr, r.max_lr) == r.suggest("clr")
        for method in SUGGEST_METHODS[1:]:
            lr = r.suggest(method)
            assert isinstance(lr, float) and r.lrs[0] <= lr <= r.lrs[-1], (method, lr)
            assert r.start_lr <= lr <= r.end_lr
        # A saved and loaded result suggests the same.
        again = RangeTestResult.from_dict(r.to_dict())
        assert [again.suggest(m) for m in SUGGEST_METHODS] == [r.suggest(m) for m in SUGGEST_METHODS]


def test_suggest_rejects_unknown_methods_and_plot_marks_them(tmp_path, real_results):
    r = real_results[0]
    with pytest.raises(ValueError, match="method"):
        r.suggest("fastest")
    with pytest.raises(ValueError, match="suggest"):
        r.plot(suggest="fastest")
    fig = r.plot(tmp_path / "s.png", suggest=("steepest", "valley", "min/10"))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for method in ("steepest", "valley", "min/10"):
        assert any(lbl.startswith(f"{method} = ") for lbl in labels), labels
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    labels = [t.get_text() for t in r.plot(suggest="valley").axes[0].get_legend().get_texts()]
    assert sum(lbl.startswith(("steepest", "valley", "min/10")) for lbl in labels) == 1


def test_suggest_on_nan_curves_stays_in_range():
    lrs = [1e-3, 2e-3, 3e-3]
    r = RangeTestResult(
        lrs=lrs,
        losses=[1.0, math.nan, math.nan],
        smoothed_losses=[1.0, math.nan, math.nan],
        metrics=None,
        diverged=True,
        base_lr=1e-3,
        max_lr=2e-3,
    )
    with pytest.warns(RuntimeWarning):
        for method in SUGGEST_METHODS[1:]:
            assert lrs[0] <= r.suggest(method) <= lrs[-1]


@settings(max_examples=60, deadline=None)
@given(*ANY_CURVE, st.integers(min_value=0, max_value=3))
def test_every_suggestion_is_inside_the_sweep_on_any_curve(values, measured_on, as_metric, smooth, nans):
    n = len(values)
    lrs, losses, metrics = curve_of(values, as_metric)
    losses[n - min(nans, n - 1) :] = [math.nan] * min(nans, n - 1)  # a NaN tail, as after a blow-up
    r = RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=losses,
        metrics=metrics,
        diverged=nans > 0,
        base_lr=lrs[0],
        max_lr=lrs[-1],
        measured_on=measured_on,
        smooth=smooth,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for method in SUGGEST_METHODS[1:]:
            lr = r.suggest(method)
            assert lrs[0] <= lr <= lrs[-1], (method, lr)
