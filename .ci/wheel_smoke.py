"""Smoke run of an installed clr_ext (CI: the wheel in a fresh venv, .ci/install_checks.sh).

Every backend named on the command line must be built into this install, and each backend
it holds runs CyclicSGD as the PyTorch pair it fuses, torch.optim.SGD + CyclicLR (fp32,
50 steps, momentum and weight decay; api.md's tolerance, bit for bit in practice). Run it from a folder
outside the repository so that the installed package is the one imported.
"""

from __future__ import annotations

import os
import sys

import torch

import clr_ext

STEPS, BASE_LR, MAX_LR, STEP_UP = 50, 0.01, 0.1, 7


def params(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(37, 5, generator=g), torch.randn(300, generator=g), torch.randn(1, generator=g)]


def run_clr(backend: str):
    ps = [p.clone().requires_grad_() for p in params(0)]
    opt = clr_ext.CyclicSGD(ps, BASE_LR, MAX_LR, step_size_up=STEP_UP, momentum=0.9, weight_decay=1e-4, backend=backend)
    for step in range(STEPS):
        grads = params(100 + step)
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
    return ps, opt.get_last_lr()


def run_pair():
    ps = [p.clone().requires_grad_() for p in params(0)]
    sgd = torch.optim.SGD(ps, lr=BASE_LR, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, BASE_LR, MAX_LR, step_size_up=STEP_UP)
    for step in range(STEPS):
        grads = params(100 + step)
        for p, g in zip(ps, grads):
            p.grad = g
        sgd.step()
        sched.step()
    return ps, sched.get_last_lr()


def main(expected: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(clr_ext.__file__))
    print(f"clr_ext {clr_ext.__version__} from {here}; torch {torch.__version__}")
    have = clr_ext.available_backends()
    missing = [b for b in expected if b not in have]
    if missing:
        print(f"FAILED: backends {missing} are not in this install (it has {have})", file=sys.stderr)
        return 1
    ref, ref_lr = run_pair()
    failed = False
    for backend in [b for b in have if b != "cuda" or torch.cuda.is_available()]:
        got, lr = run_clr(backend)
        worst = max(((a - b).abs() / b.abs().clamp_min(1e-30)).max().item() for a, b in zip(got, ref))
        ok = worst <= 1e-5 and all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(lr, ref_lr))
        failed |= not ok
        print(
            f"  {backend:7s} {STEPS} steps vs torch.optim.SGD + CyclicLR: max rel. error {worst:.2e} "
            f"{'ok' if ok else 'FAILED'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
