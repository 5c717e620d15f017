// When the CPU and CUDA steps can walk a param and its grad / momentum buffer as raw
// memory, and when they must stage them through dense copies instead (at every step).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace clr_ext {

// Both tensors are dense (no gaps, no overlaps: numel elements from data_ptr()) and every
// element sits at the same offset in both. Element (i_0, ..., i_n) is at sum(i_d * stride_d),
// and i_d is 0 wherever size_d is 1, so the strides only have to agree on dimensions of
// size > 1. A size-1 dimension's stride is arbitrary: a depthwise convolution's weight
// (C, 1, k, k) and the gradient autograd gives it commonly differ there alone, and
// comparing strides() whole would stage such tensors at every step for nothing.
// The caller has checked that the shapes are equal.
inline bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_non_overlapping_and_dense() || !b.is_non_overlapping_and_dense()) return false;
  const at::IntArrayRef sizes = a.sizes(), sa = a.strides(), sb = b.strides();
  if (sb.size() != sa.size()) return false;
  for (size_t d = 0; d < sizes.size(); ++d)
    if (sizes[d] > 1 && sa[d] != sb[d]) return false;
  return true;
}

}  // namespace clr_ext
