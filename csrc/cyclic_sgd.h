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

// The scalar arguments of one cyclic_sgd_ call, parsed and checked once: what every
// backend reads of them (the tensors are checked apart, by check_sgd_tensors).
struct SgdConfig {
  clr_shape shape;
  clr_bounds bounds;
  double momentum;  // the fixed momentum; with cycle_momentum the schedule's replaces it
  double dampening;
  double weight_decay;
  bool nesterov;
  bool maximize;
  bool cycle_momentum;
  bool first_step;
};

SgdConfig parse_sgd_config(at::ArrayRef<double> bounds, at::ArrayRef<double> shape, int64_t mode, double momentum,
                           double dampening, double weight_decay, bool nesterov, bool maximize, bool cycle_momentum,
                           bool first_step);

// Checks the tensors of one cyclic_sgd_ call; nothing has been modified when it throws.
// device_type Meta checks the metadata alone (a step over several buckets checks them
// all before the first one writes).
void check_sgd_tensors(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                       at::TensorList momentum_start, const at::Tensor& iteration,
                       const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                       c10::DeviceType device_type);

// The step's values where the iteration is host memory (CPU buckets).
struct HostSgdStep {
  clr_point point;         // the schedule at the iteration
  double momentum;         // the step's momentum: the cycled one or the config's
  int32_t momentum_state;  // CLR_MOMENTUM_*; NONE without buffers or with momentum 0
};

HostSgdStep host_sgd_step(const SgdConfig& config, int64_t iteration, bool has_buffers);

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

// The scalar arguments of one cyclic_adamw_ call, parsed and checked once.
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

AdamwConfig parse_adamw_config(at::ArrayRef<double> bounds, at::ArrayRef<double> shape, int64_t mode, double beta1,
                               double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                               bool cycle_momentum, int64_t fused_width);

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

// grad_scale / found_inf as the CUDA kernels read them: float32 or float64 (is_double
// says which; anything else is converted on the device), or undefined when not given.
at::Tensor device_scalar(const c10::optional<at::Tensor>& t, int32_t* is_double);

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
