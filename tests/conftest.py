"""Shared fixtures and the independent references the CyclicSGD tests compare against.

Backends: CI runs the suite once per CPU backend with ``CLR_EXT_BACKEND=cpp|cython|torch``
(the variable makes ``backend="auto"`` resolve to that backend). The ``backend`` fixture
follows it: with the variable set it yields that one backend; unset, it is parametrized
over every built CPU backend, so a plain ``pytest`` covers all of them.

References (nothing here calls clr_ext's own arithmetic):
- ``ReferencePair``: ``torch.optim.SGD`` + ``torch.optim.lr_scheduler.CyclicLR``, one
  iteration being ``sgd.step(); sched.step()``, as api.md defines CyclicSGD. For float16 /
  bfloat16 parameters the reference is ``torch.optim.SGD(fused=True)`` when that is correct
  in the running torch (``fused_half_sgd_is_correct()``), otherwise an fp32 emulation of
  the fused semantics: the SGD runs on float32 shadows loaded from the half values, and
  params and momentum buffers are rounded to the half type once per step.
- the pure-Python oracle ``clr_ext.cyclic_lr`` / ``clr_ext.schedule.cyclic_point``, which
  tests/schedules/test_schedule.py holds to CyclicLR bit for bit.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch
import torch._dynamo.testing

import clr_ext

ENV_VAR = "CLR_EXT_BACKEND"
HALF_DTYPES = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- backends


def cpu_backends() -> List[str]:
    """The CPU backends the suite runs: ``CLR_EXT_BACKEND`` if set, else every built one."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env != "auto":
        return [env]
    return [b for b in clr_ext.available_backends() if b != "cuda"]


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", cpu_backends(), scope="session")


def pytest_report_header(config):
    return [
        "clr_ext %s, torch %s, built backends %s, %s=%r, torch threads %d"
        % (
            clr_ext.__version__,
            torch.__version__,
            clr_ext.available_backends(),
            ENV_VAR,
            os.environ.get(ENV_VAR),
            torch.get_num_threads(),
        ),
        "half-precision reference: %s" % half_reference_kind(),
    ]


@pytest.fixture(autouse=True)
def _quiet_torch_backend_warning():
    # The pure-torch backend warns once per process when "auto" falls back to it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="clr_ext: no compiled backend", category=RuntimeWarning)
        yield


# ------------------------------------------------------------------ half references


@functools.lru_cache(maxsize=None)
def fused_half_sgd_is_correct() -> bool:
    """Whether CPU ``torch.optim.SGD(fused=True)`` updates every element of float16 and
    bfloat16 tensors larger than a SIMD vector (PyTorch issue #191763: the vectorized
    loop skipped the update for these dtypes, only the scalar tail was written)."""
    for dtype in HALF_DTYPES:
        for momentum in (0.0, 0.9):
            p = torch.full((1031,), 1.0, dtype=dtype, requires_grad=True)
            p.grad = torch.full((1031,), 1.0, dtype=dtype)
            opt = torch.optim.SGD([p], lr=0.25, momentum=momentum, fused=True)
            opt.step()
            opt.step()
            # Every element saw the same inputs, so a correct kernel leaves them all
            # equal, and all moved away from 1.
            v = p.detach().float()
            if not bool((v == v[0]).all()) or bool((v == 1.0).any()):
                return False
    return True


def half_reference_kind() -> str:
    return (
        "torch.optim.SGD(fused=True)"
        if fused_half_sgd_is_correct()
        else ("fp32 emulation (CPU fused SGD is broken for float16/bfloat16 in torch %s)" % torch.__version__)
    )


# ------------------------------------------------------------------- reference pair


class ReferencePair:
    """``torch.optim.SGD`` + ``CyclicLR`` (or another ``scheduler`` class, e.g. ``OneCycleLR``)
    on copies of the given initial values.

    ``groups``: list of dicts with ``"params"`` (a list of tensors: the initial values,
    cloned here) and optional per-group SGD keys (momentum, dampening, weight_decay,
    nesterov, maximize). ``sgd_kwargs`` go to SGD (not lr), ``sched_kwargs`` to CyclicLR.
    ``params`` is the list (flattened over groups) of the reference's parameters in their
    own dtype; ``step(grads)`` takes one gradient (or None) per param.

    With ``fused`` every param gets an SGD param group of its own (CyclicLR's per-group
    lists expanded to match): the fused kernel starts the momentum buffers of a group
    only all at once, and a param whose first gradient comes later would break it.
    ``group_lr`` / ``group_momentum`` / ``last_lr`` report per given group either way.
    """

    def __init__(
        self,
        groups: Sequence[Dict[str, Any]],
        sgd_kwargs: Dict[str, Any],
        sched_kwargs: Dict[str, Any],
        fused: Optional[bool] = None,
        scheduler: Any = torch.optim.lr_scheduler.CyclicLR,
    ):
        self.params: List[torch.Tensor] = []  # the reference values, in their dtype
        self.compute: List[torch.Tensor] = []  # what torch.optim.SGD updates
        dtypes = set(t.dtype for g in groups for t in g["params"])
        all_half = dtypes <= set(HALF_DTYPES)
        if fused is None:
            fused = all_half and fused_half_sgd_is_correct()
        self.fused = bool(fused)
        # Emulate when a half param would otherwise go through a non-fused SGD.
        self.emulate = bool(dtypes & set(HALF_DTYPES)) and not self.fused
        sgd_groups = []
        self._first_group: List[int] = []  # the SGD group that reports for given group gi
        sched_kwargs = dict(sched_kwargs)
        per_group = {
            k: sched_kwargs[k]
            for k in ("base_lr", "max_lr", "base_momentum", "max_momentum")
            if isinstance(sched_kwargs.get(k), (list, tuple))
        }
        expanded: Dict[str, List[Any]] = {k: [] for k in per_group}
        for gi, g in enumerate(groups):
            extra = {k: v for k, v in g.items() if k != "params"}
            mine = []
            for t in g["params"]:
                p = t.detach().clone()
                self.params.append(p)
                if self.emulate and p.dtype in HALF_DTYPES:
                    c = p.float().requires_grad_(True)
                else:
                    c = p.requires_grad_(True)
                self.compute.append(c)
                mine.append(c)
            self._first_group.append(len(sgd_groups))
            chunks = [[c] for c in mine] if self.fused else [mine]
            for chunk in chunks:
                sgd_groups.append(dict(extra, params=chunk))
                for k, values in per_group.items():
                    expanded[k].append(values[gi])
        sched_kwargs.update(expanded)
        self.sgd = torch.optim.SGD(sgd_groups, lr=0.0, fused=self.fused, **sgd_kwargs)
        self.sched = scheduler(self.sgd, **sched_kwargs)

    def group_lr(self, gi: int) -> float:
        return self.sgd.param_groups[self._first_group[gi]]["lr"]

    def group_momentum(self, gi: int) -> float:
        return self.sgd.param_groups[self._first_group[gi]]["momentum"]

    def last_lr(self) -> List[float]:
        """CyclicLR.get_last_lr(), one value per given group."""
        last = self.sched.get_last_lr()
        return [last[i] for i in self._first_group]

    def step(self, grads: Sequence[Optional[torch.Tensor]], before_step=None) -> None:
        for p, c, g in zip(self.params, self.compute, grads):
            if c is not p:
                c.data.copy_(p)  # exact: every half value is a float32 value
            if g is None:
                c.grad = None
            else:
                c.grad = g.detach().to(c.dtype).clone()
        if before_step is not None:
            before_step(self.sgd)
        self.sgd.step()
        self.sched.step()
        for p, c in zip(self.params, self.compute):
            if c is not p:
                p.copy_(c.detach())  # one rounding per step, as the fused kernels do
                buf = self.sgd.state.get(c, {}).get("momentum_buffer")
                if buf is not None:
                    buf.copy_(buf.to(p.dtype).float())

    def buffer(self, i: int) -> Optional[torch.Tensor]:
        buf = self.sgd.state.get(self.compute[i], {}).get("momentum_buffer")
        if buf is None:
            return None
        return buf.to(self.params[i].dtype)


# ------------------------------------------------------------------ comparisons


#: Relative tolerance (to the largest reference magnitude) per parameter dtype. fp32 and
#: fp64 are api.md's contract over 1,000 steps. The half types allow a few units of their
#: own precision: a 1-ulp fp32 difference before the one rounding per step (the reference
#: SGD's kernels may contract multiply-adds, clr_ext's do not) can land a value on the
#: other side of a half-precision rounding boundary, and the gradient feeds it back. The
#: worst seen over the full product at 1,000 steps was 0.3 eps on params and 6 eps on
#: momentum buffers (measured against the largest buffer, several times smaller than the
#: params whose differences drive its error), so the parity tests give buffers twice the
#: room. A dropped or wrong update costs far more (the SIMD-loop bug of PyTorch's fused
#: half SGD is off by hundreds of eps), and tests/rules/test_parity.py also checks single
#: half-precision steps exactly.
RTOL = {
    torch.float32: 1e-5,
    torch.float64: 1e-12,
    torch.float16: 4 * 2.0**-10,
    torch.bfloat16: 4 * 2.0**-7,
}


def rel_err(actual: torch.Tensor, expected: torch.Tensor, scale: Optional[float] = None) -> float:
    """max |actual - expected| / max |expected| (or / ``scale``), computed in float64."""
    a = actual.detach().double()
    e = expected.detach().double()
    if a.numel() == 0:
        return 0.0
    assert torch.isfinite(a).all() and torch.isfinite(e).all()
    if scale is None:
        scale = float(e.abs().max())
    return float((a - e).abs().max()) / max(scale, 1e-30)


def assert_close_rel(actual_list, expected_list, what="param", half_factor=1.0):
    """Each tensor of ``actual_list`` is within ``RTOL[dtype]`` of its reference, relative
    to the largest reference magnitude over the whole list (``half_factor`` times that
    for float16 / bfloat16)."""
    scale = max([float(e.detach().double().abs().max()) for e in expected_list if e.numel()] + [1e-30])
    for i, (a, e) in enumerate(zip(actual_list, expected_list)):
        assert a.dtype == e.dtype, (what, i, a.dtype, e.dtype)
        assert a.shape == e.shape, (what, i, a.shape, e.shape)
        err = rel_err(a, e, scale)
        tol = RTOL[a.dtype] * (half_factor if a.dtype in HALF_DTYPES else 1.0)
        assert err <= tol, "%s %d (%s, shape %s): relative error %.3g > %.3g" % (
            what,
            i,
            a.dtype,
            tuple(a.shape),
            err,
            tol,
        )


def same_float(a: float, b: float) -> bool:
    """Bit-level equality of two Python floats (NaN equals NaN; -0.0 differs from 0.0)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test (modules of tiny models take it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): extra threads only add
    synchronisation there, and on a busy 2-core CI machine they slow a test many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(1234)
    yield


def mlp_pair(backend, widths, batch, max_lr, step_size_up, fused=None):
    """A Tanh MLP of ``widths`` (in, hidden, out) and a copy, a batch ``(x, y)``, and
    CyclicSGD (lr 0.01 to ``max_lr``, momentum 0.9, weight decay 1e-3) on the model with the
    torch pair it must equal, SGD(``fused``) + CyclicLR, on the copy:
    ``(model, ref_model, x, y, opt, sgd, sched)``."""
    torch.manual_seed(0)
    n_in, hidden, n_out = widths
    model = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, n_out))
    ref_model = copy.deepcopy(model)
    x, y = torch.randn(batch, n_in), torch.randn(batch, n_out)
    sgd_kw = dict(momentum=0.9, weight_decay=1e-3)
    opt = clr_ext.CyclicSGD(model.parameters(), 0.01, max_lr, step_size_up=step_size_up, backend=backend, **sgd_kw)
    sgd = torch.optim.SGD(ref_model.parameters(), lr=0.01, fused=fused, **sgd_kw)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, 0.01, max_lr, step_size_up=step_size_up)
    return model, ref_model, x, y, opt, sgd, sched


def step_both(opt, torch_opt, sched, params, torch_params, grads):
    """One step of ``opt`` and one of the torch pair it is compared with (``torch_opt`` and,
    unless None, ``sched``), each param given its own copy of its gradient in ``grads``."""
    for p, q, g in zip(params, torch_params, grads):
        p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    torch_opt.step()
    if sched is not None:
        sched.step()


def torch_state_dict_continues(torch_opt, sched, make, grads, steps_before, group_key, loaded=None):
    """``torch_opt`` + ``sched`` (on one param) step with the first ``steps_before`` of
    ``grads``; their state dict, the groups' ``iteration`` set to ``sched.last_epoch`` (as a
    conversion by hand does), loads into ``make([q])`` on a copy ``q`` of the param, and both
    step with the rest: the params bit-equal and the group's ``group_key`` equal after every
    step. ``loaded(opt, q)``: checks made right after loading."""
    p = torch_opt.param_groups[0]["params"][0]
    for g in grads[:steps_before]:
        p.grad = g.clone()
        torch_opt.step()
        sched.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt = make([q])
    saved = copy.deepcopy(torch_opt.state_dict())  # (a live state dict shares its buffers with the loader)
    for group in saved["param_groups"]:
        group["iteration"] = sched.last_epoch
    opt.load_state_dict(saved)
    if loaded is not None:
        loaded(opt, q)
    for g in grads[steps_before:]:
        step_both(opt, torch_opt, sched, [q], [p], [g])
        assert torch.equal(p, q)
        assert opt.param_groups[0][group_key] == torch_opt.param_groups[0][group_key]


def compiled_step_against_eager(make, group_key):
    """Two optimizers ``make(params, steps)`` on equal params, one stepped eagerly and one
    through torch.compile(fullgraph=True) on the aot_eager backend, on the same gradients
    for three times dynamo's recompile limit: the lr and the group's ``group_key`` equal
    after every step, params bit-equal at the end. Returns the compile counter (how many
    frames were traced)."""
    torch._dynamo.reset()
    try:
        steps = 3 * torch._dynamo.config.recompile_limit
        init = [torch.randn(31), torch.randn(4, 5)]
        eager_p = [torch.nn.Parameter(t.clone()) for t in init]
        comp_p = [torch.nn.Parameter(t.clone()) for t in init]
        eager = make(eager_p, steps)
        compiled_opt = make(comp_p, steps)
        counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(lambda: compiled_opt.step(), fullgraph=True, backend=counter)
        gen = torch.Generator().manual_seed(2)
        for s in range(steps):
            for a, b in zip(eager_p, comp_p):
                g = torch.randn(a.shape, generator=gen)
                a.grad, b.grad = g.clone(), g.clone()
            eager.step()
            compiled()
            assert compiled_opt.get_last_lr() == eager.get_last_lr(), s
            assert compiled_opt.param_groups[0][group_key] == eager.param_groups[0][group_key], s
        for a, b in zip(eager_p, comp_p):
            assert torch.equal(a, b)
        return counter
    finally:
        torch._dynamo.reset()
