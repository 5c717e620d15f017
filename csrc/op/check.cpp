// The ops' argument checks, written once for every device: the schedule's arguments parsed
// (shape_from, bounds_from) and the rules' other scalars checked (op/sgd_op.h,
// op/adamw_op.h), the tensors checked before anything is written, and the step's host
// values where the iteration is host memory.
#include <ATen/core/Tensor.h>

#include "adamw_op.h"
#include "sgd_op.h"

namespace clr_ext {

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

namespace {

// What every op checks of its step inputs: the device counter, and AMP's scale and flag.
void check_step_inputs(const at::Tensor& iteration, const c10::optional<at::Tensor>& grad_scale,
                       const c10::optional<at::Tensor>& found_inf, c10::DeviceType device_type) {
  TORCH_CHECK(iteration.scalar_type() == at::kLong && iteration.numel() == 1,
              "clr_ext: iteration must be a one-element int64 tensor");
  TORCH_CHECK(device_type == c10::DeviceType::Meta || iteration.device().type() == device_type,
              "clr_ext: iteration must be on the params' device");
  for (const auto* t : {&grad_scale, &found_inf}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->numel() == 1 && at::isFloatingType((*t)->scalar_type()),
                  "clr_ext: grad_scale and found_inf must be one-element floating tensors");
      TORCH_CHECK((*t)->device() == iteration.device(), "clr_ext: grad_scale and found_inf must be on ",
                  iteration.device());
    }
  }
}

// What every op checks of param i: dense, a dtype the kernels update, the bucket's dtype and
// device, memory of its own.
void check_param(size_t i, const at::Tensor& p, const at::Tensor& first, const at::Tensor& iteration,
                 const char* rule) {
  TORCH_CHECK(p.layout() == at::kStrided, "clr_ext: param ", i, " is not a strided (dense) tensor");
  TORCH_CHECK(supported_dtype(p.scalar_type()), "clr_ext: param ", i, " has dtype ", p.scalar_type(), "; ", rule,
              " updates float32, float64, float16 and bfloat16 parameters");
  TORCH_CHECK(p.scalar_type() == first.scalar_type(), "clr_ext: all params of one call must share a dtype");
  TORCH_CHECK(p.device() == iteration.device(), "clr_ext: param ", i, " is on ", p.device(), " but the bucket is on ",
              iteration.device());
  // Wrapper subclasses (DTensor, ...) have no memory of their own: pass their local tensors.
  TORCH_CHECK(p.has_storage(), "clr_ext: param ", i,
              " has no storage of its own (a tensor subclass such as DTensor?); pass its local tensor");
}

// What every op checks of a tensor the kernels walk beside param i (its gradient, the rule's
// state): dense, memory of its own, and the param's dtype, shape and device.
void check_like_param(size_t i, const char* what, const at::Tensor& t, const at::Tensor& p) {
  TORCH_CHECK(t.layout() == at::kStrided, "clr_ext: the ", what, " of param ", i,
              " is not a strided (dense) tensor; sparse gradients are not supported");
  TORCH_CHECK(t.has_storage(), "clr_ext: the ", what, " of param ", i,
              " has no storage of its own (a tensor subclass such as DTensor?); pass its local tensor");
  TORCH_CHECK(t.scalar_type() == p.scalar_type(), "clr_ext: the ", what, " of param ", i, " has dtype ",
              t.scalar_type(), " but the param has ", p.scalar_type());
  TORCH_CHECK(t.sizes() == p.sizes(), "clr_ext: the ", what, " of param ", i, " has shape ", t.sizes(),
              " but the param has ", p.sizes());
  TORCH_CHECK(t.device() == p.device(), "clr_ext: the ", what, " of param ", i, " is on ", t.device(),
              " but the param is on ", p.device());
}

bool is_one_cycle(int64_t mode) { return mode == CLR_MODE_ONE_CYCLE_COS || mode == CLR_MODE_ONE_CYCLE_LINEAR; }

}  // namespace

void check_lr_scale(const c10::optional<at::Tensor>& lr_scale, const at::Tensor& iteration) {
  if (!lr_scale.has_value()) return;
  TORCH_CHECK(lr_scale->numel() == 1 && at::isFloatingType(lr_scale->scalar_type()),
              "clr_ext: lr_scale must be a one-element floating tensor");
  TORCH_CHECK(lr_scale->device() == iteration.device(), "clr_ext: lr_scale must be on ", iteration.device());
}

clr_shape shape_from(at::ArrayRef<double> shape, int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode < CLR_MODE_COUNT, "clr_ext: unknown schedule mode ", mode);
  clr_shape s = {};
  s.mode = (int32_t)mode;
  if (mode == CLR_MODE_CHAIN) {
    const char* error = clr_chain_read(shape.data(), (int64_t)shape.size(), &s.chain);
    TORCH_CHECK(error == nullptr, "clr_ext: schedule chain: ", error ? error : "");
    return s;
  }
  if (is_one_cycle(mode)) {
    TORCH_CHECK(shape.size() == 4, "clr_ext: a 1cycle shape must be [phase_end_0, phase_end_1, phase_end_2, phases]");
    TORCH_CHECK(shape[3] == 2.0 || shape[3] == 3.0, "clr_ext: a 1cycle schedule has 2 or 3 phases, got ", shape[3]);
    s.phases = (int32_t)shape[3];
    for (int i = 0; i < s.phases; ++i) s.phase_end[i] = shape[i];
    // Step 0 in a first phase of no length is 0 / 0 (OneCycleLR raises ZeroDivisionError).
    TORCH_CHECK(shape[0] != 0.0, "clr_ext: the first 1cycle phase has no length (pct_start * total_steps == 1)");
    return s;
  }
  TORCH_CHECK(shape.size() == 4, "clr_ext: shape must be [step_size_up, step_size_down, gamma, custom_scale]");
  TORCH_CHECK(shape[0] > 0.0, "clr_ext: step_size_up must be positive, got ", shape[0]);
  TORCH_CHECK(shape[1] >= 0.0, "clr_ext: step_size_down must be non-negative, got ", shape[1]);
  s.step_size_up = shape[0];
  s.step_size_down = shape[1];
  s.gamma = shape[2];
  s.custom_scale = shape[3];
  return s;
}

clr_bounds bounds_from(at::ArrayRef<double> bounds, int64_t mode) {
  if (mode == CLR_MODE_CHAIN) {  // a chain carries each group's values in its shape
    TORCH_CHECK(bounds.empty(), "clr_ext: with a schedule chain, bounds must be empty");
    return clr_bounds{};
  }
  TORCH_CHECK(bounds.size() == 4 || bounds.size() == 5,
              "clr_ext: bounds must be [base_lr, max_lr, base_momentum, max_momentum(, min_lr)]");
  clr_bounds b;
  b.base_lr = bounds[0];
  b.max_lr = bounds[1];
  b.base_momentum = bounds[2];
  b.max_momentum = bounds[3];
  b.min_lr = bounds.size() == 5 ? bounds[4] : bounds[0];
  return b;
}

void check_sgd_tensors(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                       at::TensorList momentum_start, const at::Tensor& iteration,
                       const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                       c10::DeviceType device_type) {
  TORCH_CHECK(grads.size() == params.size(), "clr_ext: got ", params.size(), " params but ", grads.size(), " grads");
  TORCH_CHECK(momentum_buffers.empty() || momentum_buffers.size() == params.size(), "clr_ext: got ", params.size(),
              " params but ", momentum_buffers.size(), " momentum buffers");
  const bool packed_starts = momentum_start.size() == 1;
  if (packed_starts) {
    const at::Tensor& s = momentum_start[0];
    TORCH_CHECK(s.scalar_type() == at::kLong && s.numel() == (int64_t)params.size() && s.is_contiguous() &&
                    s.has_storage() && s.device() == iteration.device(),
                "clr_ext: a single momentum_start must be a contiguous int64 tensor with one element per param (",
                params.size(), ") on ", iteration.device());
  } else {
    TORCH_CHECK(momentum_start.empty() || momentum_start.size() == params.size(), "clr_ext: got ", params.size(),
                " params but ", momentum_start.size(), " momentum_start entries");
  }
  TORCH_CHECK(momentum_start.empty() || !momentum_buffers.empty(),
              "clr_ext: momentum_start was given without momentum_buffers");
  check_step_inputs(iteration, grad_scale, found_inf, device_type);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    check_param(i, p, params[0], iteration, "CyclicSGD");
    check_like_param(i, "gradient", grads[i], p);
    if (!momentum_buffers.empty()) check_like_param(i, "momentum buffer", momentum_buffers[i], p);
    if (!momentum_start.empty() && !packed_starts) {
      const at::Tensor& s = momentum_start[i];
      TORCH_CHECK(s.scalar_type() == at::kLong && s.numel() == 1 && s.has_storage() && s.device() == p.device(),
                  "clr_ext: momentum_start ", i, " must be a one-element int64 tensor on ", p.device());
    }
  }
}

HostSgdStep host_sgd_step(const SgdConfig& config, int64_t iteration, bool has_buffers) {
  HostSgdStep step;
  step.point = clr_schedule(iteration, &config.shape, &config.bounds);
  step.momentum = config.cycle_momentum ? step.point.momentum : config.momentum;
  // torch.optim.SGD leaves its buffers alone in any step whose momentum is 0.
  step.momentum_state = !has_buffers || step.momentum == 0.0 ? CLR_MOMENTUM_NONE
                        : config.first_step                  ? CLR_MOMENTUM_FIRST
                                                             : CLR_MOMENTUM_STEADY;
  return step;
}

void check_adamw_config(const AdamwConfig& c) {
  // Every comparison is false for NaN, so these refuse NaN as well.
  TORCH_CHECK(c.beta1 >= 0.0 && c.beta1 < 1.0, "clr_ext: beta1 must be in [0, 1), got ", c.beta1);
  TORCH_CHECK(c.beta2 >= 0.0 && c.beta2 < 1.0, "clr_ext: beta2 must be in [0, 1), got ", c.beta2);
  TORCH_CHECK(c.eps >= 0.0, "clr_ext: eps must be non-negative, got ", c.eps);
  TORCH_CHECK(c.fused_width >= 0 && c.fused_width <= 1024, "clr_ext: fused_width must be in [0, 1024], got ",
              c.fused_width);
  if (c.cycle_momentum) {
    TORCH_CHECK(c.bounds.base_momentum >= 0.0 && c.bounds.base_momentum < 1.0 && c.bounds.max_momentum >= 0.0 &&
                    c.bounds.max_momentum < 1.0,
                "clr_ext: with cycle_momentum the momentum bounds are beta1's and must be in [0, 1), got ",
                c.bounds.base_momentum, " and ", c.bounds.max_momentum);
  }
}

void check_adamw_tensors(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                         bool amsgrad, const at::Tensor& iteration, const c10::optional<at::Tensor>& grad_scale,
                         const c10::optional<at::Tensor>& found_inf, c10::DeviceType device_type) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "clr_ext: got ", n, " params but ", grads.size(), " grads");
  TORCH_CHECK(exp_avgs.size() == n, "clr_ext: got ", n, " params but ", exp_avgs.size(), " exp_avgs");
  TORCH_CHECK(exp_avg_sqs.size() == n, "clr_ext: got ", n, " params but ", exp_avg_sqs.size(), " exp_avg_sqs");
  TORCH_CHECK(state_steps.size() == n, "clr_ext: got ", n, " params but ", state_steps.size(), " state_steps");
  if (amsgrad) {
    TORCH_CHECK(max_exp_avg_sqs.size() == n, "clr_ext: amsgrad needs one max_exp_avg_sq per param: got ", n,
                " params but ", max_exp_avg_sqs.size(), " max_exp_avg_sqs");
  } else {
    TORCH_CHECK(max_exp_avg_sqs.empty(), "clr_ext: max_exp_avg_sqs must be empty without amsgrad, got ",
                max_exp_avg_sqs.size());
  }
  check_step_inputs(iteration, grad_scale, found_inf, device_type);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    check_param(i, p, params[0], iteration, "AdamW");
    check_like_param(i, "grad", grads[i], p);
    check_like_param(i, "exp_avg", exp_avgs[i], p);
    check_like_param(i, "exp_avg_sq", exp_avg_sqs[i], p);
    if (amsgrad) check_like_param(i, "max_exp_avg_sq", max_exp_avg_sqs[i], p);
    const at::Tensor& s = state_steps[i];
    TORCH_CHECK(s.layout() == at::kStrided && s.has_storage() && s.scalar_type() == at::kFloat && s.numel() == 1 &&
                    s.device() == p.device(),
                "clr_ext: state_steps ", i, " must be a one-element float32 tensor on ", p.device(), ", got ",
                s.scalar_type(), " with ", s.numel(), " elements on ", s.device());
  }
}

HostAdamwStep host_adamw_step(const AdamwConfig& config, int64_t iteration) {
  HostAdamwStep step;
  step.point = clr_schedule(iteration, &config.shape, &config.bounds);
  step.beta1 = config.cycle_momentum ? step.point.momentum : config.beta1;
  TORCH_CHECK(step.beta1 >= 0.0 && step.beta1 < 1.0, "clr_ext: the cycled beta1 at iteration ", iteration, " is ",
              step.beta1, ", outside [0, 1)");
  return step;
}

}  // namespace clr_ext
