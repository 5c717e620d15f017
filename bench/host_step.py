"""Host time of one step on 200 one-element params (median us), per class and CPU backend.

Compares two checkouts side by side on one machine: run it alternately on each (the
``clr_ext`` imported is the one under ``ROOT``), e.g. the base of a change and the change:

    git archive BASE clr_ext | tar -x -C /tmp/base   # plus the built .so files
    for i in 1 2 3; do python bench/host_step.py /tmp/base; python bench/host_step.py .; done

``--no-bump`` patches out the version-counter bump, to see the rest of the step alone.
No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

CASES = (
    ("CyclicSGD", "cpp"),
    ("CyclicSGD", "cython"),
    ("CyclicSGD", "torch"),
    ("CyclicAdamW", "cpp"),
    ("CyclicAdamW", "cython"),
    ("OneCycleSGD", "cpp"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default=".")
    parser.add_argument("--no-bump", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    import torch

    import clr_ext

    if args.no_bump:
        torch._C._increment_version = lambda tensors: None
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    out = {}
    for cls_name, backend in CASES:
        if backend not in clr_ext.available_backends():
            continue
        params = [torch.zeros(1, requires_grad=True) for _ in range(200)]
        for p in params:
            p.grad = torch.ones(1)
        cls = getattr(clr_ext, cls_name)
        kw = {"momentum": 0.9} if cls_name.endswith("SGD") else {}
        if cls_name.startswith("Cyclic"):
            opt = cls(params, 0.001, 0.01, backend=backend, **kw)
        else:
            opt = cls(params, 0.01, total_steps=10**6, backend=backend, **kw)
        steps = 20 if backend == "torch" else 200
        for _ in range(10):
            opt.step()
        times = []
        for _ in range(15):
            start = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times.append((time.perf_counter() - start) / steps * 1e6)
        out[f"{cls_name}/{backend}"] = round(statistics.median(times), 1)
    print(clr_ext.__file__, out)


if __name__ == "__main__":
    main()
