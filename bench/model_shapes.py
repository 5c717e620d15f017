"""Parameter shapes of reference models, for benchmarks and tests (no torchvision needed)."""

from __future__ import annotations

from typing import List, Tuple

Shape = Tuple[int, ...]


def resnet50_param_shapes() -> List[Shape]:
    """torchvision's resnet50(): its 161 parameter tensors (25,557,032 values), in
    ``named_parameters()`` order: stem conv + BN, 16 bottlenecks (conv/BN x 3, plus a
    1x1 downsample conv + BN in the first block of each stage), then the classifier."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        out_ch = 4 * width
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(out_ch, width, 1, 1), (out_ch,), (out_ch,)]
            if b == 0:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
            in_ch = out_ch
    shapes += [(1000, 2048), (1000,)]
    return shapes


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    s = resnet50_param_shapes()
    print(len(s), sum(numel(x) for x in s))
