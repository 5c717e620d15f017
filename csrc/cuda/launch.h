// What every rule's CUDA launcher shares on the host: the bucket's device and stream and
// the step inputs the kernels read on the device (DeviceStep; cuda/multi_tensor.cuh,
// StepInputs), a param's table entry size, and the packing of the tables into launches of
// the kernel for the bucket's storage type (launch_tables).
// Host code with ATen; included by the .cu launchers only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "../math/storage.h"
#include "../op/scheduled_op.h"
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

// What every rule's launcher sets up first: the bucket's device and current stream, the
// kernels' StepInputs and the device scalars they point into (kept alive until the
// launches are queued). Nothing is read on the host: no sync. Config is the rule's parsed
// scalars (SgdConfig, AdamwConfig); fixed_momentum the momentum it cycles when it does not
// (SGD's momentum, AdamW's beta1).
struct DeviceStep {
  const c10::cuda::CUDAGuard guard;
  const cudaStream_t stream;
  StepInputs inputs;
  at::Tensor grad_scale;
  at::Tensor found_inf;
  at::Tensor lr_scale;

  template <typename Config>
  DeviceStep(const clr_ext::StepTensors& step, const Config& config, double fixed_momentum)
      : guard(step.iteration.device()),
        stream(at::cuda::getCurrentCUDAStream()),
        inputs(),
        grad_scale(device_scalar(step.grad_scale, &inputs.grad_scale_is_double)),
        found_inf(device_scalar(step.found_inf, &inputs.found_inf_is_double)),
        lr_scale(device_scalar(step.lr_scale, &inputs.lr_scale_is_double)) {
    inputs.iteration = step.iteration.const_data_ptr<int64_t>();
    inputs.grad_scale = grad_scale.defined() ? grad_scale.const_data_ptr() : nullptr;
    inputs.found_inf = found_inf.defined() ? found_inf.const_data_ptr() : nullptr;
    inputs.lr_scale = lr_scale.defined() ? lr_scale.const_data_ptr() : nullptr;
    inputs.shape = config.shape;
    inputs.bounds = config.bounds;
    inputs.momentum = fixed_momentum;
    inputs.cycle_momentum = config.cycle_momentum ? 1 : 0;
    inputs.maximize = config.maximize ? 1 : 0;
  }
};

// A param's element count as its table entry holds it (0: the param has no entry), checked
// to leave a launch's chunk index in range.
inline int64_t entry_numel(const at::Tensor& param) {
  const int64_t n = param.numel();
  TORCH_CHECK(chunks_of(n) < INT32_MAX, "clr_ext: a tensor of ", n, " elements is too large");
  return n;
}

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

// The entries packed into as few tables as fit (for_each_table), and launch(S(), table,
// blocks) for each, S the storage type of dtype: one launch of the rule's kernel per table.
// The tables are built on the host stack and passed by value: no device allocation, no copy.
template <typename Table, typename Launch>
void launch_tables(at::ScalarType dtype, const std::vector<typename Table::Entry>& entries, Launch&& launch) {
  with_storage_type(dtype, [&](auto storage) {
    Table table;
    for_each_table(entries.data(), (int64_t)entries.size(), table, [&](const Table& full, int64_t chunks) {
      launch(storage, full, (unsigned)chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace clr_cuda
