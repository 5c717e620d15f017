"""Layouts whose strides differ only on size-1 dimensions (issue 15), shared by the CPU op's
tests (backends/test_layouts.py) and the CUDA twin (cuda/test_cuda_sgd.py). Imports no
pytest: the GPU machine may lack it."""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

Shape = Tuple[int, ...]
#: what a staged (copied) tensor shows in the profiler, from the op's own dispatches
COPY_OPS = ("aten::contiguous", "aten::clone", "aten::copy_", "aten::empty_like", "aten::empty_strided")


def with_size1_stride(t: torch.Tensor, dim: int, stride: int) -> torch.Tensor:
    """``t``'s values in a new dense tensor whose stride on size-1 dimension ``dim`` is
    ``stride`` (every other stride as in ``t``)."""
    assert t.shape[dim] == 1
    strides = list(t.stride())
    strides[dim] = stride
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in channels_last strides. (t.contiguous(memory_format=...) would keep a
    (C, 1, k, k) tensor's contiguous strides: with one channel it already counts as
    channels_last-contiguous.)"""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last).copy_(t)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


#: name: (param layout, grad layout, buffer layout). Every pair differs only on a size-1
#: dimension, and each tensor is dense.
_MAKERS: Dict[str, Tuple[Callable, Callable, Callable]] = {
    # depthwise conv weights: a contiguous param, a channels_last grad (and the reverse)
    "depthwise-contig-param-cl-grad": (_same, channels_last, _same),
    "depthwise-cl-param-contig-grad": (channels_last, _same, channels_last),
    # any stride at all on the size-1 dimension, a different one per tensor
    "depthwise-odd-strides": (
        lambda t: with_size1_stride(t, 1, 1),
        lambda t: with_size1_stride(t, 1, 12345),
        lambda t: with_size1_stride(t, 1, 2),
    ),
    # a (1, n) row: a transposed (n, 1) column against a contiguous row
    "row-from-transpose": (_same, lambda t: t.t().contiguous().t(), lambda t: with_size1_stride(t, 0, 7)),
    # size-1 leading and trailing dimensions
    "leading-trailing-ones": (
        lambda t: with_size1_stride(with_size1_stride(t, 0, 99), 2, 5),
        _same,
        lambda t: with_size1_stride(t, 2, 0),
    ),
}


def size_one_layouts(shapes: Dict[str, Shape]) -> Dict[str, Tuple[Shape, Callable, Callable, Callable]]:
    """name: (shape, param layout, grad layout, buffer layout) for the named cases, each at
    the shape given (the CUDA twin's are larger: several chunks per tensor)."""
    return {name: (shape, *_MAKERS[name]) for name, shape in shapes.items()}


def staged_copies(names: List[str]) -> List[str]:
    return [n for n in names if n in COPY_OPS]
