"""Shared pieces of the CPU benchmarks (bench/test_bench_cpu.py).

Models are lists of parameter shapes; every benchmark builds fresh fp32 parameters
with gradients set once (never zeroed or set to None between steps), so a step
reads param + grad + momentum buffer and writes param + buffer: 20 bytes per
parameter for fp32 SGD with momentum.
"""

from __future__ import annotations

import gc
import math
import os
from typing import Dict, List, Tuple

import pytest
import torch

Shape = Tuple[int, ...]

# CLR_BENCH_THREADS=N runs every variant on N intra-op threads (default: torch's own
# choice, one per core). On a shared, loaded machine a 1-thread run is far less noisy:
# a parallel region stalls whenever one of its threads is descheduled.
if os.environ.get("CLR_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["CLR_BENCH_THREADS"]))


def _resnet18_shapes() -> List[Shape]:
    """torchvision.models.resnet18()'s 62 parameter shapes (11,689,512 parameters), by hand."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    in_ch = 64
    for stage, out_ch in enumerate((64, 128, 256, 512)):
        for block in range(2):
            downsample = block == 0 and stage > 0
            shapes += [(out_ch, in_ch if block == 0 else out_ch, 3, 3), (out_ch,), (out_ch,)]  # conv1, bn1
            shapes += [(out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]  # conv2, bn2
            if downsample:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]  # downsample conv, bn
        in_ch = out_ch
    shapes += [(1000, 512), (1000,)]  # fc
    return shapes


MODELS: Dict[str, List[Shape]] = {
    "200x1K": [(1000,)] * 200,
    # one element per tensor: the step's time is its host work (Python, binding, checks,
    # launches), what a GPU step of many small tensors costs on the host
    "200x1": [(1,)] * 200,
    "resnet18": _resnet18_shapes(),
    "50M": [(50_000_000,)],
}

assert len(MODELS["resnet18"]) == 62
assert sum(math.prod(s) for s in MODELS["resnet18"]) == 11_689_512

# (rounds, iterations per round, warmup rounds) per model: the whole suite runs in a
# few minutes on 2 cores; the 50M case gets few rounds (one step moves 1 GB).
ROUNDS = {
    "200x1K": (300, 10, 20),
    "200x1": (300, 10, 20),
    "resnet18": (100, 1, 5),
    "50M": (20, 1, 3),
}
# The slow reference paths get fewer rounds (they take 3-10x longer per step).
SLOW_ROUNDS = {"200x1K": (100, 5, 10), "200x1": (100, 5, 10), "resnet18": (30, 1, 3), "50M": (6, 1, 1)}

BYTES_PER_PARAM = 20  # fp32 SGD-momentum: read param, grad, buffer; write param, buffer


def n_params(model: str) -> int:
    return sum(math.prod(s) for s in MODELS[model])


def make_params(model: str, seed: int = 0) -> List[torch.Tensor]:
    """Leaf fp32 parameters of the model's shapes, each with a fixed gradient."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in MODELS[model]:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen))
        p.grad = torch.randn(shape, generator=gen)
        params.append(p)
    return params


def label_benchmark(benchmark, model: str, variant: str, bytes_per_param: int, group_prefix: str = "") -> None:
    """Puts the benchmark in its model's group and records what report.py reads."""
    benchmark.group = f"{group_prefix}{model} ({n_params(model):,} fp32 params, {len(MODELS[model])} tensors)"
    benchmark.extra_info.update(
        model=model,
        variant=variant,
        n_params=n_params(model),
        n_tensors=len(MODELS[model]),
        bytes_per_step=bytes_per_param * n_params(model),
        threads=torch.get_num_threads(),
    )


def with_scheduler(params, opt, sched, opt_step=None):
    """A timed step: ``opt_step`` (default ``opt.step``) then ``sched.step()``; and what
    must stay alive while it is timed."""
    opt_step = opt.step if opt_step is None else opt_step

    def step():
        opt_step()
        sched.step()

    return step, (params, opt, sched)


@pytest.fixture(autouse=True)
def _free_memory_between_benchmarks():
    """The 50M case holds ~600 MB per optimizer: release it before the next one."""
    yield
    gc.collect()


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


_LOAD_AT_START = _loadavg()


def pytest_report_header(config):
    """The machine's load is part of the result: 2-thread ratios are not comparable under load."""
    lines = [
        "clr_ext bench: torch %s, %d intra-op threads, %s cores, loadavg %s"
        % (torch.__version__, torch.get_num_threads(), os.cpu_count(), _LOAD_AT_START)
    ]
    try:
        load1 = float(_LOAD_AT_START.split()[0])
    except ValueError:
        load1 = 0.0
    if load1 > 0.5 * (os.cpu_count() or 1):
        lines.append(
            "clr_ext bench: WARNING the machine is busy (loadavg %.1f): multi-threaded medians "
            "will reflect scheduler stalls; CLR_BENCH_THREADS=1 is steadier" % load1
        )
    return lines


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record what the ratio table needs (bench/report.py) in the saved JSON."""
    output_json["clr_ext"] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bytes_per_param": BYTES_PER_PARAM,
        "n_params": {m: n_params(m) for m in MODELS},
        "loadavg_start": _LOAD_AT_START,
        "loadavg_end": _loadavg(),
    }
