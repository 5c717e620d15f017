"""The learning-rate range test (Smith 2017, sec. 3.3) and the CLR bounds it suggests.

The test trains a model for a few hundred steps while the learning rate (LR) rises from
``start_lr`` to ``end_lr``, records the loss (and optionally a metric such as accuracy) at
every step, and reads off a ``(base_lr, max_lr)`` range for cyclical learning rates.

Unlike the usual LR finders (which suggest one LR), :func:`range_test` suggests the RANGE
that CLR needs, read the paper's way; see :func:`range_test` for the exact method.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import warnings
from collections.abc import Iterable
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["range_test", "RangeTestResult"]

_SWEEPS = ("linear", "exp")
_METRIC_NAMES = ("loss", "accuracy")
_FORMAT = "clr_ext.RangeTestResult"
_FORMAT_VERSION = 1

# Fractions of the curve's total fall (or rise, for a metric) used to read the bounds.
# _PLATEAU_TOL: how close to its best value the zero-lag trend must come before we say the
# curve has stopped improving (max_lr); a tolerance, so that on a flat, noisy floor max_lr is
# the floor's start rather than wherever noise put the minimum.
# _ONSET: how far the trend must have fallen (risen) before we say learning has "started".
_PLATEAU_TOL = 0.05
_ONSET = 0.10


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------
class RangeTestResult:
    """What :func:`range_test` returns: the recorded curve and the suggested CLR bounds.

    Attributes (lists have one entry per step taken; a step that produced a NaN/inf loss is
    recorded, and is the last one):

    - ``lrs``: the LR each step used.
    - ``losses``: the raw loss of each step (the training-batch loss, or the validation loss
      when a ``val_loader`` was given).
    - ``smoothed_losses``: the bias-corrected exponential moving average of ``losses`` that
      the divergence stop looks at (causal, so it lags the raw curve by about
      ``(1 - smooth) / smooth`` steps; the bounds are NOT read from it, see ``trend``).
    - ``metrics``: the metric per step, or None for ``metric="loss"``.
    - ``diverged``: True when the test stopped early (loss blew up, or was NaN/inf).
    - ``base_lr``, ``max_lr``: the suggested bounds, ``start_lr <= base_lr < max_lr <= end_lr``.
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
        for name, value in (("iters_per_epoch", iters_per_epoch),
                            ("epochs_per_half_cycle", epochs_per_half_cycle)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        return max(1, int(round(float(iters_per_epoch) * float(epochs_per_half_cycle))))

    # -- plotting --------------------------------------------------------------------
    def plot(self, path: Optional[Union[str, os.PathLike]] = None):
        """A matplotlib Figure of the curve with the suggested bounds marked.

        Raw values are drawn faint, the zero-lag trend the bounds were read from bold; the
        x-axis is logarithmic for an exponential sweep. Saves a PNG when ``path`` is given.
        The figure is built without pyplot (Agg canvas), so this works headless and leaves
        the user's matplotlib backend alone.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

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
            hi = max(max(upto[: 5] or upto), min(max(upto), 3 * max(abs(lo), 1e-12) + lo))
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
        if self.diverged and n:
            handles.append(ax.axvline(self.lrs[-1], color="0.4", ls=":", lw=1))
            labels.append(f"stopped ({self.stop_reason}) at {self.lrs[-1]:.3g}")
        # Below the axes: inside, it would hide part of the curve it explains.
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
                  fontsize=8, frameon=False)
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


# --------------------------------------------------------------------------------------
# The sweep and the reading of the curve (pure functions, also used by the tests)
# --------------------------------------------------------------------------------------
def _sweep_lrs(start_lr: float, end_lr: float, num_iters: int, sweep: str) -> List[float]:
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


def _half_width(smooth: float, n: int) -> int:
    """Half-width of the centred window: about half the causal EMA's lag
    ((1 - smooth) / smooth steps), so the centred mean is about as smooth as the EMA over
    the span that matters; capped at a tenth of the curve so a short test keeps its shape."""
    if smooth <= 0 or n < 3:
        return 0
    h = int(math.ceil(0.5 * (1.0 - smooth) / smooth))
    return max(1, min(h, n // 10))


def _centered_mean(values: Sequence[float], h: int) -> List[float]:
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


def _suggest_bounds(
    lrs: Sequence[float],
    losses: Sequence[float],
    metrics: Optional[Sequence[float]] = None,
    *,
    smooth: float = 0.05,
    measured_on: str = "train",
) -> Tuple[float, float, List[float], str]:
    """Read ``(base_lr, max_lr)`` off a recorded curve; see :func:`range_test` for the method.

    Returns ``(base_lr, max_lr, trend, reading)`` where ``trend`` is the zero-lag smoothing of
    the read curve (NaN past its finite part) and ``reading`` is ``"loss"`` or ``"metric"``.
    """
    n_all = len(lrs)
    reading = "loss" if metrics is None else "metric"
    values = list(losses) if metrics is None else list(metrics)
    # Only the part before the first non-finite loss/metric is a curve worth reading.
    n = 0
    while n < n_all and math.isfinite(losses[n]) and math.isfinite(values[n]):
        n += 1
    trend_out = [math.nan] * n_all
    if n_all < 2:
        raise ValueError("at least two steps are needed to suggest bounds")
    if n < 2:
        warnings.warn("the range test has fewer than two finite points; the suggested bounds "
                      "are only the first two LRs of the sweep (start lower)", RuntimeWarning, 2)
        return float(lrs[0]), float(lrs[1]), trend_out, reading

    # A curve "c" where lower is better: the log of a positive loss (a blow-up is then about
    # linear, so the symmetric window leaks it backwards into the valley far less than it
    # would in linear scale), or the loss itself, or minus the metric (higher is better).
    if reading == "loss":
        log_domain = all(v > 0 for v in values[:n])
        c = [math.log(v) for v in values[:n]] if log_domain else list(values[:n])
    else:
        log_domain = False
        c = [-v for v in values[:n]]
    t = _centered_mean(c, _half_width(smooth, n))

    i_best = min(range(n), key=t.__getitem__)
    i_top = max(range(i_best + 1), key=t.__getitem__)
    depth = t[i_top] - t[i_best]
    if not depth > 0:
        warnings.warn("the range-test curve never improves; widen the sweep (or run longer). "
                      "The bounds suggested are a guess.", RuntimeWarning, 2)
    # max_lr: where the curve stops improving: the first point at which the trend has come
    # within _PLATEAU_TOL of the total improvement of its best value. On a noisy plateau (or
    # flat valley floor) this is its start, not a random point on it; a short sweep
    # overestimates the LR that training can sustain, so the start is the safer reading.
    i_max = i_top
    while i_max < i_best and t[i_max] > t[i_best] + _PLATEAU_TOL * depth:
        i_max += 1
    # Onset of learning: the first point after the top where the trend has improved by _ONSET.
    i_on = i_top
    while i_on < i_best and t[i_on] > t[i_top] - _ONSET * depth:
        i_on += 1
    if measured_on == "train":
        # A training-batch reading at step i is taken BEFORE step i's update: it shows what
        # the LRs of steps < i did. Attribute it to the previous step's LR.
        i_max -= 1
        i_on -= 1
    i_max = min(max(i_max, 1), n_all - 1)
    i_on = max(i_on, 0)
    max_lr = float(lrs[i_max])
    onset_lr = float(lrs[i_on])
    if reading == "loss":
        # The paper's rule of thumb (base = max/3..max/4), unless learning only starts above it.
        base_lr = max(max_lr / 4.0, onset_lr)
    else:
        base_lr = onset_lr
    if not base_lr < max_lr:
        base_lr = max_lr / 4.0
    base_lr = max(base_lr, float(lrs[0]))  # inside the swept range; lrs[0] < lrs[i_max]

    if reading == "loss":
        trend_vals = [math.exp(v) for v in t] if log_domain else t
    else:
        trend_vals = [-v for v in t]
    trend_out[:n] = trend_vals
    return base_lr, max_lr, trend_out, reading


# --------------------------------------------------------------------------------------
# Snapshot / restore
# --------------------------------------------------------------------------------------
class _ModelSnapshot:
    """Everything of a model that a training step can change, copied exactly: every module's
    parameter and buffer slots (which objects sit there, and their values, including
    non-persistent buffers that state_dict() would miss), the parameters' ``.grad`` and every
    module's train/eval flag."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.slots = []  # (module, {"_parameters": dict copy, "_buffers": dict copy})
        self.values = {}  # id(tensor) -> (tensor, value clone, grad clone or None)
        self.modes = [(m, m.training) for m in model.modules()]
        with torch.no_grad():
            for m in model.modules():
                self.slots.append((m, dict(m._parameters), dict(m._buffers)))
                for t in list(m._parameters.values()) + list(m._buffers.values()):
                    if t is None or id(t) in self.values:
                        continue
                    grad = getattr(t, "grad", None)
                    self.values[id(t)] = (t, t.detach().clone(),
                                          None if grad is None else grad.detach().clone())

    def restore(self) -> None:
        with torch.no_grad():
            for m, params, buffers in self.slots:
                # A module may have re-assigned a slot (e.g. a buffer replaced by a new
                # tensor); put the original objects back, in their original order.
                for slots, original in ((m._parameters, params), (m._buffers, buffers)):
                    if list(slots) != list(original) or \
                            any(slots[k] is not v for k, v in original.items()):
                        slots.clear()
                        slots.update(original)
            for t, value, grad in self.values.values():
                if t.shape == value.shape and t.dtype == value.dtype and t.device == value.device:
                    t.copy_(value)
                else:  # moved or re-typed (e.g. device=...): put the original tensor back
                    t.data = value
                if isinstance(t, torch.nn.Parameter) or t.requires_grad:
                    t.grad = grad
        for m, training in self.modes:
            m.training = training


# --------------------------------------------------------------------------------------
# Helpers for the loop
# --------------------------------------------------------------------------------------
def _to_device(obj, device):
    if device is None:
        return obj
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _split_batch(batch) -> Tuple[Any, Any]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError("range_test expects batches of the form (inputs, targets); got "
                    f"{type(batch).__name__}")


def _batch_len(targets, outputs) -> int:
    for x in (targets, outputs):
        if torch.is_tensor(x) and x.dim() > 0:
            return int(x.shape[0])
    try:
        return len(targets)
    except TypeError:
        return 1


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    pred = outputs.argmax(dim=-1)
    if targets.is_floating_point() and targets.shape == outputs.shape:
        targets = targets.argmax(dim=-1)  # one-hot or soft labels
    return (pred == targets).float().mean().item()


def _scalar(x, what: str) -> float:
    if torch.is_tensor(x):
        if x.numel() != 1:
            raise ValueError(f"{what} must return a scalar, got a tensor of shape {tuple(x.shape)}")
        return float(x.detach().item())
    return float(x)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class _Cycle:
    """Endless batches from a re-iterable loader (restarts it when exhausted)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.it = iter(loader)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            try:
                return next(self.it)
            except StopIteration:
                raise ValueError("train_loader yielded no batches") from None


def _check_positive_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------
def range_test(
    model: torch.nn.Module,
    train_loader: Iterable,
    loss_fn: Callable,
    *,
    start_lr: float = 1e-5,
    end_lr: float = 1.0,
    num_iters: int = 100,
    sweep: str = "linear",
    val_loader: Optional[Iterable] = None,
    metric: Union[str, Callable] = "loss",
    optimizer: Optional[torch.optim.Optimizer] = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    smooth: float = 0.05,
    diverge_factor: float = 4.0,
    device: Optional[Union[str, torch.device]] = None,
    restore: bool = True,
    progress: bool = True,
) -> RangeTestResult:
    """Run the LR range test and suggest ``(base_lr, max_lr)`` for cyclical learning rates.

    The model is trained for ``num_iters`` steps on batches ``(inputs, targets)`` from
    ``train_loader`` (restarted when exhausted). Step ``i`` (0-based) uses the LR
    ``start_lr + i/(N-1) * (end_lr - start_lr)`` (``sweep="linear"``, the paper's test) or
    ``start_lr * (end_lr/start_lr) ** (i/(N-1))`` (``sweep="exp"``), so the first step uses
    exactly ``start_lr`` and the last exactly ``end_lr``.

    What is recorded at each step:

    - without ``val_loader``: the loss (and metric) of the training batch, computed in the
      forward pass of that step, i.e. before its update;
    - with ``val_loader``: after the step's update, the loss and metric over the WHOLE of
      ``val_loader`` (model in eval mode, no gradients), at every step (stride 1). That costs
      ``num_iters * len(val_loader)`` extra forward passes, so pass a small loader (a fixed
      subset of a few hundred samples is plenty).

    ``metric``: ``"loss"`` (no metric), ``"accuracy"`` (argmax over the last dimension of the
    outputs against the targets; one-hot targets are argmax-ed too) or a callable
    ``(outputs, targets) -> float`` read like accuracy: HIGHER IS BETTER. Validation values are
    averaged over samples (batches weighted by their size).

    ``optimizer=None`` uses ``torch.optim.SGD(momentum=momentum, weight_decay=weight_decay)``
    over the trainable parameters. A given optimizer is used as it is, every param group's
    ``lr`` being overwritten with the sweep's LR before each step. (A ``CyclicSGD`` is refused:
    it sets its own LR every step.)

    Stopping: the test stops early, with ``result.diverged`` True, when the loss is NaN or
    infinite (that step is recorded, its update skipped) or when the smoothed loss exceeds
    ``diverge_factor`` times the best smoothed loss so far. The smoothed loss is an
    exponential moving average with weight ``smooth`` on the newest loss, started at zero and
    bias-corrected (so its first value is the first loss); ``smooth=0`` means no smoothing.
    The ratio test assumes positive losses: it is skipped while the best smoothed loss is <= 0.

    Restore (``restore=True``): whatever happens (normal end, exception, KeyboardInterrupt),
    every parameter and buffer of the model (BatchNorm statistics and counters included) and
    every ``.grad``, the train/eval flag of every submodule, the model's device, and a given
    optimizer's state (``state_dict``, deep-copied) are put back exactly as they were. The
    global RNG state is not restored. With ``restore=False`` the model is left as trained.

    The model is trained in train mode: ``model.train()`` is called if the model is in eval
    mode; if it is already in train mode, submodules the user put in eval mode stay so.

    How the bounds are read (``result.base_lr``, ``result.max_lr``):

    1. The curve read is the metric when there is one (higher is better), else the loss, on
       the part before the first NaN/inf. A positive loss is read in log scale, where a
       blow-up is roughly a straight line.
    2. It is smoothed with a CENTRED moving average (half-width about half the EMA's lag,
       ``ceil((1 - smooth) / (2 * smooth))`` steps, at most a tenth of the curve; the window
       shrinks symmetrically at the ends). A centred window has no lag, so unlike the causal
       EMA it does not shift the bounds to the right by ~``1/smooth`` steps. This zero-lag
       curve is ``result.trend``.
    3. ``max_lr``: where the curve stops improving: going right from the curve's worst point
       (before its best), the first point at which the trend has come within 5% of the total
       improvement of its best value (lowest loss, highest metric). On an accuracy curve this
       is where accuracy slows and levels off, before it turns ragged or falls (the paper);
       on a loss curve, where the loss reaches its floor, before it turns up (1803.09820). On
       a noisy plateau this is the plateau's start, not a random point on it: a short sweep
       overestimates the LR that training can sustain, so the start is the safer reading.
    4. Onset: the first point after the curve's worst value (before its best) where the trend
       has improved by 10% of the total: where the loss starts to fall / the accuracy starts
       to rise.
    5. Without ``val_loader`` the reading at step ``i`` was taken before step ``i``'s update,
       so it reflects the LRs up to step ``i-1``: both points move one step left.
    6. Reading the metric: ``base_lr`` = the onset (the paper's "accuracy starts to increase").
       Reading the loss: ``base_lr = max(max_lr / 4, onset)`` (the paper's rule of thumb
       base = max/3..max/4, unless the loss only starts falling above that).
    7. Always ``start_lr <= base_lr < max_lr <= end_lr`` (``base_lr`` falls back to
       ``max(max_lr / 4, start_lr)``). A warning is issued when the curve never improves.

    Returns a :class:`RangeTestResult`.
    """
    # ---- argument checks (all before anything is touched) ------------------------------
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable: (outputs, targets) -> scalar tensor")
    start_lr = _check_positive_finite("start_lr", start_lr)
    end_lr = _check_positive_finite("end_lr", end_lr)
    if not end_lr > start_lr:
        raise ValueError(f"end_lr must be greater than start_lr, got end_lr={end_lr!r} "
                         f"<= start_lr={start_lr!r}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, numbers.Integral) or num_iters < 2:
        raise ValueError(f"num_iters must be an integer >= 2, got {num_iters!r}")
    num_iters = int(num_iters)
    if sweep not in _SWEEPS:
        raise ValueError(f"sweep must be one of {_SWEEPS}, got {sweep!r}")
    if callable(metric):
        metric_fn, metric_name = metric, getattr(metric, "__name__", type(metric).__name__)
    elif metric in _METRIC_NAMES:
        metric_fn = _accuracy if metric == "accuracy" else None
        metric_name = metric
    else:
        raise ValueError(f"metric must be 'loss', 'accuracy' or a callable, got {metric!r}")
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Real) or not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth!r}")
    if isinstance(diverge_factor, bool) or not isinstance(diverge_factor, numbers.Real) \
            or math.isnan(diverge_factor) or not diverge_factor > 1:
        raise ValueError(f"diverge_factor must be > 1 (inf disables the ratio test), got {diverge_factor!r}")
    if optimizer is None:
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) \
                or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    else:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if _is_cyclic_sgd(optimizer):
            raise TypeError("a CyclicSGD sets its own LR at every step and cannot follow the "
                            "sweep; pass optimizer=None (SGD with momentum) or a plain "
                            "torch.optim optimizer")
    if val_loader is not None and not isinstance(val_loader, Iterable):
        raise TypeError("val_loader must be an iterable of (inputs, targets) batches")
    if device is not None:
        device = torch.device(device)
    smooth = float(smooth)

    plan = _sweep_lrs(start_lr, end_lr, num_iters, sweep)
    measured_on = "train" if val_loader is None else "val"

    snapshot = _ModelSnapshot(model) if restore else None
    opt_state = copy.deepcopy(optimizer.state_dict()) if (restore and optimizer is not None) else None

    lrs: List[float] = []
    losses: List[float] = []
    smoothed: List[float] = []
    metrics: Optional[List[float]] = None if metric_fn is None else []
    diverged, stop_reason = False, None
    bar = None
    try:
        if device is not None:
            model.to(device)
        if optimizer is None:
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError("the model has no trainable parameters")
            opt = torch.optim.SGD(params, lr=start_lr, momentum=float(momentum),
                                  weight_decay=float(weight_decay))
        else:
            opt = optimizer
        if not model.training:
            model.train()
        train_modes = [(m, m.training) for m in model.modules()]
        batches = _Cycle(train_loader)
        bar = _progress_bar(num_iters, progress)

        beta = 1.0 - smooth
        avg, best = 0.0, math.inf
        for i, lr in enumerate(plan):
            _set_lr(opt, lr)
            inputs, targets = _split_batch(batches.next())
            inputs, targets = _to_device(inputs, device), _to_device(targets, device)
            opt.zero_grad(set_to_none=True)
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            value = _scalar(loss, "loss_fn")
            metric_value = math.nan
            if math.isfinite(value):
                if metric_fn is not None and val_loader is None:
                    with torch.no_grad():
                        metric_value = _scalar(metric_fn(outputs.detach(), targets), "metric")
                loss.backward()
                opt.step()
                if val_loader is not None:
                    value, metric_value = _evaluate(model, val_loader, loss_fn, metric_fn, device)
                    for m, training in train_modes:
                        m.training = training
            del outputs, loss
            lrs.append(lr)
            losses.append(value)
            if metrics is not None:
                metrics.append(metric_value)
            if bar is not None:
                bar.update(1)
            if not math.isfinite(value):
                smoothed.append(math.nan)
                diverged, stop_reason = True, "nan"
                break
            if smooth > 0:
                avg = beta * avg + smooth * value
                s = avg / (1.0 - beta ** (i + 1))
            else:
                s = value
            smoothed.append(s)
            if bar is not None:
                bar.set_postfix(lr=f"{lr:.3g}", loss=f"{s:.4g}", refresh=False)
            if best > 0 and s > diverge_factor * best:
                diverged, stop_reason = True, "diverged"
                break
            best = min(best, s)
    finally:
        if bar is not None:
            bar.close()
        if restore:
            snapshot.restore()
            if opt_state is not None:
                optimizer.load_state_dict(opt_state)

    if len(lrs) < 2:
        # Stopped at the very first step: nothing to read; the first two LRs of the plan
        # still satisfy start_lr <= base_lr < max_lr <= end_lr.
        warnings.warn("the range test stopped at its first step (NaN/inf loss); start lower",
                      RuntimeWarning, 2)
        base_lr, max_lr, trend, reading = plan[0], plan[1], [math.nan] * len(lrs), \
            ("loss" if metrics is None else "metric")
    else:
        base_lr, max_lr, trend, reading = _suggest_bounds(
            lrs, losses, metrics, smooth=smooth, measured_on=measured_on)
    return RangeTestResult(
        lrs=lrs, losses=losses, smoothed_losses=smoothed, metrics=metrics, diverged=diverged,
        base_lr=base_lr, max_lr=max_lr, trend=trend, reading=reading, measured_on=measured_on,
        sweep=sweep, metric=metric_name, start_lr=start_lr, end_lr=end_lr, num_iters=num_iters,
        smooth=smooth, diverge_factor=float(diverge_factor), stop_reason=stop_reason,
    )


def _evaluate(model, loader, loss_fn, metric_fn, device) -> Tuple[float, float]:
    """Sample-weighted mean loss and metric over the whole loader, in eval mode."""
    model.eval()
    total, loss_sum, metric_sum = 0, 0.0, 0.0
    with torch.no_grad():
        for batch in loader:
            inputs, targets = _split_batch(batch)
            inputs, targets = _to_device(inputs, device), _to_device(targets, device)
            outputs = model(inputs)
            n = _batch_len(targets, outputs)
            loss_sum += _scalar(loss_fn(outputs, targets), "loss_fn") * n
            if metric_fn is not None:
                metric_sum += _scalar(metric_fn(outputs, targets), "metric") * n
            total += n
    if total == 0:
        raise ValueError("val_loader yielded no batches")
    return loss_sum / total, (metric_sum / total if metric_fn is not None else math.nan)


def _is_cyclic_sgd(optimizer) -> bool:
    try:
        from .optimizer import CyclicSGD
    except Exception:  # the compiled package may be half-built; then it cannot be one
        return type(optimizer).__name__ == "CyclicSGD"
    return isinstance(optimizer, CyclicSGD)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional at run time; no bar then
        return None
    return tqdm(total=total, desc="LR range test", unit="step", leave=False)
