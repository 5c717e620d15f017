"""Which compiled backends exist, and choosing one per device.

A backend runs one op call over a *bucket*: parameters that share a device, a dtype
and a param group. Every backend takes the same three records, ``run(tensors, hyper,
inputs)`` (``clr_ext.optim.records``; ``hyper``'s type names the rule), and evaluates the
same schedule (``csrc/math/schedule.h``; the Python backends use the Python reference through
``clr_ext.optim.schedules.op_point``) and the same updates (``csrc/*_update.h``).

- ``cuda``: the CUDA kernel of ``clr_ext._C`` (CUDA tensors; no host sync).
- ``cpp``: the C++ kernel of ``clr_ext._C`` (CPU tensors).
- ``cython``: the Cython fallback ``clr_ext._cython._cpu`` (CPU tensors).
- ``torch``: PyTorch foreach ops (any device; slow, host-side schedule).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import _ops

# (before the optim package is imported, whose step functions bind _C's entries at import)
try:  # the compiled core; importing it registers torch.ops.clr_ext.*
    from . import _C  # type: ignore[attr-defined]
except ImportError as _err:  # pragma: no cover - exercised where nothing was built
    _C = None
    _C_ERROR: Optional[str] = str(_err)
else:
    _C_ERROR = None

from .optim.records import (  # noqa: E402
    AdamwHyper,
    AdamwTensors,
    SgdHyper,
    SgdTensors,
    StepInputs,
    from_op_args,
    op_args,
    python_op_schema,
    written,
)
from .optim.schedules import op_point  # noqa: E402

BACKEND_NAMES = ("cuda", "cpp", "cython", "torch")
ENV_VAR = "CLR_EXT_BACKEND"

_BUILD_HINT = (
    "build clr_ext from source against the installed torch: "
    "pip install --no-build-isolation -e .  (needs a C++ compiler and Cython; "
    "for 'cuda' also a CUDA toolkit and a CUDA build of torch, see README 'Building')"
)

try:
    from ._cython import _cpu as _cython_cpu  # type: ignore[attr-defined]
except ImportError as _err:  # pragma: no cover
    _cython_cpu = None
    _CYTHON_ERROR: Optional[str] = str(_err)
else:
    _CYTHON_ERROR = None

if _C is not None:
    _ops.register_compiled_op_fakes()

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
SUPPORTED_DTYPES = tuple(_DTYPE_CODES)


def _cuda_built() -> bool:
    return _C is not None and bool(getattr(_C, "with_cuda", False))


def available_backends() -> List[str]:
    """The backends built into this install, fastest first (``"torch"`` is always there)."""
    names = []
    if _cuda_built():
        names.append("cuda")
    if _C is not None:
        names.append("cpp")
    if _cython_cpu is not None:
        names.append("cython")
    names.append("torch")
    return names


def fused_adamw_width(dtype: torch.dtype) -> int:
    """The period of ``torch.optim.AdamW(fused=True)``'s rounding along a tensor of
    ``dtype`` on the CPU: its last ``numel % width`` elements are updated by scalar code
    that contracts the second moment otherwise (csrc/math/adamw_update.h). ATen's vector loop
    takes 64-byte vectors under AVX-512 and GCC vectorizes the remainder loop 32 bytes at a
    time, so scalar code sees ``numel % (32 / itemsize)`` elements, measured element by
    element for every dtype on torch 2.13's x86-64 wheel; with AVX2 (32-byte vectors, a
    remainder too short to vectorize) the count is the same."""
    return 32 // dtype.itemsize


def _why_missing(name: str) -> str:
    if name == "cuda":
        if _C is None:
            return "clr_ext._C failed to import (%s)" % _C_ERROR
        return "clr_ext._C was built without CUDA"
    if name == "cpp":
        return "clr_ext._C failed to import (%s)" % _C_ERROR
    return "clr_ext._cython._cpu failed to import (%s)" % _CYTHON_ERROR


def check_backend_name(backend: str) -> str:
    """Validates a ``backend=`` argument (ValueError for an unknown name, RuntimeError
    for a known one that this install lacks). Returns the name."""
    if not isinstance(backend, str) or backend not in BACKEND_NAMES + ("auto",):
        raise ValueError("backend: must be one of %s, got %r" % (", ".join(("auto",) + BACKEND_NAMES), backend))
    if backend != "auto" and backend not in available_backends():
        raise RuntimeError(
            "backend=%r is not built in this install: %s; %s" % (backend, _why_missing(backend), _BUILD_HINT)
        )
    return backend


def requested_backend(backend: str) -> str:
    """The name in effect: ``CLR_EXT_BACKEND`` overrides ``"auto"`` for the whole process."""
    check_backend_name(backend)
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env != "auto":
            if env not in BACKEND_NAMES:
                raise ValueError("%s: must be one of %s, got %r" % (ENV_VAR, ", ".join(BACKEND_NAMES), env))
            check_backend_name(env)
            return env
    return backend


_warned_torch_fallback = False


def _warn_torch_fallback(device: torch.device) -> None:
    global _warned_torch_fallback
    if not _warned_torch_fallback:
        _warned_torch_fallback = True
        warnings.warn(
            "clr_ext: no compiled backend for %s tensors in this install; using the slow "
            "pure-PyTorch backend. To get the fused kernel, %s" % (device.type, _BUILD_HINT),
            RuntimeWarning,
            stacklevel=4,
        )


class Backend:
    """Runs one op call: a bucket's ``tensors``, the rule's ``hyper`` (its record names
    the rule), this step's ``inputs`` (``clr_ext.optim.records``)."""

    name = "?"
    device_types: tuple = ()
    #: The op checks every tensor before it writes any (one bucket needs no pre-check).
    checks_before_writing = False
    #: Its writes are PyTorch in-place ops, which bump the version counters themselves.
    bumps_versions = False

    def run(self, tensors: Tuple[Any, ...], hyper: Any, inputs: StepInputs) -> None:
        """Updates the params and state of ``tensors`` in place (and the grads when
        unscaling). ``inputs.iteration`` is None in a step traced by torch.compile: the
        op reads the counter then."""
        raise NotImplementedError


class _CompiledOpBackend(Backend):
    """The ops of clr_ext._C: through the dispatcher under torch.compile (so that they are
    traced and functionalized), straight into the device's kernel in eager mode (the
    dispatcher's boxing costs ~1 us per tensor)."""

    device = ""
    checks_before_writing = True
    # The eager entries bypass the dispatcher (and its ADInplaceOrView kernel): the step
    # bumps the counters in Python (~0.1 us a tensor) unless the entries say they do it.
    bumps_versions = bool(getattr(_C, "bumps_versions", False))

    def run(self, tensors, hyper, inputs):
        traced = inputs.iteration is None
        op = getattr(torch.ops.clr_ext, hyper.op + "_") if traced else getattr(_C, f"{hyper.op}_{self.device}_")
        op(*op_args(tensors, hyper, inputs))


class CppBackend(_CompiledOpBackend):
    name = "cpp"
    device_types = ("cpu",)
    device = "cpu"


class CudaBackend(_CompiledOpBackend):
    name = "cuda"
    device_types = ("cuda",)
    device = "cuda"


def check(tensors: Tuple[Any, ...], hyper: Any) -> None:
    """The op's own tensor checks (``_C``), without running it."""
    if isinstance(hyper, SgdHyper):
        _C.check_bucket(*tensors)
    else:
        _C.check_adamw_bucket(*tensors, hyper.amsgrad)


class _PythonBackend(Backend):
    """A backend whose step is Python code: eager steps call it directly, traced steps
    through an opaque op (``python_op`` of the rule's record): dynamo cannot trace into a
    Cython function, and the torch backend's host-side schedule would make it re-trace at
    every step; as an op both run as in eager mode, the iteration read from the counter."""

    def run(self, tensors, hyper, inputs):
        if inputs.iteration is None:
            getattr(torch.ops.clr_ext, hyper.python_op)(self.name, *op_args(tensors, hyper, inputs))
        elif inputs.found_inf is None or float(inputs.found_inf) == 0:
            # (GradScaler passes the sum of the devices' flags: any non-zero skips)
            getattr(self, hyper.op)(tensors, hyper, inputs)

    def cyclic_sgd(self, tensors: SgdTensors, hyper: SgdHyper, inputs: StepInputs) -> None:
        """``sgd``, with the op's ``momentum_start`` semantics when the starts are given:
        the buffers that start in this step and those that continue run as two calls."""
        starts, iteration = tensors.momentum_start, inputs.iteration
        if not starts:
            return self.sgd(tensors, hyper, inputs)
        cycled = op_point(iteration, hyper.bounds, hyper.shape, hyper.schedule_mode)[1]
        if (cycled if hyper.cycle_momentum else hyper.momentum) == 0:  # no buffer is touched
            return self.sgd(tensors, hyper, inputs)
        packed = starts[0].view(-1) if len(starts) == 1 else None  # one element per param
        started = packed.tolist() if packed is not None else [int(s) for s in starts]
        for first in (False, True):
            index = [i for i, value in enumerate(started) if (value >= iteration) == first]
            if index:
                part = SgdTensors(*([t[i] for i in index] for t in tensors[:3]), [])
                self.sgd(part, hyper._replace(first_step=first), inputs)
        for i, value in enumerate(started):
            if value > iteration:
                (packed[i] if packed is not None else starts[i]).fill_(iteration)

    def sgd(self, tensors: SgdTensors, hyper: SgdHyper, inputs: StepInputs) -> None:
        raise NotImplementedError

    def cyclic_adamw(self, tensors: AdamwTensors, hyper: AdamwHyper, inputs: StepInputs) -> None:
        raise NotImplementedError


def _python_backend_op(hyper_type: Any) -> Callable[..., None]:
    def run_op(backend: str, *args: Any) -> None:
        tensors, hyper, inputs = from_op_args(hyper_type, args)
        runner = _instance(backend)
        runner.run(tensors, hyper, inputs)
        if not runner.bumps_versions:
            torch._C._increment_version(written(tensors, inputs))

    return run_op


for _hyper_type in (SgdHyper, AdamwHyper):
    _ops.define(python_op_schema(_hyper_type), _python_backend_op(_hyper_type))


def _contiguous(lists: List[List[torch.Tensor]]) -> Tuple[List[List[torch.Tensor]], List[int]]:
    """The Cython kernels walk raw memory: ``lists`` (params, grads, state; empty lists
    allowed) with each index where a tensor is not contiguous replaced by contiguous
    copies, and those indices (for ``_copy_back``)."""
    staged = [i for i in range(len(lists[0])) if not all(t[i].is_contiguous() for t in lists if t)]
    if not staged:
        return lists, staged
    dense = [list(t) for t in lists]
    for i in staged:
        for t in dense:
            if t:
                t[i] = t[i].contiguous()
    return dense, staged


def _copy_back(lists: List[List[torch.Tensor]], dense: List[List[torch.Tensor]], staged: List[int]) -> None:
    for i in staged:
        for original, copy in zip(lists, dense):
            if original and copy[i] is not original[i]:
                original[i].copy_(copy[i])


class CythonBackend(_PythonBackend):
    name = "cython"
    device_types = ("cpu",)

    def sgd(self, tensors, hyper, inputs):
        lists = list(tensors[:3])
        dense, staged = _contiguous(lists)
        # The Cython entry takes the op's arguments less momentum_start and found_inf (the
        # step is not run on overflow), the scale as a float, and a thread count.
        args = op_args(SgdTensors(*dense, []), hyper, inputs)[:-1]  # (lr_scale: a keyword)
        scale = None if inputs.grad_scale is None else float(inputs.grad_scale)
        code = _DTYPE_CODES[tensors.params[0].dtype]
        threads = torch.get_num_threads()
        _cython_cpu.cyclic_sgd_(code, *args[:3], *args[4:-2], scale, threads, lr_scale=inputs.lr_scale)
        _copy_back(lists, dense, staged)

    def cyclic_adamw(self, tensors, hyper, inputs):
        lists = list(tensors[:5])
        dense, staged = _contiguous(lists)
        args = op_args((*dense, list(tensors.state_steps)), hyper, inputs)[:-1]  # (lr_scale: a keyword)
        code = _DTYPE_CODES[tensors.params[0].dtype]
        threads = torch.get_num_threads()
        _cython_cpu.cyclic_adamw_(code, *args[:-1], threads, args[-1], lr_scale=inputs.lr_scale)
        _copy_back(lists, dense, staged)


class TorchBackend(_PythonBackend):
    """PyTorch foreach ops: the slow, portable path. The schedule is the Python
    reference evaluated at the host iteration; half precision is computed in float32
    and rounded once per step, like the fused kernels."""

    name = "torch"
    device_types = ("cpu", "cuda")
    bumps_versions = True

    def sgd(self, tensors, hyper, inputs):
        params, grads, buffers = tensors[:3]
        grad_scale = inputs.grad_scale
        lr, cycled = op_point(inputs.iteration, hyper.bounds, hyper.shape, hyper.schedule_mode)
        if inputs.lr_scale is not None:  # (as the kernels: the schedule's LR times the scale, in double)
            lr = lr * float(inputs.lr_scale)
        mom = cycled if hyper.cycle_momentum else hyper.momentum
        use_buffers = bool(buffers) and mom != 0

        low_precision = params[0].dtype in (torch.float16, torch.bfloat16)
        if low_precision:
            p_c = [p.float() for p in params]
            g_c = [g.float() for g in grads]
            b_c = [b.float() for b in buffers] if use_buffers else []
        else:
            p_c, g_c, b_c = list(params), list(grads), list(buffers) if use_buffers else []

        if grad_scale is not None:
            g_c = torch._foreach_div(g_c, grad_scale.to(g_c[0].dtype).item())
            for g, gc in zip(grads, g_c):
                g.copy_(gc)
        g_c = torch._foreach_neg(g_c) if hyper.maximize else list(g_c)
        if hyper.weight_decay != 0:
            g_c = torch._foreach_add(g_c, p_c, alpha=hyper.weight_decay)
        if use_buffers:
            if hyper.first_step:
                for b, g in zip(b_c, g_c):
                    b.copy_(g)
            else:
                torch._foreach_mul_(b_c, mom)
                torch._foreach_add_(b_c, g_c, alpha=1 - hyper.dampening)
            g_c = torch._foreach_add(g_c, b_c, alpha=mom) if hyper.nesterov else b_c
        torch._foreach_add_(p_c, g_c, alpha=-lr)

        if low_precision:
            for p, pc in zip(params, p_c):
                p.copy_(pc)
            for b, bc in zip(buffers if use_buffers else [], b_c):
                b.copy_(bc)

    def cyclic_adamw(self, tensors, hyper, inputs):
        """torch.optim.AdamW's single-tensor step, op for op (so fp32/fp64 round as it
        does); half precision runs on float32 copies rounded once per step. With
        ``fused_width``, torch.optim.AdamW(fused=True)'s own kernel."""
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps = tensors
        beta2, eps, weight_decay, amsgrad = hyper.beta2, hyper.eps, hyper.weight_decay, hyper.amsgrad
        grad_scale = inputs.grad_scale
        lr, cycled = op_point(inputs.iteration, hyper.bounds, hyper.shape, hyper.schedule_mode)
        if inputs.lr_scale is not None:  # (as the kernels: the schedule's LR times the scale, in double)
            lr = lr * float(inputs.lr_scale)
        beta1 = cycled if hyper.cycle_momentum else hyper.beta1
        if hyper.fused_width:
            torch._foreach_add_(state_steps, 1)  # as torch.optim.AdamW does before its fused kernel
            torch._fused_adamw_(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs if amsgrad else [],
                state_steps,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=weight_decay,
                eps=eps,
                amsgrad=amsgrad,
                maximize=hyper.maximize,
                grad_scale=grad_scale,
            )
            return
        for i, param in enumerate(params):
            grad = grads[i]
            if grad_scale is not None:
                grad.div_(grad_scale.to(grad.dtype))
            low = param.dtype in (torch.float16, torch.bfloat16)
            p, g, m, v = (
                (t.float() for t in (param, grad, exp_avgs[i], exp_avg_sqs[i]))
                if low
                else (param, grad, exp_avgs[i], exp_avg_sqs[i])
            )
            vmax = (max_exp_avg_sqs[i].float() if low else max_exp_avg_sqs[i]) if amsgrad else None
            if hyper.maximize:
                g = -g
            step_t = state_steps[i]
            step_t += 1
            if weight_decay != 0:
                p.mul_(1 - lr * weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step = float(step_t)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            if amsgrad:
                torch.maximum(vmax, v, out=vmax)
                denom = (vmax.sqrt() / bias_correction2_sqrt).add_(eps)
            else:
                denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
            p.addcdiv_(m, denom, value=-step_size)
            if low:
                for original, computed in zip((param, exp_avgs[i], exp_avg_sqs[i]), (p, m, v)):
                    original.copy_(computed)
                if amsgrad:
                    max_exp_avg_sqs[i].copy_(vmax)


_INSTANCES: Dict[str, Backend] = {}


def _instance(name: str) -> Backend:
    if name not in _INSTANCES:
        _INSTANCES[name] = {"cuda": CudaBackend, "cpp": CppBackend, "cython": CythonBackend, "torch": TorchBackend}[
            name
        ]()
    return _INSTANCES[name]


def backend_for(requested: str, device: torch.device) -> Backend:
    """The backend that runs ``device``'s buckets for a ``requested`` name.

    ``"auto"`` takes the fastest built one for the device. A named backend runs the
    devices it supports; other devices (e.g. CUDA tensors with ``backend="cpp"``)
    get the automatic choice for their device.
    """
    built = available_backends()
    if requested != "auto" and device.type in _instance(requested).device_types:
        return _instance(requested)
    if device.type == "cuda":
        order = ("cuda", "torch")
    elif device.type == "cpu":
        order = ("cpp", "cython", "torch")
    else:
        order = ("torch",)
    for name in order:
        if name in built:
            if name == "torch":
                _warn_torch_fallback(device)
            return _instance(name)
    raise RuntimeError("clr_ext: no backend for %s tensors" % device.type)  # pragma: no cover
