"""The ``clr-ext`` command (also ``python -m clr_ext``).

Subcommands: ``demo`` (the main one), ``range-test``, ``reproduce-cifar10``, ``info``.
User errors (a bad number, a missing data folder) end in one line on stderr and exit code 2;
only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple, TypeVar

__all__ = ["main", "build_parser", "backend_lines", "build_info"]

PROG = "clr-ext"


class UserError(Exception):
    """A mistake in the command line or its inputs, reported in one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in ONE line (the default prints the whole usage
    block first), pointing to --help instead."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---- argument types: each rejects a bad value with a message argparse puts in one line ----
_N = TypeVar("_N", int, float)


def _number(text: str, kind: Callable[[str], _N], what: str, ok: Callable[[_N], bool]) -> _N:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, "a positive integer", lambda v: v > 0)


def non_negative_int(text: str) -> int:
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    return _number(text, float, "a positive number", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    return _number(text, float, "a number >= 0", lambda v: v >= 0)


def momentum_float(text: str) -> float:
    return _number(text, float, "a momentum in [0, 1]", lambda v: 0 <= v <= 1)


_EPILOG = """\
Cyclical learning rates (Leslie N. Smith, "Cyclical Learning Rates for Training Neural
Networks", WACV 2017): instead of one fixed learning rate (LR), let the LR go up and down
between two bounds, base_lr and max_lr. A short "LR range test" finds the bounds.

Start here:
  clr-ext demo                  range test + CLR vs fixed-LR training on a small built-in
                                dataset (about 1.5 minutes on 2 CPU cores)
  clr-ext demo --quick          the same, smaller (under a minute)
  clr-ext range-test --sweep exp
  clr-ext info                  versions and the compiled backends

In Python:  opt = clr_ext.CyclicSGD(model.parameters(), base_lr, max_lr, step_size_up=...)
Run "clr-ext COMMAND --help" for a command's options."""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Cyclical learning rates for PyTorch: the optimizer, the LR "
        "range test, a demo and the paper's CIFAR-10 experiment.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # ---- demo ----
    d = sub.add_parser(
        "demo",
        help="the main demo: range test, then CLR vs fixed LRs on handwritten digits",
        description="The paper's recipe on scikit-learn's handwritten digits (1,797 8x8 images that "
        "ship with scikit-learn; nothing is downloaded):\n"
        "  1. one LR range test (linear sweep, validation accuracy) suggests base_lr and max_lr;\n"
        "  2. every policy trains a small CNN for the same number of iterations with those bounds:\n"
        "     triangular, triangular2, exp_range, decay, exp, and a fixed LR at the range test's\n"
        "     suggestion (max_lr/2), against a grid of fixed LRs (the tuning CLR claims to save);\n"
        "  3. over several seeds, it prints a table like the paper's Table 1 (policy, runs needed,\n"
        "     iterations to reach the best fixed LR's accuracy, final test accuracy) and writes\n"
        "     range_test.png, lr_schedule.png, accuracy.png and results.json into --out.\n"
        "It reports whatever it measures, whichever policy wins.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_out(d, "clr_ext_demo", "the plots and results.json")
    d.add_argument(
        "--quick",
        action="store_true",
        help="a smaller run for a quick look or a test: 3 seeds, shorter cycles, a grid "
        "of 3 fixed LRs (under a minute)",
    )
    d.add_argument(
        "--seeds",
        type=positive_int,
        metavar="N",
        help="number of seeds (initial weights and batch order) per policy (default 5, --quick: 3)",
    )
    d.add_argument(
        "--grid",
        type=positive_float,
        nargs="+",
        metavar="LR",
        help="the fixed LRs to try as baselines (default 0.01 0.02 0.05 0.1 0.2; --quick: 0.02 0.05 0.1)",
    )
    d.add_argument(
        "--cycles",
        type=positive_int,
        metavar="N",
        help="LR cycles per run; every policy gets the same number of iterations (default 3, the paper's minimum)",
    )
    d.add_argument(
        "--epochs-per-half-cycle",
        type=positive_float,
        metavar="E",
        help="stepsize (half a cycle) in epochs (default 4; the paper advises 2-10; --quick: 1)",
    )
    _add_run_options(d)

    # ---- range-test ----
    r = sub.add_parser(
        "range-test",
        help="the LR range test on the built-in digits data, with a plot",
        description="Train the digits CNN for --num-iters steps while the LR rises from --start-lr to "
        "--end-lr (linearly, the paper's test, or exponentially), read the curve, and suggest "
        "base_lr and max_lr for CLR. Writes range_test.png and range_test.json into --out.\n"
        "For your own model and data, use the Python API:\n"
        "  result = clr_ext.range_test(model, train_loader, loss_fn, start_lr=1e-4, end_lr=1,\n"
        "                              sweep='exp', val_loader=val_loader, metric='accuracy')\n"
        "  opt = clr_ext.CyclicSGD.from_range_test(model.parameters(), result, iters_per_epoch)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_out(r, "clr_ext_range_test", "range_test.png and range_test.json")
    _add_choice(
        r,
        "--sweep",
        ("linear", "exp"),
        "how the LR rises: linear (the paper's test; default) or exp (geometric, for sweeping several decades)",
    )
    r.add_argument("--start-lr", type=positive_float, default=1e-3, metavar="LR", help="first LR (default 0.001)")
    r.add_argument("--end-lr", type=positive_float, default=0.5, metavar="LR", help="last LR (default 0.5)")
    r.add_argument(
        "--num-iters",
        type=positive_int,
        default=300,
        metavar="N",
        help="steps in the test (default 300, about 8 epochs)",
    )
    _add_choice(
        r, "--metric", ("accuracy", "loss"), "which curve the bounds are read from (default accuracy, as in the paper)"
    )
    r.add_argument(
        "--no-val", action="store_true", help="read the training batches instead of the held-out validation split"
    )
    r.add_argument("--momentum", type=momentum_float, default=0.9, help="SGD momentum (default 0.9)")
    r.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="(default 0.0005)")
    r.add_argument("--batch-size", type=positive_int, default=32, help="(default 32)")
    r.add_argument("--seed", type=non_negative_int, default=0, help="initial weights and batch order (default 0)")
    _add_run_options(r)

    # ---- reproduce-cifar10 ----
    c = sub.add_parser(
        "reproduce-cifar10",
        help="the paper's CIFAR-10 experiment (needs the data; a GPU helps)",
        description="The paper's CIFAR-10 experiment: Caffe's CIFAR-10 'full' network, batch 100, "
        "momentum 0.9, weight decay 0.004; the fixed-LR baseline (0.001 for 60,000 iterations, then "
        "0.0001 and 0.00001 for 5,000 each) against triangular2 (0.001-0.006, stepsize 2,000) and the "
        "paper's other policies (decay, exp, exp_range). Prints the measured table beside the paper's "
        "Table 1 and writes cifar10_results.json and cifar10_accuracy.png into --out.\n"
        "The data: the python version of CIFAR-10 (cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html), extracted; --data-root is the folder holding "
        "data_batch_1..5 and test_batch, or the folder containing cifar-10-batches-py.\n"
        "At full length this is 232,000 iterations: hours on a CPU, minutes on a GPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--data-root", required=True, metavar="DIR", help="where the CIFAR-10 python batches are")
    _add_out(c, "clr_ext_cifar10", "the results")
    c.add_argument(
        "--iters-scale",
        type=positive_float,
        default=1.0,
        metavar="F",
        help="multiply every iteration count (run lengths, LR drops, stepsize) by F, "
        "e.g. 0.1 for a 10x shorter run (default 1: the paper's lengths)",
    )
    c.add_argument(
        "--policies",
        nargs="+",
        metavar="P",
        choices=("fixed", "triangular2", "decay", "exp", "exp_range", "triangular"),
        default=["fixed", "triangular2", "decay", "exp", "exp_range"],
        help="which policies to run (default: the paper's Table 1 rows: fixed triangular2 "
        "decay exp exp_range; 'triangular' may be added)",
    )
    c.add_argument("--batch-size", type=positive_int, default=100, help="(default 100, the paper's)")
    c.add_argument(
        "--eval-every",
        type=positive_int,
        default=1000,
        metavar="N",
        help="test every N iterations (scaled by --iters-scale; default 1000, Caffe's)",
    )
    c.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    c.add_argument("--seed", type=non_negative_int, default=0, help="(default 0)")
    c.add_argument(
        "--no-caffe-multipliers",
        action="store_true",
        help="one LR and weight decay for all layers instead of Caffe's per-layer multipliers "
        "(biases: LR x2; last layer: weight decay x250)",
    )
    _add_threads(c, None)

    # ---- info ----
    sub.add_parser(
        "info",
        help="versions, compiled backends, CPU features, CUDA",
        description="Print the clr_ext and torch versions, the compiled backends, the CPU's "
        "vector features and whether CUDA is available.",
    )
    return p


def _add_out(parser: argparse.ArgumentParser, default: str, what: str) -> None:
    parser.add_argument("--out", metavar="DIR", default=default, help=f"folder for {what} (default: ./{default})")


def _add_choice(parser: argparse.ArgumentParser, flag: str, choices: Tuple[str, ...], help: str) -> None:
    """An option taking one of ``choices``, the first by default."""
    parser.add_argument(flag, choices=choices, default=choices[0], help=help)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that trains the small digits CNN."""
    _add_threads(parser, 1)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_threads(parser: argparse.ArgumentParser, default: Optional[int]) -> None:
    hint = (
        "default 1: these models are so small that more threads cost more in synchronisation than they save"
        if default == 1
        else "default: torch's choice"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=default, metavar="N", help=f"CPU threads for torch ({hint})"
    )


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except Exception:  # e.g. a half-built checkout; the version is informative only
        return "unknown"


def _prepare_out(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"the output folder {path!r} is not writable")
    return path


def _set_threads(n: Optional[int]) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


# ---- commands ----
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    if args.seeds is not None:
        cfg.seeds = args.seeds
    if args.grid:
        cfg.grid = tuple(args.grid)
    if args.cycles is not None:
        cfg.cycles = args.cycles
    if args.epochs_per_half_cycle is not None:
        cfg.epochs_per_half_cycle = args.epochs_per_half_cycle
    _set_threads(args.threads)
    run_demo(_prepare_out(args.out), cfg, progress=not args.quiet)
    return 0


def _cmd_range_test(args: argparse.Namespace) -> int:
    from .data import load_digits_split
    from .demo import digits_range_test

    if not args.end_lr > args.start_lr:
        raise UserError(f"--end-lr ({args.end_lr:g}) must be greater than --start-lr ({args.start_lr:g})")
    if args.num_iters < 2:
        raise UserError("--num-iters must be at least 2")
    out = _prepare_out(args.out)
    _set_threads(args.threads)
    data = load_digits_split(test_size=360, val_size=300, seed=0)
    result = digits_range_test(
        data,
        args.batch_size,
        args.seed,
        validate=not args.no_val,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_iters=args.num_iters,
        sweep=args.sweep,
        metric=args.metric,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        progress=not args.quiet,
    )
    result.plot(os.path.join(out, "range_test.png"))
    result.save(os.path.join(out, "range_test.json"))
    iters_per_epoch = len(data.x_train) // args.batch_size
    state = f"stopped early at LR {result.lrs[-1]:.3g} ({result.stop_reason})" if result.diverged else "ran to the end"
    print(
        f"range test on digits: {result.sweep} sweep {args.start_lr:g} -> {args.end_lr:g}, "
        f"{len(result.lrs)} steps, {state}; read from the {result.metric if result.reading == 'metric' else 'loss'} "
        f"on the {'validation split' if result.measured_on == 'val' else 'training batches'}"
    )
    print(f"suggested bounds: base_lr = {result.base_lr:.4g}, max_lr = {result.max_lr:.4g}")
    print(
        f"suggested stepsize: {result.step_size(iters_per_epoch)} iterations (4 epochs of "
        f"{iters_per_epoch}; the paper advises 2-10 epochs)"
    )
    print(f"wrote range_test.png and range_test.json to {out}")
    return 0


def _cmd_cifar10(args: argparse.Namespace) -> int:
    from .data import CifarFormatError, find_cifar10
    from .demo import CifarConfig, run_cifar10

    try:
        find_cifar10(args.data_root)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    device = args.device
    if device != "auto":
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(f"--device: not a device: {device!r} (auto, cpu, cuda or cuda:N)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available in this torch ({torch.__version__})")
    cfg = CifarConfig(
        iters_scale=args.iters_scale,
        batch_size=args.batch_size,
        policies=tuple(args.policies),
        eval_every=args.eval_every,
        seed=args.seed,
        device=device,
        caffe_multipliers=not args.no_caffe_multipliers,
    )
    out = _prepare_out(args.out)
    _set_threads(args.threads)
    try:
        run_cifar10(args.data_root, out, cfg)
    except CifarFormatError as e:
        raise UserError(str(e)) from None
    return 0


# How to get each compiled backend that an install lacks (README "Building").
_HOW_TO_BUILD = {
    "cpp": "needs a C++ compiler (g++ >= 9) when clr_ext is installed",
    "cython": "needs Cython and a C++ compiler when clr_ext is installed",
    "cuda": "needs a CUDA build of torch and a CUDA toolkit (CUDA_HOME) when clr_ext is installed",
}
_REINSTALL = (
    "reinstall from source against this torch: pip install --no-build-isolation --force-reinstall --no-deps "
    "<clr_ext source folder or sdist> (CLR_EXT_REQUIRE_COMPILED=1 makes a failed build stop instead of "
    "falling back; README 'Building')"
)


def build_info() -> dict:
    """What the build of this install recorded (``clr_ext/_build_info.json``: the torch it was
    built against and each backend it left out, with the reason); empty when the install
    predates the record or was copied without it."""
    import json

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_build_info.json")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def backend_lines() -> List[str]:
    """The ``backends:`` line of ``clr-ext info``, then one line per compiled backend this
    install lacks: why (the build's record, else the import error) and how to get it."""
    from .. import available_backends
    from .. import backends as _backends

    have = available_backends()
    lines = ["backends: " + ", ".join(have)]
    if have == ["torch"]:
        lines.append("  only the pure-PyTorch backend: correct but slow (a Python loop of torch ops per step)")
    info = build_info()
    not_built = info.get("not_built", {}) if isinstance(info.get("not_built"), dict) else {}
    missing = [name for name in ("cuda", "cpp", "cython") if name not in have]
    for name in missing:
        if name in not_built:
            why = "not built: " + str(not_built[name])
        else:
            why = "not available: " + _backends._why_missing(name)
        lines.append(f"  {name}: {why}; {_HOW_TO_BUILD[name]}")
    built_against = info.get("torch")
    if built_against:
        import torch

        note = "" if built_against == torch.__version__ else f" (this is torch {torch.__version__}: {_REINSTALL})"
        lines.append(f"built against torch {built_against}{note}")
    if [m for m in missing if m != "cuda"]:
        lines.append(f"  to add a backend: {_REINSTALL}")
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    lines = [
        f"clr_ext {_version()}",
        f"torch {torch.__version__} (Python {platform.python_version()}, {platform.machine()})",
    ]
    try:
        lines += backend_lines()
    except Exception as e:  # report a broken build rather than crash the diagnostic command
        lines.append(f"backends: unavailable ({type(e).__name__}: {e})")
    try:
        cpu = torch.backends.cpu.get_cpu_capability()
    except Exception:
        cpu = "unknown"
    lines.append(f"CPU capability: {cpu} ({os.cpu_count()} logical CPUs, torch uses {torch.get_num_threads()} threads)")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"CUDA: available (CUDA {torch.version.cuda}; {', '.join(names)})")
    else:
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build of torch"
        lines.append(f"CUDA: not available ({built})")
    print("\n".join(lines))
    return 0


_COMMANDS = {"demo": _cmd_demo, "range-test": _cmd_range_test, "reproduce-cifar10": _cmd_cifar10, "info": _cmd_info}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``clr-ext`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version, or a usage error (already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        print(
            f"{PROG}: error: a command is required: demo, range-test, reproduce-cifar10 or info (see '{PROG} --help')",
            file=sys.stderr,
        )
        return 2
    try:
        return _COMMANDS[args.command](args)
    except UserError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        from .._extras import missing_extra

        friendly = missing_extra(e, f"{PROG} {args.command}", extra="demo")
        if friendly is e:
            raise
        print(f"{PROG} {args.command}: error: {friendly}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
