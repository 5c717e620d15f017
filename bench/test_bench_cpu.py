"""CPU benchmark: one training-loop optimizer iteration, clr_ext against PyTorch.

For each model size (a pytest-benchmark group), one iteration is:
  - clr_ext:   CyclicSGD.step()                     backends cpp, cython, torch
  - PyTorch:   torch.optim.SGD.step(); CyclicLR.step()   for-loop, foreach, fused
with momentum 0.9 (cycled between 0.8 and 0.9 by both schedulers, as CyclicLR does by
default) and weight decay 5e-4, fp32, gradients set once.

"floor" is the memory-traffic floor measured in the same run: on flat fp32 tensors of
the model's parameter count, ``p.add_(g); b.mul_(-1.0)`` reads three arrays and writes
two, i.e. exactly the 20 bytes per parameter that an SGD-momentum step must move, with
no per-tensor overhead (two streaming ATen passes on all threads; b's sign flips so it
never decays to subnormals).

Run:   pytest bench/ --benchmark-only --benchmark-json=bench/results.json
       python bench/report.py bench/results.json
No timing is asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import pytest
import torch

import clr_ext
from bench.conftest import (
    BYTES_PER_PARAM,
    MODELS,
    ROUNDS,
    SLOW_ROUNDS,
    label_benchmark,
    make_params,
    n_params,
    with_scheduler,
)
from clr_ext.backends import available_backends

BASE_LR, MAX_LR, STEP_SIZE = 0.01, 0.1, 2000
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4

CLR_BACKENDS = ("cpp", "cython", "torch")
TORCH_VARIANTS = ("fused", "foreach", "forloop")
VARIANTS = tuple("clr_" + b for b in CLR_BACKENDS) + tuple("sgd_" + v for v in TORCH_VARIANTS) + ("floor",)
SLOW = {"clr_torch", "sgd_foreach", "sgd_forloop"}


def _clr_step(model: str, backend: str):
    params = make_params(model)
    opt = clr_ext.CyclicSGD(
        params,
        base_lr=BASE_LR,
        max_lr=MAX_LR,
        step_size_up=STEP_SIZE,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        backend=backend,
    )
    return opt.step, (params, opt)


def _torch_step(model: str, variant: str):
    params = make_params(model)
    kw = {"forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[variant]
    opt = torch.optim.SGD(params, lr=BASE_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, **kw)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=BASE_LR, max_lr=MAX_LR, step_size_up=STEP_SIZE)
    return with_scheduler(params, opt, sched)


def _floor_step(model: str):
    n = n_params(model)
    gen = torch.Generator().manual_seed(1)
    p, g, b = (torch.randn(n, generator=gen) for _ in range(3))

    @torch.no_grad()
    def step():
        p.add_(g)
        b.mul_(-1.0)

    return step, (p, g, b)


def _compiled_clr_step(model: str):
    """CyclicSGD.step() under torch.compile (inductor): traced twice, then replayed."""
    step, keep = _clr_step(model, "cpp")
    compiled = torch.compile(step)
    return compiled, keep


def _compiled_torch_step(model: str):
    """What torch's docs advise for a compiled optimizer with a scheduler: SGD with a
    tensor lr, step() compiled, CyclicLR stepping outside. CyclicLR also cycles the
    momentum, a Python float in the group, so dynamo re-traces at every step until its
    recompile limit and then runs the step eagerly: what a user gets."""
    params = make_params(model)
    opt = torch.optim.SGD(params, lr=torch.tensor(BASE_LR), momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=True)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=BASE_LR, max_lr=MAX_LR, step_size_up=STEP_SIZE)
    return with_scheduler(params, opt, sched, torch.compile(opt.step))


def _measure(benchmark, model: str, variant: str, step, rounds_by_model) -> None:
    """Times ``step`` in the model's benchmark group, with what report.py reads."""
    label_benchmark(benchmark, model, variant, BYTES_PER_PARAM)
    rounds, iterations, warmup = rounds_by_model[model]
    benchmark.pedantic(step, rounds=rounds, iterations=iterations, warmup_rounds=warmup)


def _host_work_step(variant: str):
    """The host side of a GPU step, measured on the CPU: CyclicSGD on the path a CUDA
    step takes (the op decides which buffers start, no host read of the overflow flag
    or the momentum), and torch's fused SGD with its lr in a tensor (the capturable
    setup torch advises) + CyclicLR."""
    if variant == "clr_cpp_device_path":
        step, (params, opt) = _clr_step("200x1", "cpp")
        opt._host_decided_types = ()
        return step, (params, opt)
    params = make_params("200x1")
    opt = torch.optim.SGD(params, lr=torch.tensor(BASE_LR), momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, fused=True)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=BASE_LR, max_lr=MAX_LR, step_size_up=STEP_SIZE)
    return with_scheduler(params, opt, sched)


@pytest.mark.parametrize("variant", ["clr_cpp_device_path", "sgd_fused_lr_tensor"])
def test_host_work(benchmark, variant):
    """200 one-element tensors: against test_step's 200x1 rows."""
    if variant.startswith("clr_") and "cpp" not in available_backends():
        pytest.skip("backend cpp is not built in this install")
    step, keep = _host_work_step(variant)
    _measure(benchmark, "200x1", variant, step, ROUNDS)
    del keep


@pytest.mark.parametrize("variant", ["clr_cpp_compiled", "sgd_compiled"])
@pytest.mark.parametrize("model", ["200x1K", "resnet18"])
def test_compiled_step(benchmark, model, variant):
    """The optimizer step inside torch.compile, against eager in test_step's rows."""
    if variant == "clr_cpp_compiled" and "cpp" not in available_backends():
        pytest.skip("backend cpp is not built in this install")
    torch._dynamo.reset()
    step, keep = _compiled_clr_step(model) if variant == "clr_cpp_compiled" else _compiled_torch_step(model)
    for _ in range(12):  # compile (and, for torch's pair, run past the recompile limit) outside the timing
        step()
    _measure(benchmark, model, variant, step, ROUNDS)
    del keep
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", list(MODELS))
def test_step(benchmark, model, variant):
    if variant.startswith("clr_") and variant[4:] not in available_backends():
        pytest.skip(f"backend {variant[4:]} is not built in this install")
    if variant == "floor":
        step, keep = _floor_step(model)
    elif variant.startswith("clr_"):
        step, keep = _clr_step(model, variant[4:])
    else:
        step, keep = _torch_step(model, variant[4:])

    _measure(benchmark, model, variant, step, SLOW_ROUNDS if variant in SLOW else ROUNDS)
    del keep
