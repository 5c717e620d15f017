// The CPU implementation of the SGD op: checks, the schedule on the host, then one
// parallel pass over every parameter of the bucket (csrc/cpu/sgd_cpu.h does the loops).
#include <ATen/core/Tensor.h>

#include <vector>

#include "../op/sgd_op.h"
#include "../op/staging.h"
#include "aten_ranges.h"
#include "sgd_cpu.h"

namespace clr_ext {

namespace {

// One pass of the loops over params[i] for every i in `subset` (every param when null),
// with one momentum state for all of them.
void apply_update(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  const std::vector<size_t>* subset, const clr_cpu::StepArgs& args) {
  const bool use_buffers = args.momentum_state != CLR_MOMENTUM_NONE;
  DenseStaging<3> staging({params, grads, use_buffers ? momentum_buffers : at::TensorList()});
  const size_t count = subset != nullptr ? subset->size() : params.size();
  clr_cpu::SpanList<clr_cpu::Span> bucket(count);
  for (size_t k = 0; k < count; ++k) {
    const size_t i = subset != nullptr ? (*subset)[k] : k;
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    const std::array<void*, 3> ptr = staging.addresses(i);
    bucket.add({ptr[0], ptr[1], ptr[2], n});
  }
  const int32_t dtype = clr_cpu::dtype_code(params[0].scalar_type());
  clr_cpu::aten_ranges(bucket.total(), [&](int64_t begin, int64_t end) {
    clr_cpu::run_range(dtype, bucket.spans.data(), bucket.offsets.data(), bucket.size(), begin, end, args);
  });
  staging.copy_back({true, args.unscale != 0, use_buffers});
}

}  // namespace

void run_cpu(const SgdCall& call) {
  const SgdConfig& config = call.config;
  at::TensorList params = call.params, grads = call.grads, momentum_buffers = call.momentum_buffers;
  at::TensorList momentum_start = call.momentum_start;
  // A skipped step must not touch a single element (grads stay scaled, as in PyTorch).
  if (host_skips_step(call.step.found_inf)) return;
  if (params.empty()) return;

  const int64_t now = call.step.iteration.item<int64_t>();
  const HostSgdStep host = host_sgd_step(config, now, !momentum_buffers.empty());
  clr_cpu::StepArgs args;
  clr_cpu::set_step_scalars(&args, call.step, host.point.lr, config.maximize);
  args.momentum = host.momentum;
  args.dampening = config.dampening;
  args.weight_decay = config.weight_decay;
  args.momentum_state = host.momentum_state;
  args.nesterov = config.nesterov ? 1 : 0;

  if (momentum_start.empty() || host.momentum_state == CLR_MOMENTUM_NONE) {
    apply_update(params, grads, momentum_buffers, nullptr, args);
    return;
  }
  // Per-param starts (see op/sgd_op.h): two passes, the buffers that continue and
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
