"""The scheduled optimizers inside PyTorch's distributed engine: DistributedDataParallel,
ZeroRedundancyOptimizer(optimizer_class=...) and FSDP2 (fully_shard), with the gloo
backend and 2 processes on the CPU.

Each test spawns 2 ranks that train a tiny float64 model on their halves of one batch for
K steps, save a checkpoint on rank 0, go on for M steps, then load the checkpoint into a
fresh model and optimizer on both ranks and run the same M steps again. The parent
compares: parameters identical across ranks, equal (1e-12) to one process training on the
whole batch, the same LR sequence, and the resumed run identical to the uninterrupted one.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from support.ranks import WORLD, rank_main, spawn

import clr_ext

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

K, M = 4, 3
CFG = dict(
    base_lr=0.05, max_lr=0.4, step_size_up=2, step_size_down=3, mode="triangular2", momentum=0.9, weight_decay=1e-3
)
#: Every scheduled optimizer goes through the same core; each is checked under DDP and ZeRO.
OPTIMIZERS = {
    "CyclicSGD": (clr_ext.CyclicSGD, CFG),
    "OneCycleSGD": (clr_ext.OneCycleSGD, dict(max_lr=0.4, total_steps=K + M + 1, momentum=0.9, weight_decay=1e-3)),
    "CyclicAdamW": (clr_ext.CyclicAdamW, dict(base_lr=0.01, max_lr=0.05, step_size_up=2, weight_decay=1e-2)),
}


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    return x, y


def _train(net, opt, steps, start, rank=None):
    lrs = []
    for s in range(start, start + steps):
        x, y = _batch(s)
        if rank is not None:
            x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
    return lrs


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def _make_opt(kind, net, optim="CyclicSGD"):
    cls, cfg = OPTIMIZERS[optim]
    if kind == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(net.parameters(), optimizer_class=cls, **cfg)
    return cls(net.parameters(), **cfg)


def _worker(rank, kind, optim, port, out):
    rank_main(_train_rank, rank, port, kind, optim, out)


def _train_rank(rank, kind, optim, out):
    from torch.nn.parallel import DistributedDataParallel as DDP

    ckpt = os.path.join(out, "ckpt.pt")

    model = _model()
    net = DDP(model)
    opt = _make_opt(kind, net, optim)
    lrs = _train(net, opt, K, 0, rank)
    if kind == "zero":
        opt.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ckpt)
    dist.barrier()
    lrs += _train(net, opt, M, K, rank)
    final = _flat(model)

    model2 = _model(seed=99)  # other values: the checkpoint must bring everything back
    net2 = DDP(model2)
    opt2 = _make_opt(kind, net2, optim)
    saved = torch.load(ckpt, weights_only=False)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    resumed_lrs = _train(net2, opt2, M, K, rank)
    torch.save(
        {"final": final, "lrs": lrs, "resumed": _flat(model2), "resumed_lrs": resumed_lrs},
        os.path.join(out, "rank%d.pt" % rank),
    )


def _single_process(optim="CyclicSGD"):
    model = _model()
    opt = _make_opt("single", model, optim)
    lrs = _train(model, opt, K + M, 0)
    return _flat(model), lrs


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["ddp", "zero"])
def test_distributed_matches_single_process_and_resumes(kind, optim, tmp_path):
    spawn(_worker, lambda port: (kind, optim, port, str(tmp_path)))
    results = [torch.load(tmp_path / ("rank%d.pt" % r), weights_only=False) for r in range(WORLD)]
    ref, ref_lrs = _single_process(optim)
    for r, res in enumerate(results):
        # identical across ranks
        assert torch.equal(res["final"], results[0]["final"]), r
        # the same as one process on the whole batch (the all-reduce sums in another order)
        torch.testing.assert_close(res["final"], ref, rtol=1e-12, atol=1e-12)
        assert res["lrs"] == ref_lrs
        # the checkpoint resumes exactly where the run was
        assert torch.equal(res["resumed"], res["final"]), r
        assert res["resumed_lrs"] == ref_lrs[K:]


# ------------------------------------------------------------------------ FSDP2


def _fsdp_worker(rank, optim, port, out):
    rank_main(_fsdp_rank, rank, port, optim, out)


def _fsdp_rank(rank, optim, out):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = _model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    opt = _make_opt("fsdp", model, optim)  # DTensor shards: the kernels step each rank's local shard
    lrs = _train(model, opt, K + M, 0, rank)
    full = torch.cat([p.detach().full_tensor().reshape(-1) for p in model.parameters()])
    torch.save({"final": full, "lrs": lrs}, os.path.join(out, "rank%d.pt" % rank))


def _fsdp2_available():
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        from torch.distributed.tensor import DTensor  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _fsdp2_available(), reason="torch.distributed.fsdp.fully_shard is not in this torch")
@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_fsdp2_dtensor_params(optim, tmp_path):
    spawn(_fsdp_worker, lambda port: (optim, port, str(tmp_path)))
    results = [torch.load(tmp_path / ("rank%d.pt" % r), weights_only=False) for r in range(WORLD)]
    ref, ref_lrs = _single_process(optim)
    for res in results:
        torch.testing.assert_close(res["final"], ref, rtol=1e-12, atol=1e-12)
        assert res["lrs"] == ref_lrs
