// The CPU implementation of the AdamW op: checks, the schedule and the per-param step
// counts on the host, then one parallel pass over every element of the bucket
// (csrc/cpu/adamw_cpu.h does the loops).
#include <ATen/core/Tensor.h>

#include <vector>

#include "../op/adamw_op.h"
#include "../op/staging.h"
#include "adamw_cpu.h"
#include "aten_ranges.h"

namespace clr_ext {

void run_cpu(const AdamwCall& call) {
  const AdamwConfig& config = call.config;
  at::TensorList params = call.params;
  const HostAdamwStep host = host_adamw_step(config, call.step.iteration.item<int64_t>());
  // A skipped step must not touch a single element nor a step count (grads stay scaled,
  // as in PyTorch).
  if (host_skips_step(call.step.found_inf)) return;
  if (params.empty()) return;

  clr_cpu::AdamwArgs args;
  clr_cpu::set_step_scalars(&args, call.step, host.point.lr, config.maximize);
  args.beta1 = host.beta1;
  args.beta2 = config.beta2;
  args.eps = config.eps;
  args.weight_decay = config.weight_decay;
  args.amsgrad = config.amsgrad ? 1 : 0;
  // AdamW(fused=True) takes IEEE square roots, torch.sqrt (AdamW's default path) MKL's.
  args.fused_width = (int32_t)config.fused_width;
  args.vsqrt = config.fused_width > 0 ? nullptr : clr_cpu::torch_vector_sqrt();

  DenseStaging<5> staging(
      {params, call.grads, call.exp_avgs, call.exp_avg_sqs, config.amsgrad ? call.max_exp_avg_sqs : at::TensorList()});
  clr_cpu::SpanList<clr_cpu::AdamwSpan> bucket(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    // The step count advances once per param and step, here on the host, before any
    // thread runs: params without elements count their steps too, as in torch.
    clr_cpu::AdamwSpan sp;
    clr_cpu::adamw_prepare_span(&sp, call.state_steps[i].mutable_data_ptr<float>(), args);
    sp.numel = params[i].numel();
    if (sp.numel == 0) continue;
    const std::array<void*, 5> ptr = staging.addresses(i);
    sp.param = ptr[0];
    sp.grad = ptr[1];
    sp.exp_avg = ptr[2];
    sp.exp_avg_sq = ptr[3];
    sp.max_exp_avg_sq = ptr[4];
    bucket.add(sp);
  }
  const int32_t dtype = clr_cpu::dtype_code(params[0].scalar_type());
  clr_cpu::aten_ranges(bucket.total(), [&](int64_t begin, int64_t end) {
    clr_cpu::run_range(dtype, bucket.spans.data(), bucket.offsets.data(), bucket.size(), begin, end, args);
  });
  staging.copy_back({true, args.unscale != 0, true, true, config.amsgrad});
}

}  // namespace clr_ext
