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
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <vector>

#include "../op/sgd_op.h"
#include "../op/staging.h"
#include "launch.h"
#include "scheduled_sgd_kernel.cuh"

namespace clr_ext {

void run_sgd_cuda(const SgdCall& call) {
  const SgdConfig& config = call.config;
  at::TensorList params = call.params, momentum_buffers = call.momentum_buffers;
  at::TensorList momentum_start = call.momentum_start;
  const at::Tensor& iteration = call.iteration;
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(iteration.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const clr_cuda::DeviceStepInputs step(iteration, call.grad_scale, call.found_inf, call.lr_scale, config.shape,
                                        config.bounds, config.momentum, config.cycle_momentum, config.maximize);
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
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    TORCH_CHECK(clr_cuda::chunks_of(n) < INT32_MAX, "clr_ext: a tensor of ", n, " elements is too large");
    const std::array<void*, 3> ptr = staging.addresses(i);
    entries.push_back(
        {{ptr[0], ptr[1], ptr[2]}, momentum_start.empty() ? nullptr : momentum_start_of(momentum_start, i), n});
  }
  // The tables are built on the host stack and passed by value: no device allocation, no copy.
  clr_cuda::with_storage_type(params[0].scalar_type(), [&](auto storage) {
    using S = decltype(storage);
    clr_cuda::SgdTable table;
    clr_cuda::for_each_table(
        entries.data(), (int64_t)entries.size(), table, [&](const clr_cuda::SgdTable& full, int64_t chunks) {
          clr_cuda::cyclic_sgd_kernel<S><<<(unsigned)chunks, clr_cuda::kBlockSize, 0, stream>>>(full, args);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  });
  staging.copy_back({true, call.grad_scale.has_value(), use_buffers});
}

int64_t cuda_max_tensors_per_launch() { return clr_cuda::kMaxTensors; }

}  // namespace clr_ext
