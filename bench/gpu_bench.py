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
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))  # the repository root: clr_ext built in place
from model_shapes import numel, resnet50_param_shapes  # noqa: E402

import clr_ext  # noqa: E402

BYTES_PER_PARAM = 20
SCHED = dict(base_lr=0.001, max_lr=0.01, step_size_up=50)


def median_step_ms(step: Callable[[], None], iters: int, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = median_step_ms(lambda: dst.copy_(src), iters=20, repeats=7)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def make_params(shapes, seed=0) -> List[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.randn(s, device="cuda", generator=gen).requires_grad_()
        p.grad = 1e-3 * torch.randn(s, device="cuda", generator=gen)
        params.append(p)
    return params


def ours(shapes):
    params = make_params(shapes)
    opt = clr_ext.CyclicSGD(params, **SCHED)  # cycle_momentum: momentum 0.8-0.9
    opt.step()  # buffers exist from here on
    return opt, params


def theirs(shapes):
    params = make_params(shapes)
    sgd = torch.optim.SGD(params, lr=torch.tensor(SCHED["base_lr"], device="cuda"), momentum=0.9, fused=True)
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
    opt, _ = ours(shapes)
    sgd, sched, _ = theirs(shapes)
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
    del opt, sgd, sched
    torch.cuda.empty_cache()
    return row


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device")
        return 1
    if "cuda" not in clr_ext.available_backends():
        print("gpu_bench: clr_ext was built without CUDA (backends: %s)" % clr_ext.available_backends())
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()
    reps = 3 if args.quick else 7
    copy_gbs = copy_bandwidth_gbs()
    rows = [
        run_case("100M x 1 tensor", [(100_000_000,)], iters=20, repeats=reps),
        run_case("ResNet-50 shapes", resnet50_param_shapes(), iters=50, repeats=reps),
        run_case("200 x 1K eager", [(1024,)] * 200, iters=200, repeats=reps),
        run_case("200 x 1K graph replay", [(1024,)] * 200, iters=500, repeats=reps, graph=True),
    ]
    props = torch.cuda.get_device_properties(0)
    lines = [
        "GPU: %s (%d SMs), torch %s, CUDA %s, clr_ext %s; %d tensors per launch; D2D copy %.0f GB/s; %.0f s"
        % (props.name, props.multi_processor_count, torch.__version__, torch.version.cuda, clr_ext.__version__,
           clr_ext.backends._C.cuda_max_tensors_per_launch(), copy_gbs, time.time() - t0),
        "",
        "| case | tensors | params | CyclicSGD us/step | torch fused+CyclicLR us/step | speedup | "
        "CyclicSGD GB/s (20 B/param) | % of copy BW |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ours_ms = r["ours_ms"]
        torch_ms = r.get("torch_ms")
        gbs = BYTES_PER_PARAM * r["params"] / (ours_ms * 1e-3) / 1e9
        lines.append("| %s | %d | %s | %.1f | %s | %s | %.0f | %.0f%% |" % (
            r["case"], r["tensors"], "{:,}".format(r["params"]), ours_ms * 1e3,
            "n/a" if torch_ms is None else "%.1f" % (torch_ms * 1e3),
            "n/a" if torch_ms is None else "%.2fx" % (torch_ms / ours_ms), gbs, 100 * gbs / copy_gbs))
        if r.get("note"):
            lines.append("|  note: %s |||||||" % r["note"])
    big = rows[0]
    frac = BYTES_PER_PARAM * big["params"] / (big["ours_ms"] * 1e-3) / 1e9 / copy_gbs
    eager, graphed = rows[2], rows[3]

    def ratio(r):
        return None if r.get("torch_ms") is None else r["torch_ms"] / r["ours_ms"]

    targets = [
        ("100M: >= 85% of copy bandwidth", frac >= 0.85, "%.0f%%" % (100 * frac)),
        ("200 x 1K eager: >= 1.5x torch", (ratio(eager) or 0) >= 1.5, "%.2fx" % (ratio(eager) or 0)),
        ("200 x 1K graph: >= 3x torch", (ratio(graphed) or 0) >= 3.0, "%.2fx" % (ratio(graphed) or 0)),
    ]
    lines.append("")
    for name, ok, value in targets:
        lines.append("target %-34s %s (%s)" % (name, "MET" if ok else "MISSED", value))
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
