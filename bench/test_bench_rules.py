"""CPU benchmark of the other schedules and rules, side by side with PyTorch in one run.

For each model (a pytest-benchmark group "rules: <model>"), one training-loop iteration of:
  - clr_cyclic_sgd / clr_onecycle_sgd:       CyclicSGD / OneCycleSGD.step() (cpp): the same
    step with another formula, which should cost the same;
  - clr_value_cyclic_sgd / clr_warmup_cyclic_sgd / clr_warmup_cyclic_adamw: clr_ext.SGD / AdamW
    with the schedule as a value (``S.Cyclic``; ``S.Warmup(S.Cyclic, 1500)``, a chain whose
    milestone falls in the middle of the run): the device-evaluated chain should cost what
    the cyclical schedule alone costs (issue 23);
  - clr_cyclic_adamw / clr_onecycle_adamw:   CyclicAdamW / OneCycleAdamW.step() (cpp), the
    numbers of torch.optim.AdamW's default path (MKL's square root, a second pass per block);
  - clr_cyclic_adamw_fused:                  CyclicAdamW(fused=True).step() (cpp), the numbers
    of torch.optim.AdamW(fused=True) bit for bit (IEEE square roots, one pass): the row to
    set beside adamw_fused_cyclic;
  - adamw_fused_cyclic / adamw_fused_onecycle: torch.optim.AdamW(fused=True).step() +
    CyclicLR / OneCycleLR .step() (CyclicLR cycles beta1, as CyclicAdamW does);
  - adamw_forloop_cyclic: torch.optim.AdamW's default CPU path + CyclicLR;
  - adamw_floor: the memory-traffic floor of an AdamW step (28 bytes per fp32 param:
    read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq), measured as
    flat streaming ATen passes with no per-tensor overhead.
fp32, gradients set once, weight decay 1e-2, amsgrad off.

Run:   pytest bench/test_bench_rules.py --benchmark-only --benchmark-json=bench/rules.json
No timing is asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import pytest
import torch

import clr_ext
from bench.conftest import MODELS, ROUNDS, SLOW_ROUNDS, label_benchmark, make_params, n_params, with_scheduler
from clr_ext import schedules as S
from clr_ext.backends import available_backends

TOTAL_STEPS = 10**9  # 1cycle: a schedule that does not end inside the benchmark
VARIANTS = (
    "clr_cyclic_sgd",
    "clr_value_cyclic_sgd",
    "clr_warmup_cyclic_sgd",
    "clr_onecycle_sgd",
    "clr_cyclic_adamw",
    "clr_onecycle_adamw",
    "clr_cyclic_adamw_fused",
    "clr_warmup_cyclic_adamw",
    "adamw_fused_cyclic",
    "adamw_fused_onecycle",
    "adamw_forloop_cyclic",
    "adamw_floor",
)
SLOW = {"adamw_forloop_cyclic"}
BYTES_PER_PARAM = {"sgd": 20, "adamw": 28}


def _clr(model: str, variant: str):
    params = make_params(model)
    cycle = S.Cyclic(0.01, 0.1, step_size_up=2000)
    if variant == "clr_value_cyclic_sgd":
        opt = clr_ext.SGD(params, schedule=cycle, momentum=0.9, weight_decay=5e-4, backend="cpp")
    elif variant == "clr_warmup_cyclic_sgd":
        opt = clr_ext.SGD(params, 0.1, schedule=S.Warmup(cycle, 1500), momentum=0.9, weight_decay=5e-4, backend="cpp")
    elif variant == "clr_warmup_cyclic_adamw":
        opt = clr_ext.AdamW(params, 1e-3, schedule=S.Warmup(S.Cyclic(1e-4, 1e-3, 2000), 1500), backend="cpp")
    elif variant == "clr_cyclic_sgd":
        opt = clr_ext.CyclicSGD(params, 0.01, 0.1, step_size_up=2000, momentum=0.9, weight_decay=5e-4, backend="cpp")
    elif variant == "clr_onecycle_sgd":
        opt = clr_ext.OneCycleSGD(params, 0.1, TOTAL_STEPS, momentum=0.9, weight_decay=5e-4, backend="cpp")
    elif variant == "clr_cyclic_adamw":
        opt = clr_ext.CyclicAdamW(params, 1e-4, 1e-3, step_size_up=2000, backend="cpp")
    elif variant == "clr_cyclic_adamw_fused":
        opt = clr_ext.CyclicAdamW(params, 1e-4, 1e-3, step_size_up=2000, backend="cpp", fused=True)
    else:
        opt = clr_ext.OneCycleAdamW(params, 1e-3, TOTAL_STEPS, backend="cpp")
    return opt.step, (params, opt)


def _torch_adamw(model: str, variant: str):
    params = make_params(model)
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if "fused" in variant else {"foreach": False}))
    if variant.endswith("onecycle"):
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=TOTAL_STEPS)
    else:
        sched = torch.optim.lr_scheduler.CyclicLR(opt, 1e-4, 1e-3, step_size_up=2000)
    return with_scheduler(params, opt, sched)


def _adamw_floor(model: str):
    n = n_params(model)
    gen = torch.Generator().manual_seed(1)
    p, g, m, v = (torch.randn(n, generator=gen) for _ in range(4))

    @torch.no_grad()
    def step():
        torch.add(p, g, out=p)  # reads p, g; writes p
        m.mul_(-1.0)  # reads and writes m (the sign flips: never decays to subnormals)
        v.mul_(-1.0)

    return step, (p, g, m, v)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", list(MODELS))
def test_rules(benchmark, model, variant):
    if variant.startswith("clr_") and "cpp" not in available_backends():
        pytest.skip("backend cpp is not built in this install")
    if variant == "adamw_floor":
        step, keep = _adamw_floor(model)
    elif variant.startswith("clr_"):
        step, keep = _clr(model, variant)
    else:
        step, keep = _torch_adamw(model, variant)
    rule = "sgd" if variant.endswith("_sgd") else "adamw"
    label_benchmark(benchmark, model, variant, BYTES_PER_PARAM[rule], group_prefix="rules: ")
    rounds, iterations, warmup = (SLOW_ROUNDS if variant in SLOW else ROUNDS)[model]
    benchmark.pedantic(step, rounds=rounds, iterations=iterations, warmup_rounds=warmup)
    del keep
