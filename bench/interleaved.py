"""Paired, interleaved timing of the rules benchmark's variants, for noisy shared machines.

pytest-benchmark (bench/test_bench_rules.py) runs one variant's rounds back to back, so a
neighbour's load that comes and goes lands on whichever variant runs then: on these 2-core
VMs the same median moves by 10-40% at the memory-bandwidth limit. Here every round times
one step of each variant, in a fresh random order, and the ratio is taken within the
round; its median (with the 25th-75th percentiles) is the figure to quote.

    python -m bench.interleaved --model resnet18 --rounds 60 \\
        clr_cyclic_adamw_fused adamw_fused_cyclic clr_cyclic_adamw
    python -m bench.interleaved --model resnet18 --rounds 60 clr_cyclic_sgd sgd_fused_cyclic

The first variant named is the reference the others are set against (ratio = its time /
theirs: > 1 means faster than the reference). No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Callable, Dict, List

import torch

from bench.conftest import MODELS, n_params
from bench.test_bench_cpu import _torch_step as _torch_sgd
from bench.test_bench_rules import BYTES_PER_PARAM, VARIANTS, _adamw_floor, _clr, _torch_adamw

#: torch.optim.SGD(fused=True) + CyclicLR, bench/test_bench_cpu.py's reference, beside the rules' variants.
SGD_VARIANTS = ("sgd_fused_cyclic",)


def _builder(model: str, variant: str):
    if variant == "adamw_floor":
        return _adamw_floor(model)
    if variant.startswith("clr_"):
        return _clr(model, variant)
    if variant in SGD_VARIANTS:
        return _torch_sgd(model, "fused")
    return _torch_adamw(model, variant)


def _quantiles(values: List[float]) -> str:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return "%.2fx (%.2f-%.2f)" % (q2, q1, q3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", choices=VARIANTS + SGD_VARIANTS)
    parser.add_argument("--model", default="resnet18", choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    steps: Dict[str, Callable[[], None]] = {}
    keep = []
    for variant in args.variants:
        step, held = _builder(args.model, variant)
        steps[variant] = step
        keep.append(held)
    times: Dict[str, List[float]] = {v: [] for v in args.variants}
    order = list(args.variants)
    rng = random.Random(0)
    for round_index in range(args.warmup + args.rounds):
        rng.shuffle(order)
        for variant in order:
            start = time.perf_counter()
            steps[variant]()
            elapsed = time.perf_counter() - start
            if round_index >= args.warmup:
                times[variant].append(elapsed)

    reference = args.variants[0]
    print(
        "%s: %s fp32 params in %d tensors; %d paired rounds, %d threads; ratio = %s's time / the variant's"
        % (args.model, format(n_params(args.model), ","), len(MODELS[args.model]), args.rounds,
           torch.get_num_threads(), reference)
    )  # fmt: skip
    print("| variant | median | GB/s | paired ratio, median (IQR) |")
    print("|---|---:|---:|---:|")
    for variant in args.variants:
        median = statistics.median(times[variant])
        rule = "sgd" if variant.endswith("_sgd") or variant in SGD_VARIANTS else "adamw"
        ratios = [r / t for r, t in zip(times[reference], times[variant])]
        print(
            "| %s | %.3f ms | %.1f | %s |"
            % (variant, median * 1e3, BYTES_PER_PARAM[rule] * n_params(args.model) / median / 1e9, _quantiles(ratios))
        )
    del keep


if __name__ == "__main__":
    main()
