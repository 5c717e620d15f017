"""snapshot="disk": the copy that restores the model (and a given optimizer) lives in a
temporary file, not in memory, and the file is gone afterwards, whatever happened."""

import os
import tempfile

import pytest
import torch
from test_range_test import (
    ListLoader,
    assert_same_state,
    classification_batches,
    full_state,
    prepared_model_and_optimizer,
)
from torch import nn

from clr_ext.range_test import range_test
from clr_ext.range_test.run import _ModelSnapshot


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's directory for this test only, so that a file left behind shows."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def snapshot_files(folder):
    return [f for f in os.listdir(folder) if f.startswith("clr_ext_range_test_")]


def run(model, opt, snapshot, **kwargs):
    return range_test(
        model,
        ListLoader(classification_batches()),
        kwargs.pop("loss_fn", nn.functional.cross_entropy),
        start_lr=1e-3,
        end_lr=1.0,
        num_iters=10,
        optimizer=opt,
        snapshot=snapshot,
        progress=False,
        **kwargs,
    )


@pytest.mark.filterwarnings("ignore:the range-test curve")
@pytest.mark.parametrize("optimizer", ["given_sgd", "given_adamw", "default"])
def test_disk_snapshot_restores_bit_exactly_and_removes_its_file(private_tmp, optimizer):
    model, opt = prepared_model_and_optimizer()
    if optimizer == "given_adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for xb, yb in classification_batches(seed=3, n_batches=2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    elif optimizer == "default":
        opt = None
    before = full_state(model, opt)
    result = run(model, opt, "disk")
    assert_same_state(before, full_state(model, opt))
    assert snapshot_files(private_tmp) == []
    # The same curve as with the in-memory snapshot.
    model2, opt2 = prepared_model_and_optimizer()
    if optimizer != "given_sgd":
        model2, opt2 = model, (None if opt is None else opt)
    assert run(model2, opt2, "device").losses == result.losses


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_disk_snapshot_restores_after_an_exception(private_tmp, exc):
    model, opt = prepared_model_and_optimizer()
    before = full_state(model, opt)
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        if calls["n"] == 5:
            raise exc("boom")
        return nn.functional.cross_entropy(out, target)

    with pytest.raises(exc):
        run(model, opt, "disk", loss_fn=loss_fn)
    assert_same_state(before, full_state(model, opt))
    assert snapshot_files(private_tmp) == []


def test_disk_snapshot_keeps_no_copy_in_memory(private_tmp):
    """What the snapshot object holds between save and restore: indices into the file, no
    tensor copies (the in-memory snapshots hold one copy of every parameter and buffer)."""
    model, opt = prepared_model_and_optimizer()
    snap = _ModelSnapshot(model, "disk", opt)
    assert len(snapshot_files(private_tmp)) == 1
    held = [v for _, _, value, grad in snap.values.values() for v in (value, grad)]
    assert all(v is None or isinstance(v, int) for v in held)
    assert snap.optimizer_state is None
    memory = _ModelSnapshot(model, "cpu", opt)
    assert all(torch.is_tensor(value) for _, _, value, _ in memory.values.values())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    snap.restore()
    untouched, _ = prepared_model_and_optimizer()
    assert_same_state(full_state(untouched), full_state(model) | {"ids": full_state(untouched)["ids"]})
    assert snapshot_files(private_tmp) == []
