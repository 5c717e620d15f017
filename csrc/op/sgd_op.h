// The SGD op (clr_ext::cyclic_sgd_, any schedule): its schema, its scalar arguments parsed
// into one config, its tensor checks, and the CPU / CUDA implementations' entries.
// (The registered name keeps "cyclic" for the op's callers; the C++ says "scheduled".)
#pragma once

#include "../math/sgd_update.h"  // CLR_MOMENTUM_*
#include "scheduled_op.h"

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
// ("got multiple values for argument 'mode'"; tests/backends/test_ops.py::test_opcheck).
constexpr const char* kCyclicSgdSchema =
    "cyclic_sgd_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
    "Tensor(d!)[] momentum_start, "
    "Tensor iteration, float[] bounds, float[] shape, int schedule_mode, float momentum, float dampening, "
    "float weight_decay, bool nesterov, bool maximize, bool cycle_momentum, bool first_step, "
    "Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? lr_scale=None) -> ()";

// A param's momentum_start before its first step with momentum.
constexpr int64_t kMomentumNotStarted = INT64_MAX;

// Where param i's start lives in a checked momentum_start (see above).
inline int64_t* momentum_start_of(at::TensorList momentum_start, size_t i) {
  return momentum_start.size() == 1 ? momentum_start[0].mutable_data_ptr<int64_t>() + i
                                    : momentum_start[i].mutable_data_ptr<int64_t>();
}

// The scalar arguments of one cyclic_sgd_ call, parsed once (the schedule's by shape_from
// and bounds_from, which check them): what every backend reads of them (the tensors are
// checked apart, by check_sgd_tensors).
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

// One call of the op, its scalars parsed: what an implementation runs.
struct SgdCall {
  at::TensorList params, grads, momentum_buffers, momentum_start;
  StepTensors step;
  SgdConfig config;
};

inline void check_call(const SgdCall& call, c10::DeviceType device_type) {
  check_sgd_tensors(call.params, call.grads, call.momentum_buffers, call.momentum_start, call.step.iteration,
                    call.step.grad_scale, call.step.found_inf, device_type);
}

// cpu/scheduled_sgd_cpu.cpp: CPU tensors (the schedule evaluated on the host).
void run_cpu(const SgdCall& call);
#ifdef CLR_EXT_WITH_CUDA
// cuda/scheduled_sgd_cuda.cu: CUDA tensors (no host sync).
void run_cuda(const SgdCall& call);

// How many tensors one CUDA SGD launch takes (the kernel-argument table's size).
int64_t cuda_max_tensors_per_launch();
#endif

// The op on kDevice's tensors (run_call). Registered with the dispatcher (op/register.cpp),
// called directly by the eager Python entry (op/python.cpp) and by clr::CyclicSGD
// (csrc/libtorch/).
template <c10::DeviceType kDevice>
void scheduled_sgd(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   at::TensorList momentum_start, const at::Tensor& iteration, at::ArrayRef<double> bounds,
                   at::ArrayRef<double> shape, int64_t mode, double momentum, double dampening, double weight_decay,
                   bool nesterov, bool maximize, bool cycle_momentum, bool first_step,
                   const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                   const c10::optional<at::Tensor>& lr_scale) {
  run_call<kDevice>(SgdCall{params, grads, momentum_buffers, momentum_start,
                            StepTensors{iteration, grad_scale, found_inf, lr_scale},
                            SgdConfig{shape_from(shape, mode), bounds_from(bounds, mode), momentum, dampening,
                                      weight_decay, nesterov, maximize, cycle_momentum, first_step}});
}

// The op's C++ signature (the dispatcher's and the eager entry's).
using SgdOp = decltype(scheduled_sgd<c10::DeviceType::CPU>);

}  // namespace clr_ext
