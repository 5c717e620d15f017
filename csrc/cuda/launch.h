// What every rule's CUDA launcher shares on the host: the step inputs the kernels read on
// the device (cuda/multi_tensor.cuh, StepInputs), and the storage type of a bucket's dtype.
// Host code with ATen; included by the .cu launchers only.
#pragma once

#include <ATen/ATen.h>

#include "../math/storage.h"
#include "multi_tensor.cuh"

namespace clr_cuda {

// grad_scale / found_inf / lr_scale as the kernels read them: float32 or float64 (is_double says
// which; anything else is converted on the device), or undefined when not given.
inline at::Tensor device_scalar(const c10::optional<at::Tensor>& t, int32_t* is_double) {
  *is_double = 0;
  if (!t.has_value()) return at::Tensor();
  if (t->scalar_type() == at::kDouble) {
    *is_double = 1;
    return t->contiguous();
  }
  if (t->scalar_type() == at::kFloat) return t->contiguous();
  return t->to(at::kFloat);
}

// The kernels' StepInputs, and the device scalars they point into (kept alive until the
// launches are queued). Nothing is read on the host: no sync.
struct DeviceStepInputs {
  StepInputs inputs;
  at::Tensor grad_scale;
  at::Tensor found_inf;
  at::Tensor lr_scale;

  DeviceStepInputs(const at::Tensor& iteration, const c10::optional<at::Tensor>& grad_scale_arg,
                   const c10::optional<at::Tensor>& found_inf_arg, const c10::optional<at::Tensor>& lr_scale_arg,
                   const clr_shape& shape, const clr_bounds& bounds, double fixed_momentum, bool cycle_momentum,
                   bool maximize)
      : inputs(),
        grad_scale(device_scalar(grad_scale_arg, &inputs.grad_scale_is_double)),
        found_inf(device_scalar(found_inf_arg, &inputs.found_inf_is_double)),
        lr_scale(device_scalar(lr_scale_arg, &inputs.lr_scale_is_double)) {
    inputs.iteration = iteration.const_data_ptr<int64_t>();
    inputs.grad_scale = grad_scale.defined() ? grad_scale.const_data_ptr() : nullptr;
    inputs.found_inf = found_inf.defined() ? found_inf.const_data_ptr() : nullptr;
    inputs.lr_scale = lr_scale.defined() ? lr_scale.const_data_ptr() : nullptr;
    inputs.shape = shape;
    inputs.bounds = bounds;
    inputs.momentum = fixed_momentum;
    inputs.cycle_momentum = cycle_momentum ? 1 : 0;
    inputs.maximize = maximize ? 1 : 0;
  }
};

// launch(S()) with S the storage type of dtype (the op's checks admit these four only).
template <typename Launch>
void with_storage_type(at::ScalarType dtype, Launch&& launch) {
  switch (dtype) {
    case at::kFloat:
      return launch(float());
    case at::kDouble:
      return launch(double());
    case at::kHalf:
      return launch(clr_float16());
    case at::kBFloat16:
      return launch(clr_bfloat16());
    default:
      TORCH_CHECK(false, "clr_ext: unsupported dtype ", dtype);
  }
}

}  // namespace clr_cuda
