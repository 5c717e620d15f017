// The CUDA implementation of the SGD op: one multi-tensor launch per step (per ~720
// tensors) that reads the iteration from the device, evaluates the schedule
// (csrc/math/schedule.h, double precision) and applies the update (csrc/math/sgd_update.h)
// to every element of the bucket.
//
// No host synchronisation: the iteration, the loss scale and the overflow flag are
// only ever read by the kernel; the host does metadata checks and packs addresses.
// Nothing here allocates except the staging of non-dense tensors, so the whole step
// can be captured in a CUDA graph.
//
// Compiled with --fmad=false (setup.py): the update then rounds exactly like the
// CPU kernel (built with -ffp-contract=off; both have the same explicit fmas from
// sgd_update.h), and schedule.h uses explicitly rounded
// double intrinsics on the device, so CPU and GPU steps agree to the last bit
// wherever the device pow() agrees with the host's.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "../op/sgd_op.h"
#include "../op/staging.h"
#include "launch.h"
#include "scheduled_sgd_kernel.cuh"

namespace clr_ext {

void run_cuda(const SgdCall& call) {
  const SgdConfig& config = call.config;
  at::TensorList params = call.params, momentum_buffers = call.momentum_buffers;
  at::TensorList momentum_start = call.momentum_start;
  if (params.empty()) return;
  const clr_cuda::DeviceStep step(call.step, config, config.momentum);
  clr_cuda::SgdStepArgs args;
  args.step = step.inputs;
  args.dampening = config.dampening;
  args.weight_decay = config.weight_decay;
  const bool use_buffers = !momentum_buffers.empty();
  args.has_buffers = use_buffers ? 1 : 0;
  args.first_step = config.first_step ? 1 : 0;
  args.nesterov = config.nesterov ? 1 : 0;
  args.use_weight_decay = config.weight_decay != 0.0 ? 1 : 0;

  DenseStaging<3> staging({params, call.grads, momentum_buffers});
  std::vector<clr_cuda::SgdTable::Entry> entries;
  entries.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = clr_cuda::entry_numel(params[i]);
    if (n == 0) continue;
    const std::array<void*, 3> ptr = staging.addresses(i);
    entries.push_back(
        {{ptr[0], ptr[1], ptr[2]}, momentum_start.empty() ? nullptr : momentum_start_of(momentum_start, i), n});
  }
  clr_cuda::launch_tables<clr_cuda::SgdTable>(
      params[0].scalar_type(), entries, [&](auto storage, const clr_cuda::SgdTable& table, unsigned blocks) {
        clr_cuda::cyclic_sgd_kernel<decltype(storage)><<<blocks, clr_cuda::kBlockSize, 0, step.stream>>>(table, args);
      });
  staging.copy_back({true, call.step.grad_scale.has_value(), use_buffers});
}

int64_t cuda_max_tensors_per_launch() { return clr_cuda::kMaxTensors; }

}  // namespace clr_ext
