"""GPU benchmark of CyclicSGD's CUDA step against torch.optim.SGD(fused=True, lr as a
CUDA tensor) + torch.optim.lr_scheduler.CyclicLR. Run by bench/gpu_check.sh.

Cases (float32, momentum cycled 0.8-0.9, no weight decay: 20 bytes per parameter per
step, read param/grad/buffer and write param/buffer):
- 100M parameters in one tensor (bandwidth-bound),
- ResNet-50's 161 parameter tensors (25.6M; bench/model_shapes.py),
- 200 tensors of 1,024 elements (launch/host-bound), eagerly and with the step
  captured in a CUDA graph and replayed (torch: its captured SGD step replayed, then
  CyclicLR.step() on the host writing the lr tensor, as it must be run).

Timing: CUDA events around ``iters`` steps, repeated; the median per-step time is
reported. Bandwidth is 20 B/param over that time, compared with a measured
device-to-device copy (read + write of a 1 GiB buffer).

Nothing measured is lost: each case runs in its own ``try`` (a failing case becomes a
row saying so, and the others still run), each row is printed and appended to
``--rows`` (flushed) as soon as it is measured, and an interrupt (``timeout
--signal=INT``) ends the run with the table of the rows measured so far.

``--device cpu``: a dry run of this script's own code on the CPU (small sizes, wall-clock
timing, the CPU backend; the graph case is skipped), so that the machinery is known
to work before a GPU is lent. Its numbers say nothing about the GPU.
``GPU_BENCH_FAIL=substring`` makes the cases whose name contains it raise (to check
that a failing case loses nothing else).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))  # the repository root: clr_ext built in place
from model_shapes import numel, resnet50_param_shapes  # noqa: E402

import clr_ext  # noqa: E402

BYTES_PER_PARAM = 20
SCHED = dict(base_lr=0.001, max_lr=0.01, step_size_up=50)
DEVICE = "cuda"

HEADER = (
    "| case | tensors | params | CyclicSGD us/step | torch fused+CyclicLR us/step | speedup | "
    "CyclicSGD GB/s (20 B/param) | % of copy BW |"
)
RULE = "|---|---:|---:|---:|---:|---:|---:|---:|"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_step_ms(step: Callable[[], None], iters: int, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    synchronize()
    times = []
    for _ in range(repeats):
        if DEVICE == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                step()
            times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    ms = median_step_ms(
        lambda: dst.copy_(src), iters=20 if DEVICE == "cuda" else 3, repeats=7 if DEVICE == "cuda" else 3
    )
    src = dst = None  # (frees the 2 GB before the next row; a del would unbind what the lambda reads)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def make_params(shapes, seed=0) -> List[torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.randn(s, device=DEVICE, generator=gen).requires_grad_()
        p.grad = 1e-3 * torch.randn(s, device=DEVICE, generator=gen)
        params.append(p)
    return params


def ours(shapes):
    params = make_params(shapes)
    opt = clr_ext.CyclicSGD(params, **SCHED)  # cycle_momentum: momentum 0.8-0.9
    opt.step()  # buffers exist from here on
    return opt, params


def theirs(shapes):
    params = make_params(shapes)
    # The CPU dry run gives a float lr (what torch's CPU fused SGD takes everywhere).
    lr = torch.tensor(SCHED["base_lr"], device=DEVICE) if DEVICE == "cuda" else SCHED["base_lr"]
    sgd = torch.optim.SGD(params, lr=lr, momentum=0.9, fused=True)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, **SCHED)
    sgd.step()
    sched.step()
    return sgd, sched, params


def capture(step: Callable[[], None]) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def run_case(name: str, shapes, iters: int, repeats: int, graph: bool = False) -> Dict[str, object]:
    n = sum(numel(s) for s in shapes)
    row: Dict[str, object] = dict(case=name, tensors=len(shapes), params=n)
    fail = os.environ.get("GPU_BENCH_FAIL", "")
    if fail and fail in name:
        raise RuntimeError("GPU_BENCH_FAIL=%r: this case fails on purpose" % fail)
    opt, _ = ours(shapes)
    sgd, sched, _ = theirs(shapes)
    try:
        if not graph:
            row["ours_ms"] = median_step_ms(opt.step, iters, repeats)

            def torch_step():
                sgd.step()
                sched.step()

            row["torch_ms"] = median_step_ms(torch_step, iters, repeats)
        else:
            g_ours = capture(opt.step)
            row["ours_ms"] = median_step_ms(g_ours.replay, iters, repeats)
            opt.sync()
            try:
                g_torch = capture(sgd.step)
            except Exception as e:  # noqa: BLE001 - report, don't die
                row["torch_ms"] = None
                row["note"] = "torch capture failed: %s" % (str(e).splitlines()[0][:80],)
            else:

                def torch_step():
                    g_torch.replay()
                    sched.step()  # the host computes the lr and fill_()s the lr tensor

                row["torch_ms"] = median_step_ms(torch_step, iters, repeats)
    finally:
        opt = sgd = sched = None  # (frees the memory before the next row)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return row


def format_row(r: Dict[str, object], copy_gbs: Optional[float]) -> str:
    head = "| %s | %d | %s | " % (r["case"], r["tensors"], "{:,}".format(r["params"]))
    if r.get("error"):
        return head + "%s |||||" % r["error"]
    ours_ms = r["ours_ms"]
    torch_ms = r.get("torch_ms")
    gbs = BYTES_PER_PARAM * r["params"] / (ours_ms * 1e-3) / 1e9
    line = head + "%.1f | %s | %s | %.0f | %s |" % (
        ours_ms * 1e3,
        "n/a" if torch_ms is None else "%.1f" % (torch_ms * 1e3),
        "n/a" if torch_ms is None else "%.2fx" % (torch_ms / ours_ms),
        gbs,
        "n/a" if not copy_gbs else "%.0f%%" % (100 * gbs / copy_gbs),
    )
    if r.get("note"):
        line += "\n|  note: %s |||||||" % r["note"]
    return line


class Rows:
    """Prints each line at once and appends it to the rows file (if any), flushed."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.lines: List[str] = []

    def emit(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())


def cases(dry_run: bool):
    """(name, shapes, iters, graph); the CPU dry run has the same cases, scaled down."""
    if not dry_run:
        return [
            ("100M x 1 tensor", [(100_000_000,)], 20, False),
            ("ResNet-50 shapes", resnet50_param_shapes(), 50, False),
            ("200 x 1K eager", [(1024,)] * 200, 200, False),
            ("200 x 1K graph replay", [(1024,)] * 200, 500, True),
        ]
    small_resnet = [tuple(max(1, d // 8) if i < 2 else d for i, d in enumerate(s)) for s in resnet50_param_shapes()]
    return [
        ("1M x 1 tensor (cpu dry run)", [(1_000_000,)], 5, False),
        ("ResNet-50 shapes / 8 (cpu dry run)", small_resnet, 5, False),
        ("200 x 1K eager (cpu dry run)", [(1024,)] * 200, 20, False),
        ("200 x 1K graph replay", [(1024,)] * 200, 0, True),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the table (markdown) to this file at the end")
    ap.add_argument("--rows", help="append each row to this file as soon as it is measured")
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: a dry run of this script on the CPU (small sizes; numbers mean nothing)",
    )
    args = ap.parse_args(argv)
    DEVICE = args.device
    dry_run = DEVICE != "cuda"
    if dry_run:
        torch.set_num_threads(1)  # on a small shared CPU a parallel region stalls on any busy core
    if not dry_run:
        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA device (--device cpu for a dry run)")
            return 1
        if "cuda" not in clr_ext.available_backends():
            print("gpu_bench: clr_ext was built without CUDA (backends: %s)" % clr_ext.available_backends())
            return 1
        torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()
    reps = 3 if (args.quick or dry_run) else 7
    out = Rows(args.rows)
    failures = 0
    interrupted = False
    if dry_run:
        where = "CPU dry run (%d threads), torch %s, clr_ext %s, backends %s" % (
            torch.get_num_threads(),
            torch.__version__,
            clr_ext.__version__,
            clr_ext.available_backends(),
        )
    else:
        props = torch.cuda.get_device_properties(0)
        where = "GPU: %s (%d SMs), torch %s, CUDA %s, clr_ext %s; %d tensors per launch" % (
            props.name,
            props.multi_processor_count,
            torch.__version__,
            torch.version.cuda,
            clr_ext.__version__,
            clr_ext.backends._C.cuda_max_tensors_per_launch(),
        )
    copy_gbs: Optional[float] = None
    rows: List[Dict[str, object]] = []
    try:
        try:
            copy_gbs = copy_bandwidth_gbs(1 << 30 if not dry_run else 1 << 26)
            where += "; %s copy %.0f GB/s" % ("D2D" if not dry_run else "CPU", copy_gbs)
        except Exception as e:  # noqa: BLE001
            failures += 1
            where += "; copy bandwidth FAILED: %s" % (str(e).splitlines()[0][:100] if str(e) else type(e).__name__)
        out.emit(where)
        out.emit("")
        out.emit(HEADER)
        out.emit(RULE)
        for name, shapes, iters, graph in cases(dry_run):
            if graph and dry_run:
                row = dict(
                    case=name,
                    tensors=len(shapes),
                    params=sum(numel(s) for s in shapes),
                    error="skipped: CUDA graphs need a GPU",
                )
            else:
                t_case = time.time()
                try:
                    row = run_case(name, shapes, iters=iters, repeats=reps, graph=graph)
                except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
                    failures += 1
                    msg = (str(e).splitlines() or [""])[0][:120]
                    row = dict(
                        case=name,
                        tensors=len(shapes),
                        params=sum(numel(s) for s in shapes),
                        error="FAILED: %s: %s" % (type(e).__name__, msg),
                    )
                    traceback.print_exc()
                    if DEVICE == "cuda":
                        torch.cuda.empty_cache()
                print("  (%s: %.1f s)" % (name, time.time() - t_case), flush=True)
            rows.append(row)
            out.emit(format_row(row, copy_gbs))
    except KeyboardInterrupt:
        interrupted = True
        out.emit(
            "|  INTERRUPTED after %.0f s (timeout): the rows above are those measured |||||||" % (time.time() - t0)
        )

    def ratio(r):
        if r is None or r.get("error") or r.get("torch_ms") is None:
            return None
        return r["torch_ms"] / r["ours_ms"]

    def case(prefix):
        return next((r for r in rows if str(r["case"]).startswith(prefix) and not r.get("error")), None)

    targets = []
    if not dry_run:
        big = case("100M")
        frac = None
        if big is not None and copy_gbs:
            frac = BYTES_PER_PARAM * big["params"] / (big["ours_ms"] * 1e-3) / 1e9 / copy_gbs
        eager, graphed = ratio(case("200 x 1K eager")), ratio(case("200 x 1K graph"))
        targets = [
            ("100M: >= 85% of copy bandwidth", frac, 0.85, "%.0f%%" % (100 * frac) if frac is not None else ""),
            ("200 x 1K eager: >= 1.5x torch", eager, 1.5, "%.2fx" % eager if eager is not None else ""),
            ("200 x 1K graph: >= 3x torch", graphed, 3.0, "%.2fx" % graphed if graphed is not None else ""),
        ]
    out.emit("")
    for name, value, need, shown in targets:
        verdict = "NOT MEASURED" if value is None else ("MET" if value >= need else "MISSED")
        out.emit("target %-34s %s%s" % (name, verdict, " (%s)" % shown if shown else ""))
    out.emit(
        "gpu_bench: %d rows, %d failed%s, %.0f s"
        % (len(rows), failures, ", interrupted" if interrupted else "", time.time() - t0)
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(out.lines) + "\n")
    return 130 if interrupted else (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
