// The AdamW op (clr_ext::cyclic_adamw_, any schedule): its schema, its scalar arguments
// parsed into one config, its tensor checks, and the CPU / CUDA implementations' entries.
#pragma once

#include "scheduled_op.h"

namespace clr_ext {

// AdamW (torch.optim.AdamW's rule) under the op's schedule: lr and, with cycle_momentum,
// beta1 (the cycled momentum) come from clr_schedule at `iteration`, which is not advanced
// here. state_steps holds each param's own step count (one float32 element each, as
// torch.optim.AdamW's state["step"]): a step advances it, and its bias corrections use it.
// max_exp_avg_sqs is empty unless amsgrad. With a non-zero found_inf nothing at all changes.
// fused_width > 0 rounds as torch.optim.AdamW(fused=True) does on the CPU, whose scalar
// code updates the last numel % fused_width elements of each tensor (cpu/adamw_cpu.h); 0,
// as AdamW's default path. CUDA ignores it.
constexpr const char* kCyclicAdamwSchema =
    "cyclic_adamw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
    "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, Tensor iteration, float[] bounds, float[] shape, "
    "int schedule_mode, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, bool maximize, "
    "bool cycle_momentum, Tensor? grad_scale=None, Tensor? found_inf=None, int fused_width=0, "
    "Tensor? lr_scale=None) -> ()";

// The scalar arguments of one cyclic_adamw_ call, parsed once.
struct AdamwConfig {
  clr_shape shape;
  clr_bounds bounds;
  double beta1;  // the fixed beta1; with cycle_momentum the schedule's momentum replaces it
  double beta2;
  double eps;
  double weight_decay;
  bool amsgrad;
  bool maximize;
  bool cycle_momentum;
  int64_t fused_width;
};

// Checks the scalars of one cyclic_adamw_ call (the schedule's were checked by shape_from
// and bounds_from, which made its shape and bounds).
void check_adamw_config(const AdamwConfig& config);

// Checks the tensors of one cyclic_adamw_ call, as check_sgd_tensors does.
void check_adamw_tensors(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                         bool amsgrad, const at::Tensor& iteration, const c10::optional<at::Tensor>& grad_scale,
                         const c10::optional<at::Tensor>& found_inf, c10::DeviceType device_type);

// The step's values where the iteration is host memory (CPU buckets).
struct HostAdamwStep {
  clr_point point;  // the schedule at the iteration
  double beta1;     // the step's beta1: the cycled momentum or the config's
};

HostAdamwStep host_adamw_step(const AdamwConfig& config, int64_t iteration);

// One call of the op, its scalars parsed: what an implementation runs.
struct AdamwCall {
  at::TensorList params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps;
  StepTensors step;
  AdamwConfig config;
};

// The scalars first, then the tensors.
inline void check_call(const AdamwCall& call, c10::DeviceType device_type) {
  check_adamw_config(call.config);
  check_adamw_tensors(call.params, call.grads, call.exp_avgs, call.exp_avg_sqs, call.max_exp_avg_sqs, call.state_steps,
                      call.config.amsgrad, call.step.iteration, call.step.grad_scale, call.step.found_inf, device_type);
}

// cpu/scheduled_adamw_cpu.cpp: CPU tensors (schedule and step counts on the host).
void run_cpu(const AdamwCall& call);
#ifdef CLR_EXT_WITH_CUDA
// cuda/scheduled_adamw_cuda.cu: CUDA tensors (no host sync; the schedule and the step
// counts are read on the device, and the counts advanced there).
void run_cuda(const AdamwCall& call);

// How many tensors one CUDA AdamW update launch takes.
int64_t cuda_adamw_max_tensors_per_launch();
#endif

// The op on kDevice's tensors (run_call). Registered with the dispatcher (op/register.cpp),
// called directly by the eager Python entry (op/python.cpp).
template <c10::DeviceType kDevice>
void scheduled_adamw(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& iteration,
                     at::ArrayRef<double> bounds, at::ArrayRef<double> shape, int64_t mode, double beta1, double beta2,
                     double eps, double weight_decay, bool amsgrad, bool maximize, bool cycle_momentum,
                     const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                     int64_t fused_width, const c10::optional<at::Tensor>& lr_scale) {
  run_call<kDevice>(AdamwCall{params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                              StepTensors{iteration, grad_scale, found_inf, lr_scale},
                              AdamwConfig{shape_from(shape, mode), bounds_from(bounds, mode), beta1, beta2, eps,
                                          weight_decay, amsgrad, maximize, cycle_momentum, fused_width}});
}

// The op's C++ signature (the dispatcher's and the eager entry's).
using AdamwOp = decltype(scheduled_adamw<c10::DeviceType::CPU>);

}  // namespace clr_ext
