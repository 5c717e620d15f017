// The CPU implementation of clr_ext::cyclic_adamw_: validation, the per-param step counts on
// the host, then one parallel pass over every element of the bucket (csrc/cpu/adamw_cpu.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../cyclic_sgd.h"
#include "../dense_layout.h"  // same_dense_layout: the kernel walks raw memory
#include "adamw_cpu.h"

namespace clr_ext {

namespace {

int32_t adamw_dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return clr_cpu::kFloat32;
    case at::kDouble:
      return clr_cpu::kFloat64;
    case at::kHalf:
      return clr_cpu::kFloat16;
    default:
      return clr_cpu::kBFloat16;  // check_adamw_tensors admits no other dtype
  }
}

}  // namespace

void cyclic_adamw_cpu_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                       at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& iteration,
                       at::ArrayRef<double> bounds, at::ArrayRef<double> shape, int64_t mode, double beta1,
                       double beta2, double eps, double weight_decay, bool amsgrad, bool maximize, bool cycle_momentum,
                       const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                       int64_t fused_width) {
  const AdamwConfig config = parse_adamw_config(bounds, shape, mode, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                                                cycle_momentum, fused_width);
  check_adamw_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad, iteration,
                      grad_scale, found_inf, at::kCPU);
  const HostAdamwStep host = host_adamw_step(config, iteration.item<int64_t>());
  // On the CPU the overflow flag is host memory: reading it costs nothing, and a skipped
  // step must not touch a single element nor a step count (grads stay scaled, as in PyTorch).
  if (found_inf.has_value() && found_inf->item<double>() == 1.0) return;
  if (params.empty()) return;

  clr_cpu::AdamwArgs args;
  args.lr = host.point.lr;
  args.beta1 = host.beta1;
  args.beta2 = config.beta2;
  args.eps = config.eps;
  args.weight_decay = config.weight_decay;
  args.amsgrad = config.amsgrad ? 1 : 0;
  args.maximize = config.maximize ? 1 : 0;
  args.unscale = grad_scale.has_value() ? 1 : 0;
  args.grad_scale = grad_scale.has_value() ? grad_scale->item<double>() : 1.0;
  // AdamW(fused=True) takes IEEE square roots, torch.sqrt (AdamW's default path) MKL's.
  args.fused_width = (int32_t)config.fused_width;
  args.vsqrt = config.fused_width > 0 ? nullptr : clr_cpu::torch_vector_sqrt();
  const int32_t dtype = adamw_dtype_code(params[0].scalar_type());

  // Tensors whose layouts differ are run through dense copies, copied back afterwards.
  std::vector<at::Tensor> staged;  // 5 per staged param: param, grad, exp_avg, exp_avg_sq, max (or undefined)
  std::vector<size_t> staged_index;
  std::vector<clr_cpu::AdamwSpan> spans;
  std::vector<int64_t> offsets;
  spans.reserve(params.size());
  offsets.reserve(params.size() + 1);
  offsets.push_back(0);
  for (size_t i = 0; i < params.size(); ++i) {
    // The step count advances once per param and step, here on the host, before any
    // thread runs: params without elements count their steps too, as in torch.
    clr_cpu::AdamwSpan sp;
    clr_cpu::adamw_prepare_span(&sp, state_steps[i].mutable_data_ptr<float>(), args);
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    // References, not copies: a Tensor copy is an atomic refcount round trip per parameter.
    const at::Tensor& p = params[i];
    const bool dense = same_dense_layout(p, grads[i]) && same_dense_layout(p, exp_avgs[i]) &&
                       same_dense_layout(p, exp_avg_sqs[i]) && (!amsgrad || same_dense_layout(p, max_exp_avg_sqs[i]));
    if (dense) {
      sp.param = p.data_ptr();
      sp.grad = grads[i].data_ptr();
      sp.exp_avg = exp_avgs[i].data_ptr();
      sp.exp_avg_sq = exp_avg_sqs[i].data_ptr();
      sp.max_exp_avg_sq = amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr;
    } else {
      staged_index.push_back(i);
      const size_t base = staged.size();
      staged.push_back(p.contiguous());
      staged.push_back(grads[i].contiguous());
      staged.push_back(exp_avgs[i].contiguous());
      staged.push_back(exp_avg_sqs[i].contiguous());
      staged.push_back(amsgrad ? max_exp_avg_sqs[i].contiguous() : at::Tensor());
      sp.param = staged[base].data_ptr();
      sp.grad = staged[base + 1].data_ptr();
      sp.exp_avg = staged[base + 2].data_ptr();
      sp.exp_avg_sq = staged[base + 3].data_ptr();
      sp.max_exp_avg_sq = amsgrad ? staged[base + 4].data_ptr() : nullptr;
    }
    sp.numel = n;
    spans.push_back(sp);
    offsets.push_back(offsets.back() + n);
  }

  const int64_t total = offsets.back();
  const int64_t n_spans = (int64_t)spans.size();
  const int64_t n_blocks = (total + clr_cpu::kRangeAlign - 1) / clr_cpu::kRangeAlign;
  at::parallel_for(0, n_blocks, clr_cpu::kParallelGrain / clr_cpu::kRangeAlign, [&](int64_t lo, int64_t hi) {
    clr_cpu::adamw_run_range(dtype, spans.data(), offsets.data(), n_spans, lo * clr_cpu::kRangeAlign,
                             std::min(total, hi * clr_cpu::kRangeAlign), args);
  });

  for (size_t k = 0; k < staged_index.size(); ++k) {
    const size_t i = staged_index[k];
    params[i].copy_(staged[5 * k]);
    if (args.unscale) grads[i].copy_(staged[5 * k + 1]);
    exp_avgs[i].copy_(staged[5 * k + 2]);
    exp_avg_sqs[i].copy_(staged[5 * k + 3]);
    if (amsgrad) max_exp_avg_sqs[i].copy_(staged[5 * k + 4]);
  }
}

}  // namespace clr_ext
