// Declarations shared by the op registration and the CPU / CUDA implementations.
#pragma once

#include <ATen/ATen.h>

#include "schedule.h"
#include "sgd_update.h"

namespace clr_ext {

// The op's schema. The iteration is read from `iteration` (an int64 tensor on the
// params' device) and never advanced here: all buckets of one optimizer step must
// see the same value, so the caller advances it once after the last bucket.
//
// Which parameters start their momentum buffer in this step (buffer = g rather than
// momentum * buffer + (1 - dampening) * g) is decided one of two ways:
// - `momentum_start` empty: `first_step` says it for the whole call (the host knows);
// - otherwise, per param, the iteration of its first step that used its buffer
//   (kMomentumNotStarted until then), as one one-element int64 tensor per param or
//   packed into one contiguous int64 tensor with an element per param (one input
//   rather than hundreds for a traced step). A param starts
//   its buffer when that value is >= the iteration, and a step that uses momentum
//   (not skipped on overflow, momentum != 0) records the iteration in it. The decision
//   is then taken where found_inf and a cycled momentum are known, on the device,
//   without a host sync. Recording the iteration, not a yes/no flag, keeps it free of
//   races: a block that sees the value another block of the same step just wrote
//   still decides "start".
// No argument may be named `mode`: under torch.compile, auto_functionalized_v2 passes
// the op's arguments as keywords to a handler whose first parameter is `mode`
// ("got multiple values for argument 'mode'"; tests/test_ops.py::test_opcheck).
constexpr const char* kCyclicSgdSchema =
    "cyclic_sgd_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
    "Tensor(d!)[] momentum_start, "
    "Tensor iteration, float[] bounds, float[] shape, int schedule_mode, float momentum, float dampening, "
    "float weight_decay, bool nesterov, bool maximize, bool cycle_momentum, bool first_step, "
    "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()";

// A param's momentum_start before its first step with momentum.
constexpr int64_t kMomentumNotStarted = INT64_MAX;

// Where param i's start lives in a checked momentum_start (see above).
inline int64_t* momentum_start_of(at::TensorList momentum_start, size_t i) {
  return momentum_start.size() == 1 ? momentum_start[0].mutable_data_ptr<int64_t>() + i
                                    : momentum_start[i].mutable_data_ptr<int64_t>();
}

// What the host knows about one step of one bucket once the inputs are checked.
struct StepPlan {
  clr_shape shape;
  clr_bounds bounds;
  clr_point point;            // only filled when the iteration lives on the host (CPU)
  double effective_momentum;  // idem
  int32_t momentum_state;     // idem; CLR_MOMENTUM_NONE when no buffers were given
};

// Checks every argument (nothing has been modified when it throws) and, for CPU
// buckets, evaluates the schedule at the current iteration.
StepPlan make_step_plan(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                        at::TensorList momentum_start, const at::Tensor& iteration, at::ArrayRef<double> bounds,
                        at::ArrayRef<double> shape, int64_t mode, double momentum, double dampening,
                        double weight_decay, bool nesterov, bool cycle_momentum, bool first_step,
                        const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                        c10::DeviceType device_type);

void cyclic_sgd_cpu_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                     at::TensorList momentum_start, const at::Tensor& iteration, at::ArrayRef<double> bounds,
                     at::ArrayRef<double> shape, int64_t mode, double momentum, double dampening, double weight_decay,
                     bool nesterov, bool maximize, bool cycle_momentum, bool first_step,
                     const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf);

// AdamW (torch.optim.AdamW's rule) under the same schedule: lr and, with cycle_momentum,
// beta1 (the cycled momentum) come from clr_schedule at `iteration`, which is not advanced
// here. state_steps holds each param's own step count (one float32 element each, as
// torch.optim.AdamW's state["step"]): a step advances it, and its bias corrections use it.
// max_exp_avg_sqs is empty unless amsgrad. With found_inf == 1 nothing at all changes.
// fused_width > 0 rounds as torch.optim.AdamW(fused=True) does on the CPU, whose scalar
// code updates the last numel % fused_width elements of each tensor (cpu/adamw_cpu.h); 0,
// as AdamW's default path. CUDA ignores it.
constexpr const char* kCyclicAdamwSchema =
    "cyclic_adamw_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
    "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, Tensor iteration, float[] bounds, float[] shape, "
    "int schedule_mode, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, bool maximize, "
    "bool cycle_momentum, Tensor? grad_scale=None, Tensor? found_inf=None, int fused_width=0) -> ()";

// What the host knows about one AdamW step of one bucket once the inputs are checked.
struct AdamwPlan {
  clr_shape shape;
  clr_bounds bounds;
  clr_point point;  // only filled when the iteration lives on the host (CPU)
  double beta1;     // this step's beta1: the cycled momentum or the argument; idem
};

// Checks every AdamW argument (nothing has been modified when it throws) and, for CPU
// buckets, evaluates the schedule at the current iteration.
AdamwPlan make_adamw_plan(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                          at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                          const at::Tensor& iteration, at::ArrayRef<double> bounds, at::ArrayRef<double> shape,
                          int64_t mode, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                          bool cycle_momentum, const c10::optional<at::Tensor>& grad_scale,
                          const c10::optional<at::Tensor>& found_inf, int64_t fused_width, c10::DeviceType device_type);

void cyclic_adamw_cpu_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                       at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& iteration,
                       at::ArrayRef<double> bounds, at::ArrayRef<double> shape, int64_t mode, double beta1,
                       double beta2, double eps, double weight_decay, bool amsgrad, bool maximize, bool cycle_momentum,
                       const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                       int64_t fused_width);

#ifdef CLR_EXT_WITH_CUDA
// csrc/cuda/cyclic_sgd_cuda.cu: the same op for CUDA tensors (no host sync).
void cyclic_sgd_cuda_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                      at::TensorList momentum_start, const at::Tensor& iteration, at::ArrayRef<double> bounds,
                      at::ArrayRef<double> shape, int64_t mode, double momentum, double dampening, double weight_decay,
                      bool nesterov, bool maximize, bool cycle_momentum, bool first_step,
                      const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf);

// How many tensors one kernel launch takes (the kernel-argument table's size).
int64_t cuda_max_tensors_per_launch();

// csrc/cuda/cyclic_adamw_cuda.cu: the AdamW op for CUDA tensors (no host sync; the
// schedule and the step counts are read on the device, and the counts advanced there).
void cyclic_adamw_cuda_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                        const at::Tensor& iteration, at::ArrayRef<double> bounds, at::ArrayRef<double> shape,
                        int64_t mode, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                        bool maximize, bool cycle_momentum, const c10::optional<at::Tensor>& grad_scale,
                        const c10::optional<at::Tensor>& found_inf, int64_t fused_width);

// How many tensors one AdamW update launch takes.
int64_t cuda_adamw_max_tensors_per_launch();
#endif

}  // namespace clr_ext
