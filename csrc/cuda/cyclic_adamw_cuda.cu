// The CUDA implementation of clr_ext::cyclic_adamw_: per step and bucket, one multi-tensor
// update launch per ~540 tensors (the schedule and each param's step count read on the
// device, csrc/cuda/cyclic_adamw_kernel.cuh) and then one step-count launch per ~4,000
// params (see the NOTE there for why the counts advance in a launch of their own).
//
// No host synchronisation: the iteration, the step counts, the loss scale and the
// overflow flag are only ever read by the kernels; the host checks metadata and packs
// addresses. Nothing is allocated except the staging of non-dense tensors, so the whole
// step can be captured in a CUDA graph. Compiled with --fmad=false (setup.py, CMake).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "../cyclic_sgd.h"
#include "../dense_layout.h"  // same_dense_layout: the kernel walks raw memory
#include "cyclic_adamw_kernel.cuh"

namespace clr_cuda {

namespace {

// The tables are built on the host stack and passed by value: no device allocation, no copy.
template <typename S>
void launch_adamw(const std::vector<AdamwEntry>& entries, const AdamwStepArgs& args, bool amsgrad,
                  cudaStream_t stream) {
  AdamwTensorTable table;
  for_each_adamw_table(entries.data(), (int64_t)entries.size(), table,
                       [&](const AdamwTensorTable& full, int64_t chunks) {
                         if (amsgrad) {
                           cyclic_adamw_kernel<S, true><<<(unsigned)chunks, kBlockSize, 0, stream>>>(full, args);
                         } else {
                           cyclic_adamw_kernel<S, false><<<(unsigned)chunks, kBlockSize, 0, stream>>>(full, args);
                         }
                         C10_CUDA_KERNEL_LAUNCH_CHECK();
                       });
}

void launch_step_counts(const std::vector<float*>& steps, const StepCountArgs& args, cudaStream_t stream) {
  StepCountTable table;
  for_each_step_table(steps.data(), (int64_t)steps.size(), table, [&](const StepCountTable& full) {
    const unsigned blocks = (unsigned)((full.count + kStepCountBlock - 1) / kStepCountBlock);
    adamw_step_count_kernel<<<blocks, kStepCountBlock, 0, stream>>>(full, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

}  // namespace clr_cuda

namespace clr_ext {

void cyclic_adamw_cuda_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                        const at::Tensor& iteration, at::ArrayRef<double> bounds, at::ArrayRef<double> shape,
                        int64_t mode, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                        bool maximize, bool cycle_momentum, const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf, int64_t fused_width) {
  // Host-only metadata checks; for CUDA neither the iteration nor found_inf is read here.
  // fused_width is parsed (and checked) but not read: CUDA's square root is IEEE's either way.
  const AdamwConfig config = parse_adamw_config(bounds, shape, mode, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                                                cycle_momentum, fused_width);
  check_adamw_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad, iteration,
                      grad_scale, found_inf, at::kCUDA);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(iteration.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  clr_cuda::AdamwStepArgs args;
  const at::Tensor scale_t = device_scalar(grad_scale, &args.grad_scale_is_double);
  const at::Tensor inf_t = device_scalar(found_inf, &args.found_inf_is_double);
  args.iteration = iteration.const_data_ptr<int64_t>();
  args.grad_scale = scale_t.defined() ? scale_t.const_data_ptr() : nullptr;
  args.found_inf = inf_t.defined() ? inf_t.const_data_ptr() : nullptr;
  args.shape = config.shape;
  args.bounds = config.bounds;
  args.beta1 = config.beta1;
  args.beta2 = config.beta2;
  args.eps = config.eps;
  args.weight_decay = config.weight_decay;
  args.cycle_momentum = config.cycle_momentum ? 1 : 0;
  args.maximize = config.maximize ? 1 : 0;

  // Tensors whose layouts differ run through dense copies, copied back afterwards
  // (device copies on the current stream: no sync, capturable).
  std::vector<at::Tensor> staged;  // 5 per staged param: param, grad, exp_avg, exp_avg_sq, max (or undefined)
  std::vector<size_t> staged_index;
  std::vector<clr_cuda::AdamwEntry> entries;
  std::vector<float*> steps;
  entries.reserve(params.size());
  steps.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    // Every param's count advances (in the second launch), those without elements too.
    steps.push_back(state_steps[i].mutable_data_ptr<float>());
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    const at::Tensor& p = params[i];
    clr_cuda::AdamwEntry e;
    const bool dense = same_dense_layout(p, grads[i]) && same_dense_layout(p, exp_avgs[i]) &&
                       same_dense_layout(p, exp_avg_sqs[i]) && (!amsgrad || same_dense_layout(p, max_exp_avg_sqs[i]));
    if (dense) {
      e.param = p.data_ptr();
      e.grad = grads[i].data_ptr();
      e.exp_avg = exp_avgs[i].data_ptr();
      e.exp_avg_sq = exp_avg_sqs[i].data_ptr();
      e.max_exp_avg_sq = amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr;
    } else {
      staged_index.push_back(i);
      const size_t base = staged.size();
      staged.push_back(p.contiguous());
      staged.push_back(grads[i].contiguous());
      staged.push_back(exp_avgs[i].contiguous());
      staged.push_back(exp_avg_sqs[i].contiguous());
      staged.push_back(amsgrad ? max_exp_avg_sqs[i].contiguous() : at::Tensor());
      e.param = staged[base].data_ptr();
      e.grad = staged[base + 1].data_ptr();
      e.exp_avg = staged[base + 2].data_ptr();
      e.exp_avg_sq = staged[base + 3].data_ptr();
      e.max_exp_avg_sq = amsgrad ? staged[base + 4].data_ptr() : nullptr;
    }
    e.step = state_steps[i].const_data_ptr<float>();
    e.numel = n;
    TORCH_CHECK(clr_cuda::chunks_of(n) < INT32_MAX, "clr_ext: a tensor of ", n, " elements is too large");
    entries.push_back(e);
  }
  if (!entries.empty()) {
    switch (params[0].scalar_type()) {
      case at::kFloat:
        clr_cuda::launch_adamw<float>(entries, args, amsgrad, stream);
        break;
      case at::kDouble:
        clr_cuda::launch_adamw<double>(entries, args, amsgrad, stream);
        break;
      case at::kHalf:
        clr_cuda::launch_adamw<clr_float16>(entries, args, amsgrad, stream);
        break;
      case at::kBFloat16:
        clr_cuda::launch_adamw<clr_bfloat16>(entries, args, amsgrad, stream);
        break;
      default:
        TORCH_CHECK(false, "clr_ext: unsupported dtype ", params[0].scalar_type());
    }
  }
  // After every update launch of this bucket (stream order): the counts they read.
  clr_cuda::StepCountArgs count_args;
  count_args.found_inf = args.found_inf;
  count_args.found_inf_is_double = args.found_inf_is_double;
  clr_cuda::launch_step_counts(steps, count_args, stream);

  // A skipped step copies back what the kernel left alone: the staged values, unchanged.
  for (size_t k = 0; k < staged_index.size(); ++k) {
    const size_t i = staged_index[k];
    params[i].copy_(staged[5 * k]);
    if (args.grad_scale != nullptr) grads[i].copy_(staged[5 * k + 1]);
    exp_avgs[i].copy_(staged[5 * k + 2]);
    exp_avg_sqs[i].copy_(staged[5 * k + 3]);
    if (amsgrad) max_exp_avg_sqs[i].copy_(staged[5 * k + 4]);
  }
}

int64_t cuda_adamw_max_tensors_per_launch() { return clr_cuda::kAdamwMaxTensors; }

}  // namespace clr_ext

TORCH_LIBRARY_IMPL(clr_ext, CUDA, m) { m.impl("cyclic_adamw_", &clr_ext::cyclic_adamw_cuda_); }
