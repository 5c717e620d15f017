"""Reading a range-test curve: the sweep, the zero-lag trend, the CLR bounds and the
single-LR suggestions. Pure functions of the recorded lists (no torch), so a saved result
can be read again, and the tests can feed them known curves."""

from __future__ import annotations

import bisect
import math
import statistics
import warnings
from typing import List, Optional, Sequence, Tuple

__all__ = ["SUGGEST_METHODS", "read_curve", "suggest_bounds", "suggest_single"]

#: What :meth:`RangeTestResult.suggest` accepts.
SUGGEST_METHODS = ("clr", "steepest", "valley", "min/10")

# Fractions of the curve's total improvement (its "depth": fall of the loss, rise of the metric).
# _PLATEAU_TOL: reading a METRIC, max_lr is where the trend has come within this fraction of the
# total improvement of its best value: where accuracy levels off, before it turns ragged (the
# paper's reading).
# _ONSET: how far the trend must have improved before we say learning has "started".
_PLATEAU_TOL = 0.05
_ONSET = 0.10
# _PLATEAU_SE: ... or, on a curve that does not fall after its best, within this many standard
# errors of the trend at its best when that is less: a smooth curve whose last 5% still rise far
# above its noise is still improving.
_PLATEAU_SE = 3.0
# The slopes the rules read are differences of a trend of this fraction of the curve's
# half-width (see _slopes).
_SLOPE_TREND = 0.7
# Reading "steepest": a parabola is fitted to the slopes within this fraction of the trend's
# half-width (in steps of an exponential sweep) of the steepest one ...
_STEEP_FIT = 0.3
# ... and the steepest stretch ends where the parabola is this fraction less steep than at its
# vertex.
_STEEP_EASE = 0.02
# "valley" starts no lower than where the trend falls at this fraction of its steepest rate.
_FOOT = 0.1
# "min/10" needs a turn: the trend must climb back this fraction of the valley's depth past
# its best.
_TURN = 0.5
# Reading a LOSS: the divergence ratio of the paper's rule of thumb, base = max/3..max/4.
_BASE_FACTOR = 4.0


def sweep_lrs(start_lr: float, end_lr: float, num_iters: int, sweep: str) -> List[float]:
    """LR of step i = start + i/(N-1) of the span (linear) or of the log-span (exp), so the
    first step uses exactly start_lr and the last exactly end_lr."""
    last = num_iters - 1
    if sweep == "linear":
        lrs = [start_lr + (end_lr - start_lr) * (i / last) for i in range(num_iters)]
    else:
        log_start, log_span = math.log(start_lr), math.log(end_lr) - math.log(start_lr)
        lrs = [math.exp(log_start + log_span * (i / last)) for i in range(num_iters)]
    lrs[0], lrs[-1] = float(start_lr), float(end_lr)
    return lrs


def half_width(smooth: float, n: int) -> int:
    """Half-width of the centred window: about half the causal EMA's lag
    ((1 - smooth) / smooth steps), so the centred mean is about as smooth as the EMA over
    the span that matters; capped at a tenth of the curve so a short test keeps its shape."""
    if smooth <= 0 or n < 3:
        return 0
    h = int(math.ceil(0.5 * (1.0 - smooth) / smooth))
    return max(1, min(h, n // 10))


def prefix_sums(values: Sequence[float]) -> List[float]:
    """``[0, v0, v0 + v1, ...]``: the sum of ``values[a:b]`` is ``csum[b] - csum[a]``."""
    csum = [0.0]
    for v in values:
        csum.append(csum[-1] + v)
    return csum


def centered_mean(values: Sequence[float], h: int, widths: Optional[Sequence[int]] = None) -> List[float]:
    """Centred moving average whose window shrinks symmetrically at the ends, so no point is
    shifted (a causal average would lag the curve, a one-sided one near the ends would bias
    it). ``widths``: a smaller half-width for some points. Cumulative sums keep it O(n)."""
    n = len(values)
    csum = prefix_sums(values)
    out = []
    for i in range(n):
        k = min(h, i, n - 1 - i) if widths is None else min(h, i, n - 1 - i, widths[i])
        out.append((csum[i + k + 1] - csum[i - k]) / (2 * k + 1))
    return out


def log_bounded_widths(lrs: Sequence[float], h: int) -> List[int]:
    """Per point, the largest half-width (at most ``h``) whose window spans no more log-LR
    than ``2h`` steps of an exponential sweep over the same range. On an exponential sweep
    that is ``h`` everywhere; on a linear one the window narrows at the low end, where a few
    points span decades (a window of +-10 points around LR 0.03 of a linear sweep to 1
    reaches from 0 to 0.13 and would smear the descent over it)."""
    n = len(lrs)
    if n < 3 or h <= 0:
        return [0] * n
    x = [math.log(v) for v in lrs]
    span = 2 * h * (x[-1] - x[0]) / (n - 1) * (1 + 1e-9)
    out = []
    for i in range(n):
        k = min(h, i, n - 1 - i)
        while k > 0 and x[i + k] - x[i - k] > span:
            k -= 1
        out.append(k)
    return out


class Curve:
    """The curve the bounds are read from, prepared once.

    ``c``: the read values turned into "lower is better" (the log of a positive loss, the
    loss itself if it is not positive, minus the metric), on the finite part ``[0, n)``;
    ``t``: its zero-lag trend (centred mean, half-width ``h``); ``i_best``: the trend's best
    point; ``i_top``: its worst point before that; ``i_bottom``: where the valley's bottom
    is placed (see :func:`read_curve`); ``shift``: 1 for training-batch readings (taken
    before the step's update, so they show the LRs of the steps before), else 0."""

    def __init__(self, lrs, losses, metrics, smooth, measured_on) -> None:
        self.lrs = [float(v) for v in lrs]
        self.reading = "loss" if metrics is None else "metric"
        values = list(losses) if metrics is None else list(metrics)
        n = 0
        while n < len(self.lrs) and math.isfinite(losses[n]) and math.isfinite(values[n]):
            n += 1
        self.n = n
        self.shift = 1 if measured_on == "train" else 0
        if self.reading == "loss":
            self.log_domain = n > 0 and all(v > 0 for v in values[:n])
            self.c = [math.log(v) for v in values[:n]] if self.log_domain else [float(v) for v in values[:n]]
        else:
            self.log_domain = False
            self.c = [-float(v) for v in values[:n]]
        self.h = half_width(smooth, n)
        self.t = centered_mean(self.c, self.h)
        if n >= 2:
            self.i_best = min(range(n), key=self.t.__getitem__)
            self.i_top = max(range(self.i_best + 1), key=self.t.__getitem__)
            self.depth = self.t[self.i_top] - self.t[self.i_best]
            self.i_bottom = self._bottom()
        else:
            self.i_best = self.i_top = self.i_bottom = 0
            self.depth = 0.0

    def _bottom(self) -> int:
        """Where the valley's bottom is: the wide trend finds the valley; a trend of half its
        window, searched from there up to one wide half-width to the right, places the bottom.
        A centred mean straddling a sharp rise is pulled up by it: its minimum sits about a
        half-width left of the true bottom when the rise is much steeper than the fall, as a
        blow-up is; the half-width trend halves that shift, and is still smooth enough that
        noise on a flat floor moves it little."""
        if self.h <= 1:
            return self.i_best
        fine = centered_mean(self.c, (self.h + 1) // 2)
        hi = min(self.n, self.i_best + self.h + 1)
        return min(range(self.i_best, hi), key=fine.__getitem__)

    def trend_noise(self, i: int) -> float:
        """The standard error of the trend at point ``i``: the spread of the curve about its
        trend within two half-widths of ``i`` (1.4826 x the median absolute deviation, so
        that a few outliers do not inflate it), over the square root of the size of the
        window the trend has at ``i`` (cut short near the ends, where it is noisier)."""
        lo, hi = max(0, i - 2 * self.h), min(self.n, i + 2 * self.h + 1)
        spread = 1.4826 * statistics.median(abs(self.c[j] - self.t[j]) for j in range(lo, hi))
        return spread / math.sqrt(2 * min(self.h, i, self.n - 1 - i) + 1)

    def turn(self, first: int, last: int) -> int:
        """Where the curve stops improving, for ``min/10``: within ``first..last``, the
        minimum of a TRAILING exponential mean of the curve (debiased, as fastai's; its time
        constant twice the trend's number of points, ``2 (2h + 1)``: 42 points, a factor of
        0.976, at the default ``smooth``, where fastai's is 0.98). A trailing mean falls while
        each new point is below it and turns up at the first point above it: where the loss
        stops falling. A centred window cannot read that point on a range test: the blow-up
        past the bottom is much steeper than the descent before it (and spiky), so a window
        that looks ahead is lifted by the rise a half-width before the loss stops falling,
        and its minimum sits up to a half-width (0.8 decades of fastai's sweep) left of it; a
        trailing mean sees the rise only once it has begun. Exponential rather than a
        boxcar of ``2h + 1`` points: a boxcar falls while the point entering it is below the
        one leaving it, and when the descent is shorter than the window (a small network's,
        a decade) the points leaving come from the flat start, above everything up to the
        blow-up: on the digits CNN's runs whose loss spikes and dips again before it blows
        up, the boxcar turned past the spikes and ``min/10`` read 0.13-0.16 (best constant
        LR 0.056-0.1). The exponential mean falls only while the point entering is below
        the mean. On the CNN's 90 offline finder runs, ``min/10`` behind fastai's
        ``minimum``: 0.11 -> -0.13 and 0.13 -> 0.03 points on two halves of the runs; the
        MLP's 0.07 / 0.17 -> 0.10 / 0.19, within the errors."""
        beta = 1.0 - 1.0 / (2 * (2 * self.h + 1))
        mean, weight, trailing = 0.0, 0.0, []
        for v in self.c[: last + 1]:
            mean = beta * mean + (1.0 - beta) * v
            weight = beta * weight + (1.0 - beta)
            trailing.append(mean / weight)
        return min(range(first, last + 1), key=trailing.__getitem__)

    def turned_up(self) -> bool:
        """Whether the curve turns up past its best within the sweep: the trend climbs back
        at least _TURN of the way out of the valley (of the fall from its top to its best).
        A blow-up climbs all the way and more; a floor that the loss keeps to (a convex model
        on a sweep that ends below its edge of stability) wobbles only by its noise, and the
        trailing mean's minimum on it is set by that noise and by where the sweep ends. A
        curve that never improves has no valley to climb out of: it counts as turned (it only
        rises; the bounds warn about it)."""
        if self.n < 2 or not self.depth > 0:
            return True
        return max(self.t[self.i_best : self.n]) - self.t[self.i_best] >= _TURN * self.depth

    def log_widths(self) -> List[int]:
        """:func:`log_bounded_widths` of the finite part, at the trend's half-width."""
        if not hasattr(self, "_log_widths"):
            self._log_widths = log_bounded_widths(self.lrs[: self.n], self.h)
        return self._log_widths

    def rule_trend(self) -> List[float]:
        """The trend the single-LR rules read: ``t``, except that on a linear sweep its window
        is narrowed at low LRs to the log-LR width it has on an exponential sweep (see
        :func:`log_bounded_widths`); the same as ``t`` on an exponential sweep."""
        if not hasattr(self, "_rule_trend"):
            self._rule_trend = centered_mean(self.c, self.h, self.log_widths())
        return self._rule_trend

    def onset(self, first: int = 0, trend: Optional[Sequence[float]] = None) -> int:
        """Onset of learning: the first point after the top (the trend's worst point from
        ``first`` up to its best) where the trend has improved by _ONSET of the fall from
        that top to the best. ``trend``: another trend than ``t`` to read it on."""
        t = self.t if trend is None else trend
        best = self.i_best
        if first >= best:
            return best
        top = max(range(first, best + 1), key=t.__getitem__)
        level = t[top] - _ONSET * (t[top] - t[best])
        i = top
        while i < best and t[i] > level:
            i += 1
        return i

    def read_window(self) -> Tuple[int, int]:
        """The points the single-LR rules read, ``first..last``: the curve less the ends
        where the trend's centred window is cut to less than half its width and the trend
        is close to the raw noise (the peers trim likewise: fastai a tenth of the steps at
        the start and 5 at the end, torch-lr-finder 10 and 5). At the start the cut is
        measured in log(LR), as the span of that many steps of an exponential sweep over
        the same range: on an exponential sweep that is the same number of points, on a
        linear one only the first point or two (its first points span decades, and a tenth
        of a linear sweep to 1 would cut off every LR below 0.1). A curve too short to trim
        is read whole."""
        trim = (self.h + 1) // 2
        if trim == 0 or self.n < 3:
            return 0, self.n - 1
        x0 = math.log(self.lrs[0])
        step = (math.log(self.lrs[self.n - 1]) - x0) / (self.n - 1)
        first = sum(1 for v in self.lrs[: self.n] if math.log(v) - x0 < (trim - 0.5) * step)
        last = self.n - 1 - trim
        if last - first < 2:
            return 0, self.n - 1
        return first, last

    def at(self, i: int) -> float:
        """The LR a reading at point ``i`` speaks for, kept inside the swept range."""
        i = min(max(i - self.shift, 0), len(self.lrs) - 1)
        return self.lrs[i]

    def trend_values(self) -> List[float]:
        """The trend in the read curve's units (NaN past the finite part)."""
        if self.reading == "loss":
            vals = [math.exp(v) for v in self.t] if self.log_domain else list(self.t)
        else:
            vals = [-v for v in self.t]
        return vals + [math.nan] * (len(self.lrs) - self.n)


def read_curve(lrs, losses, metrics=None, *, smooth=0.05, measured_on="train") -> Curve:
    """A :class:`Curve`; raises ValueError for fewer than two steps."""
    if len(lrs) < 2:
        raise ValueError("at least two steps are needed to read a range-test curve")
    return Curve(lrs, losses, metrics, smooth, measured_on)


def suggest_bounds(
    lrs: Sequence[float],
    losses: Sequence[float],
    metrics: Optional[Sequence[float]] = None,
    *,
    smooth: float = 0.05,
    measured_on: str = "train",
) -> Tuple[float, float, List[float], str]:
    """Read ``(base_lr, max_lr)`` off a recorded curve; see :func:`clr_ext.range_test` for
    the method. Returns ``(base_lr, max_lr, trend, reading)`` where ``trend`` is the zero-lag
    smoothing of the read curve (NaN past its finite part) and ``reading`` is ``"loss"`` or
    ``"metric"``."""
    cv = read_curve(lrs, losses, metrics, smooth=smooth, measured_on=measured_on)
    if cv.n < 2:
        warnings.warn(
            "the range test has fewer than two finite points; the suggested bounds "
            "are only the first two LRs of the sweep (start lower)",
            RuntimeWarning,
            2,
        )
        return float(lrs[0]), float(lrs[1]), [math.nan] * len(lrs), cv.reading
    if not cv.depth > 0:
        warnings.warn(
            "the range-test curve never improves; widen the sweep (or run longer). The bounds suggested are a guess.",
            RuntimeWarning,
            2,
        )
    t, i_top, i_best = cv.t, cv.i_top, cv.i_best
    if cv.reading == "loss":
        # Where the loss stops falling and turns up: the valley's bottom (1803.09820: "where
        # the loss starts to rise is the largest usable LR").
        i_max = cv.i_bottom
    else:
        # Where the metric stops improving: the first point at which the trend has come
        # within _PLATEAU_TOL of the total improvement of its best value (the paper: where
        # accuracy "slows, becomes ragged, or starts to fall"); on a noisy plateau this is its
        # start, not wherever noise put the best point. A curve that falls out of that band
        # after its best (a collapse: the model stops training) is read so: its last gains
        # came at the edge of stability. A curve that never falls in the sweep (a model that
        # trains at every LR past its plateau, as a convex one does) may go on gaining its
        # last 5% over a wide range of LRs, far above its noise: such gains are real, and
        # the curve has stopped improving only once the rest is within the trend's noise.
        tol = _PLATEAU_TOL * cv.depth
        if max(t[i_best : cv.n]) <= t[i_best] + tol:
            tol = min(tol, _PLATEAU_SE * cv.trend_noise(i_best))
        i_max = i_top
        while i_max < i_best and t[i_max] > t[i_best] + tol:
            i_max += 1
    i_on = cv.onset()
    max_lr = cv.at(max(i_max, 1 + cv.shift))  # at least the second LR: base_lr must fit below
    onset_lr = cv.at(i_on)
    if cv.reading == "loss":
        # The paper's rule of thumb (base = max/3..max/4), unless learning only starts above it.
        base_lr = max(max_lr / _BASE_FACTOR, onset_lr)
    else:
        base_lr = onset_lr
    if not base_lr < max_lr:
        base_lr = max_lr / _BASE_FACTOR
    base_lr = max(base_lr, float(lrs[0]))  # inside the swept range; lrs[0] < max_lr
    return base_lr, max_lr, cv.trend_values(), cv.reading


def suggest_single(
    method: str, lrs, losses, metrics=None, *, smooth=0.05, measured_on="train", stopped: bool = False
) -> float:
    """One LR by ``method`` (``"steepest"``, ``"valley"`` or ``"min/10"``), always inside
    ``[lrs[0], lrs[-1]]``; see :meth:`RangeTestResult.suggest` for how each is read.
    ``stopped``: the test stopped early because the loss blew up (so it turned)."""
    cv = read_curve(lrs, losses, metrics, smooth=smooth, measured_on=measured_on)
    lo, hi = float(lrs[0]), float(lrs[-1])
    if cv.n < 2:
        warnings.warn(
            "the range test has fewer than two finite points; the suggestion is the "
            "first LR of the sweep (start lower)",
            RuntimeWarning,
            2,
        )
        return lo
    first, last = cv.read_window()
    if method == "min/10":
        if stopped or cv.turned_up():
            return min(max(cv.at(cv.turn(first, last)) / 10.0, lo), hi)
        warnings.warn(
            'suggest("min/10"): the curve never turns up in this sweep (its minimum is at or '
            "past end_lr), so there is no minimum to take a tenth of (a tenth of end_lr is only "
            'a lower bound); suggesting "valley" instead. Sweep to a higher end_lr to read it.',
            RuntimeWarning,
            3,
        )
        method = "valley"
    if method == "steepest":
        i = _steepest(cv, first, last)
    elif method == "valley":
        # The descent is counted from the onset of learning: before it the curve is flat, and
        # noise on a flat stretch strings decreasing points together into a "valley" as long
        # as the descent itself (on fastai's lagging EMA the flat start is smoothed away).
        # Its longest decreasing run is sought up to the valley's bottom: past it, noise on
        # the floor adds decreasing points. But the valley reaches to where the loss stops
        # falling (the trailing mean's turn, as "min/10" reads it, and as fastai's run ends at
        # its trailing EMA's minimum): the centred trend's bottom is lifted by the blow-up
        # past it, up to a half-width early, and halfway to it was halfway to too low an LR.
        t = cv.rule_trend()
        start = max(cv.onset(first, t), _foot(cv, first, last))
        end = min(last, max(cv.i_bottom, start + 2))
        far = min(last, max(end, cv.turn(first, last)))
        if not first <= start < end - 1:
            start, end, far = first, last, last
        i = _valley(t[start : far + 1], cv.lrs[start : far + 1], end - start) + start
    else:
        raise ValueError(f"method must be one of {SUGGEST_METHODS}, got {method!r}")
    return cv.at(i)


def _slopes(cv: Curve, first: int, end: int, last: int) -> List[Tuple[int, float, bool]]:
    """``(i, slope, cut)`` of the trend against log(LR) for each point ``i`` of
    ``first..end``: the difference of the trend across the log-LR span of ``(h + 1) // 2``
    steps of an exponential sweep over the same range on each side of ``i`` (at least the
    neighbours), kept within ``first..last``; ``cut``: that span is cut short by ``first``
    or ``last`` on one side.

    Not the difference of neighbours: that of a centred mean of ``2h + 1`` points is the
    difference of the four raw points at its windows' edges over ``2h + 1``, the raw noise
    barely damped, and its argmax is wherever that noise is largest. Across ``k`` points
    each side it is the difference of the ``2k`` points in one window only, so its noise
    falls as ``1 / sqrt(k)``; half the trend's width is the read window's trim too. In
    log-LR, so that a linear sweep, whose steps at high LRs are a hundredth of a decade,
    is read at the same scale (a difference of neighbours divided by that step magnifies
    the noise a hundredfold).

    The trend differenced is narrower than the curve's (half-width _SLOPE_TREND x ``h``,
    log-bounded likewise): the two means ``h`` points wide and ``h + 1`` apart compare two
    blocks of points about ``2h`` apart, 1.7 decades of a 100-step exponential sweep, wider
    than a small network's whole descent (the digits CNN's falls over one decade, then blows
    up). Straddling the descent and the rise past it, the blocks read the steepest slope
    where they hold the least of the rise, left of the steepest point: the bench's finder
    runs read half the best constant LR. At 0.7 the blocks are ``1.5h`` apart; narrower,
    the slope is too noisy to place (bench/finders.py, 90 finder runs on three tasks)."""
    x = [math.log(v) for v in cv.lrs[: cv.n]]
    hs = max(1, round(_SLOPE_TREND * cv.h))
    t = centered_mean(cv.c, hs, cv.log_widths())
    reach = max((cv.h + 1) // 2, 1) * _exp_step(cv)  # log(LR) each side
    span, full = reach * (1 + 1e-9), reach * (1 - 1e-6)  # (rounding: a point at the reach is in)
    out = []
    for i in range(first, end + 1):
        a, b = max(i - 1, first), min(i + 1, last)
        while a > first and x[i] - x[a - 1] <= span:
            a -= 1
        while b < last and x[b + 1] - x[i] <= span:
            b += 1
        if b == a or x[b] == x[a]:
            continue
        cut = (a == first and x[i] - x[a] < full) or (b == last and x[b] - x[i] < full)
        out.append((i, (t[b] - t[a]) / (x[b] - x[a]), cut))
    return out


def _exp_step(cv: Curve) -> float:
    """The log(LR) of one step of an exponential sweep over the curve's finite range: the
    unit in which the rules' spans are set, so that they mean the same on a linear sweep."""
    return (math.log(cv.lrs[cv.n - 1]) - math.log(cv.lrs[0])) / (cv.n - 1)


def _descent_slopes(cv: Curve, first: int, last: int) -> Tuple[List[Tuple[int, float, bool]], List[float], int]:
    """The slopes (see :func:`_slopes`) of the read window ``first..last`` up to the valley's
    bottom, the log(LR) of each, and the position among them of the steepest one; -1 when
    there are none. The steepest is sought among the slopes of full width that have two
    others within the reach of :func:`_steepest`'s fit (if any; see there for why)."""
    end = min(max(cv.i_bottom, first + 1), last)
    slopes = _slopes(cv, first, end, last)
    x = [math.log(cv.lrs[i]) for i, _, _ in slopes]
    reach = _fit_reach(cv)
    fits = [k for k in range(len(slopes)) if len(_within(x, k, reach)) >= 3]
    whole = [k for k in fits if not slopes[k][2]] or [k for k in range(len(slopes)) if not slopes[k][2]]
    return slopes, x, min(whole or range(len(slopes)), key=lambda k: slopes[k][1], default=-1)


def _within(x: Sequence[float], k: int, reach: float) -> range:
    """The positions of the (ascending) ``x`` within ``reach`` of ``x[k]``."""
    return range(bisect.bisect_left(x, x[k] - reach), bisect.bisect_right(x, x[k] + reach))


def _fit_reach(cv: Curve) -> float:
    """The log(LR) each side of the steepest slope that :func:`_steepest` fits: _STEEP_FIT of
    the trend's half-width, in steps of an exponential sweep (3 at the default ``smooth``)."""
    return max(math.ceil(round(_STEEP_FIT * cv.h, 6)), 1) * _exp_step(cv) * (1 + 1e-9)


def _foot(cv: Curve, first: int, last: int) -> int:
    """Where the descent begins, read off its slope: going left from the steepest point
    (see :func:`_steepest`), the last point that still falls at _FOOT of the steepest rate
    or more. The onset, a level (a tenth of the valley's depth), cannot tell the descent
    from a slow drift of the flat start: a small network's loss falls by a few hundredths
    of its log in the whole valley (the digits CNN: 2.30 to 2.16), and drifts by 0.01 over
    the decades before it, so a tenth of the depth is reached in the drift, decades before
    the descent, and halfway from there was 0.02 where the best constant LR is 0.06-0.1. A
    drift falls at a few hundredths of the descent's rate. ``first`` when nothing falls."""
    slopes, _, k = _descent_slopes(cv, first, last)
    if not slopes:
        return first
    s_max = slopes[k][1]
    if not s_max < 0:
        return first
    while k > 0 and slopes[k - 1][1] <= _FOOT * s_max:
        k -= 1
    return slopes[k][0]


def _steepest(cv: Curve, first: int, last: int) -> int:
    """The upper end of the steepest stretch of the read window, up to the valley's bottom:
    a least-squares parabola through the slopes (see :func:`_slopes`) within _STEEP_FIT of
    the trend's half-width of the steepest one, and on it, past its vertex, the LR at which
    the fall has eased by _STEEP_EASE of its steepest rate: the largest LR that still
    learns at (nearly) the fastest rate.

    Why a parabola: where the loss falls along a near-straight line in log(LR) (a convex
    model, over two decades) the slopes near the steepest differ by less than their noise,
    and the largest lands anywhere along that stretch: the last of the run of slopes within
    two standard errors of the largest read 0.12-0.74 on softmax regression's finder runs
    (best constant LR 0.27; a third of a decade off costs a few tenths of a point). The
    vertex of a fit through seven slopes moves less than the largest of them, and the
    stretch's end read on the fit is not the last of a run of noisy points. On 90 finder
    runs per task (bench/finders.py), against that rule, paired, in points of regret:
    softmax regression -0.03 +- 0.01 (exponential sweep) and -0.02 +- 0.004 (linear), the
    digits CNN -0.22 +- 0.07 and -3.1 +- 0.7, the MLP -0.05 +- 0.03 and -1.0 +- 0.2. Why
    past the vertex: a convex model learns fastest at the largest LR that is stable, and
    the fall slows only past it; at the vertex itself softmax regression read 0.2, 0.14
    points below the best. On a short descent (a deep net's) the parabola is narrow and
    the stretch ends a point or two past the steepest.

    The steepest slope is sought among those of full width (if any): a slope cut short by
    the end of the read window compares fewer points, and the largest of estimates of
    unequal noise is most often a noisy one (where a convex model's loss falls on to the
    sweep's end, the cut slope at the last point was the steepest, and ``steepest`` read
    3.3 where the best constant LR is 0.27). And among those with two others within the
    fit's reach, where a parabola can be fitted: a linear sweep's first points are a factor
    of 2 apart (0.01, 0.02, 0.03), their slopes differences of single points, and on a
    straight fall from 0.003 one of them was the largest and read 0.02. Where the slopes
    near it do not bend into a peak (curving the other way), the steepest slope is the
    reading."""
    slopes, x, k = _descent_slopes(cv, first, last)
    if not slopes:
        return first
    i_steep, s_steep, _ = slopes[k]
    if not s_steep < 0:
        return i_steep
    near = _within(x, k, _fit_reach(cv))
    fit = _parabola([(x[j] - x[k], slopes[j][1]) for j in near])
    if fit is None or not fit[2] > 0:
        return i_steep
    a, b, c = fit
    vertex, rate = -b / (2 * c), a - b * b / (4 * c)  # where the fit is steepest, and how steep
    if not rate < 0:
        return i_steep
    end = min(max(x[k] + vertex + math.sqrt(_STEEP_EASE * -rate / c), x[near[0]]), x[near[-1]])
    return slopes[min(range(len(slopes)), key=lambda j: abs(x[j] - end))][0]


def _parabola(points: Sequence[Tuple[float, float]]) -> Optional[Tuple[float, float, float]]:
    """``(a, b, c)`` of the least-squares ``y = a + b u + c u**2`` through ``(u, y)``
    points; None for fewer than three distinct ``u`` (the normal equations are singular)."""
    if len(points) < 3:
        return None
    sums = [sum(u**p for u, _ in points) for p in range(5)]
    rhs = [sum(y * u**p for u, y in points) for p in range(3)]
    m = [[sums[r + q] for q in range(3)] for r in range(3)]

    def det(rows: Sequence[Sequence[float]]) -> float:
        return (
            rows[0][0] * (rows[1][1] * rows[2][2] - rows[1][2] * rows[2][1])
            - rows[0][1] * (rows[1][0] * rows[2][2] - rows[1][2] * rows[2][0])
            + rows[0][2] * (rows[1][0] * rows[2][1] - rows[1][1] * rows[2][0])
        )

    d = det(m)
    if abs(d) <= 1e-12 * max(abs(v) for row in m for v in row) ** 3:
        return None
    solved = []
    for col in range(3):
        replaced = [[rhs[r] if q == col else m[r][q] for q in range(3)] for r in range(3)]
        solved.append(det(replaced) / d)
    return solved[0], solved[1], solved[2]


def _valley(t: Sequence[float], lrs: Sequence[float], run_end: int) -> int:
    """fastai's valley, on the trend: the longest strictly decreasing subsequence of
    ``t[: run_end + 1]`` (patience sorting, O(n log n)), ending at ``end``. The run is taken
    to reach back from ``end`` by the log(LR) its points stand for, each point its own
    spacing: on an exponential sweep, whose points are equally spaced in log(LR), that is
    fastai's start ``end - L`` (``L`` the subsequence's length; not its first point, which on
    a flat, noisy start of the curve lies far to the left of where the descent begins). On a
    linear sweep ``L`` points back from ``end`` was a fraction of a decade (its points near
    ``end_lr`` are a hundredth of a decade apart) and the valley was read near its bottom:
    0.47 on softmax regression's sweep to 1, whose best constant LR is 0.27-0.32. The run
    ends at the segment's last point (the caller ends it where the loss stops falling), and
    the point returned is halfway from start to end in log(LR). (fastai's
    ``start + L // 3 + L // 6`` is meant as halfway, but its integer division puts it 0.36-0.45
    of the way along the 10-20 point runs of a small network's descent, and this segment is
    not ``L`` points long anyway; on a linear sweep, halfway in points would be the
    arithmetic mean of the LRs, far above the descent's middle.)"""
    m = len(t)
    n = run_end + 1
    tails: List[int] = []  # tails[k]: index ending the best decreasing run of length k + 1
    keys: List[float] = []  # -t[tails[k]], increasing
    length = [0] * n
    before = [-1] * n  # the point before j in the best decreasing run ending at j
    for j in range(n):
        k = bisect.bisect_left(keys, -t[j])
        length[j] = k + 1
        before[j] = tails[k - 1] if k > 0 else -1
        if k == len(tails):
            tails.append(j)
            keys.append(-t[j])
        else:
            tails[k] = j
            keys[k] = -t[j]
    end = max(range(n), key=lambda j: (length[j], -j))  # the first point ending a longest run
    x = [math.log(v) for v in lrs]

    def spacing(j: int) -> float:
        lo, hi = max(j - 1, 0), min(j + 1, m - 1)
        return (x[hi] - x[lo]) / (hi - lo) if hi > lo else 0.0

    reach, j = 0.0, end
    while j >= 0:
        reach += spacing(j)
        j = before[j]
    start = min(range(end + 1), key=lambda j: abs(x[j] - (x[end] - reach)))
    # The run ends at the trend's minimum, which sits about a half-width left of where the
    # loss stops falling when the rise is steep (see Curve._bottom, Curve.turn); the valley
    # ends there, the segment's last point.
    end = m - 1
    if end == start:
        return end
    target = 0.5 * (x[start] + x[end])
    return min(range(start, end + 1), key=lambda j: abs(x[j] - target))
