// The CUDA implementation of the AdamW op: per step and bucket, one multi-tensor update
// launch per ~540 tensors (the schedule and each param's step count read on the device,
// csrc/cuda/scheduled_adamw_kernel.cuh) and then one step-count launch per ~4,000 params
// (see the NOTE there for why the counts advance in a launch of their own).
//
// No host synchronisation: the iteration, the step counts, the loss scale and the
// overflow flag are only ever read by the kernels; the host checks metadata and packs
// addresses. Nothing is allocated except the staging of non-dense tensors, so the whole
// step can be captured in a CUDA graph. Compiled with --fmad=false (setup.py, CMake).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "../op/adamw_op.h"
#include "../op/staging.h"
#include "launch.h"
#include "scheduled_adamw_kernel.cuh"

namespace clr_ext {

// fused_width is parsed (and checked) but not read: CUDA's square root is IEEE's either way.
void run_cuda(const AdamwCall& call) {
  const AdamwConfig& config = call.config;
  at::TensorList params = call.params;
  if (params.empty()) return;
  const clr_cuda::DeviceStep step(call.step, config, config.beta1);
  clr_cuda::AdamwStepArgs args;
  args.step = step.inputs;
  args.beta2 = config.beta2;
  args.eps = config.eps;
  args.weight_decay = config.weight_decay;

  DenseStaging<5> staging(
      {params, call.grads, call.exp_avgs, call.exp_avg_sqs, config.amsgrad ? call.max_exp_avg_sqs : at::TensorList()});
  std::vector<clr_cuda::AdamwTable::Entry> entries;
  std::vector<float*> steps;
  entries.reserve(params.size());
  steps.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    // Every param's count advances (in the second launch), those without elements too.
    steps.push_back(call.state_steps[i].mutable_data_ptr<float>());
    const int64_t n = clr_cuda::entry_numel(params[i]);
    if (n == 0) continue;
    const std::array<void*, 5> ptr = staging.addresses(i);
    entries.push_back({{ptr[0], ptr[1], ptr[2], ptr[3], ptr[4]}, call.state_steps[i].const_data_ptr<float>(), n});
  }
  clr_cuda::launch_tables<clr_cuda::AdamwTable>(
      params[0].scalar_type(), entries, [&](auto storage, const clr_cuda::AdamwTable& table, unsigned blocks) {
        using S = decltype(storage);
        if (config.amsgrad)
          clr_cuda::cyclic_adamw_kernel<S, true><<<blocks, clr_cuda::kBlockSize, 0, step.stream>>>(table, args);
        else
          clr_cuda::cyclic_adamw_kernel<S, false><<<blocks, clr_cuda::kBlockSize, 0, step.stream>>>(table, args);
      });
  // After every update launch of this bucket (stream order): the counts they read.
  clr_cuda::StepCountArgs count_args;
  count_args.found_inf = args.step.found_inf;
  count_args.found_inf_is_double = args.step.found_inf_is_double;
  clr_cuda::StepCountTable count_table;
  clr_cuda::for_each_table(
      steps.data(), (int64_t)steps.size(), count_table, [&](const clr_cuda::StepCountTable& full, int64_t) {
        const unsigned blocks = (unsigned)((full.count + clr_cuda::kStepCountBlock - 1) / clr_cuda::kStepCountBlock);
        clr_cuda::adamw_step_count_kernel<<<blocks, clr_cuda::kStepCountBlock, 0, step.stream>>>(full, count_args);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });

  // A skipped step copies back what the kernel left alone: the staged values, unchanged.
  staging.copy_back({true, call.step.grad_scale.has_value(), true, true, config.amsgrad});
}

int64_t cuda_adamw_max_tensors_per_launch() { return clr_cuda::kAdamwMaxTensors; }

}  // namespace clr_ext
