// The CPU implementation of clr_ext::cyclic_sgd_: validation, then one parallel
// pass over every parameter of the bucket (csrc/cpu/sgd_cpu.h does the loops).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../cyclic_sgd.h"
#include "../dense_layout.h"  // same_dense_layout: the kernel walks raw memory
#include "sgd_cpu.h"

namespace clr_ext {

namespace {

int32_t cpu_dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return clr_cpu::kFloat32;
    case at::kDouble:
      return clr_cpu::kFloat64;
    case at::kHalf:
      return clr_cpu::kFloat16;
    case at::kBFloat16:
      return clr_cpu::kBFloat16;
    default:
      return -1;
  }
}

// One pass of the kernel over params[i] for every i in `subset` (every param when null),
// with one momentum state for all of them.
void apply_update(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  const std::vector<size_t>* subset, const clr_cpu::StepArgs& args) {
  const bool use_buffers = args.momentum_state != CLR_MOMENTUM_NONE;
  const int32_t dtype = cpu_dtype_code(params[0].scalar_type());

  // Tensors whose layouts differ are run through dense copies, copied back afterwards.
  std::vector<at::Tensor> staged_param, staged_grad, staged_buffer;
  std::vector<int64_t> staged_index;
  std::vector<clr_cpu::Span> spans;
  std::vector<int64_t> offsets;
  const size_t count = subset != nullptr ? subset->size() : params.size();
  spans.reserve(count);
  offsets.reserve(count + 1);
  offsets.push_back(0);
  for (size_t k = 0; k < count; ++k) {
    const size_t i = subset != nullptr ? (*subset)[k] : k;
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    // References, not copies: a Tensor copy is an atomic refcount round trip per parameter.
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const bool dense = same_dense_layout(p, g) && (!use_buffers || same_dense_layout(p, momentum_buffers[i]));
    clr_cpu::Span sp;
    if (dense) {
      sp.param = p.data_ptr();
      sp.grad = g.data_ptr();
      sp.momentum_buffer = use_buffers ? momentum_buffers[i].data_ptr() : nullptr;
    } else {
      staged_index.push_back((int64_t)i);
      staged_param.push_back(p.contiguous());
      staged_grad.push_back(g.contiguous());
      staged_buffer.push_back(use_buffers ? momentum_buffers[i].contiguous() : at::Tensor());
      sp.param = staged_param.back().data_ptr();
      sp.grad = staged_grad.back().data_ptr();
      sp.momentum_buffer = use_buffers ? staged_buffer.back().data_ptr() : nullptr;
    }
    sp.numel = n;
    spans.push_back(sp);
    offsets.push_back(offsets.back() + n);
  }

  const int64_t total = offsets.back();
  const int64_t n_spans = (int64_t)spans.size();
  const int64_t n_blocks = (total + clr_cpu::kRangeAlign - 1) / clr_cpu::kRangeAlign;
  at::parallel_for(0, n_blocks, clr_cpu::kParallelGrain / clr_cpu::kRangeAlign, [&](int64_t lo, int64_t hi) {
    clr_cpu::run_range(dtype, spans.data(), offsets.data(), n_spans, lo * clr_cpu::kRangeAlign,
                       std::min(total, hi * clr_cpu::kRangeAlign), args);
  });

  for (size_t k = 0; k < staged_index.size(); ++k) {
    const size_t i = (size_t)staged_index[k];
    params[i].copy_(staged_param[k]);
    if (args.unscale) grads[i].copy_(staged_grad[k]);
    if (use_buffers) momentum_buffers[i].copy_(staged_buffer[k]);
  }
}

}  // namespace

void cyclic_sgd_cpu_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                     at::TensorList momentum_start, const at::Tensor& iteration, at::ArrayRef<double> bounds,
                     at::ArrayRef<double> shape, int64_t mode, double momentum, double dampening, double weight_decay,
                     bool nesterov, bool maximize, bool cycle_momentum, bool first_step,
                     const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf) {
  const SgdConfig config = parse_sgd_config(bounds, shape, mode, momentum, dampening, weight_decay, nesterov, maximize,
                                            cycle_momentum, first_step);
  check_sgd_tensors(params, grads, momentum_buffers, momentum_start, iteration, grad_scale, found_inf, at::kCPU);
  // On the CPU the overflow flag is host memory: reading it costs nothing, and a
  // skipped step must not touch a single element (grads stay scaled, as in PyTorch).
  if (found_inf.has_value() && found_inf->item<double>() == 1.0) return;
  if (params.empty()) return;

  const int64_t now = iteration.item<int64_t>();
  const HostSgdStep host = host_sgd_step(config, now, !momentum_buffers.empty());
  clr_cpu::StepArgs args;
  args.lr = host.point.lr;
  args.momentum = host.momentum;
  args.dampening = config.dampening;
  args.weight_decay = config.weight_decay;
  args.momentum_state = host.momentum_state;
  args.nesterov = config.nesterov ? 1 : 0;
  args.maximize = config.maximize ? 1 : 0;
  args.unscale = grad_scale.has_value() ? 1 : 0;
  args.grad_scale = grad_scale.has_value() ? grad_scale->item<double>() : 1.0;

  if (momentum_start.empty() || host.momentum_state == CLR_MOMENTUM_NONE) {
    apply_update(params, grads, momentum_buffers, nullptr, args);
    return;
  }
  // Per-param starts (see cyclic_sgd.h): two passes, the buffers that continue and
  // those that start now; then the starts record this iteration.
  std::vector<size_t> continuing, starting;
  for (size_t i = 0; i < params.size(); ++i)
    (*momentum_start_of(momentum_start, i) >= now ? starting : continuing).push_back(i);
  args.momentum_state = CLR_MOMENTUM_STEADY;
  if (!continuing.empty()) apply_update(params, grads, momentum_buffers, &continuing, args);
  args.momentum_state = CLR_MOMENTUM_FIRST;
  if (!starting.empty()) apply_update(params, grads, momentum_buffers, &starting, args);
  for (size_t i : starting) *momentum_start_of(momentum_start, i) = now;
}

}  // namespace clr_ext
