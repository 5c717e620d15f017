// The CUDA implementation of clr_ext::cyclic_sgd_: one multi-tensor launch per step
// (per ~740 tensors) that reads the iteration from the device, evaluates the
// schedule (csrc/schedule.h, double precision) and applies the update
// (csrc/sgd_update.h) to every element of the bucket.
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
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "../cyclic_sgd.h"
#include "../dense_layout.h"  // same_dense_layout: the kernel walks raw memory
#include "cyclic_sgd_kernel.cuh"

namespace clr_cuda {

// The table is built on the host stack and passed by value: no device allocation, no copy.
template <typename S>
void launch(const std::vector<Entry>& entries, const StepArgs& args, cudaStream_t stream) {
  TensorTable table;
  for_each_table(entries.data(), (int64_t)entries.size(), table, [&](const TensorTable& full, int64_t chunks) {
    cyclic_sgd_kernel<S><<<(unsigned)chunks, kBlockSize, 0, stream>>>(full, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace clr_cuda

namespace clr_ext {

at::Tensor device_scalar(const c10::optional<at::Tensor>& t, int32_t* is_double) {
  *is_double = 0;
  if (!t.has_value()) return at::Tensor();
  if (t->scalar_type() == at::kDouble) {
    *is_double = 1;
    return t->contiguous();
  }
  if (t->scalar_type() == at::kFloat) return t->contiguous();
  return t->to(at::kFloat);
}

void cyclic_sgd_cuda_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                      at::TensorList momentum_start, const at::Tensor& iteration, at::ArrayRef<double> bounds,
                      at::ArrayRef<double> shape, int64_t mode, double momentum, double dampening, double weight_decay,
                      bool nesterov, bool maximize, bool cycle_momentum, bool first_step,
                      const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf) {
  // Host-only metadata checks; for CUDA the iteration is not read here.
  const SgdConfig config = parse_sgd_config(bounds, shape, mode, momentum, dampening, weight_decay, nesterov, maximize,
                                            cycle_momentum, first_step);
  check_sgd_tensors(params, grads, momentum_buffers, momentum_start, iteration, grad_scale, found_inf, at::kCUDA);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(iteration.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  clr_cuda::StepArgs args;
  const at::Tensor scale_t = device_scalar(grad_scale, &args.grad_scale_is_double);
  const at::Tensor inf_t = device_scalar(found_inf, &args.found_inf_is_double);
  args.iteration = iteration.const_data_ptr<int64_t>();
  args.grad_scale = scale_t.defined() ? scale_t.const_data_ptr() : nullptr;
  args.found_inf = inf_t.defined() ? inf_t.const_data_ptr() : nullptr;
  args.shape = config.shape;
  args.bounds = config.bounds;
  args.momentum = config.momentum;
  args.dampening = config.dampening;
  args.weight_decay = config.weight_decay;
  const bool use_buffers = !momentum_buffers.empty();
  args.has_buffers = use_buffers ? 1 : 0;
  args.first_step = config.first_step ? 1 : 0;
  args.cycle_momentum = config.cycle_momentum ? 1 : 0;
  args.nesterov = config.nesterov ? 1 : 0;
  args.maximize = config.maximize ? 1 : 0;
  args.use_weight_decay = config.weight_decay != 0.0 ? 1 : 0;

  // Tensors whose layouts differ run through dense copies, copied back afterwards
  // (device copies on the current stream: no sync, capturable).
  std::vector<at::Tensor> staged_param, staged_grad, staged_buffer;
  std::vector<size_t> staged_index;
  std::vector<clr_cuda::Entry> entries;
  entries.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    at::Tensor p = params[i], g = grads[i], b = use_buffers ? momentum_buffers[i] : at::Tensor();
    const bool dense = same_dense_layout(p, g) && (!use_buffers || same_dense_layout(p, b));
    if (!dense) {
      staged_index.push_back(i);
      staged_param.push_back(p.contiguous());
      staged_grad.push_back(g.contiguous());
      staged_buffer.push_back(use_buffers ? b.contiguous() : at::Tensor());
      p = staged_param.back();
      g = staged_grad.back();
      if (use_buffers) b = staged_buffer.back();
    }
    clr_cuda::Entry e;
    e.param = p.data_ptr();
    e.grad = g.data_ptr();
    e.buffer = use_buffers ? b.data_ptr() : nullptr;
    e.momentum_start = momentum_start.empty() ? nullptr : momentum_start_of(momentum_start, i);
    e.numel = n;
    TORCH_CHECK(clr_cuda::chunks_of(n) < INT32_MAX, "clr_ext: a tensor of ", n, " elements is too large");
    entries.push_back(e);
  }
  if (!entries.empty()) {
    switch (params[0].scalar_type()) {
      case at::kFloat:
        clr_cuda::launch<float>(entries, args, stream);
        break;
      case at::kDouble:
        clr_cuda::launch<double>(entries, args, stream);
        break;
      case at::kHalf:
        clr_cuda::launch<clr_float16>(entries, args, stream);
        break;
      case at::kBFloat16:
        clr_cuda::launch<clr_bfloat16>(entries, args, stream);
        break;
      default:
        TORCH_CHECK(false, "clr_ext: unsupported dtype ", params[0].scalar_type());
    }
  }
  for (size_t k = 0; k < staged_index.size(); ++k) {
    const size_t i = staged_index[k];
    params[i].copy_(staged_param[k]);
    if (args.grad_scale != nullptr) grads[i].copy_(staged_grad[k]);
    if (use_buffers) momentum_buffers[i].copy_(staged_buffer[k]);
  }
}

int64_t cuda_max_tensors_per_launch() { return clr_cuda::kMaxTensors; }

}  // namespace clr_ext

TORCH_LIBRARY_IMPL(clr_ext, CUDA, m) { m.impl("cyclic_sgd_", &clr_ext::cyclic_sgd_cuda_); }
