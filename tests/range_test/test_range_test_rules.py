"""The single-LR rules on any sweep, the defaults that fit the optimizer, the warnings about
curves that cannot be read, and ``from_range_test`` for a run of a given length."""

import json
import math
import pathlib
import random
import statistics
import warnings

import pytest
import torch
from test_range_test import ListLoader, classification_batches, least_squares, small_bn_model
from torch import nn

import clr_ext
from clr_ext.range_test import SUGGEST_METHODS, RangeTestResult, range_test

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------- known curves
def sweep(kind, n, start, end):
    if kind == "exp":
        return [start * (end / start) ** (i / (n - 1)) for i in range(n)]
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def loss_of_lr(lr, noise):
    """A range-test curve as a function of the LR alone: flat at ln(10) (untrained), falling
    by a third around LR 0.03 (steepest there per log-LR), bottom near 0.3, then a blow-up."""
    x = math.log10(lr)
    log_loss = math.log(2.3) - 0.45 / (1.0 + math.exp(-(x - math.log10(0.03)) / 0.15))
    if x > math.log10(0.3):
        log_loss += 3.0 * (x - math.log10(0.3))
    return math.exp(log_loss + noise)


def curve(kind="exp", n=100, start=1e-7, end=10.0, seed=0, noise=0.01, measured_on="val"):
    rng = random.Random(seed)
    lrs = sweep(kind, n, start, end)
    losses = [loss_of_lr(lr, rng.gauss(0.0, noise)) for lr in lrs]
    return lrs, losses


def result_of(lrs, losses, kind="exp", measured_on="val"):
    return RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=losses,
        metrics=None,
        diverged=False,
        base_lr=lrs[0],
        max_lr=lrs[-1],
        sweep=kind,
        measured_on=measured_on,
    )


@pytest.mark.parametrize("seed", range(4))
def test_valley_on_an_exponential_sweep_with_a_flat_noisy_start(seed):
    """fastai's sweep (1e-7..10, 100 steps): the curve is flat and noisy for 6 decades. The
    longest decreasing subsequence of the trend strings noise points on that flat start
    together; read from its first point, "valley" fell 2.5 decades below the descent
    (8e-5 here). Measured from where learning starts, it lies in the descent (0.003-0.1)."""
    r = result_of(*curve(seed=seed))
    assert 0.003 <= r.suggest("valley") <= 0.1
    assert 0.01 <= r.suggest("steepest") <= 0.06  # the logistic's centre, 0.03
    assert r.suggest("min/10") == pytest.approx(r.lrs[r.lrs.index(r.suggest("min/10") * 10)] / 10)


@pytest.mark.parametrize("measured_on", ["val", "train"])
def test_a_noisy_first_point_is_trimmed(measured_on):
    """The trend's window shrinks to one point at the ends, so its first slope is the raw
    noise: a first loss 30% high made "steepest" return start_lr (1e-7) and "valley" 7e-5.
    The rules read the curve less a half-width of the trend at each end."""
    lrs, losses = curve(seed=1)
    losses[0] *= 1.3
    r = result_of(lrs, losses, measured_on=measured_on)
    assert 0.01 <= r.suggest("steepest") <= 0.06
    assert 0.003 <= r.suggest("valley") <= 0.1
    for method in SUGGEST_METHODS[1:]:
        assert r.suggest(method) > 100 * lrs[0]


def test_rules_agree_on_linear_and_exponential_sweeps_of_the_same_curve():
    """The same loss-vs-LR curve swept linearly (the paper's test) and geometrically: every
    single-LR rule reads about the same LR from both (within a factor of 2.5), inside the
    descent (a tenth to nine tenths of its fall: 0.008-0.1), not near the bottom of the
    valley (about 0.3). Before, the linear sweep's
    readings were 0.07-0.15: the trend's window (+-10 points) and the trim (a tenth of the
    points) each spanned the descent's decade at the low end of a linear sweep, and valley
    went halfway in points, i.e. to the arithmetic mean of the LRs."""
    for n, start in ((200, 1e-3), (100, 1e-5)):
        lin = result_of(*curve("linear", n=n, start=start, end=1.0), kind="linear")
        exp = result_of(*curve("exp", n=100, start=1e-5, end=1.0))
        for method in SUGGEST_METHODS[1:]:
            a, b = lin.suggest(method), exp.suggest(method)
            assert abs(math.log(a / b)) <= math.log(2.5), (method, a, b)
            assert 0.005 <= a <= 0.1 and 0.005 <= b <= 0.1, (method, a, b)


def test_short_curves_are_read_whole():
    """Too short to trim: the rules read every point and stay inside the sweep."""
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    r = result_of(lrs, [2.0, 1.5, 1.0, 3.0])
    for method in SUGGEST_METHODS[1:]:
        assert lrs[0] <= r.suggest(method) <= lrs[-1]


# ------------------------------------------------- a blow-up past a known bottom
BOTTOM = 0.5


def blowup_curve(kind, seed, spikes, n=100, noise=0.05):
    """A range test whose loss falls until LR ``BOTTOM`` (still falling there, as a real
    model's does) and then blows up, much faster than it fell; with ``spikes``, a third of
    the points past the bottom jump 3-20x (the erratic losses of a diverging run).
    ``noise``: the SD of the log-loss's noise."""
    rng = random.Random(seed)
    lrs = sweep(kind, n, 1e-7, 10.0) if kind == "exp" else sweep(kind, n, 1e-5, 1.0)
    losses = []
    for lr in lrs:
        x = math.log10(lr)
        log_loss = math.log(2.3) - 0.8 / (1.0 + math.exp(-(x - math.log10(0.1)) / 0.3))
        if lr > BOTTOM:
            log_loss += 4.0 * (x - math.log10(BOTTOM))
            if spikes and rng.random() < 0.3:
                log_loss += rng.uniform(1.0, 3.0)
        losses.append(math.exp(log_loss + rng.gauss(0.0, noise)))
    return lrs, losses


def fastai_minimum(lrs, losses):
    """fastai's ``minimum`` suggestion (fastai 2.8 ``lr_find``): the losses smoothed by the
    Recorder's debiased EMA (beta 0.98), the first tenth and the last 5 points dropped, a
    tenth of the LR at the smallest smoothed loss."""
    avg, smooth = 0.0, []
    for k, loss in enumerate(losses, 1):
        avg = 0.98 * avg + 0.02 * loss
        smooth.append(avg / (1 - 0.98**k))
    keep = range(len(lrs) // 10, len(lrs) - 5)
    return lrs[min(keep, key=smooth.__getitem__)] / 10


@pytest.mark.parametrize("measured_on", ["val", "train"])
@pytest.mark.parametrize("spikes", [False, True])
@pytest.mark.parametrize("kind", ["exp", "linear"])
def test_min_over_10_is_a_tenth_of_where_the_loss_stops_falling(kind, spikes, measured_on):
    """The blow-up past the bottom is steep (and spiky): a centred window straddling it is
    lifted a half-width before the loss stops falling, so "min/10" read at the centred
    trend's bottom was 2-3x low on the exponential sweep (0.017-0.024 for 0.05) and 1.1-1.3x
    on the linear one. Read on the trailing mean it is within 1.6x of a tenth of the true
    bottom, and never further from it than fastai's ``minimum`` (computed here from its
    formula) plus one step of the exponential sweep (1.2x)."""
    truth = BOTTOM / 10
    for seed in range(6):
        lrs, losses = blowup_curve(kind, seed, spikes)
        got = result_of(lrs, losses, kind, measured_on).suggest("min/10")
        fastai = fastai_minimum(lrs, losses)
        assert truth / 1.6 <= got <= truth * 1.6, (seed, got)
        assert abs(math.log(got / truth)) <= abs(math.log(fastai / truth)) + math.log(1.25), (seed, got, fastai)


@pytest.mark.parametrize("method", SUGGEST_METHODS[1:])
@pytest.mark.parametrize("kind", ["exp", "linear"])
def test_every_rule_reads_below_the_bottom_whatever_the_blow_up(kind, method):
    """Every single-LR rule reads an LR in the descent, below the bottom, and the blow-up's
    spikes move none of them by more than 1.6x (``steepest``: 1.8x; its slope is taken
    across half the trend's width, and the spikes lift the centred trend up to a
    half-width before the bottom, so the steepest stretch can end a step or two lower:
    toward lower, safer LRs; the price of a slope that the noise does not place)."""
    limit = 1.8 if method == "steepest" else 1.6
    for seed in range(6):
        calm = result_of(*blowup_curve(kind, seed, spikes=False), kind).suggest(method)
        spiky = result_of(*blowup_curve(kind, seed, spikes=True), kind).suggest(method)
        for got in (calm, spiky):
            assert 0.005 <= got < BOTTOM, (seed, got)
        assert abs(math.log(spiky / calm)) <= math.log(limit), (seed, calm, spiky)


@pytest.mark.parametrize("spikes", [False, True])
def test_valley_reaches_to_where_the_loss_stops_falling(spikes):
    """The loss falls from about 0.02 (a tenth of its fall) to the bottom at 0.5, then blows
    up: halfway along that valley in log(LR) is 0.1. The centred trend's bottom, lifted by
    the blow-up, sits at 0.24, and halfway to it (from the run's start) was 0.026-0.038, 3-4x
    low; the valley now reaches to where the loss stops falling (the trailing mean's turn,
    which "min/10" reads): 0.037-0.055, for every seed, calm or spiky (not all the way: the
    longest decreasing run still starts on the trend before the onset)."""
    for seed in range(8):
        lrs, losses = low_noise_blowup_curve(seed, spikes)
        got = result_of(lrs, losses).suggest("valley")
        assert 0.035 <= got <= 0.2, (seed, got)


def low_noise_blowup_curve(seed, spikes, noise=0.01):
    """:func:`blowup_curve` on the exponential sweep, with a hundredth of noise."""
    return blowup_curve("exp", seed, spikes, noise=noise)


# ------------------------------------------ a long straight fall, a floor, no turn
def straight_fall_curve(kind, seed, noise=0.1, floor_noise=None, n=100):
    """A convex model's range test: flat, then the log-loss falls along a straight line in
    log(LR) over two decades (0.003 to 0.3: every point of it is "steepest"), then a floor,
    and a blow-up from LR 3 (beyond a linear sweep's end, 1). ``floor_noise``: noise that
    grows along the fall's last decade to that on the floor, as a real curve's does."""
    rng = random.Random(seed)
    lrs = sweep(kind, n, 1e-7, 10.0) if kind == "exp" else sweep(kind, n, 1e-5, 1.0)
    losses = []
    for lr in lrs:
        x = math.log10(lr)
        log_loss = math.log(2.3) - 1.0 * min(max(x - math.log10(0.003), 0.0), 2.0)
        if lr > 3.0:
            log_loss += 4.0 * (x - math.log10(3.0))
        scale = noise
        if floor_noise is not None:
            scale += (floor_noise - noise) * min(max(x - math.log10(0.03), 0.0), 1.0)
        losses.append(math.exp(log_loss + rng.gauss(0.0, scale)))
    return lrs, losses


@pytest.mark.parametrize("noise", [0.05, 0.1])
@pytest.mark.parametrize("kind", ["exp", "linear"])
def test_steepest_on_a_straight_fall_is_read_on_the_line_not_on_its_noise(kind, noise):
    """The log-loss falls along a straight line from LR 0.003 to 0.3. The neighbours'
    difference of the trend is the raw noise of four points, so its argmax landed anywhere
    on the line (0.02-0.05 on the exponential sweep, seed by seed), and on a linear sweep
    (steps of a hundredth of a decade near LR 1) from 0.06 to 0.9, in the floor above it.
    Across half the trend's width the slopes form a broad hump that the trend's window
    rounds at the line's ends; a parabola through the slopes around the steepest reads it
    on the line's upper half, for every seed: 0.031-0.066 (exp), 0.05-0.16 (linear). On a
    linear sweep the steepest slope is sought where the sweep is dense enough in log(LR)
    to fit: the slopes of its first points (0.01, 0.02, a factor of 2 apart) are
    differences of single points, and one of them read 0.02."""
    for seed in range(8):
        got = result_of(*straight_fall_curve(kind, seed, noise), kind).suggest("steepest")
        assert 0.03 <= got <= 0.3, (seed, got)


def test_min_over_10_without_a_turn_warns_and_reads_the_valley():
    """A linear sweep to 1 of a model that trains at every LR of it: the loss falls and
    keeps to its floor, it never turns up. "min/10" read a tenth of wherever noise put the
    trailing mean's minimum on the floor (0.08-0.1 here, a tenth of end_lr); there is no
    minimum to take a tenth of: it warns and gives "valley", which reads the straight fall
    (0.003-0.3). A curve that turns up (the same model swept past its edge) keeps its
    tenth, without a warning, and so does a test that stopped on a blow-up."""
    for seed in range(4):
        r = result_of(*straight_fall_curve("linear", seed, 0.05, floor_noise=0.3), kind="linear")
        with pytest.warns(RuntimeWarning, match="never turns up"):
            got = r.suggest("min/10")
        assert got == r.suggest("valley") and 0.05 <= got <= 0.3, (seed, got)
    turned = result_of(*straight_fall_curve("exp", 0, 0.05, floor_noise=0.3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = turned.suggest("min/10")
    assert 0.1 <= got <= 0.5, got
    stopped = result_of(*straight_fall_curve("linear", 0, 0.05, floor_noise=0.3), kind="linear")
    stopped.diverged = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert stopped.suggest("min/10") < 0.11
    # A curve that only rises has no valley to climb out of: no such warning, a tenth of its
    # start (kept inside the sweep), as before.
    lrs = sweep("exp", 50, 1e-3, 1.0)
    rising = result_of(lrs, [1.0 + 0.01 * i for i in range(50)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert rising.suggest("min/10") == lrs[0]


# The range tests of softmax regression on the digits' pixels (bench/finders.py, finder run
# 1 of the exponential sweep, run 0 of the linear one; saved with RangeTestResult.save). The
# best constant LRs of its grid (3 seeds, 4 epochs) lie in 0.29-0.51 (95.6%); 0.2-0.65 is
# within a point of them, 0.09 is 1.6 below, 0.74-0.89 1.1-2.3 below.
DATA = pathlib.Path(__file__).parent / "data"


@pytest.mark.parametrize("name, before", [("softmax_exp.json", 0.739), ("softmax_linear.json", 0.879)])
def test_steepest_on_a_real_convex_curve(name, before):
    """The loss falls along a near-straight line in log(LR) over two decades: the
    neighbours' argmax read the noise (``before``); across half the trend's width it is
    within a point of the best constant LR."""
    r = RangeTestResult.load(DATA / name)
    assert 0.2 <= r.suggest("steepest") <= 0.65


def test_steepest_is_not_a_slope_cut_short_by_the_end_of_the_curve():
    """Finder run 89 of softmax regression's exponential sweep: a convex model's training
    loss falls on to the sweep's end (2.3 at LR 0.003, 0.2 at 4, 0.08 at 10), in log(LR)
    about as steeply past LR 1 as in its main fall. The slope at the read window's last
    point compares half the points of the others and is the noisiest; it came out steepest,
    and "steepest" read 3.3 (11 points below the best constant LRs, 0.27-0.32). The
    steepest point is sought among the slopes of full width."""
    r = RangeTestResult.load(DATA / "softmax_exp_falls_to_the_end.json")
    assert 0.2 <= r.suggest("steepest") <= 0.65


# Constant LRs within one point of the best one (4 epochs; bench/finders.py's response: 80
# training seeds for the CNN, 200 for the MLP, 8 and 16 LRs per decade, interpolated linearly
# in log(LR) between them).
WITHIN_A_POINT = {"digits": (0.045, 0.113), "mlp": (0.034, 0.094)}


def test_steepest_on_convex_falls_is_read_near_the_best_lrs():
    """Twenty finder runs of softmax regression: the loss falls over two decades, and the
    slopes near the steepest differ by less than their noise. The last of the run of slopes
    within two standard errors of the steepest read 0.12-0.74, 4 of 20 runs outside
    0.18-0.5, the LRs within 0.2 points of the best constant LR (0.27; bench/finders.py's
    response, 200 training seeds). The upper end of the stretch read on a parabola through
    the slopes around the steepest: 2 of 20, none below."""
    got = saved_run_suggestions("softmax", "steepest", saved="softmax_runs_exp.json")
    assert min(got) >= 0.18, sorted(got)
    assert sum(0.18 <= lr <= 0.5 for lr in got) >= 18, sorted(got)


def saved_run_suggestions(task, method, saved="short_descents_exp.json"):
    """``method``'s LR on each saved exponential finder run of ``task`` (the ten first
    ones of the digits CNN or the MLP, unless ``saved`` names another file)."""
    data = json.loads((DATA / saved).read_text())
    got = []
    for run in data[task]:
        n = len(run["losses"])
        r = result_of(data["lrs"][:n], run["losses"], measured_on="train")
        r.diverged = run["stopped"]
        got.append(r.suggest(method))
    return got


@pytest.mark.parametrize("task", sorted(WITHIN_A_POINT))
def test_steepest_on_a_short_descent_is_read_at_its_steepest_point(task):
    """A small network's loss falls over one decade and blows up right after its bottom
    (the digits CNN, the MLP: ten finder runs each). The slope read across the curve's whole
    window (blocks of points 1.7 decades apart) straddled the descent and the rise past it
    and was steepest left of the steepest point: the median run read 0.042 on the CNN (1 run
    in 10 within a point of the best constant LR) and 0.031 on the MLP (3 in 10). On a
    narrower trend it reads inside that band on most runs, its median too."""
    lo, hi = WITHIN_A_POINT[task]
    got = saved_run_suggestions(task, "steepest")
    assert lo <= statistics.median(got) <= hi, got
    assert sum(lo <= lr <= hi for lr in got) >= 7, got


def test_valley_is_read_halfway_along_the_valley():
    """fastai places its point at ``L // 3 + L // 6`` of a run of ``L`` points: meant as
    halfway, but the integer division puts it at 0.36-0.45 of a run of 10-20 points, the
    lengths of a small network's descent. clr_ext measures the valley in log(LR), from the
    run's start to where the loss stops falling, so the count of points is no part of it:
    halfway is half. On the MLP's ten finder runs the median was 0.042, a third below the
    best constant LR (0.056); halfway, 0.055."""
    got = saved_run_suggestions("mlp", "valley")
    assert abs(math.log(statistics.median(got) / 0.056)) <= math.log(1.2), got


def drifting_start_curve(seed, noise=0.007):
    """A small network's shallow valley (its log-loss falls by 0.12 around LR 0.03, then
    blows up past 0.1) after a flat start that drifts down by 0.015 between 1e-6 and 1e-2:
    the digits CNN's shape on exponential finder runs."""
    rng = random.Random(seed)
    lrs = sweep("exp", 100, 1e-7, 10.0)
    losses = []
    for lr in lrs:
        x = math.log10(lr)
        log_loss = math.log(2.3) - 0.015 * min(max((x + 6) / 4, 0.0), 1.0)
        log_loss -= 0.12 / (1.0 + math.exp(-(x - math.log10(0.03)) / 0.12))
        log_loss += 2.0 * max(x + 1.0, 0.0)
        losses.append(math.exp(log_loss + rng.gauss(0.0, noise)))
    return lrs, losses


def test_valley_starts_at_the_descent_not_in_a_drift_before_it():
    """The onset, a tenth of the valley's depth, is reached in the slow drift of a flat
    start when the valley is shallow, decades before the descent: "valley", halfway from
    there, read 0.001-0.004 on this curve. The descent starts no lower than where the loss
    falls at a tenth of its steepest rate: 0.010-0.018 (the slope's window smears the foot
    of so sharp a descent a few points early)."""
    for seed in range(10):
        got = result_of(*drifting_start_curve(seed)).suggest("valley")
        assert 0.008 <= got <= 0.1, (seed, got)


@pytest.mark.parametrize("task", sorted(WITHIN_A_POINT))
def test_valley_on_a_short_descent_is_never_far_below_the_best_lrs(task):
    """Finder run 7 of the digits CNN drifts down 0.01 before its descent (a seventh of its
    depth): "valley" read 0.018, a third of the lowest LR within a point of the best
    (88% test accuracy where the best constant LR gives 94.5%), now 0.055. No saved run
    reads below two thirds of that band."""
    lo, _ = WITHIN_A_POINT[task]
    got = saved_run_suggestions(task, "valley")
    assert min(got) >= lo / 1.5, got


@pytest.mark.parametrize("method", ["min/10", "valley"])
def test_the_turn_is_not_read_past_the_first_spikes_of_a_blow_up(method):
    """Three finder runs of the digits CNN whose loss falls on to LR 0.3-0.5, spikes, dips
    again, then blows up. The turn was the minimum of a boxcar of the trend's 21 points,
    which falls while the point entering it is below the one leaving: the descent is
    shorter than the window, and the points leaving it come from the flat start, above
    everything up to the blow-up, dip included. "min/10" read 0.13-0.16 and "valley"
    0.12-0.17 (88% test accuracy at 0.156, 86% at 0.167, against 94.5% at the best constant
    LR). The exponential mean falls only while the point entering is below the mean."""
    got = saved_run_suggestions("digits", method, saved="spiky_bottoms_exp.json")
    assert all(0.036 <= lr <= 0.1 for lr in got), got


def test_valley_on_a_real_linear_sweep_reaches_back_over_the_descent():
    """fastai's valley starts its run ``L`` points before its end, ``L`` the longest
    decreasing run's length: on the exponential sweep it was written for, ``L`` steps of
    log(LR). On a linear sweep to 1 those points are a hundredth of a decade apart near the
    end: the run reached back a fraction of a decade and "valley" was read near the bottom,
    0.465 (softmax regression's best constant LRs: 0.27-0.32; 0.47 trains 0.2 points below
    them). Each point of the run now counts for its own spacing in log(LR)."""
    r = RangeTestResult.load(DATA / "softmax_linear.json")
    assert 0.2 <= r.suggest("valley") <= 0.4


def test_min_over_10_on_a_real_curve_without_a_turn():
    """The linear sweep to 1 never reaches softmax regression's edge: "min/10" was 0.088
    (a tenth of the sweep's end); now a warning and "valley"."""
    r = RangeTestResult.load(DATA / "softmax_linear.json")
    with pytest.warns(RuntimeWarning, match="never turns up"):
        assert 0.2 <= r.suggest("min/10") <= 0.65


# ------------------------------------------------------------------ the defaults
def tiny_classifier():
    return small_bn_model(), ListLoader(classification_batches()), nn.functional.cross_entropy


def test_adamw_gets_a_geometric_sweep_at_its_own_scale():
    """optimizer="adamw" with no sweep given: exp 1e-7..1 (it used to sweep SGD's linear
    1e-5..1, nearly every step past where AdamW blows up)."""
    model, loader, loss_fn = tiny_classifier()
    r = range_test(model, loader, loss_fn, optimizer="adamw", num_iters=30, progress=False)
    assert (r.sweep, r.start_lr, r.end_lr) == ("exp", 1e-7, 1.0)
    assert r.lrs[0] == 1e-7 and r.lrs[1] == pytest.approx(1e-7 * 10 ** (7 / 29))
    # A given torch AdamW is swept the same way; SGD keeps the paper's linear sweep.
    model, loader, loss_fn = tiny_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert range_test(model, loader, loss_fn, optimizer=opt, num_iters=30, progress=False).sweep == "exp"
    model, loader, loss_fn = tiny_classifier()
    r = range_test(model, loader, loss_fn, num_iters=30, progress=False)
    assert (r.sweep, r.start_lr, r.end_lr) == ("linear", 1e-5, 1.0)
    # What is given is kept; the rest comes from the optimizer's defaults.
    model, loader, loss_fn = tiny_classifier()
    r = range_test(model, loader, loss_fn, optimizer="adamw", start_lr=1e-6, num_iters=30, progress=False)
    assert (r.sweep, r.start_lr, r.end_lr) == ("exp", 1e-6, 1.0)


def test_an_sgd_scale_sweep_for_adamw_warns():
    model, loader, loss_fn = tiny_classifier()
    with pytest.warns(RuntimeWarning, match="AdamW"):
        range_test(model, loader, loss_fn, optimizer="adamw", sweep="linear", num_iters=30, progress=False)
    model, loader, loss_fn = tiny_classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            range_test(
                model, loader, loss_fn, optimizer="adamw", start_lr=1e-6, end_lr=1e-1, num_iters=30, progress=False
            )
        except RuntimeWarning as w:
            assert "AdamW" not in str(w), w  # other warnings about this tiny curve are fine


def test_a_thin_curve_warns():
    """Least squares with the defaults (linear 1e-5..1): the edge 2/lambda_max is about 0.03,
    so the test diverges after a handful of points, which used to pass without a word."""
    x, y = least_squares(0, cond=300.0)
    torch.manual_seed(0)
    model = nn.Linear(10, 1, bias=False).double()
    loader = ListLoader([(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)])
    with pytest.warns(RuntimeWarning, match=r"only \d+ points") as rec:
        r = range_test(model, loader, nn.MSELoss(), progress=False)
    assert r.diverged and len(r.lrs) < 20
    assert any("lower end_lr" in str(w.message) for w in rec)


def test_a_sweep_that_stops_short_of_the_turn_warns():
    x, y = least_squares(0)
    torch.manual_seed(0)
    model = nn.Linear(10, 1, bias=False).double()
    loader = ListLoader([(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)])
    with pytest.warns(RuntimeWarning, match="still improving at end_lr"):
        range_test(model, loader, nn.MSELoss(), start_lr=1e-5, end_lr=1e-3, num_iters=40, progress=False)


@pytest.mark.parametrize("with_val", [False, True])
def test_accuracy_of_regression_outputs_is_refused_before_training(with_val):
    """A (B, 1) output has no classes: its argmax is always 0, the "accuracy" a constant."""
    x, y = least_squares(0)
    torch.manual_seed(0)
    model = nn.Linear(10, 1, bias=False).double()
    before = model.weight.detach().clone()
    loader = ListLoader([(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)])
    val = ListLoader([(x[:64], y[:64])]) if with_val else None
    with pytest.raises(ValueError, match=r"metric='accuracy'.*\(64, 1\)"):
        range_test(model, loader, nn.MSELoss(), metric="accuracy", val_loader=val, restore=False, progress=False)
    assert torch.equal(model.weight, before)  # no step was taken
    if with_val:
        assert val.passes == 0


def test_accuracy_accepts_class_indices_and_one_hot_targets():
    model, loader, loss_fn = tiny_classifier()
    r = range_test(model, loader, loss_fn, metric="accuracy", num_iters=25, progress=False)
    assert all(0.0 <= m <= 1.0 for m in r.metrics)
    onehot = ListLoader([(xb, nn.functional.one_hot(yb, 3).float()) for xb, yb in classification_batches()])
    r = range_test(
        small_bn_model(), onehot, nn.functional.cross_entropy, metric="accuracy", num_iters=25, progress=False
    )
    assert all(0.0 <= m <= 1.0 for m in r.metrics)
    wrong = ListLoader([(xb, yb[:, None]) for xb, yb in classification_batches()])  # (B, 1) class indices
    with pytest.raises(ValueError, match="metric='accuracy'"):
        range_test(small_bn_model(), wrong, lambda o, t: loss_fn(o, t[:, 0]), metric="accuracy", progress=False)


# ---------------------------------------------------------- a run of a given length
def a_result(base_lr=0.01, max_lr=0.1):
    return RangeTestResult(
        lrs=[1e-3, 1.0], losses=[1.0, 2.0], smoothed_losses=[1.0, 2.0], metrics=None, diverged=False,
        base_lr=base_lr, max_lr=max_lr,
    )  # fmt: skip


def run_steps(opt, params, steps):
    for _ in range(steps):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()


@pytest.mark.parametrize("cls", ["CyclicSGD", "CyclicAdamW"])
@pytest.mark.parametrize(
    "iters_per_epoch, length, cycles",
    [
        (35, dict(epochs=4), 1),  # 4 epochs: one cycle, half cycles of 2 epochs
        (35, dict(epochs=5), 1),
        (35, dict(epochs=24), 3),  # 3 cycles of 8 epochs: half cycles of 4 (the paper's CIFAR run)
        (35, dict(epochs=40), 5),
        (35, dict(total_steps=139), 1),  # a prime: one cycle, rising 69 steps and falling 70
        (100, dict(total_steps=1000), 1),  # 10 epochs: one cycle of 10 (5 up) beats two of 5
        (10, dict(epochs=2.5), 1),
    ],
)
def test_from_range_test_ends_the_run_at_the_end_of_a_cycle(cls, iters_per_epoch, length, cycles):
    """Before, the half cycle was always 4 epochs: a 4-epoch run ended at max_lr, mid-cycle."""
    result = a_result()
    params = [torch.zeros(3, requires_grad=True)]
    opt = getattr(clr_ext, cls).from_range_test(params, result, iters_per_epoch, **length)
    total = length.get("total_steps") or round(length["epochs"] * iters_per_epoch)
    up, down = opt.step_size_up, opt.step_size_down
    assert (up + down) * cycles == total and up in (down, down - 1)
    # The LR of the step after the run is base_lr (the oracle and the optimizer agree), and
    # the run went through max_lr once per cycle.
    assert clr_ext.cyclic_lr(total, result.base_lr, result.max_lr, up, down) == result.base_lr
    peaks = [k * (up + down) + up for k in range(cycles)]
    assert all(clr_ext.cyclic_lr(p, result.base_lr, result.max_lr, up, down) == pytest.approx(0.1) for p in peaks)
    run_steps(opt, params, total)
    assert opt.get_last_lr()[0] == pytest.approx(result.base_lr, rel=1e-12)
    assert opt.param_groups[0]["base_lr"] == result.base_lr and opt.param_groups[0]["max_lr"] == result.max_lr


def test_cycle_for_run_keeps_half_cycles_near_the_preferred_length():
    result = a_result()
    assert result.cycle_for_run(50, epochs=24) == (200, 200)  # 3 cycles, 4-epoch halves
    assert result.cycle_for_run(50, epochs=24, epochs_per_half_cycle=2) == (100, 100)  # 6 cycles
    assert result.cycle_for_run(50, epochs=24, epochs_per_half_cycle=6) == (300, 300)  # 2 cycles
    assert result.cycle_for_run(50) == (200, 200)  # no length: the paper's advice, both halves
    for bad in (dict(epochs=4, total_steps=100), dict(total_steps=1), dict(epochs=0), dict(epochs=0.01)):
        with pytest.raises(ValueError, match="epochs|total_steps"):
            result.cycle_for_run(50, **bad)


@pytest.mark.parametrize("cls", ["OneCycleSGD", "OneCycleAdamW"])
def test_one_cycle_from_range_test_takes_the_run_length(cls):
    result = a_result()
    params = [torch.zeros(3, requires_grad=True)]
    for kwargs in (dict(total_steps=140), dict(epochs=4, steps_per_epoch=35)):
        opt = getattr(clr_ext, cls).from_range_test(params, result, **kwargs)
        assert opt.total_steps == 140 and opt.param_groups[0]["max_lr"] == result.max_lr
        run_steps(opt, params, 139)
        final = clr_ext.one_cycle_lr(139, result.max_lr, 140)
        assert opt.get_last_lr()[0] == pytest.approx(final, rel=1e-9)
        assert final == pytest.approx(result.max_lr / 25.0 / 1e4, rel=1e-9)


def test_explicit_step_sizes_win():
    opt = clr_ext.CyclicSGD.from_range_test(
        [torch.zeros(2, requires_grad=True)], a_result(), 35, epochs=4, step_size_up=7, base_lr=0.02
    )
    assert opt.step_size_up == 7 and opt.step_size_down == 7 and opt.param_groups[0]["base_lr"] == 0.02
