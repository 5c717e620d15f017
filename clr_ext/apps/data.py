"""Datasets and models for the demo and the paper's CIFAR-10 experiment.

- Handwritten digits (scikit-learn's ``load_digits``: 1,797 8x8 images that ship inside the
  scikit-learn package, so nothing is downloaded) with a fixed, stratified split and a small
  CNN that trains in seconds on a CPU.
- CIFAR-10 in its standard python-pickle batch format (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``), read from a local folder, and Caffe's CIFAR-10 "full" network, the one
  the paper's CIFAR-10 results (Table 1) were measured with.
- :class:`TensorLoader`, a minimal shuffling minibatch iterator over in-memory tensors (a
  ``torch.utils.data.DataLoader`` over a ``TensorDataset`` indexes sample by sample, which
  costs more than the tiny models' steps themselves).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DigitsSplit",
    "load_digits_split",
    "DigitsCNN",
    "TensorLoader",
    "CIFAR10_TRAIN_FILES",
    "CIFAR10_TEST_FILE",
    "Cifar10",
    "CifarFormatError",
    "load_cifar10",
    "find_cifar10",
    "CaffeMeanSubtract",
    "WithinChannelLRN",
    "CaffeCifar10Full",
]


# --------------------------------------------------------------------------------------
# Minibatches over in-memory tensors
# --------------------------------------------------------------------------------------
class TensorLoader:
    """Minibatches ``(x[idx], y[idx])`` over in-memory tensors; re-iterable (one pass per
    ``iter()``), reshuffled every pass from its own seeded generator, so a run is
    reproducible and independent of the global RNG.

    ``transform`` (optional) is applied to each input batch (e.g. uint8 -> float and mean
    subtraction for CIFAR-10, done per batch to keep the stored data small).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        transform=None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.transform = transform
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        else:
            order = None
        for k in range(len(self)):
            sl = slice(k * self.batch_size, min(n, (k + 1) * self.batch_size))
            if order is None:
                xb, yb = self.x[sl], self.y[sl]
            else:
                idx = order[sl]
                xb, yb = self.x[idx], self.y[idx]
            yield (self.transform(xb) if self.transform is not None else xb), yb

    def forever(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches without end, one reshuffled pass after another."""
        while True:
            yield from self


# --------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------
@dataclass
class DigitsSplit:
    """Inputs are float32 (N, 1, 8, 8) in [0, 1]; targets int64 class indices 0-9."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(*, test_size: int = 360, val_size: int = 0, seed: int = 0) -> DigitsSplit:
    """scikit-learn's handwritten digits (1,797 images, 8x8, 16 grey levels), split into
    train / validation / test sets, stratified by class, with a fixed ``seed`` so that every
    run of the demo sees the same split. ``val_size`` may be 0 (empty validation set)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    n = len(y)
    if not (0 < test_size and 0 <= val_size and test_size + val_size < n - 10):
        raise ValueError(f"test_size={test_size} and val_size={val_size} leave too little to train on ({n} images)")
    idx = torch.arange(n).numpy()
    rest, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y.numpy())
    if val_size:
        train, val = train_test_split(rest, test_size=val_size, random_state=seed + 1, stratify=y.numpy()[rest])
    else:
        train, val = rest, rest[:0]
    train, val, test = (torch.as_tensor(sorted(a), dtype=torch.int64) for a in (train, val, test))
    return DigitsSplit(x[train], y[train], x[val], y[val], x[test], y[test])


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: two 3x3 conv layers (16, 32 filters) with ReLU and 2x2
    max-pooling, then one linear layer; about 6,000 parameters, so one step takes well under
    a millisecond of compute and the demo's dozens of runs fit in a few minutes on 2 cores."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
        )
        self.classifier = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


# --------------------------------------------------------------------------------------
# CIFAR-10 (python-pickle batches)
# --------------------------------------------------------------------------------------
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
_CIFAR10_SUBDIR = "cifar-10-batches-py"


class CifarFormatError(ValueError):
    """A CIFAR-10 batch file that is not in the python-pickle batch format."""


@dataclass
class Cifar10:
    """uint8 images (N, 3, 32, 32) (channels R, G, B) and int64 labels 0-9."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def find_cifar10(root: os.PathLike) -> str:
    """The folder holding the batch files: ``root`` itself or ``root/cifar-10-batches-py``
    (what extracting ``cifar-10-python.tar.gz`` gives). Raises FileNotFoundError saying what
    is expected where."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CIFAR-10 data root {root!r} is not a folder")
    names = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    for folder in (root, os.path.join(root, _CIFAR10_SUBDIR)):
        if all(os.path.isfile(os.path.join(folder, f)) for f in names):
            return folder
    missing = [f for f in names if not os.path.isfile(os.path.join(root, f))]
    raise FileNotFoundError(
        f"CIFAR-10 not found in {root!r}: expected the python-pickle batches "
        f"({', '.join(names)}) there or in {os.path.join(root, _CIFAR10_SUBDIR)!r} "
        f"(extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html); "
        f"missing: {', '.join(missing)}"
    )


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays): a pickle
    can otherwise run arbitrary code, and the data root is user-supplied."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


def _read_batch(path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CifarFormatError(f"{path}: not a CIFAR-10 python-pickle batch ({e})") from None
    if not isinstance(d, dict):
        raise CifarFormatError(f"{path}: not a CIFAR-10 python-pickle batch (no dict inside)")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise CifarFormatError(f"{path}: a CIFAR-10 batch needs b'data' and b'labels' entries")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise CifarFormatError(
            f"{path}: expected uint8 data of shape (N, 3072) and N labels, got "
            f"{data.dtype} {data.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CifarFormatError(f"{path}: labels outside 0-9")
    # Each row is the 1024 red, then green, then blue values of a 32x32 image, row-major.
    x = torch.from_numpy(data.copy()).view(-1, 3, 32, 32)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_cifar10(root: os.PathLike) -> Cifar10:
    """Read CIFAR-10's python-pickle batches from ``root`` (see :func:`find_cifar10`)."""
    folder = find_cifar10(root)
    parts = [_read_batch(os.path.join(folder, f)) for f in CIFAR10_TRAIN_FILES]
    x_test, y_test = _read_batch(os.path.join(folder, CIFAR10_TEST_FILE))
    return Cifar10(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), x_test, y_test)


class CaffeMeanSubtract:
    """Caffe's CIFAR-10 preprocessing: raw 0-255 pixel values minus the training set's mean
    image (no scaling). The paper's LRs (0.001-0.006) are for inputs of that range."""

    def __init__(self, mean_image: torch.Tensor) -> None:
        self.mean = mean_image.float()

    @classmethod
    def fit(cls, x_train_uint8: torch.Tensor) -> "CaffeMeanSubtract":
        # Accumulate in float64 chunks: a float32 sum over 50,000 images loses digits.
        total = torch.zeros(x_train_uint8.shape[1:], dtype=torch.float64, device=x_train_uint8.device)
        for k in range(0, len(x_train_uint8), 5000):
            total += x_train_uint8[k : k + 5000].double().sum(0)
        return cls(total / max(1, len(x_train_uint8)))

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.float() - self.mean.to(x_uint8.device)


# --------------------------------------------------------------------------------------
# Caffe's CIFAR-10 "full" network
# --------------------------------------------------------------------------------------
class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``:
    ``x / (1 + alpha * mean_{local_size x local_size window}(x^2)) ** beta``, the window
    zero-padded and the mean taken over all ``local_size**2`` positions, padding included
    (Caffe computes it with an average pooling that counts the padding).
    ``torch.nn.LocalResponseNorm`` is the ACROSS_CHANNELS kind, hence this module."""

    def __init__(self, local_size: int = 3, alpha: float = 5e-5, beta: float = 0.75) -> None:
        super().__init__()
        if local_size % 2 != 1:
            raise ValueError("local_size must be odd")
        self.local_size, self.alpha, self.beta = local_size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = F.avg_pool2d(x * x, self.local_size, stride=1, padding=self.local_size // 2, count_include_pad=True)
        return x * (1.0 + self.alpha * sq).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"local_size={self.local_size}, alpha={self.alpha}, beta={self.beta}"


class CaffeCifar10Full(nn.Module):
    """Caffe's ``cifar10_full`` network (examples/cifar10/cifar10_full_train_test.prototxt):

    conv 5x5 32 (pad 2) -> max-pool 3x3 s2 -> ReLU -> LRN;
    conv 5x5 32 (pad 2) -> ReLU -> avg-pool 3x3 s2 -> LRN;
    conv 5x5 64 (pad 2) -> ReLU -> avg-pool 3x3 s2; fully connected 1024 -> 10.

    Pooling rounds up as Caffe's does (32 -> 16 -> 8 -> 4); LRN is within-channel, local size
    3, alpha 5e-5, beta 0.75; weights are initialised as Caffe's (Gaussian, std 1e-4 for
    conv1 and 0.01 for the rest; biases 0). :meth:`caffe_param_groups` gives Caffe's per-layer
    multipliers (conv1/conv2 biases: LR x2; the last layer's weights: weight decay x250, its
    bias: LR x2 and no weight decay).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm1 = WithinChannelLRN(3, 5e-5, 0.75)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.pool2 = nn.AvgPool2d(3, stride=2, ceil_mode=True)
        self.norm2 = WithinChannelLRN(3, 5e-5, 0.75)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.pool3 = nn.AvgPool2d(3, stride=2, ceil_mode=True)
        self.ip1 = nn.Linear(64 * 4 * 4, num_classes)
        for layer, std in ((self.conv1, 1e-4), (self.conv2, 0.01), (self.conv3, 0.01), (self.ip1, 0.01)):
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(F.relu(self.pool1(self.conv1(x))))
        x = self.norm2(self.pool2(F.relu(self.conv2(x))))
        x = self.pool3(F.relu(self.conv3(x)))
        return self.ip1(x.flatten(1))

    def caffe_param_groups(self, weight_decay: float):
        """Param groups with Caffe's ``lr_mult`` / ``decay_mult`` of the prototxt, as
        ``(params, lr_mult, weight_decay)`` triples."""
        # conv3 has no param block in the prototxt, so Caffe's defaults (x1, x1) apply to it.
        return [
            ([self.conv1.weight, self.conv2.weight, self.conv3.weight, self.conv3.bias], 1.0, weight_decay),
            ([self.conv1.bias, self.conv2.bias], 2.0, weight_decay),
            ([self.ip1.weight], 1.0, 250.0 * weight_decay),
            ([self.ip1.bias], 2.0, 0.0),
        ]
