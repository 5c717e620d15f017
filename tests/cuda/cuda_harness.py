"""What the CUDA tests (test_cuda_sgd.py, test_cuda_adamw.py, test_cuda_rules.py) share: the
device they run on, the skips, the tolerances and references, and a runner for machines
without pytest.

Every GPU test skips without a CUDA device or where clr_ext._C was built without CUDA;
the ``*_kernel_registered`` tests only need the CUDA build (they run in CI's CUDA venv,
which has no GPU). With ``CLR_EXT_REQUIRE_CUDA=1`` (bench/gpu_check.sh sets it) those
conditions fail instead of skipping, so a GPU run can't pass by skipping everything.

Runs under pytest (``pytest tests/cuda``), and without it (the GPU machine may lack pytest):
``python tests/cuda/cuda_harness.py [-k EXPR]`` runs every test function and case of the
test_*.py files beside it (EXPR: as pytest's -k, substrings with and / or / not).

Dry run on the CPU: ``CLR_EXT_CUDA_TESTS_DEVICE=cpu`` runs every test that needs no
CUDA-only API (sync debug mode, profiler, graphs, 16 GiB tensors) on CPU tensors with
CyclicSGD forced onto the device-decided path the CUDA step takes. CI runs it so that
these files' own code, references and tolerances are known to work before a GPU is lent
(GPU time is short); on the CPU it proves nothing about the CUDA kernel, so the long
parity products run one representative case per value of each axis there
(``dry_run_sample``), and the whole product on a GPU.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import unittest
from typing import List, Optional, Sequence

import torch
import torch._dynamo.testing

import clr_ext
from clr_ext import backends as _backends
from clr_ext import schedules as S
from clr_ext.schedule import MODES

try:
    import pytest

    parametrize = pytest.mark.parametrize
except ImportError:  # pragma: no cover - the fallback runner at the bottom is used then
    pytest = None

    def parametrize(names, values, ids=None):
        def deco(fn):
            fn.__dict__.setdefault("_clr_params", []).insert(0, (names, list(values)))
            return fn

        return deco


# tests/ (the support package, as pyproject's pytest pythonpath gives it, also without
# pytest) and bench/model_shapes.py (ResNet-50's parameter shapes)
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_TESTS, os.path.join(os.path.dirname(_TESTS), "bench")]

REQUIRE = os.environ.get("CLR_EXT_REQUIRE_CUDA", "").strip() in ("1", "true", "yes")
DEVICE = os.environ.get("CLR_EXT_CUDA_TESTS_DEVICE", "cuda").strip() or "cuda"
DRY_RUN = DEVICE != "cuda"
#: the backend CyclicSGD is asked for: the CPU's fastest in a dry run
BACKEND = "cuda" if not DRY_RUN else "cpp"
_C = _backends._C
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}

#: Relative error (to the largest reference magnitude) allowed against torch: api.md's
#: contract for fp32 / fp64 over 1,000 steps (torch's fused SGD); a few units in the last
#: place of their own precision for the half types, against an fp32 run rounded once per
#: step (HalfViaFp32Pair, as tests/conftest.py): the reference may contract multiply-adds,
#: ours does not, so a value can land on the other side of a half rounding boundary.
RTOL_TORCH = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 4 * 2.0**-10, torch.bfloat16: 4 * 2.0**-7}
#: Against the CPU op: the same arithmetic in the same order (--fmad=false,
#: -ffp-contract=off), so only the device pow() (exp_range, exp, triangular2) may differ
#: in the last bit of the lr.
RTOL_CPU = {torch.float32: 1e-6, torch.float64: 1e-13, torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7}


def skip(reason: str, hard: bool = False):
    """Skips the test. ``hard``: a missing CUDA build or GPU, which fails instead under
    CLR_EXT_REQUIRE_CUDA=1; other reasons (memory, profiler) always skip."""
    if REQUIRE and hard:
        raise AssertionError("CLR_EXT_REQUIRE_CUDA=1 but " + reason)
    if pytest is not None:
        pytest.skip(reason)
    raise unittest.SkipTest(reason)


def need_cuda_build():
    if _C is None:
        skip("clr_ext._C is not built", hard=True)
    if not getattr(_C, "with_cuda", False):
        skip("clr_ext._C was built without CUDA", hard=True)


def need_gpu():
    """The test runs on DEVICE: a GPU, or the CPU in a dry run."""
    if DRY_RUN:
        if _C is None:
            skip("clr_ext._C is not built")
        return
    need_real_gpu()


def need_real_gpu():
    """The test uses CUDA-only APIs: skipped in a dry run."""
    if DRY_RUN:
        skip("uses CUDA-only APIs (dry run on %s)" % DEVICE)
    need_cuda_build()
    if not torch.cuda.is_available():
        skip("no CUDA device", hard=True)


def synchronize():
    if not DRY_RUN:
        torch.cuda.synchronize()


def cyclic_sgd(*args, **kwargs) -> clr_ext.CyclicSGD:
    """CyclicSGD as the tests use it on CUDA; in a dry run, forced onto the path a CUDA
    step takes (first momentum steps decided by the op, not the host)."""
    opt = clr_ext.CyclicSGD(*args, **kwargs)
    if DRY_RUN:
        opt._host_decided_types = ()
    return opt


def rel_err(actual: torch.Tensor, expected: torch.Tensor, scale: Optional[float] = None) -> float:
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    assert torch.isfinite(a).all(), "non-finite values in the result"
    if scale is None:
        scale = float(e.abs().max())
    return float((a - e).abs().max()) / max(scale, 1e-30)


def assert_close_rel(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], rtol: float, what: str):
    assert len(actual) == len(expected)
    scale = max([float(e.detach().double().abs().max()) for e in expected if e.numel()] + [1e-30])
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, (what, i, a.shape, e.shape, a.dtype, e.dtype)
        err = rel_err(a, e, scale)
        assert err <= rtol, "%s %d (%s, shape %s): relative error %.3g > %.3g" % (
            what,
            i,
            a.dtype,
            tuple(a.shape),
            err,
            rtol,
        )


def dry_run_sample(**axes):
    """In a dry run, skips every case of a parametrised product but a sample that takes each
    value of each axis at least once (case i takes value i mod n of an axis of n values);
    on a GPU, the whole product runs. ``axes``: name=(value, all values of that axis)."""
    if not DRY_RUN:
        return
    positions = {name: (list(values).index(value), len(values)) for name, (value, values) in axes.items()}
    width = max(n for _, n in positions.values())
    if not any(all(p == i % n for p, n in positions.values()) for i in range(width)):
        skip("dry run: a sample of the product runs on the CPU (%s), the whole of it on a GPU" % ", ".join(axes))


def layout_zoo(dtype, gen, device):
    """(param, grad, buffer) triples covering the kernel's paths: vector body + tails,
    chunk boundaries, misaligned starts (scalar path), a layout shared by all three
    (channels_last: walked as raw memory), layouts that differ (staged through copies),
    a non-dense view (staged), and an empty tensor. The same generator state gives the
    same values on every device."""

    def make(shape, layout=None):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
        return layout(t) if layout is not None else t

    def same(shape, layout=None):
        return tuple(make(shape, layout) for _ in range(3))

    triples = [same((n,)) for n in (1, 3, 7, 8, 1000, 4097, 65536 + 13, 3 * 65536 + 5)]
    triples.append(same((4100,), lambda t: t[1:]))  # storage offset 1: misaligned
    triples.append(same((4, 6, 5, 3), lambda t: t.contiguous(memory_format=torch.channels_last)))
    triples.append((make((33, 64), lambda t: t.t()), make((64, 33)), make((64, 33))))  # strides differ
    triples.append((make((40, 70), lambda t: t[:, ::2]), make((40, 35)), make((40, 35))))  # not dense
    triples.append(same((0,)))
    return triples


def make_problem(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [[(3,), (1031,), (70001,)], [(17, 5), (8,)]]
    init = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in g] for g in shapes]
    targets = [torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE) for g in shapes for s in g]
    return init, targets


def grads_towards_targets(mine, ref, targets, noise, dtype, pull, drop_first=False):
    """Sets the grads of ``mine`` to ``pull * (param - target)`` plus noise and returns those
    of ``ref``'s params with the same noise, for the reference's step. ``drop_first``: the
    first param gets no gradient this step (None on both sides, and no noise drawn)."""
    ref_grads = []
    for i, (pm, pr, tgt) in enumerate(zip(mine, ref, targets)):
        if i == 0 and drop_first:
            pm.grad = None
            ref_grads.append(None)
            continue
        n = 0.1 * torch.randn(tgt.shape, generator=noise, device=DEVICE, dtype=torch.float64)
        pm.grad = (pull * (pm.detach().double() - tgt) + n).to(dtype)
        ref_grads.append((pull * (pr.detach().double() - tgt) + n).to(dtype))
    return ref_grads


def on_device(dtype, sizes, gen, make=torch.randn):
    """One tensor per size on DEVICE, drawn on the CPU from ``gen`` (the same values on
    every device) and rounded to ``dtype``."""
    return [make(n, generator=gen).to(dtype).to(DEVICE) for n in sizes]


def amp_inputs(scale, device):
    """The op's grad_scale and found_inf (0: the step applies) for grads scaled by
    ``scale``; None for both without a scale."""
    if scale is None:
        return None, None
    return torch.tensor(scale, device=device), torch.zeros((), device=device)


def op_schedule(cfg, bounds, shape, min_lr):
    """Takes the schedule out of an op test's config: the mode's number, the bounds and the
    shape; a 1cycle mode's config carries the phase ends in place of the shape, and min_lr
    comes as a fifth bound."""
    mode = cfg.pop("mode")
    mode_number = MODES[mode] if isinstance(mode, str) else mode
    if "one_cycle" in cfg:
        return mode_number, bounds + [min_lr], cfg.pop("one_cycle")
    return mode_number, bounds, shape


#: Per rule: its op, and the tensors one launch of its kernel takes with a CUDA 13 toolkit's
#: 32 KB of kernel parameters or older ones' 4 KB (csrc/cuda/multi_tensor.cuh).
KERNELS = {
    "sgd": ("cyclic_sgd_", "cuda_max_tensors_per_launch", (720, 69)),
    "adamw": ("cyclic_adamw_", "cuda_adamw_max_tensors_per_launch", (528, 50)),
}


def sizes_spanning_launches(rule, gen, smallest):
    """The sizes of two launches' worth of the rule's tensors and three more (a CUDA 13
    build's table in a dry run), one of them of several blocks."""
    _, per_launch, expected = KERNELS[rule]
    n = 2 * (getattr(_C, per_launch)() if not DRY_RUN else expected[0]) + 3
    sizes = [int(s) for s in torch.randint(smallest, 300, (n,), generator=gen)]
    sizes[n // 2] = 65536 * 2 + 1
    return sizes


class TorchFusedPair:
    """torch.optim.SGD(fused=True) + CyclicLR / OneCycleLR on copies of ``groups`` (lists of
    tensors), with the interface of tests/conftest.py's ReferencePair (which imports pytest,
    which the GPU machine may lack). A subclass names another torch optimizer (AdamW) and
    the per-param state it keeps."""

    optimizer = torch.optim.SGD
    state_keys = ("momentum_buffer",)

    def __init__(self, groups, opt_kwargs, sched_kwargs, scheduler=torch.optim.lr_scheduler.CyclicLR):
        self._groups = [[t.detach().clone().requires_grad_() for t in g] for g in groups]
        self.params = [p for g in self._groups for p in g]
        self.opt = self.optimizer([{"params": g} for g in self._groups], lr=0.01, fused=True, **opt_kwargs)
        self.sched = scheduler(self.opt, **sched_kwargs)
        self.last = False  # OneCycleLR raises on a step past its end: set before the last step

    def step(self, grads):
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.step()
        if not self.last:
            self.sched.step()

    def last_lr(self):
        return self.sched.get_last_lr()

    def group_momentum(self, gi):
        return self.opt.param_groups[gi]["momentum"]

    def state(self, i, key):
        return self.opt.state.get(self.params[i], {}).get(key)

    def buffer(self, i):
        return self.state(i, "momentum_buffer")


class HalfViaFp32Pair(TorchFusedPair):
    """The float16 / bfloat16 reference: torch's optimizer + scheduler run in float32 on
    shadows loaded from the half values, params and state (momentum buffers; moments)
    rounded to the half type once per step (one fp32 computation, one rounding per element
    and step, as a fused kernel, ours included, stores them; AdamW's parameter update uses
    the unrounded moments, as the fused kernels do). tests/conftest.py's ReferencePair does
    the same for the CPU suite; this copy needs no pytest.

    Not torch's CUDA fused SGD: that kernel computes with double scalars and contracted
    multiply-adds, so a value can round to the other half-precision neighbour, and the
    gradient feeds the difference back over 1,000 steps: a tolerance set on the CPU
    references would fail the one GPU run for no fault of either kernel (issue 15)."""

    def __init__(self, groups, opt_kwargs, sched_kwargs, scheduler=torch.optim.lr_scheduler.CyclicLR):
        self.params = [t.detach().clone() for g in groups for t in g]
        self._shadow_groups = [[t.detach().float().requires_grad_() for t in g] for g in groups]
        self._shadows = [c for g in self._shadow_groups for c in g]
        self.opt = self.optimizer([{"params": g} for g in self._shadow_groups], lr=0.01, **opt_kwargs)
        self.sched = scheduler(self.opt, **sched_kwargs)
        self.last = False

    def step(self, grads):
        for p, c, g in zip(self.params, self._shadows, grads):
            c.data.copy_(p)  # exact: every half value is a float32 value
            c.grad = None if g is None else g.detach().float()
        self.opt.step()
        if not self.last:
            self.sched.step()
        for p, c in zip(self.params, self._shadows):
            p.copy_(c.detach())  # the one rounding per step
            for key in self.state_keys:
                t = self.opt.state.get(c, {}).get(key)
                if t is not None:
                    t.copy_(t.to(p.dtype).float())

    def state(self, i, key):
        value = self.opt.state.get(self._shadows[i], {}).get(key)
        if isinstance(value, torch.Tensor) and key != "step":
            value = value.to(self.params[i].dtype)
        return value


def replay_captured_step(opt, replays):
    """Captures ``opt.step()`` in a CUDA graph, replays it ``replays`` times and returns
    ``opt.sync()``: the device counter brought to the host."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(replays):
        graph.replay()
    return opt.sync()


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(
        device=DEVICE, dtype=dtype
    )


def resnet50_shapes_small():
    """ResNet-50's 161 parameter shapes, with channel counts divided by 8 (fast to allocate)."""
    from model_shapes import resnet50_param_shapes

    return [tuple(max(1, d // 8) if i < 2 else d for i, d in enumerate(s)) for s in resnet50_param_shapes()]


def schedule_chain(kw):
    """A warmup, the cycle of ``kw`` and SGDR: a schedule value of three segments."""
    cyclic = {key: kw[key] for key in ("step_size_up", "step_size_down", "mode") if key in kw}
    segments = [S.Linear(0.1, 1.0, 4), S.Cyclic(kw["base_lr"], kw["max_lr"], **cyclic), S.CosineRestarts(5, 2)]
    return S.Sequential(segments, [4, 20])


# ---------------------------------------------------------------- fallback runner


def _cases(fn):
    spec = getattr(fn, "_clr_params", None)
    if pytest is not None:
        spec = []
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                spec.insert(0, (mark.args[0], list(mark.args[1])))
    if not spec:
        yield "", {}
        return
    axes = []
    for names, values in spec:
        names = [s.strip() for s in names.split(",")]
        axes.append([dict(zip(names, v if len(names) > 1 else (v,))) for v in values])
    for combo in itertools.product(*axes):
        kwargs = {}
        for part in combo:
            kwargs.update(part)
        # pytest's ids for dtypes (f32, bf16, ...), so that the same -k expressions select alike
        yield (
            "["
            + "-".join(DTYPE_IDS.get(v, str(v)) if isinstance(v, torch.dtype) else str(v) for v in kwargs.values())
            + "]",
            kwargs,
        )


def _k_matcher(expr: str):
    """pytest's -k for the runner below: substrings joined by and / or / not, in parentheses."""
    if not expr.strip():
        return lambda label: True
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    code = " ".join(t if t in ("(", ")", "and", "or", "not") else "(%r in label)" % t for t in tokens)
    compiled = compile(code, "<-k>", "eval")
    return lambda label: bool(eval(compiled, {}, {"label": label}))


def main(argv: List[str]) -> int:
    """Runs the test functions of every test_*.py file beside this one, each case of each
    (pytest's ids, so that -k expressions select alike), and prints a pytest-like summary."""
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    modules = [importlib.import_module(f[:-3]) for f in sorted(os.listdir(here)) if re.match(r"test_.*\.py$", f)]
    matches = _k_matcher(argv[argv.index("-k") + 1] if "-k" in argv else "")
    passed = failed = skipped = 0
    for module in modules:
        for name, fn in list(vars(module).items()):
            if not name.startswith("test_") or not callable(fn):
                continue
            for suffix, kwargs in _cases(fn):
                label = name + suffix
                if not matches(label):
                    continue
                try:
                    torch.manual_seed(1234)
                    fn(**kwargs)
                except unittest.SkipTest as e:
                    skipped += 1
                    print("SKIP", label, "-", e)
                except BaseException as e:  # noqa: BLE001
                    if type(e).__name__ == "Skipped":  # pytest.skip
                        skipped += 1
                        print("SKIP", label, "-", e)
                        continue
                    failed += 1
                    import traceback

                    print("FAIL", label)
                    traceback.print_exc()
                else:
                    passed += 1
                    print("ok  ", label, flush=True)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
