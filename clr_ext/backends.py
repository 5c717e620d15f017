"""Which compiled backends exist, and choosing one per device.

A backend runs one optimizer step over a *bucket*: parameters that share a
device, a dtype and a param group. Every backend takes the same arguments and
evaluates the same schedule (``csrc/schedule.h``; the pure-torch backend uses the
Python reference ``clr_ext.schedule``) and the same update (``csrc/sgd_update.h``).

- ``cuda``: the CUDA kernel of ``clr_ext._C`` (CUDA tensors; no host sync).
- ``cpp``: the C++ kernel of ``clr_ext._C`` (CPU tensors).
- ``cython``: the Cython fallback ``clr_ext._cython._cpu`` (CPU tensors).
- ``torch``: PyTorch foreach ops (any device; slow, host-side schedule).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from . import _ops
from . import schedule as _schedule

BACKEND_NAMES = ("cuda", "cpp", "cython", "torch")
ENV_VAR = "CLR_EXT_BACKEND"

_BUILD_HINT = (
    "build clr_ext from source against the installed torch: "
    "pip install --no-build-isolation -e .  (needs a C++ compiler and Cython; "
    "for 'cuda' also a CUDA toolkit and a CUDA build of torch, see README 'Building')"
)

try:  # the compiled core; importing it registers torch.ops.clr_ext.*
    from . import _C  # type: ignore[attr-defined]
except ImportError as _err:  # pragma: no cover - exercised where nothing was built
    _C = None
    _C_ERROR: Optional[str] = str(_err)
else:
    _C_ERROR = None

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
    that contracts the second moment otherwise (csrc/adamw_update.h). ATen's vector loop
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


def schedule_point(iteration: int, bounds: List[float], shape: List[float], mode: int) -> Tuple[float, float]:
    """(lr, cycled momentum) of a step, from the op's arguments, by the Python reference."""
    if mode in _schedule.ONE_CYCLE_MODES.values():
        strategy = next(k for k, v in _schedule.ONE_CYCLE_MODES.items() if v == mode)
        ends = tuple(shape[: int(shape[3])])
        return _schedule.one_cycle_point(
            iteration, bounds[0], bounds[1], bounds[4], ends, strategy, bounds[2], bounds[3]
        )
    if mode == _schedule.CUSTOM_MODE:
        return _schedule.cyclic_point(
            iteration,
            bounds[0],
            bounds[1],
            shape[0],
            shape[1],
            "triangular",
            shape[2],
            bounds[2],
            bounds[3],
            scale_fn=lambda _x: shape[3],
            scale_mode="cycle",
        )
    mode_name = next(k for k, v in _schedule.MODES.items() if v == mode)
    return _schedule.cyclic_point(
        iteration, bounds[0], bounds[1], shape[0], shape[1], mode_name, shape[2], bounds[2], bounds[3]
    )


class Backend:
    """Runs one step of the cyclical SGD over one bucket (see ``run``)."""

    name = "?"
    device_types: tuple = ()

    def run(
        self,
        *,
        params: List[torch.Tensor],
        grads: List[torch.Tensor],
        buffers: List[torch.Tensor],
        starts: List[torch.Tensor],
        counter: torch.Tensor,
        iteration: int,
        bounds: List[float],
        shape: List[float],
        mode: int,
        momentum: float,
        dampening: float,
        weight_decay: float,
        nesterov: bool,
        maximize: bool,
        cycle_momentum: bool,
        first_step: bool,
        grad_scale: Optional[torch.Tensor],
        found_inf: Optional[torch.Tensor],
    ) -> None:
        """Updates ``params`` (and ``buffers``, and ``grads`` when unscaling) in place.

        ``counter`` is the device-side iteration (int64, on the bucket's device) and
        ``iteration`` its host mirror (None in a step traced by torch.compile: read
        the counter then); compiled backends read the former. ``buffers``
        is empty when the group has no momentum. ``first_step`` means the buffers are
        new: they receive the gradient itself, as torch.optim.SGD's do. ``starts``, when
        not empty, replaces ``first_step`` param by param: the op's ``momentum_start``
        (csrc/cyclic_sgd.h), for steps whose overflow flag or momentum the host cannot read.
        """
        raise NotImplementedError

    def adamw(
        self,
        *,
        params: List[torch.Tensor],
        grads: List[torch.Tensor],
        exp_avgs: List[torch.Tensor],
        exp_avg_sqs: List[torch.Tensor],
        max_exp_avg_sqs: List[torch.Tensor],
        state_steps: List[torch.Tensor],
        counter: torch.Tensor,
        iteration: Optional[int],
        bounds: List[float],
        shape: List[float],
        schedule_mode: int,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        amsgrad: bool,
        maximize: bool,
        cycle_momentum: bool,
        grad_scale: Optional[torch.Tensor],
        found_inf: Optional[torch.Tensor],
        fused_width: int,
    ) -> None:
        """One AdamW step (torch.optim.AdamW's) over a bucket, with this iteration's lr
        and, when cycling, beta1 from the schedule; ``state_steps`` (float32, one per
        param) count each param's own steps and are advanced unless the step is skipped
        (``found_inf``), which changes nothing at all. ``fused_width`` > 0 rounds as
        ``torch.optim.AdamW(fused=True)`` does on the CPU (:func:`fused_adamw_width`); 0
        as its default path. Same conventions as ``run``."""
        raise NotImplementedError


#: The AdamW op's arguments after the backend name, in the schema's order.
_ADAMW_ARGS = (
    "params",
    "grads",
    "exp_avgs",
    "exp_avg_sqs",
    "max_exp_avg_sqs",
    "state_steps",
    "counter",
    "bounds",
    "shape",
    "schedule_mode",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "amsgrad",
    "maximize",
    "cycle_momentum",
    "grad_scale",
    "found_inf",
    "fused_width",
)


class _CompiledOpBackend(Backend):
    """The op of clr_ext._C: through the dispatcher under torch.compile (so that it is
    traced and functionalized), straight into the device's kernel in eager mode (the
    dispatcher's boxing costs ~1 us per tensor)."""

    eager_entry = ""
    adamw_entry = ""

    def run(
        self,
        *,
        params,
        grads,
        buffers,
        starts,
        counter,
        iteration,
        bounds,
        shape,
        mode,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        cycle_momentum,
        first_step,
        grad_scale,
        found_inf,
    ):
        op = torch.ops.clr_ext.cyclic_sgd_ if torch.compiler.is_compiling() else getattr(_C, self.eager_entry)
        op(
            params,
            grads,
            buffers,
            starts,
            counter,
            bounds,
            shape,
            mode,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize,
            cycle_momentum,
            first_step,
            grad_scale,
            found_inf,
        )

    def adamw(self, **kw) -> None:
        op = torch.ops.clr_ext.cyclic_adamw_ if torch.compiler.is_compiling() else getattr(_C, self.adamw_entry)
        op(*[kw[k] for k in _ADAMW_ARGS])


class CppBackend(_CompiledOpBackend):
    name = "cpp"
    device_types = ("cpu",)
    eager_entry = "cyclic_sgd_cpu_"
    adamw_entry = "cyclic_adamw_cpu_"


class CudaBackend(_CompiledOpBackend):
    name = "cuda"
    device_types = ("cuda",)
    eager_entry = "cyclic_sgd_cuda_"
    adamw_entry = "cyclic_adamw_cuda_"


# A plain Library fragment rather than torch.library.custom_op: ~4 us per call, not ~18.
_LIBRARY = torch.library.Library("clr_ext", "FRAGMENT")
_LIBRARY.define(
    "python_backend_step_(str backend, Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
    "Tensor(d!)[] momentum_start, "
    "Tensor iteration, float[] bounds, float[] shape, int schedule_mode, float momentum, float dampening, "
    "float weight_decay, bool nesterov, bool maximize, bool cycle_momentum, bool first_step, "
    "Tensor? grad_scale, Tensor? found_inf) -> ()"
)


def _python_backend_step(
    backend: str,
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    momentum_buffers: List[torch.Tensor],
    momentum_start: List[torch.Tensor],
    iteration: torch.Tensor,
    bounds: List[float],
    shape: List[float],
    schedule_mode: int,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    cycle_momentum: bool,
    first_step: bool,
    grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
) -> None:
    """The ``cython`` and ``torch`` backends as one op, for steps traced by torch.compile.

    Dynamo cannot trace into a Cython function (a graph break), and the torch backend's
    host-side schedule would make it re-trace at every step; as an opaque op both run
    as they do in eager mode, with the iteration read from the counter at run time."""
    _instance(backend)._run_eager(
        params,
        grads,
        momentum_buffers,
        momentum_start,
        iteration,
        int(iteration),
        bounds,
        shape,
        schedule_mode,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        cycle_momentum,
        first_step,
        grad_scale,
        found_inf,
    )


_LIBRARY.impl("python_backend_step_", _python_backend_step, "CompositeExplicitAutograd")


_ops.register_fake("python_backend_step_")


_LIBRARY.define(
    "python_backend_adamw_(str backend, Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
    "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, Tensor iteration, "
    "float[] bounds, float[] shape, int schedule_mode, float beta1, float beta2, float eps, float weight_decay, "
    "bool amsgrad, bool maximize, bool cycle_momentum, Tensor? grad_scale, Tensor? found_inf, int fused_width) -> ()"
)


def _python_backend_adamw(backend: str, *args) -> None:
    """The ``cython`` and ``torch`` AdamW steps as one opaque op, for steps traced by
    torch.compile (as ``python_backend_step_`` for SGD)."""
    kw = dict(zip(_ADAMW_ARGS, args))
    kw["iteration"] = int(kw["counter"])
    _instance(backend)._adamw_eager(**kw)


_LIBRARY.impl("python_backend_adamw_", _python_backend_adamw, "CompositeExplicitAutograd")


_ops.register_fake("python_backend_adamw_")


class _PythonBackend(Backend):
    """A backend whose step is Python code: eager steps call it directly, traced steps
    through the op above."""

    def run(
        self,
        *,
        params,
        grads,
        buffers,
        starts,
        counter,
        iteration,
        bounds,
        shape,
        mode,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        cycle_momentum,
        first_step,
        grad_scale,
        found_inf,
    ):
        if torch.compiler.is_compiling():
            torch.ops.clr_ext.python_backend_step_(
                self.name,
                params,
                grads,
                buffers,
                starts,
                counter,
                bounds,
                shape,
                mode,
                momentum,
                dampening,
                weight_decay,
                nesterov,
                maximize,
                cycle_momentum,
                first_step,
                grad_scale,
                found_inf,
            )
        else:
            self._run_eager(
                params,
                grads,
                buffers,
                starts,
                counter,
                iteration,
                bounds,
                shape,
                mode,
                momentum,
                dampening,
                weight_decay,
                nesterov,
                maximize,
                cycle_momentum,
                first_step,
                grad_scale,
                found_inf,
            )

    def adamw(self, **kw) -> None:
        if torch.compiler.is_compiling():
            torch.ops.clr_ext.python_backend_adamw_(self.name, *[kw[k] for k in _ADAMW_ARGS])
        else:
            self._adamw_eager(**kw)

    def _adamw_eager(self, **kw) -> None:
        raise NotImplementedError

    def _run_eager(
        self,
        params,
        grads,
        buffers,
        starts,
        counter,
        iteration,
        bounds,
        shape,
        mode,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        cycle_momentum,
        first_step,
        grad_scale,
        found_inf,
    ):
        """``_run``, with the op's ``momentum_start`` semantics when ``starts`` is given:
        the buffers that start in this step and those that continue run as two calls."""
        if not starts:
            self._run(
                params,
                grads,
                buffers,
                counter,
                iteration,
                bounds,
                shape,
                mode,
                momentum,
                dampening,
                weight_decay,
                nesterov,
                maximize,
                cycle_momentum,
                first_step,
                grad_scale,
                found_inf,
            )
            return
        if found_inf is not None and float(found_inf) == 1.0:
            return  # skipped: no buffer starts
        cycled = schedule_point(iteration, bounds, shape, mode)[1]
        if (cycled if cycle_momentum else momentum) == 0:  # no buffer is touched
            self._run(
                params,
                grads,
                buffers,
                counter,
                iteration,
                bounds,
                shape,
                mode,
                momentum,
                dampening,
                weight_decay,
                nesterov,
                maximize,
                cycle_momentum,
                False,
                grad_scale,
                found_inf,
            )
            return
        packed = starts[0].view(-1) if len(starts) == 1 else None  # one element per param
        started = packed.tolist() if packed is not None else [int(s) for s in starts]
        for first in (False, True):
            index = [i for i, value in enumerate(started) if (value >= iteration) == first]
            if index:
                self._run(
                    [params[i] for i in index],
                    [grads[i] for i in index],
                    [buffers[i] for i in index],
                    counter,
                    iteration,
                    bounds,
                    shape,
                    mode,
                    momentum,
                    dampening,
                    weight_decay,
                    nesterov,
                    maximize,
                    cycle_momentum,
                    first,
                    grad_scale,
                    found_inf,
                )
        for i, value in enumerate(started):
            if value > iteration:
                (packed[i] if packed is not None else starts[i]).fill_(iteration)

    def _run(
        self,
        params,
        grads,
        buffers,
        counter,
        iteration,
        bounds,
        shape,
        mode,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        cycle_momentum,
        first_step,
        grad_scale,
        found_inf,
    ):
        raise NotImplementedError


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

    def _run(
        self,
        params,
        grads,
        buffers,
        counter,
        iteration,
        bounds,
        shape,
        mode,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        cycle_momentum,
        first_step,
        grad_scale,
        found_inf,
    ):
        if found_inf is not None and float(found_inf) == 1.0:
            return
        lists = [params, grads, buffers]
        dense, staged = _contiguous(lists)
        _cython_cpu.cyclic_sgd_(
            _DTYPE_CODES[params[0].dtype],
            *dense,
            counter,
            bounds,
            shape,
            mode,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize,
            cycle_momentum,
            first_step,
            None if grad_scale is None else float(grad_scale),
            torch.get_num_threads(),
        )
        _copy_back(lists, dense, staged)

    def _adamw_eager(
        self,
        *,
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        counter,
        iteration,
        bounds,
        shape,
        schedule_mode,
        beta1,
        beta2,
        eps,
        weight_decay,
        amsgrad,
        maximize,
        cycle_momentum,
        grad_scale,
        found_inf,
        fused_width,
    ) -> None:
        lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else []]
        dense, staged = _contiguous(lists)
        _cython_cpu.cyclic_adamw_(
            _DTYPE_CODES[params[0].dtype],
            *dense,
            list(state_steps),
            counter,
            bounds,
            shape,
            schedule_mode,
            beta1,
            beta2,
            eps,
            weight_decay,
            amsgrad,
            maximize,
            cycle_momentum,
            grad_scale,
            found_inf,
            torch.get_num_threads(),
            fused_width,
        )
        _copy_back(lists, dense, staged)


class TorchBackend(_PythonBackend):
    """PyTorch foreach ops: the slow, portable path. The schedule is the Python
    reference evaluated at the host iteration; half precision is computed in float32
    and rounded once per step, like the fused kernels."""

    name = "torch"
    device_types = ("cpu", "cuda")

    def _run(
        self,
        params,
        grads,
        buffers,
        counter,
        iteration,
        bounds,
        shape,
        mode,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        cycle_momentum,
        first_step,
        grad_scale,
        found_inf,
    ):
        if found_inf is not None and float(found_inf) == 1.0:
            return
        lr, cycled = schedule_point(iteration, bounds, shape, mode)
        mom = cycled if cycle_momentum else momentum
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
        g_c = torch._foreach_neg(g_c) if maximize else list(g_c)
        if weight_decay != 0:
            g_c = torch._foreach_add(g_c, p_c, alpha=weight_decay)
        if use_buffers:
            if first_step:
                for b, g in zip(b_c, g_c):
                    b.copy_(g)
            else:
                torch._foreach_mul_(b_c, mom)
                torch._foreach_add_(b_c, g_c, alpha=1 - dampening)
            g_c = torch._foreach_add(g_c, b_c, alpha=mom) if nesterov else b_c
        torch._foreach_add_(p_c, g_c, alpha=-lr)

        if low_precision:
            for p, pc in zip(params, p_c):
                p.copy_(pc)
            for b, bc in zip(buffers if use_buffers else [], b_c):
                b.copy_(bc)

    def _adamw_eager(
        self,
        *,
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        counter,
        iteration,
        bounds,
        shape,
        schedule_mode,
        beta1,
        beta2,
        eps,
        weight_decay,
        amsgrad,
        maximize,
        cycle_momentum,
        grad_scale,
        found_inf,
        fused_width,
    ) -> None:
        """torch.optim.AdamW's single-tensor step, op for op (so fp32/fp64 round as it
        does); half precision runs on float32 copies rounded once per step. With
        ``fused_width``, torch.optim.AdamW(fused=True)'s own kernel."""
        if found_inf is not None and float(found_inf) == 1.0:
            return
        lr, cycled = schedule_point(int(counter) if iteration is None else iteration, bounds, shape, schedule_mode)
        if cycle_momentum:
            beta1 = cycled
        if fused_width:
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
                maximize=maximize,
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
            if maximize:
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
