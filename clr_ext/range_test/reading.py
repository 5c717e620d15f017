"""Reading a range-test curve: the sweep, the zero-lag trend, the CLR bounds and the
single-LR suggestions. Pure functions of the recorded lists (no torch), so a saved result
can be read again, and the tests can feed them known curves."""

from __future__ import annotations

import bisect
import math
import warnings
from typing import List, Optional, Sequence, Tuple

__all__ = ["SUGGEST_METHODS", "read_curve", "suggest_bounds", "suggest_single"]

#: What :meth:`RangeTestResult.suggest` accepts.
SUGGEST_METHODS = ("clr", "steepest", "valley", "min/10")

# Fractions of the curve's total improvement (its "depth": fall of the loss, rise of the metric).
# _PLATEAU_TOL: reading a METRIC, max_lr is where the trend has come within this fraction of its
# best value: where accuracy levels off, before it turns ragged (the paper's reading).
# _ONSET: how far the trend must have improved before we say learning has "started".
_PLATEAU_TOL = 0.05
_ONSET = 0.10
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


def centered_mean(values: Sequence[float], h: int) -> List[float]:
    """Centred moving average whose window shrinks symmetrically at the ends, so no point is
    shifted (a causal average would lag the curve, a one-sided one near the ends would bias
    it). Cumulative sums keep it O(n)."""
    n = len(values)
    csum = [0.0]
    for v in values:
        csum.append(csum[-1] + v)
    out = []
    for i in range(n):
        k = min(h, i, n - 1 - i)
        out.append((csum[i + k + 1] - csum[i - k]) / (2 * k + 1))
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
        # start, not wherever noise put the best point.
        i_max = i_top
        while i_max < i_best and t[i_max] > t[i_best] + _PLATEAU_TOL * cv.depth:
            i_max += 1
    # Onset of learning: the first point after the top where the trend has improved by _ONSET.
    i_on = i_top
    while i_on < i_best and t[i_on] > t[i_top] - _ONSET * cv.depth:
        i_on += 1
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


def suggest_single(method: str, lrs, losses, metrics=None, *, smooth=0.05, measured_on="train") -> float:
    """One LR by ``method`` (``"steepest"``, ``"valley"`` or ``"min/10"``), always inside
    ``[lrs[0], lrs[-1]]``; see :meth:`RangeTestResult.suggest` for how each is read."""
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
    if method == "min/10":
        return min(max(cv.at(cv.i_bottom) / 10.0, lo), hi)
    if method == "steepest":
        i = _steepest(cv)
    elif method == "valley":
        i = _valley(cv.t[: cv.n])
    else:
        raise ValueError(f"method must be one of {SUGGEST_METHODS}, got {method!r}")
    return cv.at(i)


def _steepest(cv: Curve) -> int:
    """The point, up to the valley's bottom, where the trend improves fastest per unit of
    log(LR): central differences of the trend against log(LR)."""
    x = [math.log(v) for v in cv.lrs[: cv.n]]
    end = max(cv.i_bottom, 1)
    best_i, best_slope = 0, math.inf
    for i in range(end + 1):
        a, b = max(i - 1, 0), min(i + 1, cv.n - 1)
        if b == a or x[b] == x[a]:
            continue
        slope = (cv.t[b] - cv.t[a]) / (x[b] - x[a])
        if slope < best_slope:
            best_i, best_slope = i, slope
    return best_i


def _valley(t: Sequence[float]) -> int:
    """Halfway along the longest valley: the longest strictly decreasing subsequence of the
    trend (patience sorting, O(n log n)), from its first point to its last."""
    n = len(t)
    tails: List[int] = []  # tails[k]: index ending the best decreasing run of length k + 1
    keys: List[float] = []  # -t[tails[k]], increasing
    prev = [-1] * n
    for j in range(n):
        k = bisect.bisect_left(keys, -t[j])
        prev[j] = tails[k - 1] if k > 0 else -1
        if k == len(tails):
            tails.append(j)
            keys.append(-t[j])
        else:
            tails[k] = j
            keys[k] = -t[j]
    end = tails[-1]
    first = end
    while prev[first] >= 0:
        first = prev[first]
    return first + (end - first) // 2
