// What the ops of every rule share (op/sgd_op.h, op/adamw_op.h): the schedule's
// parameters parsed from the op's bounds / shape / mode, and the overflow flag as the
// CPU implementations read it.
#pragma once

#include <ATen/core/Tensor.h>

#include "../math/schedule.h"

namespace clr_ext {

// The parameter dtypes the kernels update: float32, float64, float16, bfloat16.
bool supported_dtype(at::ScalarType t);

// `shape` is [step_size_up, step_size_down, gamma, custom_scale] for the cyclical modes,
// [phase_end_0, phase_end_1, phase_end_2, phases] for 1cycle (phase_end_2 unread with two
// phases) and a group's whole chain for CLR_MODE_CHAIN (clr_chain_read's layout); checked,
// raising on what the schedule cannot run.
clr_shape shape_from(at::ArrayRef<double> shape, int64_t mode);

// [base_lr, max_lr, base_momentum, max_momentum] and, for 1cycle, min_lr; empty for a chain.
clr_bounds bounds_from(at::ArrayRef<double> bounds, int64_t mode);

// A step that AMP found overflowing changes nothing. GradScaler hands a fused optimizer
// the sum of its per-device flags, so any non-zero value skips (2.0: two devices
// overflowed). On the CPU the flag is host memory: reading it costs nothing.
inline bool host_skips_step(const c10::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && found_inf->item<double>() != 0.0;
}

// lr_scale: a one-element floating tensor on the counter's device that multiplies every LR
// of the schedule (clr_ext's scale_schedule), read where the step runs: a device write
// between steps reaches a captured graph and a compiled step alike. None: 1.
void check_lr_scale(const c10::optional<at::Tensor>& lr_scale, const at::Tensor& iteration);

// The schedule's LR at a step on the host (CPU buckets): times lr_scale, in double, as the
// device kernels and the Python backends multiply it.
inline double host_scaled_lr(double lr, const c10::optional<at::Tensor>& lr_scale) {
  if (!lr_scale.has_value()) return lr;
  // The optimizers pass float64 (read in place: item() goes through the dispatcher, ~1 us).
  const double scale =
      lr_scale->scalar_type() == at::kDouble ? *lr_scale->const_data_ptr<double>() : lr_scale->item<double>();
  return lr * scale;
}

// The per-step inputs of one op call, every rule's: the device counter (read, never
// advanced), AMP's loss scale and overflow flag, and scale_schedule's factor. References
// to the op's arguments, which outlive the call.
struct StepTensors {
  const at::Tensor& iteration;
  const c10::optional<at::Tensor>& grad_scale;
  const c10::optional<at::Tensor>& found_inf;
  const c10::optional<at::Tensor>& lr_scale;
};

// One op call on kDevice's tensors, its scalars already parsed into call.config: its
// tensors checked (check_call, per rule), then run by the rule's implementation for the
// device (run_cpu / run_cuda, overloaded on the rule's Call).
template <c10::DeviceType kDevice, typename Call>
void run_call(const Call& call) {
  check_call(call, kDevice);
  check_lr_scale(call.step.lr_scale, call.step.iteration);
#ifdef CLR_EXT_WITH_CUDA
  if constexpr (kDevice == c10::DeviceType::CUDA) return run_cuda(call);
#endif
  run_cpu(call);
}

}  // namespace clr_ext
