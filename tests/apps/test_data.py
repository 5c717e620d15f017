"""Tests of clr_ext.apps.data: the digits split, the CNNs, the CIFAR-10 pickle loader."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clr_ext.apps.data import (
    CaffeCifar10Full,
    CaffeMeanSubtract,
    CifarFormatError,
    DigitsCNN,
    TensorLoader,
    WithinChannelLRN,
    find_cifar10,
    load_cifar10,
    load_digits_split,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_fake_cifar10(folder, n_per_batch=6, n_test=8, seed=0, protocol=2):
    """A tiny CIFAR-10 in the real python-pickle format: dicts with bytes keys, b"data" a
    uint8 array (N, 3072), b"labels" a list of ints (as in the real files)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        d = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{k}.png".encode() for k in range(n)],
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=protocol)  # the real files are protocol-2 (Python 2) pickles
    return folder


# ------------------------------------------------------------------------------ digits
def test_digits_split_is_fixed_stratified_and_scaled():
    a = load_digits_split(test_size=360, val_size=300, seed=0)
    b = load_digits_split(test_size=360, val_size=300, seed=0)
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (1137, 300, 360)
    for x, y in ((a.x_train, a.y_train), (a.x_val, a.y_val), (a.x_test, a.y_test)):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(a.x_train.max()) == 1.0  # 16 grey levels scaled by 1/16
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert all(35 <= c <= 37 for c in torch.bincount(a.y_test, minlength=10).tolist())  # stratified
    # Disjoint: no image of the test set is also a training image (digits has few duplicates,
    # so compare the (image, label) pairs as sets, counting multiplicity).
    all_rows = {tuple(r.tolist()) for r in torch.cat([a.x_train, a.x_val, a.x_test]).flatten(1)}
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert len(all_rows) > 1790
    c = load_digits_split(test_size=360, val_size=0, seed=1)
    assert len(c.x_val) == 0 and len(c.x_train) == 1437
    assert not torch.equal(c.y_test, a.y_test)


def test_digits_cnn_shapes_and_size():
    model = DigitsCNN()
    out = model(torch.zeros(5, 1, 8, 8))
    assert out.shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) < 10_000


def test_tensor_loader_passes_and_shuffles():
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    loader = TensorLoader(x, y, 4, seed=3)
    assert len(loader) == 3
    first = torch.cat([yb for _, yb in loader])
    second = torch.cat([yb for _, yb in loader])
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert not torch.equal(first, second)  # reshuffled every pass
    again = torch.cat([yb for _, yb in TensorLoader(x, y, 4, seed=3)])
    assert torch.equal(first, again)  # reproducible from its seed
    for xb, yb in loader:
        assert torch.equal(xb.squeeze(1).long(), yb)  # inputs and targets stay paired
    dropped = TensorLoader(x, y, 4, drop_last=True)
    assert len(dropped) == 2 and all(len(yb) == 4 for _, yb in dropped)
    ordered = torch.cat([yb for _, yb in TensorLoader(x, y, 3, shuffle=False)])
    assert ordered.tolist() == list(range(10))
    stream = TensorLoader(x, y, 4, drop_last=True).forever()
    assert len([next(stream) for _ in range(7)]) == 7
    with pytest.raises(ValueError):
        TensorLoader(x, y[:5], 2)


# ----------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_loader_reads_the_pickle_format(tmp_path, protocol):
    write_fake_cifar10(str(tmp_path), protocol=protocol)
    data = load_cifar10(str(tmp_path))
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.y_train.shape == (30,) and data.y_train.dtype == torch.int64
    assert data.x_test.shape == (8, 3, 32, 32)
    # Layout: each row is 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    with open(tmp_path / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    img = data.x_train[6]  # the first image of batch 2
    row = raw[b"data"][0]
    assert img[0, 0, 0] == row[0] and img[0, 0, 1] == row[1] and img[0, 1, 0] == row[32]
    assert img[1, 0, 0] == row[1024] and img[2, 31, 31] == row[3071]
    assert data.y_train[6].item() == raw[b"labels"][0]


def test_cifar10_in_the_extracted_subfolder(tmp_path):
    write_fake_cifar10(str(tmp_path / "cifar-10-batches-py"))
    assert find_cifar10(str(tmp_path)) == str(tmp_path / "cifar-10-batches-py")
    assert load_cifar10(str(tmp_path)).x_test.shape[0] == 8


def test_cifar10_missing_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_cifar10(str(tmp_path / "nowhere"))
    write_fake_cifar10(str(tmp_path))
    os.remove(tmp_path / "test_batch")
    with pytest.raises(FileNotFoundError, match="missing: test_batch") as err:
        load_cifar10(str(tmp_path))
    assert "cifar-10-python.tar.gz" in str(err.value)


def test_cifar10_malformed_batches_are_rejected(tmp_path):
    write_fake_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(CifarFormatError, match="data_batch_3.*3072"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_3", "wb") as f:
        f.write(b"not a pickle at all")
    with pytest.raises(CifarFormatError, match="data_batch_3"):
        load_cifar10(str(tmp_path))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > evil_was_here",))


def test_cifar10_loader_refuses_code_in_pickles(tmp_path, monkeypatch):
    write_fake_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CifarFormatError, match="refusing"):
        load_cifar10(str(tmp_path))
    assert not (tmp_path / "evil_was_here").exists()


def test_caffe_mean_subtract():
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    pre = CaffeMeanSubtract.fit(x)
    mean = x.double().mean(0)
    assert torch.allclose(pre.mean.double(), mean, atol=1e-4)
    out = pre(x[:2])
    assert out.dtype == torch.float32 and torch.allclose(out, x[:2].float() - mean.float(), atol=1e-4)


# -------------------------------------------------------------- Caffe's CIFAR-10 full net
def test_caffe_cifar10_full_architecture():
    torch.manual_seed(0)
    net = CaffeCifar10Full()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # Caffe rounds pooling up: 32 -> 16 -> 8 -> 4, so the classifier sees 64 * 4 * 4 inputs.
    assert net.ip1.in_features == 1024
    x = torch.randn(1, 3, 32, 32)
    h = net.norm1(F.relu(net.pool1(net.conv1(x))))
    assert h.shape == (1, 32, 16, 16)
    h = net.norm2(net.pool2(F.relu(net.conv2(h))))
    assert h.shape == (1, 32, 8, 8)
    assert net.pool3(F.relu(net.conv3(h))).shape == (1, 64, 4, 4)
    # Parameters: 2,432 + 25,632 + 51,264 + 10,250, as Caffe's cifar10_full.
    assert sum(p.numel() for p in net.parameters()) == 89_578
    assert float(net.conv1.weight.detach().std()) == pytest.approx(1e-4, rel=0.1)
    assert float(net.conv2.weight.detach().std()) == pytest.approx(1e-2, rel=0.1)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in (net.conv1, net.conv2, net.conv3, net.ip1))


def test_caffe_param_groups_cover_every_parameter_once():
    net = CaffeCifar10Full()
    groups = net.caffe_param_groups(0.004)
    ids = [id(p) for params, _, _ in groups for p in params]
    assert sorted(ids) == sorted(id(p) for p in net.parameters()) and len(set(ids)) == len(ids)
    by_param = {id(p): (mult, wd) for params, mult, wd in groups for p in params}
    assert by_param[id(net.conv1.bias)] == (2.0, 0.004) and by_param[id(net.conv3.bias)] == (1.0, 0.004)
    assert by_param[id(net.ip1.weight)] == (1.0, pytest.approx(1.0))
    assert by_param[id(net.ip1.bias)] == (2.0, 0.0)


def test_within_channel_lrn_matches_caffe_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64) * 30
    lrn = WithinChannelLRN(3, alpha=5e-3, beta=0.75)
    # Caffe: scale = 1 + alpha / n^2 * sum of squares over the zero-padded n x n window.
    padded = F.pad(x * x, (1, 1, 1, 1))
    expected = torch.empty_like(x)
    for i in range(5):
        for j in range(6):
            s = padded[:, :, i : i + 3, j : j + 3].sum(dim=(2, 3))
            expected[:, :, i, j] = x[:, :, i, j] / (1 + 5e-3 / 9 * s) ** 0.75
    assert torch.allclose(lrn(x), expected, rtol=1e-12)
    with pytest.raises(ValueError):
        WithinChannelLRN(2)
