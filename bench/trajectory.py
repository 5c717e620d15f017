"""Records or compares a bit-exact trajectory of every scheduled optimizer on the CPU.

A refactoring of the step must not change any number: ``--save PATH`` records params and
state after 200 steps of the four public classes (fp32 and fp64, every CPU backend, a few
groups, buckets of two dtypes, missing grads, GradScaler inputs and a skipped step, the
device-decided momentum path, a ``scale_fn``), ``--compare PATH`` checks them bit for bit.

    python bench/trajectory.py --save /tmp/spine_before.pt
    python bench/trajectory.py --compare /tmp/spine_before.pt
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict

import torch

import clr_ext

STEPS = 200


def _params(dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (7,), (2, 2, 3), (5,)]
    params = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    other = torch.float64 if dtype == torch.float32 else torch.float32
    params.append(torch.randn(6, generator=gen, dtype=other).requires_grad_())  # a second bucket
    return params


def _cases():
    for cls in ("CyclicSGD", "OneCycleSGD", "CyclicAdamW", "OneCycleAdamW"):
        for variant in ("plain", "extra"):
            yield cls, variant


def _build(cls_name: str, variant: str, params, backend: str):
    cls = getattr(clr_ext, cls_name)
    groups = [{"params": params[:2]}, {"params": params[2:4], "weight_decay": 0.01}, {"params": params[4:]}]
    sgd = cls_name.endswith("SGD")
    cyclic = cls_name.startswith("Cyclic")
    kw: Dict = {"backend": backend}
    if sgd:
        kw.update(momentum=0.9, weight_decay=1e-3)
        if variant == "extra":
            kw.update(dampening=0.1, cycle_momentum=False, maximize=True)
            groups[1]["nesterov"] = False
        else:
            groups[0]["nesterov"] = True
            groups[0]["dampening"] = 0.0
    else:
        kw.update(weight_decay=1e-2)
        if variant == "extra":
            kw.update(amsgrad=True, fused=True, maximize=True)
    if cyclic:
        kw.update(step_size_up=7, step_size_down=5)
        if variant == "extra":
            kw.update(scale_fn=lambda x: 1.0 / (1.0 + 0.1 * x), scale_mode="cycle")
        else:
            kw.update(mode="exp_range", gamma=0.999)
        opt = cls(groups, base_lr=[0.01, 0.02, 0.005], max_lr=0.1, **kw)
    else:
        opt = cls(groups, max_lr=[0.1, 0.05, 0.2], total_steps=STEPS + 20, **kw)
    if sgd and variant == "extra":
        opt._host_decided_types = ()  # the device-decided (CUDA, compile) momentum path
    return opt


def run(backend: str, cls_name: str, variant: str, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    params = _params(dtype, seed=sum(map(ord, cls_name + variant)))
    opt = _build(cls_name, variant, params, backend)
    gen = torch.Generator().manual_seed(7)
    for step in range(STEPS):
        for i, p in enumerate(params):
            if (step + i) % 11 == 3:
                p.grad = None  # a param without gradient this step
            else:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if step % 17 == 5:
            opt.grad_scale = torch.tensor(4.0)
            opt.found_inf = torch.tensor(1.0 if step % 34 == 5 else 0.0)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(4.0)
        opt.step()
        for key in ("grad_scale", "found_inf"):
            opt.__dict__.pop(key, None)
    out = {f"p{i}": p.detach().clone() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                out[f"s{i}.{key}"] = value.detach().clone()
    out["lr"] = torch.tensor([g["lr"] for g in opt.param_groups], dtype=torch.float64)
    out["iteration"] = torch.tensor(opt.iteration)
    return out


def record() -> Dict[str, Dict[str, torch.Tensor]]:
    backends = [b for b in ("cpp", "cython", "torch") if b in clr_ext.available_backends()]
    results = {}
    for backend in backends:
        for cls_name, variant in _cases():
            for dtype in (torch.float32, torch.float64):
                results[f"{backend}/{cls_name}/{variant}/{dtype}"] = run(backend, cls_name, variant, dtype)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save")
    group.add_argument("--compare")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import warnings

    warnings.simplefilter("ignore")
    results = record()
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} runs to {args.save}")
        return 0
    before = torch.load(args.compare)
    bad = []
    for key, ref in before.items():
        got = results.get(key)
        if got is None or got.keys() != ref.keys():
            bad.append(f"{key}: other keys")
            continue
        for name, value in ref.items():
            if value.dtype != got[name].dtype or not torch.equal(value, got[name]):
                bad.append(f"{key}: {name} differs")
    print("\n".join(bad) if bad else f"all {len(before)} runs bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
