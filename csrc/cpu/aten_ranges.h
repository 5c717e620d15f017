// What the CPU implementations in clr_ext._C share around the loops of cpu/*_cpu.h: a
// bucket's dtype code, the step scalars every rule's loops read, and ATen's threads over
// its flattened element space (the Cython fallback cuts the same space with OpenMP:
// multi_tensor.h, openmp_ranges).
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>

#include "../op/scheduled_op.h"
#include "multi_tensor.h"

namespace clr_cpu {

// The loops' dtype code (check_*_tensors admits no dtype but these four).
inline int32_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return kFloat32;
    case at::kDouble:
      return kFloat64;
    case at::kHalf:
      return kFloat16;
    default:
      return kBFloat16;
  }
}

// What every rule's Args (StepArgs, AdamwArgs) carries of the step besides the rule's own
// scalars: the schedule's LR times lr_scale, maximize, and AMP's scale, read on the host.
template <typename Args>
void set_step_scalars(Args* args, const clr_ext::StepTensors& step, double lr, bool maximize) {
  args->lr = clr_ext::host_scaled_lr(lr, step.lr_scale);
  args->maximize = maximize ? 1 : 0;
  args->unscale = step.grad_scale.has_value() ? 1 : 0;
  args->grad_scale = step.grad_scale.has_value() ? step.grad_scale->item<double>() : 1.0;
}

// run(begin, end) over [0, total) on ATen's threads, cut at kRangeAlign, one thread below
// kParallelGrain.
template <typename RunRange>
void aten_ranges(int64_t total, const RunRange& run) {
  const int64_t n_blocks = (total + kRangeAlign - 1) / kRangeAlign;
  at::parallel_for(0, n_blocks, kParallelGrain / kRangeAlign,
                   [&](int64_t lo, int64_t hi) { run(lo * kRangeAlign, std::min(total, hi * kRangeAlign)); });
}

}  // namespace clr_cpu
