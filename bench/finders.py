"""LR finders side by side: clr_ext's range test and its rules against torch-lr-finder,
fastai's ``lr_find`` and Lightning's ``Tuner.lr_find``, on small CPU tasks.

Every finder runs K times per task (finder run k: the same model initialisation and batch
order k for every finder). The test accuracy of constant-LR training (SGD, momentum 0.9) is
measured on a fine grid of LRs (8 per decade), each trained on the same S seeds; a suggested
LR is scored on that response (interpolated in log(LR) between grid points), and the README's
recipe ``(base_lr, max_lr)`` is trained with ``CyclicSGD.from_range_test(..., epochs=...)``
on the same seeds. Regret = the best grid LR's mean test accuracy minus the suggestion's
(percentage points; 0 = as good as the best fixed LR of the grid), averaged over the finder
runs; a clr_ext rule is also compared with the best peer rule on the same sweep, finder run
by finder run (the mean of the paired differences and its standard error). A peer that is
not installed is skipped.

    python -m bench.finders                 # all tasks, 20 finder runs, 20 seeds (~20 min on 2 cores)
    python -m bench.finders --tasks digits --finder-runs 3 --seeds 5 --json out.json
    python -m bench.finders --tasks softmax --recipe-noise 20   # the recipe's regret: seed noise?

Peers (not clr_ext dependencies): ``pip install torch-lr-finder==0.2.2 fastai==2.8.12
lightning==2.6.6`` (fastai pulls in torchvision, which it does not need here).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import io
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import torch
import torch.nn as nn
import torch.nn.functional as F

import clr_ext
from clr_ext.apps.data import DigitsCNN, DigitsSplit, TensorLoader, load_digits_split

MOMENTUM = 0.9
EXP_SWEEP = dict(start_lr=1e-7, end_lr=10.0, num_iters=100)  # fastai's and the peers' defaults
LINEAR_SWEEP = dict(start_lr=1e-5, end_lr=1.0, num_iters=100)
RULES = ("steepest", "valley", "min/10")


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------
@dataclass
class Task(DigitsSplit):
    """A split (the digits', or another data set's in the same six fields), the model it
    trains and its recipe."""

    name: str
    make_model: Callable[[], nn.Module]
    batch_size: int
    epochs: int
    weight_decay: float
    grid: Tuple[float, ...]

    @property
    def iters_per_epoch(self) -> int:
        return len(self.x_train) // self.batch_size

    def train_loader(self, seed: int) -> TensorLoader:
        return TensorLoader(self.x_train, self.y_train, self.batch_size, drop_last=True, seed=seed)

    def val_loader(self) -> TensorLoader:
        return TensorLoader(self.x_val, self.y_val, len(self.x_val), shuffle=False)


def digits_task() -> Task:
    d = load_digits_split(test_size=360, val_size=300, seed=0)
    return Task(**vars(d), name="digits", make_model=DigitsCNN, **RECIPE)


class MLP(nn.Module):
    def __init__(self, n_in: int = 20, width: int = 64, n_out: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_task() -> Task:
    """A 5-class tabular problem (scikit-learn's make_classification, fixed seed) and a
    two-hidden-layer MLP: another architecture, another LR scale than the digits CNN."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=2400, n_features=20, n_informative=12, n_redundant=4, n_classes=5, class_sep=1.2, random_state=0
    )
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(y, dtype=torch.int64)
    tr, va, te = slice(0, 1600), slice(1600, 2000), slice(2000, 2400)
    return Task(x[tr], y[tr], x[va], y[va], x[te], y[te], name="mlp", make_model=MLP, **RECIPE)


def softmax_task() -> Task:
    """Softmax regression on the digits' 64 pixels: a convex problem whose best LR is an
    order of magnitude above the CNN's, so a finder tuned to one scale shows it."""
    d = load_digits_split(test_size=360, val_size=300, seed=0)
    flat = [t.flatten(1) for t in (d.x_train, d.x_val, d.x_test)]
    return Task(
        flat[0],
        d.y_train,
        flat[1],
        d.y_val,
        flat[2],
        d.y_test,
        name="softmax",
        make_model=lambda: nn.Linear(64, 10),
        **RECIPE,
    )


def _grid() -> Tuple[float, ...]:
    return tuple(round(10 ** (k / 8), 12) for k in range(-32, 5))  # 1e-4 .. ~3.2, 8 per decade


#: every task's training recipe
RECIPE = dict(batch_size=32, epochs=4, weight_decay=5e-4, grid=_grid())


TASKS = {"digits": digits_task, "mlp": mlp_task, "softmax": softmax_task}

#: Training seeds per LR of a task's response, by default: as many as about two minutes of
#: training on one core buys (a run takes 0.4 s on the CNN, 0.14 s on the MLP, 0.03 s on
#: softmax regression). Softmax regression's response is flat within 0.2 points from LR
#: 0.2 to 0.5, and with 20 seeds its noise reorders rules that differ by less than that.
TASK_SEEDS = {"digits": 20, "mlp": 60, "softmax": 200}


# --------------------------------------------------------------------------------------
# Training a suggestion
# --------------------------------------------------------------------------------------
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        out = model(x)
    if not torch.isfinite(out).all():
        return 100.0 / int(y.max() + 1)  # diverged: chance
    return 100.0 * (out.argmax(-1) == y).float().mean().item()


def train(task: Task, seed: int, make_opt: Callable) -> float:
    torch.manual_seed(1000 + seed)
    model = task.make_model()
    opt = make_opt(model.parameters())
    total = task.epochs * task.iters_per_epoch
    loader = task.train_loader(seed)
    done = 0
    while done < total:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            if not torch.isfinite(loss):
                return 100.0 / int(task.y_test.max() + 1)  # diverged: chance
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == total:
                break
    return _accuracy(model, task.x_test, task.y_test)


def fixed_lr(task: Task, lr: float) -> Callable:
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=MOMENTUM, weight_decay=task.weight_decay)


def clr_recipe(task: Task, result) -> Callable:
    """The README's recipe: ``CyclicSGD.from_range_test(..., momentum=0.9)`` (momentum
    cycling 0.9-0.8 against the LR, the default), for the task's run length."""
    return lambda p: clr_ext.CyclicSGD.from_range_test(
        p, result, task.iters_per_epoch, epochs=task.epochs, momentum=MOMENTUM, weight_decay=task.weight_decay
    )


# --------------------------------------------------------------------------------------
# The finders. Each returns ({rule name: lr}, seconds of the finder call, extra results)
# --------------------------------------------------------------------------------------
def _finder_model(task: Task, seed: int) -> nn.Module:
    """The model every finder starts from, for finder run ``seed``; every RNG a finder may
    draw from (fastai shuffles with Python's) seeded alike."""
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)
    return task.make_model()


def _torch_loader(task: Task, seed: int) -> torch.utils.data.DataLoader:
    """The peers want a torch DataLoader: the same data, batch size and seed."""
    ds = torch.utils.data.TensorDataset(task.x_train, task.y_train)
    return torch.utils.data.DataLoader(
        ds, batch_size=task.batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )


def clr_ext_finder(task: Task, sweep: str, seed: int = 0):
    model = _finder_model(task, seed)
    params = EXP_SWEEP if sweep == "exp" else LINEAR_SWEEP
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = clr_ext.range_test(
            model,
            task.train_loader(seed),
            F.cross_entropy,
            sweep=sweep,
            momentum=MOMENTUM,
            weight_decay=task.weight_decay,
            progress=False,
            **params,
        )
        seconds = time.perf_counter() - t0
        lrs = {rule: r.suggest(rule) for rule in RULES}
        lrs["base_lr"] = r.base_lr  # the CLR bounds' lower one, as a constant LR
        return lrs, seconds, r


def clr_ext_recipe_finder(task: Task, seed: int = 0):
    """The README's recipe: linear sweep, 200 steps, validation accuracy."""
    model = _finder_model(task, seed)
    t0 = time.perf_counter()
    r = clr_ext.range_test(
        model,
        task.train_loader(seed),
        F.cross_entropy,
        start_lr=1e-4,
        end_lr=1.0,
        num_iters=200,
        val_loader=task.val_loader(),
        metric="accuracy",
        momentum=MOMENTUM,
        weight_decay=task.weight_decay,
        progress=False,
    )
    return r, time.perf_counter() - t0


def torch_lr_finder(task: Task, sweep: str, seed: int = 0):
    try:
        from torch_lr_finder import LRFinder
    except ImportError:
        return None
    model = _finder_model(task, seed)
    params = EXP_SWEEP if sweep == "exp" else LINEAR_SWEEP
    opt = torch.optim.SGD(model.parameters(), lr=params["start_lr"], momentum=MOMENTUM, weight_decay=task.weight_decay)
    t0 = time.perf_counter()
    finder = LRFinder(model, opt, F.cross_entropy, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(
            _torch_loader(task, seed),
            end_lr=params["end_lr"],
            num_iter=params["num_iters"],
            step_mode=sweep,
        )
        import matplotlib

        matplotlib.use("Agg")
        try:
            _, lr = finder.plot(suggest_lr=True, show_lr=None)
        except Exception:  # too few points to suggest
            lr = None
    seconds = time.perf_counter() - t0
    finder.reset()
    return ({"steepest": float(lr)} if lr is not None else {}), seconds, None


def lightning_finder(task: Task, sweep: str, seed: int = 0):
    try:
        import lightning as L
        from lightning.pytorch.tuner import Tuner
    except ImportError:
        return None
    params = EXP_SWEEP if sweep == "exp" else LINEAR_SWEEP

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _finder_model(task, seed)
            self.lr = params["start_lr"]

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=MOMENTUM, weight_decay=task.weight_decay)

    dl = _torch_loader(task, seed)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            default_root_dir=root,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_epochs=100,
        )
        module = Module()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            found = Tuner(trainer).lr_find(
                module,
                train_dataloaders=dl,
                min_lr=params["start_lr"],
                max_lr=params["end_lr"],
                num_training=params["num_iters"],
                mode="exponential" if sweep == "exp" else "linear",
                update_attr=False,
            )
        seconds = time.perf_counter() - t0
    lr = found.suggestion() if found is not None else None
    return ({"steepest": float(lr)} if lr is not None else {}), seconds, None


def fastai_finder(task: Task, sweep: str, seed: int = 0):
    if sweep != "exp":
        return None  # fastai sweeps exponentially only
    try:
        from fastai.callback.schedule import minimum, slide, steep, valley  # noqa: F401
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner
        from fastai.optimizer import OptimWrapper
    except Exception:
        return None
    from functools import partial

    from fastai.data.load import DataLoader as FDataLoader

    model = _finder_model(task, seed)
    train_ds = list(zip(task.x_train, task.y_train))
    valid_ds = list(zip(task.x_val, task.y_val))
    dls = DataLoaders(
        FDataLoader(train_ds, bs=task.batch_size, shuffle=True, drop_last=True),
        FDataLoader(valid_ds, bs=len(valid_ds)),
    )
    opt_func = partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=MOMENTUM, weight_decay=task.weight_decay))
    with tempfile.TemporaryDirectory() as root:
        learn = Learner(dls, model, loss_func=F.cross_entropy, opt_func=opt_func, path=root)
        t0 = time.perf_counter()
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            res = learn.lr_find(
                start_lr=EXP_SWEEP["start_lr"],
                end_lr=EXP_SWEEP["end_lr"],
                num_it=EXP_SWEEP["num_iters"],
                show_plot=False,
                suggest_funcs=(minimum, steep, valley, slide),
            )
        seconds = time.perf_counter() - t0
    return (
        {
            "min/10": float(res.minimum),
            "steepest": float(res.steep),
            "valley": float(res.valley),
            "slide": float(res.slide),
        },
        seconds,
        None,
    )


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------
FINDERS = (
    ("clr_ext", clr_ext_finder),
    ("torch-lr-finder", torch_lr_finder),
    ("fastai", fastai_finder),
    ("lightning", lightning_finder),
)


class Response:
    """Test accuracy of constant-LR training against the LR: every LR of the task's grid
    trained on the same ``seeds`` training seeds (so that the differences between LRs are
    paired, and the grid's best is scored on the seeds every suggestion is). An LR between
    two grid points is read by linear interpolation in log(LR) (the curve is smooth at 8
    points per decade); one outside the grid is trained."""

    def __init__(self, task: Task, seeds: int) -> None:
        self.task, self.seeds = task, seeds
        self.grid = {lr: self.train(lr) for lr in task.grid}
        self.best_lr = max(self.grid, key=self.grid.__getitem__)
        self.best = self.grid[self.best_lr]
        self._x = [math.log(lr) for lr in self.grid]
        self._acc = list(self.grid.values())
        self._outside: Dict[float, float] = {}

    def train(self, lr: float) -> float:
        return statistics.fmean(train(self.task, s, fixed_lr(self.task, lr)) for s in range(self.seeds))

    def __call__(self, lr: float) -> float:
        x = math.log(lr)
        if not self._x[0] <= x <= self._x[-1]:
            if lr not in self._outside:
                self._outside[lr] = self.train(lr)
            return self._outside[lr]
        j = max(bisect.bisect_left(self._x, x), 1)
        w = (x - self._x[j - 1]) / (self._x[j] - self._x[j - 1])
        return (1 - w) * self._acc[j - 1] + w * self._acc[j]


RECIPE_ROW = ("linear, val. accuracy, 200 steps", "clr_ext", "README recipe")


def _se(values: List[float]) -> float:
    """The standard error of the mean of ``values`` (NaN for fewer than two)."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else math.nan


def run(task_names: List[str], finder_runs: int, seeds_given: Optional[int] = None, log=print) -> Dict:
    """Every finder runs ``finder_runs`` times (finder run k: model initialisation and batch
    order k); each suggestion is scored on the task's :class:`Response` (``seeds`` training
    seeds, the task's :data:`TASK_SEEDS` by default). A row's regret is the response's best
    minus the mean over the finder runs of its suggestions' accuracies; its ``se`` is the
    standard error of that mean over the runs."""
    out: Dict = {"finder_runs": finder_runs, "tasks": {}}
    for name in task_names:
        task = TASKS[name]()
        seeds = TASK_SEEDS[name] if seeds_given is None else seeds_given
        t0 = time.perf_counter()
        response = Response(task, seeds)
        log(
            f"[{name}] grid of {len(task.grid)} LRs x {seeds} seeds ({time.perf_counter() - t0:.0f} s): "
            f"best fixed LR {response.best_lr:g} -> {response.best:.1f}%"
        )
        found: Dict[Tuple[str, str, str], Dict[str, list]] = {}

        def record(key: Tuple[str, str, str], k: int, lr, acc: float, seconds: float) -> None:
            row = found.setdefault(key, {"runs": [], "lrs": [], "accs": [], "seconds": []})
            for field, value in zip(("runs", "lrs", "accs", "seconds"), (k, lr, acc, seconds)):
                row[field].append(value)

        for sweep in ("exp", "linear"):
            for finder_name, finder in FINDERS:
                for k in range(finder_runs):
                    got = finder(task, sweep, k)
                    if got is None:
                        break  # not installed, or no such sweep
                    lrs, seconds, _ = got
                    for rule, lr in lrs.items():
                        record((sweep, finder_name, rule), k, lr, response(lr), seconds)
        for k in range(finder_runs):
            r, seconds = clr_ext_recipe_finder(task, k)
            acc = statistics.fmean(train(task, s, clr_recipe(task, r)) for s in range(seeds))
            record(RECIPE_ROW, k, [r.base_lr, r.max_lr], acc, seconds)
        rows = []
        for (sweep, finder_name, rule), row in found.items():
            accs = row["accs"]
            rows.append(
                dict(sweep=sweep, finder=finder_name, rule=rule, runs=row["runs"], lrs=row["lrs"], accs=accs,
                     regret=response.best - statistics.fmean(accs), se=_se(accs), seconds=statistics.median(row["seconds"]))
            )  # fmt: skip
        _pair_with_best_peer(rows)
        for row in rows:
            log(f"[{name}] {row['sweep']:6s} {row['finder']:15s} {row['rule']:8s} {_row_text(row)}")
        out["tasks"][name] = {
            "seeds": seeds,
            "grid": response.grid,
            "best_lr": response.best_lr,
            "best": response.best,
            "rows": rows,
        }
    return out


def _pair_with_best_peer(rows: List[Dict]) -> None:
    """Adds ``vs_peer`` to each clr_ext rule row of a sweep the peers ran: the best peer
    rule on that sweep (the lowest regret) and the mean, over the finder runs both have, of
    that rule's accuracy minus this one's (> 0: the peer is better), with its standard error.
    Paired by finder run: both finders saw the same initialisation and batch order."""
    for sweep in {row["sweep"] for row in rows}:
        peers = [r for r in rows if r["sweep"] == sweep and r["finder"] != "clr_ext"]
        if not peers:
            continue
        best = min(peers, key=lambda r: r["regret"])
        peer_acc = dict(zip(best["runs"], best["accs"]))
        for row in rows:
            if row["sweep"] != sweep or row["finder"] != "clr_ext":
                continue
            diff = [peer_acc[k] - acc for k, acc in zip(row["runs"], row["accs"]) if k in peer_acc]
            if len(diff) > 1:
                row["vs_peer"] = {
                    "peer": f"{best['finder']} {best['rule']}",
                    "gap": statistics.fmean(diff),
                    "se": _se(diff),
                }


def _row_text(row: Dict) -> str:
    text = f"regret {row['regret']:.2f} +- {row['se']:.2f}"
    if "vs_peer" in row:
        v = row["vs_peer"]
        text += f", {v['gap']:+.2f} +- {v['se']:.2f} vs {v['peer']}"
    return text + f", lrs {_lrs_text(row['lrs'])}"


def _lrs_text(lrs: list) -> str:
    if isinstance(lrs[0], list):
        return " - ".join(_lrs_text([pair[j] for pair in lrs]) for j in range(2))
    lo, hi = min(lrs), max(lrs)
    return f"{lo:.3g}" if lo == hi else f"{statistics.median(lrs):.3g} ({lo:.3g}..{hi:.3g})"


def table(res: Dict) -> str:
    lines = []
    for name, t in res["tasks"].items():
        lines.append(
            f"\n**{name}**: best fixed LR {t['best_lr']:g}, {t['best']:.1f}% test accuracy (mean of "
            f"{t['seeds']} training seeds); each row over {res['finder_runs']} finder runs\n"
        )
        lines.append(
            "| sweep | finder | rule | suggested LR: median (range) | regret (points, +- SE) "
            "| behind the best peer rule (paired, +- SE) | finder call (s) |"
        )
        lines.append("|---|---|---|---|---:|---:|---:|")
        for row in t["rows"]:
            v = row.get("vs_peer")
            versus = f"{v['gap']:+.2f} +- {v['se']:.2f} ({v['peer']})" if v else ""
            lines.append(
                f"| {row['sweep']} | {row['finder']} | {row['rule']} | {_lrs_text(row['lrs'])} | "
                f"{row['regret']:.2f} +- {row['se']:.2f} | {versus} | {row['seconds']:.2f} |"
            )
    return "\n".join(lines)


def recipe_noise(task_name: str, finder_runs: int, seeds: int, train_seeds: int, log=print) -> Dict:
    """Is the README recipe's regret on a task seed noise? The best grid LR (picked on
    ``seeds`` training seeds, as in :func:`run`) and the recipe's CLR from each of
    ``finder_runs`` finder runs are trained on ``train_seeds`` more seeds, and each recipe run's accuracy is
    compared with the best LR's on the same seed: the mean of those paired differences and
    its standard error, per finder run."""
    task = TASKS[task_name]()
    best_lr = Response(task, seeds).best_lr
    held_out = range(seeds, seeds + train_seeds)  # not the seeds that picked best_lr
    best = [train(task, s, fixed_lr(task, best_lr)) for s in held_out]
    out: Dict = {"task": task_name, "best_lr": best_lr, "best": statistics.fmean(best), "runs": []}
    for seed in range(finder_runs):
        r, _ = clr_ext_recipe_finder(task, seed)
        diff = [b - train(task, s, clr_recipe(task, r)) for b, s in zip(best, held_out)]
        mean, se = statistics.fmean(diff), _se(diff)
        out["runs"].append({"bounds": [r.base_lr, r.max_lr], "regret": mean, "se": se})
        log(f"[{task_name}] recipe run {seed} {r.base_lr:.3g}-{r.max_lr:.3g}: regret {mean:.2f} +- {se:.2f} (SE)")
    return out


ADAMW_GRID = (1e-3, 3e-3, 1e-2, 3e-2)


def adamw_defaults(finder_runs: int, seeds: int, task_name: str = "digits", log=print) -> Dict:
    """``range_test(..., optimizer="adamw")`` with its default sweep (exponential 1e-7..1)
    and with the SGD-scale sweep it had before (linear 1e-5..1): CyclicAdamW trained from
    each one's bounds (``from_range_test(..., epochs=...)``) against constant AdamW LRs."""
    task = TASKS[task_name]()
    out: Dict = {"task": task_name, "grid": {}, "sweeps": {}}
    for lr in ADAMW_GRID:
        make = lambda p, lr=lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01)  # noqa: E731
        out["grid"][lr] = statistics.fmean(train(task, s, make) for s in range(seeds))
    for label, kwargs in (
        ("default: exp 1e-7..1", {}),
        ("before: linear 1e-5..1", dict(start_lr=1e-5, end_lr=1.0, sweep="linear")),
    ):
        bounds, accs = [], []
        for seed in range(finder_runs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = clr_ext.range_test(
                    _finder_model(task, seed), task.train_loader(seed), F.cross_entropy, optimizer="adamw",
                    weight_decay=0.01, progress=False, **kwargs,
                )  # fmt: skip
            make = lambda p, r=r: clr_ext.CyclicAdamW.from_range_test(  # noqa: E731
                p, r, task.iters_per_epoch, epochs=task.epochs, weight_decay=0.01
            )
            bounds.append([r.base_lr, r.max_lr])
            accs.append(statistics.fmean(train(task, s, make) for s in range(seeds)))
        out["sweeps"][label] = {"bounds": bounds, "acc": statistics.fmean(accs)}
        log(f"[adamw] {label}: bounds {_lrs_text(bounds)} -> CyclicAdamW {statistics.fmean(accs):.1f}%")
    return out


def adamw_table(res: Dict) -> str:
    best = max(res["grid"].values())
    grid = ", ".join(f"{lr:g}: {acc:.1f}" for lr, acc in res["grid"].items())
    lines = [
        f"\n**AdamW on {res['task']}**: constant AdamW LRs {grid} (best {best:.1f}%)\n",
        '| range_test(optimizer="adamw") sweep | bounds (per finder run) | CyclicAdamW accuracy % | regret |',
        "|---|---|---:|---:|",
    ]
    for label, row in res["sweeps"].items():
        lines.append(f"| {label} | {_lrs_text(row['bounds'])} | {row['acc']:.1f} | {best - row['acc']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--finder-runs", type=int, default=20, metavar="K", help="runs of every finder per task")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="S",
        help="training seeds of every grid LR and recipe run (default: per task, %s)" % TASK_SEEDS,
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--recipe-noise",
        type=int,
        default=0,
        metavar="N",
        help="only the README recipe against the best grid LR, paired on N held-out training seeds",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.recipe_noise:
        res = {
            name: recipe_noise(name, args.finder_runs, args.seeds or TASK_SEEDS[name], args.recipe_noise, log=log)
            for name in args.tasks
        }
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return 0
    res = run(args.tasks, args.finder_runs, args.seeds, log=log)
    print(table(res))
    if "digits" in args.tasks:
        res["adamw"] = adamw_defaults(args.finder_runs, args.seeds or TASK_SEEDS["digits"], log=log)
        print(adamw_table(res["adamw"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
