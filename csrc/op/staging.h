// Staging of non-dense tensors, for every rule and device: the kernels walk a param and
// its grad and state as raw memory of one dense layout, and whatever is laid out
// otherwise runs through dense copies, copied back after the kernels (device copies on
// the current stream on CUDA: no sync, capturable).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstddef>
#include <vector>

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

// The N streams of one op call (streams[0] the params, then the grads and the rule's
// state, each a list with an element per param; an empty list is a stream the step does
// not use, whose addresses are null), as the addresses the kernels walk.
template <size_t N>
class DenseStaging {
 public:
  explicit DenseStaging(const std::array<at::TensorList, N>& streams) : streams_(streams) {}

  // Param i's N addresses: its tensors' own memory when each is laid out like the param,
  // else dense copies of all of them, made now.
  std::array<void*, N> addresses(size_t i) {
    // References, not copies: a Tensor copy is an atomic refcount round trip per parameter.
    const at::Tensor& param = streams_[0][i];
    bool dense = true;
    for (size_t k = 1; k < N && dense; ++k) dense = streams_[k].empty() || same_dense_layout(param, streams_[k][i]);
    std::array<void*, N> out;
    if (dense) {
      for (size_t k = 0; k < N; ++k) out[k] = streams_[k].empty() ? nullptr : streams_[k][i].data_ptr();
      return out;
    }
    staged_index_.push_back(i);
    for (size_t k = 0; k < N; ++k) {
      copies_.push_back(streams_[k].empty() ? at::Tensor() : streams_[k][i].contiguous());
      out[k] = copies_.back().defined() ? copies_.back().data_ptr() : nullptr;
    }
    return out;
  }

  // After the kernels: the staged values back into the streams the step wrote.
  void copy_back(const std::array<bool, N>& written) {
    for (size_t j = 0; j < staged_index_.size(); ++j)
      for (size_t k = 0; k < N; ++k)
        if (written[k] && !streams_[k].empty()) streams_[k][staged_index_[j]].copy_(copies_[N * j + k]);
  }

 private:
  std::array<at::TensorList, N> streams_;
  std::vector<at::Tensor> copies_;  // N per staged param (undefined for unused streams)
  std::vector<size_t> staged_index_;
};

}  // namespace clr_ext
