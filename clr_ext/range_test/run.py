"""The range test's training loop: the sweep, the measurements, the divergence stop, the
snapshot and restore, and what real training loops need (gradient accumulation, AMP, custom
batches and losses, torch.distributed)."""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Iterable
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

from .reading import suggest_bounds, sweep_lrs
from .result import RangeTestResult

__all__ = ["range_test"]

_SWEEPS = ("linear", "exp")
_METRIC_NAMES = ("loss", "accuracy")
_OPTIMIZERS = ("sgd", "adamw")
_SNAPSHOTS = ("device", "cpu", "disk")
_AMP_DTYPES = (torch.float16, torch.bfloat16)

# The default sweeps: (start_lr, end_lr, sweep). SGD's is the paper's linear test. Adaptive
# optimizers (AdamW and its kin) train at LRs 10-100x smaller and blow up within a decade
# or two above their best LR, so a linear sweep to 1 would spend nearly every step past the
# blow-up: theirs is geometric over the scales they use.
_SGD_SWEEP = (1e-5, 1.0, "linear")
_ADAPTIVE_SWEEP = (1e-7, 1.0, "exp")
_ADAPTIVE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax)
# An adaptive optimizer's sweep "fits" when at least this fraction of its steps are at LRs up
# to _ADAPTIVE_LOW, where such optimizers usually train.
_ADAPTIVE_LOW, _ADAPTIVE_LOW_SHARE = 1e-3, 0.25
# Fewer finite points than this and the reading is coarse: the trimmed, smoothed curve keeps
# a handful of points (torch-lr-finder refuses to suggest below 17).
_MIN_READABLE = 20


# --------------------------------------------------------------------------------------
# Snapshot / restore
# --------------------------------------------------------------------------------------
class _ModelSnapshot:
    """Everything of a model that a training step can change, copied exactly: every module's
    parameter and buffer slots (which objects sit there, and their values, including
    non-persistent buffers that state_dict() would miss), the parameters' ``.grad`` and every
    module's train/eval flag, and a given optimizer's state dict. ``where``: ``"device"``
    (copies next to the tensors), ``"cpu"`` (in host memory, so the model's memory is not
    doubled on its device) or ``"disk"`` (written to a temporary file and read back,
    memory-mapped, by :meth:`restore`, for models that do not fit twice in memory; the file
    is removed by :meth:`restore`, or by :meth:`discard`)."""

    def __init__(self, model: torch.nn.Module, where: str = "device", optimizer=None) -> None:
        self.where = where
        self.path = None
        self.slots = []  # (module, {"_parameters": dict copy, "_buffers": dict copy})
        self.values = {}  # id(tensor) -> (tensor, device, value copy or index, grad copy or index or None)
        self.modes = [(m, m.training) for m in model.modules()]
        to_disk, to_cpu = where == "disk", where == "cpu"
        saved_values, saved_grads = [], []
        with torch.no_grad():
            for m in model.modules():
                self.slots.append((m, dict(m._parameters), dict(m._buffers)))
                for t in list(m._parameters.values()) + list(m._buffers.values()):
                    if t is None or id(t) in self.values:
                        continue
                    grad = getattr(t, "grad", None)
                    if to_disk:
                        # torch.save copies each storage to the file as it writes it: no
                        # second copy of the model is held anywhere.
                        saved_values.append(t.detach())
                        if grad is not None:
                            saved_grads.append(grad.detach())
                        value, grad = len(saved_values) - 1, (None if grad is None else len(saved_grads) - 1)
                        self.values[id(t)] = (t, t.device, value, grad)
                    else:
                        self.values[id(t)] = (
                            t,
                            t.device,
                            _copy(t, to_cpu),
                            None if grad is None else _copy(grad, to_cpu),
                        )
        self.optimizer = optimizer
        if to_disk:
            fd, self.path = tempfile.mkstemp(prefix="clr_ext_range_test_", suffix=".pt")
            os.close(fd)
            try:
                state = None if optimizer is None else optimizer.state_dict()
                torch.save({"values": saved_values, "grads": saved_grads, "optimizer": state}, self.path)
            except BaseException:
                self.discard()
                raise
            self.optimizer_state = None
        else:
            self.optimizer_state = None if optimizer is None else _state_copy(optimizer.state_dict(), to_cpu)

    def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self.path = None

    def restore(self) -> None:
        try:
            self._restore()
        finally:
            self.discard()

    def _restore(self) -> None:
        on_disk = None
        if self.where == "disk":
            # Memory-mapped: the values are read from the file as they are copied back.
            on_disk = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        with torch.no_grad():
            for m, params, buffers in self.slots:
                # A module may have re-assigned a slot (e.g. a buffer replaced by a new
                # tensor); put the original objects back, in their original order.
                for slots, original in ((m._parameters, params), (m._buffers, buffers)):
                    if list(slots) != list(original) or any(slots[k] is not v for k, v in original.items()):
                        slots.clear()
                        slots.update(original)
            for t, device, value, grad in self.values.values():
                if on_disk is not None:
                    value = on_disk["values"][value]
                    grad = None if grad is None else on_disk["grads"][grad]
                if t.shape == value.shape and t.dtype == value.dtype and t.device == device:
                    t.copy_(value)
                else:  # moved or re-typed (e.g. device=...): put the original tensor back
                    t.data = value.to(device, copy=on_disk is not None)
                if isinstance(t, torch.nn.Parameter) or t.requires_grad:
                    t.grad = None if grad is None else grad.to(device, copy=on_disk is not None)
        for m, training in self.modes:
            m.training = training
        if self.optimizer is not None:
            # Copied out of the mapped file: the optimizer must not keep pages of a removed file.
            state = self.optimizer_state if on_disk is None else _state_copy(on_disk["optimizer"], True)
            self.optimizer.load_state_dict(state)


def _copy(t: torch.Tensor, to_cpu: bool) -> torch.Tensor:
    t = t.detach()
    return t.to("cpu", copy=True) if to_cpu else t.clone()


def _state_copy(obj, to_cpu: bool):
    """A deep copy of an optimizer state dict, its tensors in CPU memory if ``to_cpu``
    (load_state_dict moves them back to their parameters' devices)."""
    if not to_cpu:
        return copy.deepcopy(obj)
    if torch.is_tensor(obj):
        return _copy(obj, True)
    if isinstance(obj, dict):
        return {k: _state_copy(v, True) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_state_copy(v, True) for v in obj)
    return copy.deepcopy(obj)


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
    raise TypeError(
        "range_test expects batches of the form (inputs, targets); got "
        f"{type(batch).__name__} (for other batches, pass step_fn=(model, batch) -> loss)"
    )


def _batch_len(targets, outputs) -> int:
    for x in (targets, outputs):
        if torch.is_tensor(x) and x.dim() > 0:
            return int(x.shape[0])
    try:
        return len(targets)
    except TypeError:
        return 1


def _first_dim(batch) -> int:
    """Samples in an arbitrary batch: the first dimension of its first tensor (dict values in
    order, sequence items in order), else 1."""
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if torch.is_tensor(item) or isinstance(item, (dict, list, tuple)):
            return _first_dim(item)
    return 1


def _check_class_scores(outputs, targets) -> None:
    """metric="accuracy" compares the argmax of the outputs' last dimension with class
    indices (or with one-hot / soft labels of the outputs' shape): anything else, e.g. a
    regression model's (B, 1) outputs, would record a meaningless constant."""
    scores = torch.is_tensor(outputs) and outputs.is_floating_point() and outputs.dim() >= 1
    if scores and outputs.shape[-1] >= 2 and torch.is_tensor(targets):
        if targets.shape == outputs.shape[:-1] and not targets.is_floating_point():
            return
        if targets.shape == outputs.shape and targets.is_floating_point():
            return
    shape = lambda x: tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
    raise ValueError(
        "metric='accuracy' needs class scores: outputs of shape (..., C) with C >= 2 classes "
        "and targets holding class indices of shape (...) (or one-hot / soft labels of the "
        f"outputs' shape); got outputs {shape(outputs)} and targets {shape(targets)}. For "
        "regression use metric='loss' (or a callable metric, higher is better)"
    )


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    _check_class_scores(outputs, targets)
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


def _lr_ratios(optimizer: torch.optim.Optimizer) -> List[float]:
    """Each group's LR relative to the first group's: the sweep keeps these ratios."""
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    if not all(math.isfinite(v) and v >= 0 for v in lrs):
        raise ValueError(f"optimizer: every param group needs a finite LR >= 0, got {lrs}")
    if lrs[0] > 0:
        return [v / lrs[0] for v in lrs]
    if all(v == lrs[0] for v in lrs):
        return [1.0] * len(lrs)
    raise ValueError(
        "optimizer: its first param group has LR 0 while others do not, so the "
        f"groups' LR ratios are undefined (LRs {lrs}); the sweep scales every group "
        "by the same factor, relative to the first"
    )


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, ratios: Sequence[float]) -> None:
    for group, ratio in zip(optimizer.param_groups, ratios):
        value = lr if ratio == 1.0 else lr * ratio
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


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
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_positive_int(name: str, value, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _is_clr_ext_optimizer(optimizer) -> bool:
    """clr_ext's optimizers (CyclicSGD and its siblings) set their own LR at every step."""
    return any(c.__module__.split(".")[0] == "clr_ext" for c in type(optimizer).__mro__)


def _model_device(model: torch.nn.Module, device: Optional[torch.device]) -> torch.device:
    if device is not None:
        return device
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional at run time; no bar then
        return None
    return tqdm(total=total, desc="LR range test", unit="step", leave=False)


class _Ranks:
    """torch.distributed, when initialized with more than one rank: values are gathered from
    every rank and combined in rank order, in float64 on the host, so that every rank computes
    bit-identical results (and so takes the same decisions)."""

    def __init__(self) -> None:
        self.world, self.rank = 1, 0
        try:
            import torch.distributed as dist
        except ImportError:  # a torch built without distributed
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.dist = dist
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            backend = str(dist.get_backend()).lower()
            if "nccl" in backend and torch.cuda.is_available():
                self.device = torch.device("cuda", torch.cuda.current_device())
            else:
                self.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    def gather(self, values: Sequence[float]) -> List[List[float]]:
        """Every rank's ``values`` (same length on every rank), in rank order."""
        if not self.active:
            return [list(values)]
        local = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        out = [torch.empty_like(local) for _ in range(self.world)]
        self.dist.all_gather(out, local)
        return [[float(v) for v in t.cpu().tolist()] for t in out]

    def mean(self, values: Sequence[float]) -> List[float]:
        if not self.active:
            return [float(v) for v in values]
        rows = self.gather(values)
        return [_sum([r[k] for r in rows]) / len(rows) for k in range(len(values))]

    def sum(self, values: Sequence[float]) -> List[float]:
        if not self.active:
            return [float(v) for v in values]
        rows = self.gather(values)
        return [_sum([r[k] for r in rows]) for k in range(len(values))]


def _sum(xs: List[float]) -> float:
    # fsum: exact, so independent of the order; it refuses inf + -inf, which is NaN here.
    return math.fsum(xs) if all(math.isfinite(x) for x in xs) else sum(xs)


# --------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------
def range_test(
    model: torch.nn.Module,
    train_loader: Iterable,
    loss_fn: Optional[Callable] = None,
    *,
    start_lr: Optional[float] = None,
    end_lr: Optional[float] = None,
    num_iters: int = 100,
    sweep: Optional[str] = None,
    val_loader: Optional[Iterable] = None,
    metric: Union[str, Callable] = "loss",
    optimizer: Union[None, str, torch.optim.Optimizer] = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    smooth: float = 0.05,
    diverge_factor: float = 4.0,
    device: Optional[Union[str, torch.device]] = None,
    restore: bool = True,
    progress: bool = True,
    accumulation_steps: int = 1,
    amp: Optional[torch.dtype] = None,
    step_fn: Optional[Callable[[torch.nn.Module, Any], torch.Tensor]] = None,
    snapshot: str = "device",
    val_batches: Optional[int] = None,
) -> RangeTestResult:
    """Run the LR range test and suggest ``(base_lr, max_lr)`` for cyclical learning rates.

    The model is trained for ``num_iters`` steps on batches ``(inputs, targets)`` from
    ``train_loader`` (restarted when exhausted). The sweep's defaults depend on the
    optimizer: for SGD (``optimizer=None``/``"sgd"``/a ``torch.optim.SGD``), the paper's
    linear sweep from 1e-5 to 1; for ``optimizer="adamw"`` or a given Adam-family optimizer
    (Adam, AdamW, NAdam, RAdam, Adamax), geometric from 1e-7 to 1, since those train at LRs
    10-100x smaller and blow up within a decade or two above their best LR. Giving any of
    ``start_lr``, ``end_lr``, ``sweep`` sets it (the others keep their defaults); an
    Adam-family sweep with fewer than a quarter of its steps at LRs <= 1e-3 warns (it would
    show little but the blow-up). Step ``i`` (0-based) uses the LR
    ``start_lr + i/(N-1) * (end_lr - start_lr)`` (``sweep="linear"``, the paper's test) or
    ``start_lr * (end_lr/start_lr) ** (i/(N-1))`` (``sweep="exp"``), so the first step uses
    exactly ``start_lr`` and the last exactly ``end_lr``.

    What is recorded at each step:

    - without ``val_loader``: the loss (and metric) of the training batch, computed in the
      forward pass of that step, i.e. before its update;
    - with ``val_loader``: after the step's update, the loss and metric over ``val_loader``
      (model in eval mode, no gradients), at every step (stride 1): the whole loader, or its
      first ``val_batches`` batches (the same ones every step if the loader does not
      reshuffle). That costs ``num_iters * len(val_loader)`` (or ``* val_batches``) extra
      forward passes: a fixed subset of a few hundred samples is plenty.

    ``metric``: ``"loss"`` (no metric), ``"accuracy"`` (argmax over the last dimension of the
    outputs against the targets; one-hot targets are argmax-ed too) or a callable
    ``(outputs, targets) -> float`` read like accuracy: HIGHER IS BETTER. Validation values are
    averaged over samples (batches weighted by their size).

    ``optimizer=None`` or ``"sgd"`` uses ``torch.optim.SGD(momentum=momentum,
    weight_decay=weight_decay)`` over the trainable parameters; ``"adamw"`` uses
    ``torch.optim.AdamW(betas=(momentum, 0.999), weight_decay=weight_decay)``. A given
    ``torch.optim.Optimizer`` is used as it is, every param group's ``lr`` overwritten before
    each step: the sweep's LR for the first group, and for the others the sweep's LR times
    their LR's ratio to the first group's (discriminative LRs keep their ratios); the result
    reports the first group's LRs. (clr_ext's own optimizers are refused: they set their own
    LR at every step.)

    For real training loops:

    - ``accumulation_steps``: each step accumulates the gradients of this many batches (each
      loss divided by it) before the optimizer step; the recorded training loss and metric
      are the means over those batches. ``num_iters`` counts optimizer steps.
    - ``amp``: ``torch.float16`` or ``torch.bfloat16``: forward and loss (also validation)
      run under ``torch.autocast`` of the model's device with that dtype; float16 uses a
      ``torch.amp.GradScaler``, which skips the steps whose gradients overflow (the sweep
      still advances: the LR of a skipped step is recorded, its update is not made).
    - ``step_fn``: a callable ``(model, batch) -> loss`` replacing
      ``loss_fn(model(inputs), targets)``, for batches that are dicts or other structures and
      models that compute their own loss; the validation loss comes from it too (no grad,
      eval mode; samples counted by the first dimension of the batch's first tensor).
      ``loss_fn`` may then be None; ``metric`` must be ``"loss"`` (there are no outputs to
      measure).
    - ``snapshot``: ``"device"`` keeps the copy for ``restore`` next to the model; ``"cpu"``
      keeps it in host memory, so that the test does not double the model's memory on its
      device; ``"disk"`` writes it (with a given optimizer's state) to a temporary file
      (``tempfile``'s directory: ``TMPDIR``), reads it back memory-mapped to restore, and
      removes the file, for a model that does not fit twice in memory.
    - ``val_batches``: at most this many batches of ``val_loader`` per measurement.
    - ``torch.distributed`` (initialized, world size > 1): each rank trains on its own
      batches (a DDP-wrapped model averages the gradients; with ``accumulation_steps`` its
      ``no_sync()`` is used for all but the last batch); every training loss and metric is
      averaged over the ranks (validation: summed over all ranks' samples) before it is
      recorded, so that the divergence stop, decided on that average, stops every rank at
      the same step, and every rank returns the same result. Every rank must call
      ``range_test`` with the same arguments; each rank's ``val_loader`` should yield the
      same number of batches (or set ``val_batches``). Only rank 0 shows a progress bar.

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

    Warnings (``RuntimeWarning``) after the test: a curve with fewer than 20 finite points
    (too few to read once smoothed and trimmed: the test stopped early, or ``num_iters`` is
    small); a curve still improving at ``end_lr`` (``max_lr`` is then just the sweep's end);
    a curve that never improves.

    ``metric="accuracy"`` needs class scores: outputs ``(..., C)`` with ``C >= 2`` and
    integer class-index targets ``(...)`` (or one-hot / soft labels of the outputs' shape);
    other outputs, e.g. a regression model's ``(B, 1)``, raise ``ValueError`` at the first
    batch, before the first step.

    Bad arguments raise ``ValueError`` (``TypeError`` for a wrong type) naming the argument,
    before anything is trained: e.g. ``accumulation_steps`` < 1, an ``amp`` dtype other than
    float16/bfloat16, ``metric="accuracy"`` with a ``step_fn``, an unknown ``optimizer``
    name, an unknown ``snapshot``, ``val_batches`` < 1 or without a ``val_loader``.

    How the bounds are read (``result.base_lr``, ``result.max_lr``):

    1. The curve read is the metric when there is one (higher is better), else the loss, on
       the part before the first NaN/inf. A positive loss is read in log scale, where a
       blow-up is roughly a straight line.
    2. It is smoothed with a CENTRED moving average (half-width about half the EMA's lag,
       ``ceil((1 - smooth) / (2 * smooth))`` steps, at most a tenth of the curve; the window
       shrinks symmetrically at the ends). A centred window has no lag, so unlike the causal
       EMA it does not shift the bounds to the right by ~``1/smooth`` steps. This zero-lag
       curve is ``result.trend``.
    3. Reading the loss, ``max_lr`` is the bottom of the valley: where the loss stops falling
       and starts to rise, the largest LR that still trains (Smith 2018, 1803.09820). The
       trend finds the valley; a trend with half its window, searched from the trend's minimum
       up to one half-width to the right, places its bottom. (A wide centred mean straddling
       the steep rise of a blow-up is pulled up by it, so its minimum sits about a half-width
       left of the true bottom. On least squares, whose divergence LR is known (edge =
       2/lambda_max), the wide trend's minimum alone read ``max_lr`` at 0.5-0.8x the edge, and
       the former reading (where the trend first came within 5% of its minimum, the start of
       the valley floor) at 0.3-0.67x. Read at the bottom, ``max_lr`` is 0.55-1.02x the edge
       over problem sizes, batch sizes, noise levels and conditionings, with an exponential
       sweep of 200 steps over 6 decades (7% per step), and 0.54-1.23x with a linear sweep
       to 3x the edge in 200 steps: the loss of an LR just past the edge takes a few steps to
       rise while the LR goes on climbing, so a coarser sweep reads higher (up to 1.4x with
       10% per step). On a noisy flat floor the bottom is where noise puts it on the floor;
       where SGD noise makes the floor rise with the LR, it is near the floor's start.)
    4. Reading a metric, ``max_lr`` is where the curve stops improving: going right from the
       curve's worst point (before its best), the first point at which the trend has come
       within 5% of the total improvement of its best value: where accuracy slows and levels
       off, before it turns ragged or falls (the paper). On a noisy plateau this is the
       plateau's start, not a random point on it. On a curve that does not fall out of that
       5% band after its best (a model that trains at every swept LR past its plateau, as a
       convex one does), the tolerance is three standard errors of the trend at its best if
       that is less: such a curve may go on gaining its last 5% over a wide range of LRs,
       far above its noise, and ``max_lr`` is where the rest is within the noise (softmax
       regression on the digits, ``bench/finders.py``: 0.27-0.30 -> 0.42-0.54, best
       constant LR 0.32, and the CLR run from the bounds 1.0 -> 0.5 points below it over 20
       seeds). A curve that collapses after its best keeps the 5%: its last gains came at
       the edge of stability.
    5. Onset: the first point after the curve's worst value (before its best) where the trend
       has improved by 10% of the total: where the loss starts to fall / the accuracy starts
       to rise.
    6. Without ``val_loader`` the reading at step ``i`` was taken before step ``i``'s update,
       so it reflects the LRs up to step ``i-1``: both points move one step left.
    7. Reading the metric: ``base_lr`` = the onset (the paper's "accuracy starts to increase").
       Reading the loss: ``base_lr = max(max_lr / 4, onset)`` (the paper's rule of thumb
       base = max/3..max/4, unless the loss only starts falling above that).
    8. Always ``start_lr <= base_lr < max_lr <= end_lr`` (``base_lr`` falls back to
       ``max(max_lr / 4, start_lr)``). A warning is issued when the curve never improves.

    ``result.suggest(method)`` gives single LRs read other ways (steepest descent, fastai's
    valley, min/10). Returns a :class:`RangeTestResult`.
    """
    # ---- argument checks (all before anything is touched) ------------------------------
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if step_fn is not None and not callable(step_fn):
        raise TypeError("step_fn must be callable: (model, batch) -> scalar loss tensor")
    if loss_fn is None:
        if step_fn is None:
            raise ValueError(
                "loss_fn is needed unless a step_fn computes the loss: pass "
                "loss_fn=(outputs, targets) -> loss or step_fn=(model, batch) -> loss"
            )
    elif not callable(loss_fn):
        raise TypeError("loss_fn must be callable: (outputs, targets) -> scalar tensor")
    adaptive = (isinstance(optimizer, str) and optimizer.lower() == "adamw") or isinstance(optimizer, _ADAPTIVE)
    defaults = _ADAPTIVE_SWEEP if adaptive else _SGD_SWEEP
    sweep_given = not (start_lr is None and end_lr is None and sweep is None)
    start_lr = defaults[0] if start_lr is None else start_lr
    end_lr = defaults[1] if end_lr is None else end_lr
    sweep = defaults[2] if sweep is None else sweep
    start_lr = _check_positive_finite("start_lr", start_lr)
    end_lr = _check_positive_finite("end_lr", end_lr)
    if not end_lr > start_lr:
        raise ValueError(f"end_lr must be greater than start_lr, got end_lr={end_lr!r} <= start_lr={start_lr!r}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, numbers.Integral) or num_iters < 2:
        raise ValueError(f"num_iters must be an integer >= 2, got {num_iters!r}")
    num_iters = int(num_iters)
    if sweep not in _SWEEPS:
        raise ValueError(f"sweep must be one of {_SWEEPS}, got {sweep!r}")
    if callable(metric):
        metric_fn, metric_name = metric, getattr(metric, "__name__", type(metric).__name__)
    elif isinstance(metric, str) and metric in _METRIC_NAMES:
        metric_fn = _accuracy if metric == "accuracy" else None
        metric_name = metric
    else:
        raise ValueError(f"metric must be 'loss', 'accuracy' or a callable, got {metric!r}")
    if step_fn is not None and metric_fn is not None:
        raise ValueError(
            f"metric={metric_name!r} cannot be measured with a step_fn (it returns only "
            "the loss, no outputs); use metric='loss'"
        )
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Real) or not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth!r}")
    if (
        isinstance(diverge_factor, bool)
        or not isinstance(diverge_factor, numbers.Real)
        or math.isnan(diverge_factor)
        or not diverge_factor > 1
    ):
        raise ValueError(f"diverge_factor must be > 1 (inf disables the ratio test), got {diverge_factor!r}")
    accumulation_steps = _check_positive_int("accumulation_steps", accumulation_steps)
    if amp is not None and not (isinstance(amp, torch.dtype) and amp in _AMP_DTYPES):
        raise ValueError(f"amp must be None, torch.float16 or torch.bfloat16, got {amp!r}")
    if not isinstance(snapshot, str) or snapshot not in _SNAPSHOTS:
        raise ValueError(f"snapshot must be one of {_SNAPSHOTS}, got {snapshot!r}")
    val_batches = _check_positive_int("val_batches", val_batches, allow_none=True)
    if val_batches is not None and val_loader is None:
        raise ValueError("val_batches limits the validation measurement; it needs a val_loader")
    if optimizer is None or isinstance(optimizer, str):
        kind = "sgd" if optimizer is None else optimizer.lower()
        if kind not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be None, 'sgd', 'adamw' or a torch.optim.Optimizer, got {optimizer!r}")
        top = 1 if kind == "sgd" else 0.999999  # AdamW needs beta1 < 1
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= top:
            raise ValueError(
                f"momentum must be in [0, 1]{' (beta1 of AdamW: < 1)' if kind == 'adamw' else ''}, got {momentum!r}"
            )
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, numbers.Real)
            or not math.isfinite(weight_decay)
            or weight_decay < 0
        ):
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
        ratios = None
    else:
        kind = None
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be None, 'sgd', 'adamw' or a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if _is_clr_ext_optimizer(optimizer):
            raise TypeError(
                f"a {type(optimizer).__name__} sets its own LR at every step and cannot "
                "follow the sweep; pass optimizer=None/'sgd'/'adamw' or a plain "
                "torch.optim optimizer"
            )
        ratios = _lr_ratios(optimizer)
    if val_loader is not None and not isinstance(val_loader, Iterable):
        raise TypeError("val_loader must be an iterable of batches")
    if device is not None:
        device = torch.device(device)
    smooth = float(smooth)

    plan = sweep_lrs(start_lr, end_lr, num_iters, sweep)
    if adaptive and sweep_given:
        low = sum(lr <= _ADAPTIVE_LOW for lr in plan)
        if low < _ADAPTIVE_LOW_SHARE * num_iters:
            warnings.warn(
                f"this sweep ({sweep} {start_lr:g} -> {end_lr:g}) puts {low} of its {num_iters} steps at "
                f"LRs <= {_ADAPTIVE_LOW:g}, where AdamW-like optimizers usually train: the curve may show "
                "little but the blow-up. Leave start_lr, end_lr and sweep out for their default "
                f"(exp {_ADAPTIVE_SWEEP[0]:g} -> {_ADAPTIVE_SWEEP[1]:g}), or sweep='exp' from lower",
                RuntimeWarning,
                2,
            )
    measured_on = "train" if val_loader is None else "val"
    ranks = _Ranks()

    saved = _ModelSnapshot(model, snapshot, optimizer if kind is None else None) if restore else None

    lrs: List[float] = []
    losses: List[float] = []
    smoothed: List[float] = []
    metrics: Optional[List[float]] = None if metric_fn is None else []
    diverged, stop_reason = False, None
    bar = None
    try:
        if device is not None:
            model.to(device)
        dev = _model_device(model, device)
        if kind is not None:
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError("the model has no trainable parameters")
            if kind == "sgd":
                opt = torch.optim.SGD(params, lr=start_lr, momentum=float(momentum), weight_decay=float(weight_decay))
            else:
                opt = torch.optim.AdamW(
                    params, lr=start_lr, betas=(float(momentum), 0.999), weight_decay=float(weight_decay)
                )
            ratios = [1.0] * len(opt.param_groups)
        else:
            opt = optimizer
        scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None

        def autocast():
            if amp is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=dev.type, dtype=amp)

        if not model.training:
            model.train()
        train_modes = [(m, m.training) for m in model.modules()]
        batches = _Cycle(train_loader)
        bar = _progress_bar(num_iters, progress and ranks.rank == 0)
        no_sync = getattr(model, "no_sync", None) if ranks.active else None

        beta = 1.0 - smooth
        avg, best = 0.0, math.inf
        for i, lr in enumerate(plan):
            _set_lr(opt, lr, ratios)
            opt.zero_grad(set_to_none=True)
            value_sum, metric_sum, finite = 0.0, 0.0, True
            for k in range(accumulation_steps):
                last = k == accumulation_steps - 1
                sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
                with sync:
                    batch = _to_device(batches.next(), device)
                    with autocast():
                        if step_fn is not None:
                            outputs, targets = None, None
                            loss = step_fn(model, batch)
                            what = "step_fn"
                        else:
                            inputs, targets = _split_batch(batch)
                            outputs = model(inputs)
                            if i == 0 and k == 0 and metric_fn is _accuracy:
                                _check_class_scores(outputs, targets)  # before anything is trained
                            loss = loss_fn(outputs, targets)
                            what = "loss_fn"
                    part = [_scalar(loss, what), math.nan]
                    if metric_fn is not None and val_loader is None and math.isfinite(part[0]):
                        with torch.no_grad():
                            part[1] = _scalar(metric_fn(outputs.detach(), targets), "metric")
                    part = ranks.mean(part)  # identical on every rank, NaN if any rank's is
                    value_sum += part[0]
                    metric_sum += part[1]
                    if math.isfinite(part[0]):
                        scaled = loss / accumulation_steps if accumulation_steps > 1 else loss
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    else:
                        finite = False
                        if ranks.active and torch.is_tensor(loss) and loss.requires_grad:
                            # Every rank started this backward's gradient reduction (DDP):
                            # finish it, so that no rank waits and the model stays usable;
                            # the step is not taken.
                            loss.backward()
                del outputs, loss
                if not finite:
                    break
            # A step that met a non-finite loss records that loss as it came (inf tells an
            # overflow from a NaN), not a mean over the micro-batches before it.
            value = value_sum / accumulation_steps if finite else part[0]
            metric_value = metric_sum / accumulation_steps if finite else math.nan
            if finite:
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if val_loader is not None:
                    value, metric_value = _evaluate(
                        model, val_loader, loss_fn, metric_fn, device, step_fn, autocast, val_batches, ranks
                    )
                    for m, training in train_modes:
                        m.training = training
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
            saved.restore()

    if len(lrs) < 2:
        # Stopped at the very first step: nothing to read; the first two LRs of the plan
        # still satisfy start_lr <= base_lr < max_lr <= end_lr.
        warnings.warn("the range test stopped at its first step (NaN/inf loss); start lower", RuntimeWarning, 2)
        base_lr, max_lr, trend, reading = (
            plan[0],
            plan[1],
            [math.nan] * len(lrs),
            ("loss" if metrics is None else "metric"),
        )
    else:
        base_lr, max_lr, trend, reading = suggest_bounds(lrs, losses, metrics, smooth=smooth, measured_on=measured_on)
    if not diverged and len(lrs) >= _MIN_READABLE and max_lr >= lrs[int(0.95 * (len(lrs) - 1))]:
        warnings.warn(
            f"the range-test curve was still improving at end_lr={end_lr:g}: max_lr is the end of "
            "the sweep, not where the curve turns; raise end_lr (the sweep does not reach the "
            "LRs where training stops improving)",
            RuntimeWarning,
            2,
        )
    readable = sum(1 for v in losses if math.isfinite(v))
    if 2 <= readable < _MIN_READABLE:
        where = f"it stopped ({stop_reason}) at LR {lrs[-1]:.3g}" if diverged else "num_iters is small"
        warnings.warn(
            f"the range-test curve has only {readable} points ({where}): too few to read reliably "
            "once smoothed and trimmed; "
            + (
                "lower end_lr, or raise num_iters, so that more steps fall before the blow-up"
                if diverged
                else f"use num_iters >= {_MIN_READABLE} (100-200 is usual)"
            ),
            RuntimeWarning,
            2,
        )
    return RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=smoothed,
        metrics=metrics,
        diverged=diverged,
        base_lr=base_lr,
        max_lr=max_lr,
        trend=trend,
        reading=reading,
        measured_on=measured_on,
        sweep=sweep,
        metric=metric_name,
        start_lr=start_lr,
        end_lr=end_lr,
        num_iters=num_iters,
        smooth=smooth,
        diverge_factor=float(diverge_factor),
        stop_reason=stop_reason,
    )


def _evaluate(
    model, loader, loss_fn, metric_fn, device, step_fn, autocast, max_batches, ranks: _Ranks
) -> Tuple[float, float]:
    """Sample-weighted mean loss and metric over the loader (its first ``max_batches``
    batches), in eval mode; under torch.distributed, over every rank's samples."""
    model.eval()
    total, loss_sum, metric_sum = 0, 0.0, 0.0
    with torch.no_grad():
        # islice stops before asking the loader for a batch it would not use.
        for batch in loader if max_batches is None else itertools.islice(loader, max_batches):
            batch = _to_device(batch, device)
            with autocast():
                if step_fn is not None:
                    n = _first_dim(batch)
                    loss_sum += _scalar(step_fn(model, batch), "step_fn") * n
                else:
                    inputs, targets = _split_batch(batch)
                    outputs = model(inputs)
                    n = _batch_len(targets, outputs)
                    loss_sum += _scalar(loss_fn(outputs, targets), "loss_fn") * n
                    if metric_fn is not None:
                        metric_sum += _scalar(metric_fn(outputs, targets), "metric") * n
            total += n
    total, loss_sum, metric_sum = ranks.sum([total, loss_sum, metric_sum])
    if total == 0:
        raise ValueError("val_loader yielded no batches")
    return loss_sum / total, (metric_sum / total if metric_fn is not None else math.nan)
