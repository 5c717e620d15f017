"""The range test under torch.distributed: gloo, 2 processes, a DDP-wrapped model.

Each rank trains on its own batches (different on each rank) with gradient accumulation and
measures its own validation batches. Both ranks must record the same curve, stop at the same
step and return the same result, equal to one process on the union of the ranks' batches
(DDP averages the gradients; the test averages the losses); only rank 0 shows a progress
bar; a NaN on one rank stops both ranks at that step without a deadlock, and the model is
restored and still trains under DDP afterwards. The spawning and teardown helpers are
tests/support/ranks.py's, shared with integrations/test_distributed.py."""

import importlib
import math
import os

import pytest
import torch
import torch.distributed as dist
from support.ranks import WORLD, rank_main, spawn
from torch import nn

from clr_ext.range_test import range_test

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

STEPS, ACCUM = 40, 2
KW = dict(
    start_lr=1e-3, end_lr=30.0, num_iters=STEPS, sweep="exp", momentum=0.9, accumulation_steps=ACCUM, val_batches=2
)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _batches(rank, count, size, offset=0):
    out = []
    for k in range(count):
        g = torch.Generator().manual_seed(1000 * (rank + 1) + k + offset)
        x = torch.randn(size, 4, generator=g, dtype=torch.float64)
        out.append((x, x.sum(-1, keepdim=True).sin() + 0.1 * torch.randn(size, 1, generator=g, dtype=torch.float64)))
    return out


def _train_batches(rank):
    return _batches(rank, 6, 8)


def _val_batches(rank):
    return _batches(rank, 3, 5, offset=500)


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def _ddp_rank(rank, out):
    from torch.nn.parallel import DistributedDataParallel as DDP

    run_module = importlib.import_module("clr_ext.range_test.run")
    bars = []
    original_bar = run_module._progress_bar
    run_module._progress_bar = lambda total, enabled: bars.append(enabled)
    try:
        model = _model()
        net = DDP(model)
        before = _flat(model)
        result = range_test(net, _train_batches(rank), nn.MSELoss(), val_loader=_val_batches(rank), **KW)
        restored = torch.equal(_flat(model), before)

        # A NaN on rank 1 only, at the 2nd batch of step 5: both ranks stop there.
        calls = {"n": 0}

        def loss_fn(outputs, targets):
            calls["n"] += 1
            loss = nn.functional.mse_loss(outputs, targets)
            return loss * math.nan if (rank == 1 and calls["n"] == 5 * ACCUM + 2) else loss

        nan_result = range_test(
            net,
            _train_batches(rank),
            loss_fn,
            start_lr=1e-3,
            end_lr=1e-2,
            num_iters=20,
            accumulation_steps=ACCUM,
            diverge_factor=math.inf,
            progress=True,
        )
        nan_restored = torch.equal(_flat(model), before)
        # DDP still trains: no gradient reduction was left half done.
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        x, y = _train_batches(rank)[0]
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        trained = _flat(model)
    finally:
        run_module._progress_bar = original_bar
    torch.save(
        {
            "result": result.to_dict(),
            "nan": nan_result.to_dict(),
            "bars": bars,
            "restored": restored,
            "nan_restored": nan_restored,
            "nan_calls": calls["n"],
            "trained": trained,
        },
        os.path.join(out, "rank%d.pt" % rank),
    )


def _ddp_worker(rank, port, out):
    rank_main(_ddp_rank, rank, port, out)


def test_ddp_ranks_record_the_same_curve_and_stop_together(tmp_path):
    spawn(_ddp_worker, lambda port: (port, str(tmp_path)))
    ranks = [torch.load(tmp_path / ("rank%d.pt" % r), weights_only=False) for r in range(WORLD)]
    r0, r1 = ranks[0]["result"], ranks[1]["result"]
    assert r0 == r1  # the whole result, bit for bit: curve, stop, bounds
    assert r0["diverged"] and r0["stop_reason"] == "diverged" and len(r0["lrs"]) < STEPS
    assert [rk["bars"] for rk in ranks] == [[True, True], [False, False]]
    assert all(rk["restored"] and rk["nan_restored"] for rk in ranks)
    # The NaN on rank 1 stopped both ranks at step 5 (0-based): 6 steps recorded, the last NaN.
    n0, n1 = ranks[0]["nan"], ranks[1]["nan"]
    assert n0 == n1 and n0["stop_reason"] == "nan" and len(n0["lrs"]) == 6
    assert ranks[1]["nan_calls"] == 5 * ACCUM + 2 and ranks[0]["nan_calls"] == 5 * ACCUM + 2
    assert torch.equal(ranks[0]["trained"], ranks[1]["trained"])

    # One process on the union of the ranks' batches: the same curve (up to summation order).
    torch.set_num_threads(1)
    union_train = [
        tuple(torch.cat([_train_batches(r)[k][i] for r in range(WORLD)]) for i in range(2)) for k in range(6)
    ]
    union_val = [tuple(torch.cat([_val_batches(r)[k][i] for r in range(WORLD)]) for i in range(2)) for k in range(3)]
    single = range_test(_model(), union_train, nn.MSELoss(), val_loader=union_val, progress=False, **KW)
    assert len(single.lrs) == len(r0["lrs"]) and single.lrs == r0["lrs"]
    assert r0["losses"] == pytest.approx(single.losses, rel=1e-9)
    assert (r0["base_lr"], r0["max_lr"]) == (single.base_lr, single.max_lr)
