"""What :func:`clr_ext.range_test` returns: the recorded curve, the suggested CLR bounds,
single-LR suggestions, a plot, and JSON."""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .reading import SUGGEST_METHODS, suggest_single

__all__ = ["RangeTestResult"]

_FORMAT = "clr_ext.RangeTestResult"
_FORMAT_VERSION = 1


class RangeTestResult:
    """What :func:`range_test` returns: the recorded curve and the suggested CLR bounds.

    Attributes (lists have one entry per step taken; a step that produced a NaN/inf loss is
    recorded, and is the last one):

    - ``lrs``: the LR each step used.
    - ``losses``: the raw loss of each step (the training-batch loss, the mean over the
      step's batches with ``accumulation_steps``, or the validation loss when a
      ``val_loader`` was given); under ``torch.distributed``, the mean over the ranks.
    - ``smoothed_losses``: the bias-corrected exponential moving average of ``losses`` that
      the divergence stop looks at (causal, so it lags the raw curve by about
      ``(1 - smooth) / smooth`` steps; the bounds are NOT read from it, see ``trend``).
    - ``metrics``: the metric per step, or None for ``metric="loss"``.
    - ``diverged``: True when the test stopped early (loss blew up, or was NaN/inf).
    - ``base_lr``, ``max_lr``: the suggested bounds, ``start_lr <= base_lr < max_lr <= end_lr``
      (also ``suggest("clr")``; :meth:`suggest` gives single LRs by other readings).
    - ``trend``: the zero-lag (centred) smoothing of the curve the bounds were read from
      (the loss, or the metric), in that curve's units; NaN past the last finite point.
    - ``reading``: ``"loss"`` or ``"metric"``: which curve the bounds were read from.
    - ``measured_on``: ``"train"`` (the training batch, before the step) or ``"val"`` (the
      validation loader, after the step).
    - ``sweep``, ``metric`` (its name), ``start_lr``, ``end_lr``, ``num_iters`` (planned),
      ``smooth``, ``diverge_factor``: the settings of the test.
    - ``stop_reason``: None (ran to the end), ``"nan"`` (a NaN/inf loss) or ``"diverged"``
      (the smoothed loss exceeded ``diverge_factor`` times its best).
    """

    def __init__(
        self,
        *,
        lrs: Sequence[float],
        losses: Sequence[float],
        smoothed_losses: Sequence[float],
        metrics: Optional[Sequence[float]],
        diverged: bool,
        base_lr: float,
        max_lr: float,
        trend: Sequence[float] = (),
        reading: str = "loss",
        measured_on: str = "train",
        sweep: str = "linear",
        metric: str = "loss",
        start_lr: Optional[float] = None,
        end_lr: Optional[float] = None,
        num_iters: Optional[int] = None,
        smooth: float = 0.05,
        diverge_factor: float = 4.0,
        stop_reason: Optional[str] = None,
    ) -> None:
        self.lrs = [float(v) for v in lrs]
        self.losses = [float(v) for v in losses]
        self.smoothed_losses = [float(v) for v in smoothed_losses]
        self.metrics = None if metrics is None else [float(v) for v in metrics]
        self.diverged = bool(diverged)
        self.base_lr = float(base_lr)
        self.max_lr = float(max_lr)
        self.trend = [float(v) for v in trend]
        self.reading = reading
        self.measured_on = measured_on
        self.sweep = sweep
        self.metric = metric
        self.start_lr = float(start_lr) if start_lr is not None else (self.lrs[0] if self.lrs else None)
        self.end_lr = float(end_lr) if end_lr is not None else (self.lrs[-1] if self.lrs else None)
        self.num_iters = int(num_iters) if num_iters is not None else len(self.lrs)
        self.smooth = float(smooth)
        self.diverge_factor = float(diverge_factor)
        self.stop_reason = stop_reason

    def __repr__(self) -> str:
        state = f"diverged ({self.stop_reason})" if self.diverged else "completed"
        return (
            f"RangeTestResult({self.sweep} sweep {self.start_lr:.3g} -> {self.end_lr:.3g}, "
            f"{len(self.lrs)}/{self.num_iters} steps, {state}, read from the {self.reading} "
            f"on {self.measured_on}: base_lr={self.base_lr:.4g}, max_lr={self.max_lr:.4g})"
        )

    # -- advice ----------------------------------------------------------------------
    def step_size(self, iters_per_epoch: float, epochs_per_half_cycle: float = 4) -> int:
        """The paper's cycle-length advice: ``stepsize`` (iterations in HALF a cycle) =
        ``epochs_per_half_cycle`` epochs. The paper found 2-10 epochs good (its CIFAR-10
        run used 4); ``iters_per_epoch`` is training samples / batch size."""
        _check_positive("iters_per_epoch", iters_per_epoch)
        _check_positive("epochs_per_half_cycle", epochs_per_half_cycle)
        return max(1, int(round(float(iters_per_epoch) * float(epochs_per_half_cycle))))

    def cycle_for_run(
        self,
        iters_per_epoch: float,
        *,
        epochs: Optional[float] = None,
        total_steps: Optional[int] = None,
        epochs_per_half_cycle: float = 4,
    ) -> Tuple[int, int]:
        """``(step_size_up, step_size_down)`` for a run of ``epochs`` epochs (or
        ``total_steps`` steps) that ends at the end of a whole cycle, where the LR is back at
        ``base_lr`` (the paper: "stop training at the end of a cycle"; 2-10 epochs per half
        cycle). The run is split into the number of whole cycles whose half cycle comes
        closest (in ratio) to ``epochs_per_half_cycle`` epochs, among those that divide the
        run's steps exactly (a cyclical schedule has one cycle length); a cycle of odd
        length rises one step less than it falls. A run of ``epochs`` epochs can always be
        cut into cycles of whole epochs, so e.g. 24 epochs give 3 cycles of 8, 4 epochs one
        cycle of 4 (half cycles of 2 epochs). Without ``epochs`` and ``total_steps``: the
        paper's advice, :meth:`step_size` for both halves (the run's end is then yours to
        place)."""
        _check_positive("iters_per_epoch", iters_per_epoch)
        _check_positive("epochs_per_half_cycle", epochs_per_half_cycle)
        if epochs is not None and total_steps is not None:
            raise ValueError("give the run's length as epochs or as total_steps, not both")
        if epochs is None and total_steps is None:
            step = self.step_size(iters_per_epoch, epochs_per_half_cycle)
            return step, step
        if total_steps is not None:
            if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 2:
                raise ValueError(f"total_steps must be an integer >= 2, got {total_steps!r}")
            total = int(total_steps)
        else:
            _check_positive("epochs", epochs)
            total = int(round(float(epochs) * float(iters_per_epoch)))
            if total < 2:
                raise ValueError(
                    f"epochs={epochs!r} of {iters_per_epoch!r} iterations is {total} step(s); a cycle needs at least 2"
                )
        want = 2.0 * float(epochs_per_half_cycle) * float(iters_per_epoch)  # the preferred cycle, in steps
        cycles = min(
            (k for k in range(1, total // 2 + 1) if total % k == 0),
            key=lambda k: (abs(math.log(total / k / want)), k),
        )
        length = total // cycles
        return length // 2, length - length // 2

    def suggest(self, method: str = "clr") -> Union[Tuple[float, float], float]:
        """The suggested LR(s), read from the recorded curve (no plot, no matplotlib needed).

        - ``"clr"``: ``(base_lr, max_lr)``, the range for cyclical LRs; the same as the
          attributes (see :func:`clr_ext.range_test` for how they are read: the paper's reading).
        - ``"steepest"``: one LR, where the curve improves fastest: the most negative slope of
          the zero-lag trend (log of the loss, or the metric) against log(LR), at or before
          the valley's bottom. This is torch-lr-finder's and Lightning's suggestion (and
          fastai's ``steep``); they take the gradient of the raw or EMA-smoothed loss, here
          of a lag-free trend, across half its width of log(LR) (the difference of
          neighbours of a centred mean is the raw noise of four points), read on a parabola
          fitted to the slopes within 3 steps (of an exponential sweep) of the steepest, at
          the upper end of the stretch within 2% of its steepest rate: where the loss falls
          along a near-straight line in log(LR) (a convex model's, over two decades) the
          slopes near the steepest differ by less than their noise and the largest lands
          anywhere along it (the fit's vertex moves less), and the largest LR that still
          learns at that rate is where the fall begins to slow. The trend differenced
          is 0.7 of the curve's width: at the full width the slope straddled a small
          network's short descent and the blow-up right after it, and read its steepest
          point at half the LR where it is. The steepest is sought among the slopes whose
          span the read window does not cut short (a cut one is the noisiest) and that have
          two others within the fit's reach (a linear sweep's first points are a factor of 2
          apart, their slopes differences of single points).
        - ``"valley"``: one LR, halfway along the longest valley: fastai's default
          ``valley`` rule (the longest decreasing subsequence of the curve, of length ``L``
          and ending at ``end``; the run starts at ``end - L``; the point ``L//3 + L//6``
          into it, which fastai means as halfway but its integer division puts at 0.36-0.45
          of a short run) on the lag-free trend, the run reaching back from ``end`` by the log(LR)
          its points stand for (each its own spacing: ``end - L`` on an exponential sweep,
          further on a linear one, whose points near ``end_lr`` are a hundredth of a decade
          apart), counted from the onset of learning (where
          the trend has fallen a tenth of the way from its top to its best, and falls at a
          tenth of its steepest rate or more: a shallow valley's level is reached in the
          slow drift of a flat start, decades early) up to the
          valley's bottom, and the valley reaching on to where the loss stops falling (the
          point ``"min/10"`` reads: the centred trend's bottom is lifted early by the
          blow-up), exactly halfway in log(LR).
        - ``"min/10"``: one LR, a tenth of the LR where the loss stops falling (or the metric
          stops improving): the "one order of magnitude before the minimum" rule of fastai's
          ``minimum`` suggestion and of the fast.ai course. The minimum is read on a
          TRAILING exponential mean of the curve (debiased, its time constant twice the
          trend's window: a factor of 0.976 at the default ``smooth``, fastai's is 0.98),
          which turns up at the first point above it. Not a boxcar: when the descent is
          shorter than the window, the points leaving it come from the flat start and it
          turned past the first spikes of a blow-up. Not on the centred trend: the
          blow-up past the bottom is much steeper (and spikier) than the descent before it,
          so a window that looks ahead is lifted by it up to a half-width before the loss
          stops falling, and a tenth of that point was 2-3x below the best constant LR.
          (fastai's EMA is trailing too, for the same effect.) A curve that never turns up
          in the sweep (past its best the trend climbs back less than half-way out of the
          valley, and the test did not stop on a blow-up: a model that trains at every swept
          LR) has no minimum to take a tenth of, a tenth of ``end_lr`` being only a lower
          bound: a ``RuntimeWarning`` says so and ``"valley"`` is returned.

        Which rule suits which sweep: on an exponential sweep (``sweep="exp"``, the other
        finders' test) all three work; in ``bench/finders.py`` (three small tasks, 20 finder
        runs each, see ``bench/RESULTS.md``) each came within 0.7 accuracy points of the
        best constant LR on average, and within 0.15 of fastai's ``minimum`` (the best peer
        rule there). On a linear sweep of a real model,
        the loss falls late (each step trains at a higher LR than the last, and the few
        steps at low LRs have not trained the model yet), so ``steepest`` and ``valley``
        land late in the descent, a good ``max_lr`` but too high for a constant LR: use
        ``"min/10"`` or ``base_lr`` there.

        Before reading, the rules trim the curve's ends, where the centred trend's window
        is cut short (see ``clr_ext.range_test.reading.Curve.read_window``): the first and
        last few points of an exponential sweep, only the first point or two of a linear
        one (whose first points span decades). On a linear sweep the trend's window is
        also narrowed at low LRs to the log-LR width it has on an exponential sweep.
        Training-batch readings are attributed to the step before (as for the bounds). Every
        method returns LRs inside the swept range ``[lrs[0], lrs[-1]]``. For a fixed LR,
        ``max_lr / 2``..``max_lr / 4`` (``base_lr`` on a loss reading) is also a sound
        choice; for 1cycle, ``max_lr`` itself.
        Unknown ``method``: ``ValueError``.
        """
        if method == "clr":
            return self.base_lr, self.max_lr
        if not isinstance(method, str) or method not in SUGGEST_METHODS:
            raise ValueError(f"method must be one of {SUGGEST_METHODS}, got {method!r}")
        if len(self.lrs) < 2:
            return self.lrs[0] if self.lrs else self.base_lr
        return suggest_single(
            method,
            self.lrs,
            self.losses,
            self.metrics,
            smooth=self.smooth,
            measured_on=self.measured_on,
            stopped=self.diverged,
        )

    # -- plotting --------------------------------------------------------------------
    def plot(self, path: Optional[Union[str, os.PathLike]] = None, suggest: Union[None, str, Sequence[str]] = None):
        """A matplotlib Figure of the curve with the suggested bounds marked.

        Raw values are drawn faint, the zero-lag trend the bounds were read from bold; the
        x-axis is logarithmic for an exponential sweep. Saves a PNG when ``path`` is given.
        ``suggest``: a :meth:`suggest` method name, or several, to mark as well (e.g.
        ``suggest="valley"`` or ``suggest=("steepest", "valley", "min/10")``; the bounds,
        ``"clr"``, are always marked). The figure is built without pyplot (Agg canvas), so
        this works headless and leaves the user's matplotlib backend alone.
        """
        if suggest is None:
            marks: Tuple[str, ...] = ()
        elif isinstance(suggest, str):
            marks = (suggest,)
        else:
            marks = tuple(suggest)
        for m in marks:
            if not isinstance(m, str) or m not in SUGGEST_METHODS:
                raise ValueError(f"suggest must name methods among {SUGGEST_METHODS}, got {m!r}")
        singles = [(m, self.suggest(m)) for m in marks if m != "clr"]
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ModuleNotFoundError as error:
            from .._extras import missing_extra

            raise missing_extra(error, "RangeTestResult.plot()") from None

        fig = Figure(figsize=(7.5, 5.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        n = len(self.lrs)
        finite = [i for i in range(n) if math.isfinite(self.losses[i])]
        loss_lrs = [self.lrs[i] for i in finite]
        loss_vals = [self.losses[i] for i in finite]
        loss_label = "validation loss" if self.measured_on == "val" else "training loss"
        ax.plot(loss_lrs, loss_vals, color="tab:blue", alpha=0.3, lw=1, label=f"{loss_label} (raw)")
        trend_lrs = [self.lrs[i] for i in range(min(n, len(self.trend))) if math.isfinite(self.trend[i])]
        trend_vals = [v for v in self.trend[: len(trend_lrs)]]
        if self.reading == "loss" and trend_vals:
            ax.plot(trend_lrs, trend_vals, color="tab:blue", lw=2, label=f"{loss_label} (zero-lag trend)")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(loss_label, color="tab:blue")
        if self.sweep == "exp":
            ax.set_xscale("log")
        if loss_vals:
            # A diverged curve ends in huge values; clip the view to the part worth reading.
            lo = min(loss_vals)
            upto = loss_vals[: max(1, len(loss_vals) * 9 // 10)]
            hi = max(max(upto[:5] or upto), min(max(upto), 3 * max(abs(lo), 1e-12) + lo))
            pad = 0.05 * (hi - lo if hi > lo else max(abs(hi), 1.0))
            ax.set_ylim(lo - pad, hi + pad)
        handles, labels = ax.get_legend_handles_labels()
        if self.metrics is not None:
            ax2 = ax.twinx()
            mlabel = self.metric + (" (validation)" if self.measured_on == "val" else " (training batch)")
            m_pairs = [(self.lrs[i], v) for i, v in enumerate(self.metrics) if math.isfinite(v)]
            if m_pairs:
                ax2.plot(*zip(*m_pairs), color="tab:orange", alpha=0.35, lw=1, label=f"{mlabel} (raw)")
            if self.reading == "metric" and trend_vals:
                ax2.plot(trend_lrs, trend_vals, color="tab:orange", lw=2, label=f"{mlabel} (zero-lag trend)")
            ax2.set_ylabel(mlabel, color="tab:orange")
            h2, l2 = ax2.get_legend_handles_labels()
            handles += h2
            labels += l2
        ax.axvspan(self.base_lr, self.max_lr, color="tab:green", alpha=0.08)
        handles.append(ax.axvline(self.base_lr, color="tab:green", ls="--", lw=1.5))
        labels.append(f"base_lr = {self.base_lr:.3g}")
        handles.append(ax.axvline(self.max_lr, color="tab:red", ls="--", lw=1.5))
        labels.append(f"max_lr = {self.max_lr:.3g}")
        styles = {"steepest": ("tab:purple", "-."), "valley": ("tab:brown", "-."), "min/10": ("tab:olive", "-.")}
        for m, lr in singles:
            color, ls = styles[m]
            handles.append(ax.axvline(lr, color=color, ls=ls, lw=1.2))
            labels.append(f"{m} = {lr:.3g}")
        if self.diverged and n:
            handles.append(ax.axvline(self.lrs[-1], color="0.4", ls=":", lw=1))
            labels.append(f"stopped ({self.stop_reason}) at {self.lrs[-1]:.3g}")
        # Below the axes: inside, it would hide part of the curve it explains.
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
        ax.set_title(f"LR range test ({self.sweep} sweep, {len(self.lrs)} steps)")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), dpi=100, format="png")
        return fig

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict. Non-finite floats are written as the strings "NaN",
        "Infinity", "-Infinity" (plain JSON has no such numbers); :meth:`load` reads them back."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "sweep": self.sweep,
            "metric": self.metric,
            "reading": self.reading,
            "measured_on": self.measured_on,
            "start_lr": _enc(self.start_lr),
            "end_lr": _enc(self.end_lr),
            "num_iters": self.num_iters,
            "smooth": self.smooth,
            "diverge_factor": _enc(self.diverge_factor),
            "diverged": self.diverged,
            "stop_reason": self.stop_reason,
            "base_lr": self.base_lr,
            "max_lr": self.max_lr,
            "lrs": [_enc(v) for v in self.lrs],
            "losses": [_enc(v) for v in self.losses],
            "smoothed_losses": [_enc(v) for v in self.smoothed_losses],
            "metrics": None if self.metrics is None else [_enc(v) for v in self.metrics],
            "trend": [_enc(v) for v in self.trend],
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RangeTestResult":
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError("not a saved clr_ext.RangeTestResult")
        metrics = d.get("metrics")
        return cls(
            lrs=[_dec(v) for v in d["lrs"]],
            losses=[_dec(v) for v in d["losses"]],
            smoothed_losses=[_dec(v) for v in d["smoothed_losses"]],
            metrics=None if metrics is None else [_dec(v) for v in metrics],
            diverged=d["diverged"],
            base_lr=d["base_lr"],
            max_lr=d["max_lr"],
            trend=[_dec(v) for v in d.get("trend", [])],
            reading=d.get("reading", "loss"),
            measured_on=d.get("measured_on", "train"),
            sweep=d.get("sweep", "linear"),
            metric=d.get("metric", "loss"),
            start_lr=_dec(d.get("start_lr")) if d.get("start_lr") is not None else None,
            end_lr=_dec(d.get("end_lr")) if d.get("end_lr") is not None else None,
            num_iters=d.get("num_iters"),
            smooth=d.get("smooth", 0.05),
            diverge_factor=_dec(d.get("diverge_factor", 4.0)),
            stop_reason=d.get("stop_reason"),
        )

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the result as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False)
            f.write("\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "RangeTestResult":
        """Read a result written by :meth:`save`."""
        with open(path, "r", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def cyclic_arguments(
    result: RangeTestResult,
    iters_per_epoch: float,
    *,
    epochs: Optional[float] = None,
    total_steps: Optional[int] = None,
    **kwargs: Any,
) -> Dict[str, Any]:
    """The constructor arguments of a cyclical optimizer built from a range test (what
    ``CyclicSGD.from_range_test`` and ``CyclicAdamW.from_range_test`` pass on): the
    suggested bounds, and the step sizes of :meth:`RangeTestResult.cycle_for_run` (with
    ``epochs`` or ``total_steps``, whole cycles that end with the run; else the paper's 4
    epochs per half cycle, ``epochs_per_half_cycle`` to change it). Explicit ``base_lr``,
    ``max_lr``, ``step_size_up`` and ``step_size_down`` in ``kwargs`` win; the other
    ``kwargs`` go to the constructor as they are."""
    half_cycle = kwargs.pop("epochs_per_half_cycle", 4)
    up, down = result.cycle_for_run(
        iters_per_epoch, epochs=epochs, total_steps=total_steps, epochs_per_half_cycle=half_cycle
    )
    kwargs.setdefault("base_lr", result.base_lr)
    kwargs.setdefault("max_lr", result.max_lr)
    if "step_size_up" not in kwargs:
        kwargs["step_size_up"] = up
        kwargs.setdefault("step_size_down", down if epochs is not None or total_steps is not None else None)
    return kwargs


def optimizer_for_run(
    cls: type, params: Any, result: RangeTestResult, iters_per_epoch: float, total_steps: int, **kwargs: Any
):
    """``cls.from_range_test`` for a run of ``total_steps`` optimizer steps of
    ``iters_per_epoch`` each epoch: a cyclical class gets whole cycles that end with the run,
    a 1cycle class (which has ``total_steps``) the run's length. The trainer integrations
    (``clr_ext.range_test.lightning``, ``clr_ext.range_test.hf``) build with it."""
    if hasattr(cls, "total_steps"):  # the 1cycle classes: their cycle is the run
        return cls.from_range_test(params, result, total_steps=total_steps, **kwargs)
    return cls.from_range_test(params, result, iters_per_epoch, total_steps=total_steps, **kwargs)


def _enc(v: Optional[float]):
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _dec(v) -> float:
    if isinstance(v, str):
        return float(v.replace("Infinity", "inf"))  # "NaN", "inf", "-inf" parse
    return float(v)
