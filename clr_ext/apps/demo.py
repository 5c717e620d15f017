"""The demo (``clr-ext demo``) and the paper's CIFAR-10 experiment (``clr-ext reproduce-cifar10``).

The demo does, on data that ships with scikit-learn (handwritten digits), what the paper
recommends: one LR range test gives the bounds, then every policy trains with the same
iteration budget, against fixed-LR baselines (one at the range test's suggestion, and a grid
of fixed LRs: the tuning that CLR claims to save). It reports what it measures, whoever wins.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..range_test import RangeTestResult, range_test
from .data import (
    CaffeCifar10Full,
    CaffeMeanSubtract,
    DigitsCNN,
    DigitsSplit,
    TensorLoader,
    load_cifar10,
    load_digits_split,
)

__all__ = ["DemoConfig", "run_demo", "CifarConfig", "run_cifar10", "PAPER_TABLE1_CIFAR10"]

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = list(values)
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000, transform=None) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for k in range(0, len(x), batch):
        xb = x[k : k + batch]
        if transform is not None:
            xb = transform(xb)
        correct += (model(xb).argmax(-1) == y[k : k + batch]).sum().item()
    model.train(was_training)
    return correct / max(1, len(x))


def digits_range_test(
    data: DigitsSplit, batch_size: int, seed: int, validate: bool = True, **options: Any
) -> RangeTestResult:
    """The LR range test of a fresh :class:`DigitsCNN` (initialised from ``seed``) on the digits'
    training split in shuffled batches, read on the validation split (or, without
    ``validate``, on the training batches); ``options`` go to :func:`range_test`. The demo
    and ``clr_ext range-test`` run this same test."""
    torch.manual_seed(seed)
    return range_test(
        DigitsCNN(),
        TensorLoader(data.x_train, data.y_train, batch_size, drop_last=True, seed=seed),
        F.cross_entropy,
        val_loader=TensorLoader(data.x_val, data.y_val, len(data.x_val), shuffle=False) if validate else None,
        **options,
    )


def _first_reach(iters: Sequence[int], accs: Sequence[float], target: float) -> Optional[int]:
    # A tiny tolerance: accuracies are ratios of integers and the target is a mean of them.
    for it, acc in zip(iters, accs):
        if acc >= target - 1e-9:
            return it
    return None


def _reach_cell(reached: Sequence[Optional[int]]) -> str:
    hits = [r for r in reached if r is not None]
    if not hits:
        return "not reached"
    cell = f"{statistics.fmean(hits):,.0f}"
    if len(hits) < len(reached):
        cell += f" ({len(hits)}/{len(reached)} seeds)"
    return cell


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _new_figure(figsize=(8, 4.8)):
    # No pyplot: headless, and the user's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


# --------------------------------------------------------------------------------------
# The demo on digits
# --------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`; ``DemoConfig.quick()`` is the ``--quick`` variant."""

    seeds: int = 5
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs_per_half_cycle: float = 4.0  # the paper: 2-10 epochs per half cycle (CIFAR: 4)
    cycles: int = 3  # the paper: at least 3 cycles, stop at a cycle's end
    grid: Tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)
    range_test_iters: int = 300  # about 8 epochs, the paper's "several epochs"
    range_start_lr: float = 1e-3
    range_end_lr: float = 0.5  # this CNN stops learning at about 0.35 (momentum 0.9)
    adamw_start_lr: float = 1e-5  # AdamW's range test (geometric sweep)
    adamw_end_lr: float = 0.1
    adamw_weight_decay: float = 1e-2  # AdamW's default (decoupled) weight decay
    evals_per_run: int = 50
    val_size: int = 300
    test_size: int = 360
    split_seed: int = 0

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(
            seeds=3, epochs_per_half_cycle=1.0, cycles=3, grid=(0.02, 0.05, 0.1), range_test_iters=150, evals_per_run=30
        )


def _train_digits(data, make_opt, *, seed: int, iters: int, batch_size: int, eval_every: int, record_lr: bool) -> Dict:
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = make_opt(model.parameters())
    batches = TensorLoader(data.x_train, data.y_train, batch_size, drop_last=True, seed=seed).forever()
    curve_it, curve_acc, lrs = [0], [_accuracy(model, data.x_test, data.y_test)], []
    for it in range(1, iters + 1):
        x, y = next(batches)
        if record_lr:
            lrs.append(float(opt.param_groups[0]["lr"]))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % eval_every == 0 or it == iters:
            curve_it.append(it)
            curve_acc.append(_accuracy(model, data.x_test, data.y_test))
    return {"iters": curve_it, "acc": curve_acc, "final": curve_acc[-1], "lrs": lrs}


def run_demo(out_dir: str, config: Optional[DemoConfig] = None, *, progress: bool = True, log: Log = print) -> Dict:
    """Run the demo, print the table, write ``range_test.png``, ``lr_schedule.png``,
    ``accuracy.png`` and ``results.json`` into ``out_dir``; returns what results.json holds."""
    from ..optim import CyclicAdamW, CyclicSGD, OneCycleAdamW, OneCycleSGD

    cfg = config or DemoConfig()
    t_start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    data = load_digits_split(test_size=cfg.test_size, val_size=cfg.val_size, seed=cfg.split_seed)
    iters_per_epoch = len(data.x_train) // cfg.batch_size
    log(
        f"digits: {len(data.x_train)} train / {len(data.x_val)} validation / {len(data.x_test)} "
        f"test images; batch {cfg.batch_size} ({iters_per_epoch} iterations per epoch); "
        f"{cfg.seeds} seeds"
    )
    # The numbers are reproducible run to run on one machine; across machines the rounding
    # differs with these (docs/guide/demo.md, "Reproducing the demo's numbers").
    numerics = {"torch_threads": torch.get_num_threads(), "cpu_capability": _cpu_capability()}
    log(
        f"numerics: torch {torch.__version__}, {numerics['torch_threads']} thread(s), "
        f"CPU kernels {numerics['cpu_capability']}"
    )

    # 1. One range test (the paper's: linear sweep, accuracy read on held-out data).
    range_test_on_digits = functools.partial(
        digits_range_test,
        data,
        cfg.batch_size,
        cfg.split_seed,
        num_iters=cfg.range_test_iters,
        metric="accuracy",
        progress=progress,
    )
    rt = range_test_on_digits(
        start_lr=cfg.range_start_lr,
        end_lr=cfg.range_end_lr,
        sweep="linear",
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    rt.plot(os.path.join(out_dir, "range_test.png"))
    base_lr, max_lr = rt.base_lr, rt.max_lr
    rt_iters = len(rt.lrs)  # the steps it actually took (it may stop early)
    # AdamW's own range: its LRs are an order of magnitude below SGD's, swept geometrically.
    rt_adamw = range_test_on_digits(
        start_lr=cfg.adamw_start_lr,
        end_lr=cfg.adamw_end_lr,
        sweep="exp",
        optimizer="adamw",
        weight_decay=cfg.adamw_weight_decay,
    )
    adamw_base, adamw_max, adamw_rt_iters = rt_adamw.base_lr, rt_adamw.max_lr, len(rt_adamw.lrs)
    step = rt.step_size(iters_per_epoch, cfg.epochs_per_half_cycle)
    iters = 2 * step * cfg.cycles
    eval_every = max(1, iters // cfg.evals_per_run)
    fixed_rt = max_lr / 2.0
    log(
        f"range test ({rt_iters} of {rt.num_iters} iterations, linear {cfg.range_start_lr:g} -> "
        f"{cfg.range_end_lr:g}, validation accuracy): base_lr = {_fmt_lr(base_lr)}, max_lr = {_fmt_lr(max_lr)}"
        + (" (stopped early: diverged)" if rt.diverged else "")
    )
    log(
        f"AdamW range test ({adamw_rt_iters} of {rt_adamw.num_iters} iterations, exp {cfg.adamw_start_lr:g} -> "
        f"{cfg.adamw_end_lr:g}): base_lr = {_fmt_lr(adamw_base)}, max_lr = {_fmt_lr(adamw_max)}"
    )
    log(
        f"every run: {iters} iterations = {cfg.cycles} cycles of stepsize {step} "
        f"({cfg.epochs_per_half_cycle:g} x {iters_per_epoch} iterations); momentum {cfg.momentum}, "
        f"weight decay {cfg.weight_decay}"
    )

    common = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay, cycle_momentum=False)
    exp_gamma = (base_lr / max_lr) ** (1.0 / iters)  # max_lr at the start, base_lr at the end
    range_gamma = 0.1 ** (1.0 / iters)  # amplitude down to a tenth by the end
    policies: List[Tuple[str, str, str, Callable]] = [
        # (name, LR description, runs-needed, optimizer factory)
        (
            "fixed (range test)",
            f"{_fmt_lr(fixed_rt)} = max_lr/2",
            "1 + range test",
            lambda p: CyclicSGD(p, fixed_rt, fixed_rt, mode="fixed", **common),
        ),
        (
            "triangular",
            f"{_fmt_lr(base_lr)}-{_fmt_lr(max_lr)}",
            "1 + range test",
            lambda p: CyclicSGD(p, base_lr, max_lr, step_size_up=step, mode="triangular", **common),
        ),
        (
            "triangular2",
            f"{_fmt_lr(base_lr)}-{_fmt_lr(max_lr)}",
            "1 + range test",
            lambda p: CyclicSGD(p, base_lr, max_lr, step_size_up=step, mode="triangular2", **common),
        ),
        (
            "exp_range",
            f"{_fmt_lr(base_lr)}-{_fmt_lr(max_lr)}, gamma {range_gamma:.5f}",
            "1 + range test",
            lambda p: CyclicSGD(p, base_lr, max_lr, step_size_up=step, mode="exp_range", gamma=range_gamma, **common),
        ),
        (
            "decay",
            f"{_fmt_lr(max_lr)} -> {_fmt_lr(base_lr)} over {step} it.",
            "1 + range test",
            lambda p: CyclicSGD(p, base_lr, max_lr, step_size_up=step, mode="decay", **common),
        ),
        (
            "exp",
            f"{_fmt_lr(max_lr)} x {exp_gamma:.5f}^it",
            "1 + range test",
            lambda p: CyclicSGD(p, max_lr, max_lr, mode="exp", gamma=exp_gamma, **common),
        ),
        # Smith's 1cycle (OneCycleLR's defaults: 30% up from max_lr/25, cosine, momentum
        # cycled 0.95-0.85) over the same iterations, peaking at the range test's max_lr.
        (
            "1cycle",
            f"{_fmt_lr(max_lr / 25)} -> {_fmt_lr(max_lr)} -> {_fmt_lr(max_lr / 25 / 1e4)}",
            "1 + range test",
            lambda p: OneCycleSGD(p, max_lr, iters, weight_decay=cfg.weight_decay),
        ),
        (
            "triangular (AdamW)",
            f"{_fmt_lr(adamw_base)}-{_fmt_lr(adamw_max)}",
            "1 + AdamW range test",
            lambda p: CyclicAdamW(
                p, adamw_base, adamw_max, step_size_up=step, weight_decay=cfg.adamw_weight_decay, cycle_momentum=False
            ),
        ),
        (
            "1cycle (AdamW)",
            f"{_fmt_lr(adamw_max / 25)} -> {_fmt_lr(adamw_max)} -> ...",
            "1 + AdamW range test",
            lambda p: OneCycleAdamW(p, adamw_max, iters, weight_decay=cfg.adamw_weight_decay),
        ),
    ]
    for lr in cfg.grid:
        policies.append(
            (
                f"fixed {_fmt_lr(lr)} (grid)",
                _fmt_lr(lr),
                f"{len(cfg.grid)} (grid)",
                lambda p, lr=lr: CyclicSGD(p, lr, lr, mode="fixed", **common),
            )
        )

    # 2. Train every policy on every seed (same seeds: same initial weights and batch order).
    runs: Dict[str, Dict] = {}
    for name, lr_desc, runs_needed, make_opt in policies:
        t0 = time.perf_counter()
        seeds_out = [
            _train_digits(
                data,
                make_opt,
                seed=s,
                iters=iters,
                batch_size=cfg.batch_size,
                eval_every=eval_every,
                record_lr=(s == 0),
            )
            for s in range(cfg.seeds)
        ]
        mean, std = _mean_std([r["final"] for r in seeds_out])
        runs[name] = {
            "lr": lr_desc,
            "runs_needed": runs_needed,
            "seeds": seeds_out,
            "final_mean": mean,
            "final_std": std,
        }
        log(
            f"  {name:<22s} final test accuracy {100 * mean:5.1f} +- {100 * std:.1f} %  "
            f"({cfg.seeds} runs, {time.perf_counter() - t0:.1f} s)"
        )

    # 3. The table: the grid's best fixed LR sets the target accuracy.
    grid_names = [p[0] for p in policies if p[0].endswith("(grid)")]
    best_fixed = max(grid_names, key=lambda n: runs[n]["final_mean"])
    target = runs[best_fixed]["final_mean"]
    for name, r in runs.items():
        r["iters_to_target"] = [_first_reach(s["iters"], s["acc"], target) for s in r["seeds"]]
    shown = [best_fixed] + [p[0] for p in policies if not p[0].endswith("(grid)")]
    headers = [
        "policy",
        "LR",
        "runs needed",
        "iterations in all",
        f"iterations to {100 * target:.1f}%",
        "final test accuracy (%)",
    ]
    rows = []
    for name in shown:
        r = runs[name]
        label = "fixed (best of grid)" if name == best_fixed else name
        # The tuning cost, per seed: the grid's runs, or the range test plus one run.
        r["iterations_in_all"] = (
            len(cfg.grid) * iters if name in grid_names else (adamw_rt_iters if "AdamW" in name else rt_iters) + iters
        )
        rows.append(
            [
                label,
                r["lr"],
                r["runs_needed"],
                f"{r['iterations_in_all']:,d}",
                _reach_cell(r["iters_to_target"]),
                f"{100 * r['final_mean']:.1f} +- {100 * r['final_std']:.1f}",
            ]
        )
    table = _format_table(headers, rows)
    grid_line = ", ".join(f"{runs[n]['lr']}: {100 * runs[n]['final_mean']:.1f}" for n in grid_names)
    winner = max(shown, key=lambda n: runs[n]["final_mean"])
    winner_label = f"fixed (best of grid, {runs[best_fixed]['lr']})" if winner == best_fixed else winner
    clr_best = max(("triangular", "triangular2", "exp_range"), key=lambda n: runs[n]["final_mean"])
    gap = runs[clr_best]["final_mean"] - target
    noise = max(runs[clr_best]["final_std"], runs[best_fixed]["final_std"])
    verdict = (
        f"Highest mean final accuracy: {winner_label} ({100 * runs[winner]['final_mean']:.1f}%). "
        f"Best cyclical policy {clr_best} vs the grid's best fixed LR: {100 * gap:+.1f} points "
        + (
            "(within one standard deviation: a tie on this data)"
            if abs(gap) <= noise
            else ("(CLR ahead)" if gap > 0 else "(the tuned fixed LR ahead)")
        )
        + f"; the fixed LR needed a grid of {len(cfg.grid)} runs per seed, CLR one run after a "
        f"{rt_iters}-iteration range test."
    )
    log("")
    log(table)
    log(f"fixed-LR grid ({len(cfg.grid)} runs per seed, final test accuracy %): {grid_line}")
    log(verdict)

    # 4. Plots and results.json.
    # (AdamW's LRs are two orders of magnitude lower: they would flatten the SGD curves)
    _plot_schedules(
        os.path.join(out_dir, "lr_schedule.png"), runs, [n for n in shown if "AdamW" not in n], best_fixed, step
    )
    _plot_accuracy(os.path.join(out_dir, "accuracy.png"), runs, shown, best_fixed, target)
    elapsed = time.perf_counter() - t_start
    results = {
        "format": "clr_ext.demo",
        "config": {**asdict(cfg), "grid": list(cfg.grid)},
        "dataset": {
            "name": "sklearn digits",
            "train": len(data.x_train),
            "val": len(data.x_val),
            "test": len(data.x_test),
            "iters_per_epoch": iters_per_epoch,
        },
        "range_test": rt.to_dict(),
        "bounds": {
            "base_lr": base_lr,
            "max_lr": max_lr,
            "step_size": step,
            "iterations": iters,
            "fixed_from_range_test": fixed_rt,
        },
        "adamw_range_test": rt_adamw.to_dict(),
        "adamw_bounds": {"base_lr": adamw_base, "max_lr": adamw_max},
        "best_fixed": best_fixed,
        "target_accuracy": target,
        "policies": {
            name: {
                "lr": r["lr"],
                "runs_needed": r["runs_needed"],
                "iterations_in_all": r.get("iterations_in_all"),
                "final_accuracy": [s["final"] for s in r["seeds"]],
                "final_mean": r["final_mean"],
                "final_std": r["final_std"],
                "iters_to_target": r["iters_to_target"],
                "eval_iters": r["seeds"][0]["iters"],
                "accuracy_curves": [s["acc"] for s in r["seeds"]],
            }
            for name, r in runs.items()
        },
        "table": {"headers": headers, "rows": rows},
        "winner": winner,
        "verdict": verdict,
        "runtime_s": round(elapsed, 2),
        "versions": {"torch": torch.__version__, "clr_ext": _version()},
        "numerics": numerics,
    }
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, allow_nan=False, default=_json_default)
        f.write("\n")
    log(f"wrote range_test.png, lr_schedule.png, accuracy.png, results.json to {out_dir} ({elapsed:.0f} s)")
    return results


def _json_default(o):
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except Exception:  # the package __init__ may be mid-build; the version is informative only
        return "unknown"


def _cpu_capability() -> str:
    # The vector ISA ATen's CPU kernels run with (e.g. AVX2, AVX512): one of what sets the rounding.
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch; informative only
        return "unknown"


def _save_plot(fig, ax, ylabel: str, title: str, legend_at: str, path: str) -> None:
    """Labels, grid and legend as every plot of the demos has them, then the PNG."""
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc=legend_at)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_schedules(path, runs, names, best_fixed, step) -> None:
    fig = _new_figure((8, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    for name in names:
        lrs = runs[name]["seeds"][0]["lrs"]
        label = f"fixed (best of grid, {runs[name]['lr']})" if name == best_fixed else name
        ax.plot(range(len(lrs)), lrs, lw=1.5, label=label, ls="--" if name.startswith("fixed") else "-")
    _save_plot(fig, ax, "learning rate", f"LR policies (stepsize {step} iterations)", "upper right", path)


def _plot_accuracy(path, runs, names, best_fixed, target) -> None:
    fig = _new_figure((8, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    lowest = 1.0
    for name in names:
        seeds = runs[name]["seeds"]
        its = seeds[0]["iters"]
        mean = [statistics.fmean(s["acc"][k] for s in seeds) for k in range(len(its))]
        lowest = min(lowest, min(mean[len(mean) // 4 :]))
        label = "fixed (best of grid)" if name == best_fixed else name
        ax.plot(its, [100 * m for m in mean], lw=1.5, label=label, ls="--" if name.startswith("fixed") else "-")
    ax.axhline(100 * target, color="0.3", lw=0.8, ls=":", label=f"target {100 * target:.1f}%")
    ax.set_ylim(max(0.0, 100 * min(lowest, target) - 3), 100.5)
    _save_plot(
        fig, ax, "test accuracy (%), mean over seeds", "Digits: test accuracy during training", "lower right", path
    )


# --------------------------------------------------------------------------------------
# The paper's CIFAR-10 experiment
# --------------------------------------------------------------------------------------
#: The paper's Table 1, CIFAR-10 rows: policy -> (iterations, test accuracy %).
PAPER_TABLE1_CIFAR10 = {
    "fixed": (70000, 81.4),
    "triangular2": (25000, 81.4),
    "decay": (25000, 78.5),
    "exp": (70000, 79.1),
    "exp_range": (42000, 82.2),
}
CIFAR_POLICIES = ("fixed", "triangular2", "decay", "exp", "exp_range", "triangular")


@dataclass
class CifarConfig:
    """Caffe's CIFAR-10 "full" solver and the paper's policies. ``iters_scale`` multiplies
    every iteration count (run lengths, LR drop points, step sizes) and adjusts the ``exp`` /
    ``exp_range`` gammas so each schedule keeps its shape (gamma ** (1 / scale))."""

    iters_scale: float = 1.0
    batch_size: int = 100
    momentum: float = 0.9
    weight_decay: float = 0.004
    base_lr: float = 0.001
    max_lr: float = 0.006
    step_size: int = 2000
    gamma: float = 0.99994
    policies: Tuple[str, ...] = ("fixed", "triangular2", "decay", "exp", "exp_range")
    eval_every: int = 1000
    seed: int = 0
    device: str = "auto"
    caffe_multipliers: bool = True


def _scaled(n: float, scale: float) -> int:
    return max(1, int(round(n * scale)))


def run_cifar10(data_root: str, out_dir: str, config: Optional[CifarConfig] = None, *, log: Log = print) -> Dict:
    """Train Caffe's CIFAR-10 "full" network with the paper's policies and print the
    measured table beside the paper's Table 1. Writes ``cifar10_results.json`` and
    ``cifar10_accuracy.png`` into ``out_dir``."""
    from ..optim import CyclicSGD

    cfg = config or CifarConfig()
    unknown = [p for p in cfg.policies if p not in CIFAR_POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(CIFAR_POLICIES)}")
    t_start = time.perf_counter()
    data = load_cifar10(data_root)  # FileNotFoundError / ValueError with a clear message
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    os.makedirs(out_dir, exist_ok=True)
    s = cfg.iters_scale
    log(
        f"CIFAR-10: {len(data.x_train)} train / {len(data.x_test)} test images, device {device}, "
        f"batch {cfg.batch_size}, iteration scale {s:g}"
    )
    preprocess = CaffeMeanSubtract.fit(data.x_train)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    preprocess.mean = preprocess.mean.to(device)
    step = _scaled(cfg.step_size, s)
    gamma = cfg.gamma ** (1.0 / s)
    eval_every = _scaled(cfg.eval_every, s)
    lr0, lr1 = cfg.base_lr, cfg.max_lr

    common = dict(momentum=cfg.momentum, cycle_momentum=False)
    # name -> (iterations, LR description, optimizer factory taking param groups, LR drops)
    fixed_drops: Dict[int, float] = {}
    for at in (_scaled(60000, s), _scaled(65000, s)):  # may coincide when scaled far down
        fixed_drops[at] = fixed_drops.get(at, 1.0) * 0.1
    plans = {
        "fixed": (
            _scaled(70000, s),
            f"{lr0:g}, x0.1 at {_scaled(60000, s)} and {_scaled(65000, s)}",
            lambda g: CyclicSGD(g, lr0, lr0, mode="fixed", **common),
            fixed_drops,
        ),
        "triangular2": (
            _scaled(25000, s),
            f"{lr0:g}-{lr1:g}, stepsize {step}",
            lambda g: CyclicSGD(g, lr0, lr1, step_size_up=step, mode="triangular2", **common),
            {},
        ),
        "triangular": (
            _scaled(25000, s),
            f"{lr0:g}-{lr1:g}, stepsize {step}",
            lambda g: CyclicSGD(g, lr0, lr1, step_size_up=step, mode="triangular", **common),
            {},
        ),
        "decay": (
            _scaled(25000, s),
            f"{lr1:g} -> {lr0:g} over {step}, then flat",
            lambda g: CyclicSGD(g, lr0, lr1, step_size_up=step, mode="decay", **common),
            {},
        ),
        "exp": (
            _scaled(70000, s),
            f"{lr0:g} x {gamma:.6g}^it",
            lambda g: CyclicSGD(g, lr0, lr0, mode="exp", gamma=gamma, **common),
            {},
        ),
        "exp_range": (
            _scaled(42000, s),
            f"{lr0:g}-{lr1:g}, stepsize {step}, gamma {gamma:.6g}",
            lambda g: CyclicSGD(g, lr0, lr1, step_size_up=step, mode="exp_range", gamma=gamma, **common),
            {},
        ),
    }

    results: Dict[str, Dict] = {}
    for name in cfg.policies:
        iters, lr_desc, make_opt, drops = plans[name]
        torch.manual_seed(cfg.seed)
        model = CaffeCifar10Full().to(device)
        opt = make_opt(_caffe_groups(model, cfg, lr0, lr1))
        batches = TensorLoader(
            x_train, y_train, min(cfg.batch_size, len(x_train)), drop_last=True, seed=cfg.seed, transform=preprocess
        ).forever()
        t0 = time.perf_counter()
        curve_it, curve_acc, curve_lr = [], [], []
        for it in range(1, iters + 1):
            x, y = next(batches)
            lr_now = opt.param_groups[0]["lr"]  # group 0 has LR multiplier 1
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it in drops:
                # Caffe's multistep baseline: the fixed LR drops tenfold. CyclicSGD reads
                # each group's bounds at every step, so lowering them takes effect at the next
                # step; sync() brings "lr" (what the next step uses) in line with them.
                for group in opt.param_groups:
                    for key in ("base_lr", "max_lr"):
                        group[key] *= drops[it]
                opt.sync()
            if it % eval_every == 0 or it == iters:
                curve_it.append(it)
                curve_acc.append(_accuracy(model, x_test, y_test, batch=1000, transform=preprocess))
                curve_lr.append(float(lr_now))
        results[name] = {
            "iterations": iters,
            "lr": lr_desc,
            "eval_iters": curve_it,
            "accuracy": curve_acc,
            "lr_of_step": curve_lr,
            "final": curve_acc[-1],
            "seconds": round(time.perf_counter() - t0, 2),
            "last_loss": float(loss.detach()),
        }
        log(
            f"  {name:<12s} {iters:>7,d} iterations  test accuracy {100 * curve_acc[-1]:5.1f}%  "
            f"({results[name]['seconds']:.0f} s)"
        )

    target = results["fixed"]["final"] if "fixed" in results else None
    headers = [
        "policy",
        "LR",
        "iterations",
        "test acc. (%)",
        "it. to fixed's acc." if target is not None else "",
        "paper: iterations",
        "paper: acc. (%)",
    ]
    rows = []
    for name, r in results.items():
        reach = _first_reach(r["eval_iters"], r["accuracy"], target) if target is not None else None
        r["iters_to_fixed"] = reach
        paper = PAPER_TABLE1_CIFAR10.get(name)
        rows.append(
            [
                name,
                r["lr"],
                f"{r['iterations']:,d}",
                f"{100 * r['final']:.1f}",
                ("-" if reach is None else f"{reach:,d}") if target is not None else "",
                f"{paper[0]:,d}" if paper else "-",
                f"{paper[1]:.1f}" if paper else "-",
            ]
        )
    table = _format_table(headers, rows)
    log("")
    log(table)
    if s != 1.0:
        log(f"(iterations scaled by {s:g}: the measured numbers are not comparable with the paper's)")
    out = {
        "format": "clr_ext.reproduce_cifar10",
        "config": {**asdict(cfg), "policies": list(cfg.policies)},
        "device": str(device),
        "paper_table1": {k: {"iterations": v[0], "accuracy": v[1]} for k, v in PAPER_TABLE1_CIFAR10.items()},
        "policies": results,
        "table": {"headers": headers, "rows": rows},
        "runtime_s": round(time.perf_counter() - t_start, 2),
        "versions": {"torch": torch.__version__, "clr_ext": _version()},
    }
    with open(os.path.join(out_dir, "cifar10_results.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    fig = _new_figure((8, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        ax.plot(r["eval_iters"], [100 * a for a in r["accuracy"]], lw=1.5, label=name)
    _save_plot(
        fig,
        ax,
        "test accuracy (%)",
        "CIFAR-10, Caffe 'full' network",
        "lower right",
        os.path.join(out_dir, "cifar10_accuracy.png"),
    )
    log(f"wrote cifar10_results.json and cifar10_accuracy.png to {out_dir}")
    return out


def _caffe_groups(model: CaffeCifar10Full, cfg: CifarConfig, lr0: float, lr1: float) -> List[Dict]:
    if not cfg.caffe_multipliers:
        return [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    return [
        {"params": params, "base_lr": lr0 * mult, "max_lr": lr1 * mult, "weight_decay": wd}
        for params, mult, wd in model.caffe_param_groups(cfg.weight_decay)
    ]
