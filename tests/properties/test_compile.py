"""CyclicSGD under torch.compile: a compiled training step gives eager's numbers.

What torch.compile does with ``opt.step()``:
- With the ``cpp`` backend the step traces without a graph break (``fullgraph=True``): the
  Python planning is traceable and the update is the registered op
  ``torch.ops.clr_ext.cyclic_sgd_`` (fake impl in ``clr_ext/_ops.py``; ``opcheck`` is in
  tests/backends/test_ops.py), which AOTAutograd functionalizes.
- No re-trace per step: the traced step reads no per-step Python number. The op reads
  the iteration from the device counter, the step reads the param groups through an
  alias (dynamo guards on every value of ``param_groups`` when that attribute is read,
  and ``lr``/``momentum``/``iteration`` change at every step), and the step ends with the
  opaque op ``clr_ext::advance_schedule_``, which advances the counter and, as the
  compiled code runs, the host mirror (``iteration``, ``group["lr"]``). A compiled step
  is traced twice in all: before and after the momentum buffers exist.
- The ``cython`` and ``torch`` backends run under dynamo as one opaque op,
  ``clr_ext::python_backend_step_`` (a Cython function cannot be traced, and the torch
  backend's host schedule would re-trace per step): fullgraph, traced twice, too.
- A Python ``scale_fn`` is evaluated on the host at every step: such a step re-traces.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import clr_ext

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")

STEPS = 8
CFG = dict(
    base_lr=0.01, max_lr=0.1, step_size_up=2, step_size_down=3, momentum=0.9, weight_decay=1e-3, mode="triangular2"
)


def _setup(backend, **overrides):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    opt = clr_ext.CyclicSGD(model.parameters(), backend=backend, **dict(CFG, **overrides))
    return model, opt


def _data(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)


def _train_step(model, opt, x, y):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def _eager(backend):
    model, opt = _setup(backend)
    lrs, losses = [], []
    for s in range(STEPS):
        losses.append(float(_train_step(model, opt, *_data(s)).detach()))
        lrs.append(opt.get_last_lr())
    return model, opt, lrs, losses


def _assert_same(model_a, opt_a, model_b, opt_b):
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            opt_b.state[pb]["momentum_buffer"], opt_a.state[pa]["momentum_buffer"], rtol=1e-12, atol=1e-12
        )
    assert opt_b.iteration == opt_a.iteration


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_train_step_matches_eager(backend):
    """forward + backward + opt.step() in one torch.compile'd function (graph breaks allowed)."""
    ref_model, ref_opt, ref_lrs, ref_losses = _eager(backend)
    model, opt = _setup(backend)
    compiled = torch.compile(_train_step, backend="aot_eager")
    lrs, losses = [], []
    for s in range(STEPS):
        losses.append(float(compiled(model, opt, *_data(s)).detach()))
        lrs.append(opt.get_last_lr())
    assert lrs == ref_lrs
    assert losses == pytest.approx(ref_losses, rel=1e-12, abs=0)
    _assert_same(ref_model, ref_opt, model, opt)


@pytest.mark.parametrize("cycle_momentum", [True, False])
def test_fullgraph_optimizer_step_is_traced_twice_and_matches_eager(backend, cycle_momentum):
    """opt.step() under torch.compile(fullgraph=True), for three times dynamo's default
    recompile limit: the same parameters, buffers and host LRs as eager at every step,
    and two traces in all (before and after the momentum buffers exist)."""
    steps = 3 * torch._dynamo.config.recompile_limit
    ref_model, ref_opt = _setup(backend, cycle_momentum=cycle_momentum)
    model, opt = _setup(backend, cycle_momentum=cycle_momentum)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def opt_step():
        opt.step()

    compiled = torch.compile(opt_step, fullgraph=True, backend=counter)
    for s in range(steps):
        x, y = _data(s)
        for m, o, run in ((ref_model, ref_opt, ref_opt.step), (model, opt, compiled)):
            torch.nn.functional.mse_loss(m(x), y).backward()
            run()
            o.zero_grad(set_to_none=True)
        # the host mirror is right after every compiled call, read straight from the groups
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref_opt.param_groups], s
        assert [g["momentum"] for g in opt.param_groups] == [g["momentum"] for g in ref_opt.param_groups], s
        assert opt.iteration == ref_opt.iteration == s + 1
    _assert_same(ref_model, ref_opt, model, opt)
    assert counter.frame_count == 2


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_fullgraph_step_with_cycled_momentum_zero_matches_torch(backend):
    """A traced step does not know its cycled momentum, so the op decides which buffers
    start (csrc/op/sgd_op.h, momentum_start). The momentum here rises from 0
    (max_momentum=0) with dampening: torch.optim.SGD keeps no buffer in the first step
    and starts it with the gradient in the second; a buffer started from zeros would
    differ by the dampening."""
    sched = dict(base_lr=0.01, max_lr=0.1, step_size_up=2, step_size_down=3, base_momentum=0.9, max_momentum=0.0)
    model, opt = _setup(backend, **sched, dampening=0.4)
    torch.manual_seed(0)
    ref_model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    sgd = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9, dampening=0.4, weight_decay=1e-3)
    ref_sched = torch.optim.lr_scheduler.CyclicLR(sgd, mode="triangular2", **sched)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda: opt.step(), fullgraph=True, backend=counter)
    for s in range(10):
        x, y = _data(s)
        for m in (model, ref_model):
            m.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(m(x), y).backward()
        compiled()
        sgd.step()
        ref_sched.step()
        assert opt.get_last_lr() == ref_sched.get_last_lr(), s
        saved = sorted(i for i, st in opt.state_dict()["state"].items() if "momentum_buffer" in st)
        assert saved == sorted(i for i, st in sgd.state_dict()["state"].items() if "momentum_buffer" in st), s
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert counter.frame_count == 2


@pytest.mark.parametrize("mixed_dtypes", [False, True], ids=["one-bucket", "two-buckets"])
def test_fullgraph_step_has_no_graph_break(backend, mixed_dtypes):
    """torch._dynamo.explain: one graph, zero breaks, the backend's op inside it (also
    when the params form two buckets, whose pre-check runs in Python under dynamo)."""
    model, opt = _setup(backend)
    if mixed_dtypes:
        model[2].float()
    x, y = _data(0)
    out = model[2](model[1](model[0](x)).to(model[2].weight.dtype))
    torch.nn.functional.mse_loss(out.double(), y).backward()

    def opt_step():
        opt.step()

    explanation = torch._dynamo.explain(opt_step)()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    code = "\n".join(g.code for g in explanation.graphs)
    op = "clr_ext.cyclic_sgd_(" if backend == "cpp" else "clr_ext.python_backend_step_("
    assert code.count(op) == (2 if mixed_dtypes else 1), code
    assert "advance_schedule_" in code


def test_compiled_step_with_inductor_matches_eager(backend):
    """The default backend (inductor) runs the ops as extern calls: same numbers as eager."""
    ref_model, ref_opt, ref_lrs, _ = _eager(backend)
    model, opt = _setup(backend)

    @torch.compile
    def opt_step():
        opt.step()

    lrs = []
    for s in range(STEPS):
        x, y = _data(s)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt_step()
        opt.zero_grad(set_to_none=True)
        lrs.append(opt.get_last_lr())
    assert lrs == ref_lrs
    _assert_same(ref_model, ref_opt, model, opt)


def test_advance_schedule_op_passes_opcheck():
    """The op that ends a traced step: its schema (counters mutated in place), fake
    implementation and functionalization are consistent; an unknown handle only
    advances the counters."""
    counters = [torch.tensor(5, dtype=torch.int64), torch.tensor(7, dtype=torch.int64)]
    torch.library.opcheck(torch.ops.clr_ext.advance_schedule_.default, (counters, -1))
    before = [int(c) for c in counters]
    torch.ops.clr_ext.advance_schedule_(counters, -1)
    assert [int(c) for c in counters] == [b + 1 for b in before]


def test_advance_schedule_op_advances_its_optimizer_only():
    """The handle names one optimizer; copies (deepcopy, pickle) get their own."""
    import copy

    model = torch.nn.Linear(2, 2)
    opt = clr_ext.CyclicSGD(model.parameters(), base_lr=0.1, max_lr=1.0, step_size_up=2)
    twin = copy.deepcopy(opt)
    assert twin._handle != opt._handle
    handle = opt._handle
    opt.load_state_dict(twin.state_dict())
    assert opt._handle == handle
    torch.ops.clr_ext.advance_schedule_([], opt._handle)
    assert opt.iteration == 1 and twin.iteration == 0
    assert opt.get_last_lr() == [clr_ext.cyclic_lr(1, 0.1, 1.0, step_size_up=2)]


@pytest.mark.parametrize("name", [b for b in ("cython", "torch") if b in clr_ext.available_backends()])
def test_python_backend_step_op_passes_opcheck(name):
    """The op through which the cython and torch backends run in a traced step: schema
    (params, grads, buffers, starts mutated), fake implementation, functionalization."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((3,), (4, 5))]
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    buffers = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    for starts in ([], [torch.tensor(2**63 - 1), torch.tensor(1)]):
        args = (
            name,
            params,
            grads,
            buffers,
            starts,
            torch.tensor(3, dtype=torch.int64),
            [0.01, 0.1, 0.8, 0.9],
            [2.0, 3.0, 1.0, 1.0],
            0,
            0.9,
            0.0,
            1e-3,
            False,
            False,
            True,
            False,
            None,
            None,
        )
        torch.library.opcheck(torch.ops.clr_ext.python_backend_step_.default, args)
        lr_scale = torch.tensor([0.5], dtype=torch.float64)  # (scale_schedule's input)
        torch.library.opcheck(torch.ops.clr_ext.python_backend_step_.default, (*args, lr_scale))


def test_compiled_step_resumes_from_a_checkpoint(backend):
    """load_state_dict between compiled steps (a new param_groups list, other counters):
    the compiled step continues from the loaded iteration, as eager does."""
    import copy

    model, opt = _setup(backend)
    compiled = torch.compile(lambda: opt.step(), backend="aot_eager")

    def run(steps, start):
        out = []
        for s in range(start, start + steps):
            x, y = _data(s)
            torch.nn.functional.mse_loss(model(x), y).backward()
            compiled()
            opt.zero_grad(set_to_none=True)
            out.append((opt.get_last_lr(), [p.detach().clone() for p in model.parameters()]))
        return out

    run(5, 0)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    first = run(3, 5)
    run(2, 8)  # move on, then go back
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    assert opt.iteration == 5
    again = run(3, 5)
    for (lr_a, ps_a), (lr_b, ps_b) in zip(first, again):
        assert lr_a == lr_b
        for a, b in zip(ps_a, ps_b):
            assert torch.equal(a, b)
