// Op schema and registration (TORCH_LIBRARY), argument checks shared by every
// device, and the pybind11 module that exposes the schedule for tests and tools.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#ifndef CLR_EXT_NO_PYTHON  // CMake's libtorch build (no Python, no pybind11) defines it
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>
#endif
#include <torch/library.h>

#include <string>

#include "cyclic_sgd.h"

namespace clr_ext {

namespace {

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

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

// What every op checks of param i: dense, a dtype the kernels update, the bucket's dtype and device.
void check_param(size_t i, const at::Tensor& p, const at::Tensor& first, const at::Tensor& iteration,
                 const char* rule) {
  TORCH_CHECK(p.layout() == at::kStrided, "clr_ext: param ", i, " is not a strided (dense) tensor");
  TORCH_CHECK(supported_dtype(p.scalar_type()), "clr_ext: param ", i, " has dtype ", p.scalar_type(), "; ", rule,
              " updates float32, float64, float16 and bfloat16 parameters");
  TORCH_CHECK(p.scalar_type() == first.scalar_type(), "clr_ext: all params of one call must share a dtype");
  TORCH_CHECK(p.device() == iteration.device(), "clr_ext: param ", i, " is on ", p.device(), " but the bucket is on ",
              iteration.device());
}

bool is_one_cycle(int64_t mode) { return mode == CLR_MODE_ONE_CYCLE_COS || mode == CLR_MODE_ONE_CYCLE_LINEAR; }

// `shape` is [step_size_up, step_size_down, gamma, custom_scale] for the cyclical modes
// and [phase_end_0, phase_end_1, phase_end_2, phases] for 1cycle (phase_end_2 unread
// with two phases).
clr_shape shape_from(at::ArrayRef<double> shape, int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode < CLR_MODE_COUNT, "clr_ext: unknown schedule mode ", mode);
  clr_shape s = {};
  s.mode = (int32_t)mode;
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

// [base_lr, max_lr, base_momentum, max_momentum] and, for 1cycle, min_lr.
clr_bounds bounds_from(at::ArrayRef<double> bounds) {
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

}  // namespace

SgdConfig parse_sgd_config(at::ArrayRef<double> bounds, at::ArrayRef<double> shape, int64_t mode, double momentum,
                           double dampening, double weight_decay, bool nesterov, bool maximize, bool cycle_momentum,
                           bool first_step) {
  SgdConfig c;
  c.shape = shape_from(shape, mode);
  c.bounds = bounds_from(bounds);
  c.momentum = momentum;
  c.dampening = dampening;
  c.weight_decay = weight_decay;
  c.nesterov = nesterov;
  c.maximize = maximize;
  c.cycle_momentum = cycle_momentum;
  c.first_step = first_step;
  return c;
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
    const at::Tensor& g = grads[i];
    check_param(i, p, params[0], iteration, "CyclicSGD");
    TORCH_CHECK(g.layout() == at::kStrided, "clr_ext: the gradient of param ", i,
                " is sparse; CyclicSGD does not support sparse gradients");
    // Wrapper subclasses (DTensor, ...) have no memory of their own: pass their local tensors.
    TORCH_CHECK(p.has_storage() && g.has_storage(), "clr_ext: param ", i,
                " or its gradient has no storage of its own (a tensor subclass such as DTensor?); "
                "pass its local tensor");
    TORCH_CHECK(g.scalar_type() == p.scalar_type(), "clr_ext: the gradient of param ", i, " has dtype ",
                g.scalar_type(), " but the param has ", p.scalar_type());
    TORCH_CHECK(g.sizes() == p.sizes(), "clr_ext: the gradient of param ", i, " has shape ", g.sizes(),
                " but the param has ", p.sizes());
    TORCH_CHECK(g.device() == p.device(), "clr_ext: the gradient of param ", i, " is on ", g.device(),
                " but the param is on ", p.device());
    if (!momentum_buffers.empty()) {
      const at::Tensor& b = momentum_buffers[i];
      TORCH_CHECK(b.layout() == at::kStrided && b.has_storage() && b.scalar_type() == p.scalar_type() &&
                      b.sizes() == p.sizes() && b.device() == p.device(),
                  "clr_ext: the momentum buffer of param ", i, " does not match the param in dtype, shape or device");
    }
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

AdamwConfig parse_adamw_config(at::ArrayRef<double> bounds, at::ArrayRef<double> shape, int64_t mode, double beta1,
                               double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                               bool cycle_momentum, int64_t fused_width) {
  AdamwConfig c;
  c.shape = shape_from(shape, mode);
  c.bounds = bounds_from(bounds);
  // Every comparison is false for NaN, so these refuse NaN as well.
  TORCH_CHECK(beta1 >= 0.0 && beta1 < 1.0, "clr_ext: beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK(beta2 >= 0.0 && beta2 < 1.0, "clr_ext: beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK(eps >= 0.0, "clr_ext: eps must be non-negative, got ", eps);
  TORCH_CHECK(fused_width >= 0 && fused_width <= 1024, "clr_ext: fused_width must be in [0, 1024], got ", fused_width);
  if (cycle_momentum) {
    TORCH_CHECK(c.bounds.base_momentum >= 0.0 && c.bounds.base_momentum < 1.0 && c.bounds.max_momentum >= 0.0 &&
                    c.bounds.max_momentum < 1.0,
                "clr_ext: with cycle_momentum the momentum bounds are beta1's and must be in [0, 1), got ",
                c.bounds.base_momentum, " and ", c.bounds.max_momentum);
  }
  c.beta1 = beta1;
  c.beta2 = beta2;
  c.eps = eps;
  c.weight_decay = weight_decay;
  c.amsgrad = amsgrad;
  c.maximize = maximize;
  c.cycle_momentum = cycle_momentum;
  c.fused_width = fused_width;
  return c;
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
    // Wrapper subclasses (DTensor, ...) have no memory of their own: pass their local tensors.
    TORCH_CHECK(p.has_storage(), "clr_ext: param ", i,
                " has no storage of its own (a tensor subclass such as DTensor?); pass its local tensor");
    const std::pair<const char*, const at::Tensor*> alike[] = {
        {"grad", &grads[i]},
        {"exp_avg", &exp_avgs[i]},
        {"exp_avg_sq", &exp_avg_sqs[i]},
        {"max_exp_avg_sq", amsgrad ? &max_exp_avg_sqs[i] : nullptr}};
    for (const auto& named : alike) {
      if (named.second == nullptr) continue;
      const at::Tensor& t = *named.second;
      TORCH_CHECK(t.layout() == at::kStrided, "clr_ext: the ", named.first, " of param ", i,
                  " is not a strided (dense) tensor; sparse gradients are not supported");
      TORCH_CHECK(t.has_storage(), "clr_ext: the ", named.first, " of param ", i,
                  " has no storage of its own (a tensor subclass such as DTensor?); pass its local tensor");
      TORCH_CHECK(t.scalar_type() == p.scalar_type(), "clr_ext: the ", named.first, " of param ", i, " has dtype ",
                  t.scalar_type(), " but the param has ", p.scalar_type());
      TORCH_CHECK(t.sizes() == p.sizes(), "clr_ext: the ", named.first, " of param ", i, " has shape ", t.sizes(),
                  " but the param has ", p.sizes());
      TORCH_CHECK(t.device() == p.device(), "clr_ext: the ", named.first, " of param ", i, " is on ", t.device(),
                  " but the param is on ", p.device());
    }
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

namespace {

// The schedule as the kernels evaluate it, for the host mirror, the tests and tools.
std::pair<double, double> schedule_point(int64_t iteration, double base_lr, double max_lr, double base_momentum,
                                         double max_momentum, double step_size_up, double step_size_down, int64_t mode,
                                         double gamma, double custom_scale) {
  const clr_shape s = shape_from({step_size_up, step_size_down, gamma, custom_scale}, mode);
  const clr_bounds b = bounds_from({base_lr, max_lr, base_momentum, max_momentum});
  const clr_point p = clr_schedule(iteration, &s, &b);
  return {p.lr, p.momentum};
}

// Any schedule from the op's own arguments (bounds, shape, mode), as the kernels see them.
std::pair<double, double> schedule_at(int64_t iteration, const std::vector<double>& bounds,
                                      const std::vector<double>& shape, int64_t mode) {
  const clr_shape s = shape_from(shape, mode);
  const clr_bounds b = bounds_from(bounds);
  const clr_point p = clr_schedule(iteration, &s, &b);
  return {p.lr, p.momentum};
}

#ifndef CLR_EXT_NO_PYTHON
// The eager entry points take Python lists and unpack them here: pybind11's own
// list-of-Tensor caster goes through a Python object per element (~60 ns each,
// ~40 us for a 200-parameter step), THPVariable_Unpack does not. The tensors are
// borrowed, not copied: an owning copy's destruction gives its reference back through
// the Python interpreter (a GIL round trip per tensor, ~10 us for a 200-param step).
// The caller's lists keep them alive for the call.
class BorrowedTensors {
 public:
  BorrowedTensors() = default;
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;
  BorrowedTensors(BorrowedTensors&& other) noexcept : tensors_(std::move(other.tensors_)) {}
  ~BorrowedTensors() {
    for (at::Tensor& t : tensors_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
  }
  void reserve(size_t n) { tensors_.reserve(n); }
  void push_back(const at::Tensor& t) { tensors_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(t)); }
  bool empty() const { return tensors_.empty(); }
  size_t size() const { return tensors_.size(); }
  const at::Tensor& operator[](size_t i) const { return tensors_[i]; }
  operator at::TensorList() const { return tensors_; }

 private:
  std::vector<at::Tensor> tensors_;
};

BorrowedTensors unpack_tensors(const pybind11::list& list, const char* what) {
  BorrowedTensors out;
  out.reserve(list.size());
  for (const pybind11::handle item : list) {
    TORCH_CHECK_TYPE(THPVariable_Check(item.ptr()), "clr_ext: ", what,
                     " must be a list of tensors, got an element of type ", Py_TYPE(item.ptr())->tp_name);
    out.push_back(THPVariable_Unpack(item.ptr()));
  }
  return out;
}

using EagerStep = void (*)(at::TensorList, at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
                           at::ArrayRef<double>, at::ArrayRef<double>, int64_t, double, double, double, bool, bool,
                           bool, bool, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&);

template <EagerStep kStep>
void eager_step(const pybind11::list& params, const pybind11::list& grads, const pybind11::list& momentum_buffers,
                const pybind11::list& momentum_start, const at::Tensor& iteration, const std::vector<double>& bounds,
                const std::vector<double>& shape, int64_t mode, double momentum, double dampening, double weight_decay,
                bool nesterov, bool maximize, bool cycle_momentum, bool first_step,
                const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf) {
  const BorrowedTensors p = unpack_tensors(params, "params");
  const BorrowedTensors g = unpack_tensors(grads, "grads");
  const BorrowedTensors b = unpack_tensors(momentum_buffers, "momentum_buffers");
  const BorrowedTensors s = unpack_tensors(momentum_start, "momentum_start");
  kStep(p, g, b, s, iteration, bounds, shape, mode, momentum, dampening, weight_decay, nesterov, maximize,
        cycle_momentum, first_step, grad_scale, found_inf);
}

// Python's spelling of a shape and a dtype, "(3,)" and "torch.int64", in messages that
// name a user's parameter.
std::string shape_text(at::IntArrayRef sizes) {
  std::string out = "(";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + (sizes.size() == 1 ? ",)" : ")");
}

std::string dtype_text(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

// The optimizers' checks of one param group's params and gradients before they are
// bucketed, with the messages users see; the ops' own checks (check_sgd_tensors,
// check_adamw_tensors) guard the kernels. clr_ext/optim/core.py keeps a Python copy only for builds
// without _C and for steps traced by torch.compile, which cannot call into pybind.
void validate_group(const pybind11::list& params, const pybind11::list& grads, int64_t group_index,
                    const std::string& owner) {
  const BorrowedTensors p = unpack_tensors(params, "params");
  const BorrowedTensors g = unpack_tensors(grads, "grads");
  TORCH_CHECK(p.size() == g.size(), "clr_ext: got ", p.size(), " params but ", g.size(), " grads");
  for (size_t i = 0; i < p.size(); ++i) {
    const std::string where = "parameter " + std::to_string(i) + " of param group " + std::to_string(group_index);
    const at::ScalarType t = p[i].scalar_type();
    TORCH_CHECK(supported_dtype(t) || t == at::kComplexFloat || t == at::kComplexDouble, owner, ": ", where,
                " has dtype ", dtype_text(t),
                "; only floating-point parameters (float32, float64, float16, bfloat16, complex64, complex128) can "
                "be optimized");
    TORCH_CHECK(p[i].layout() == at::kStrided, owner, ": ", where, " is not a dense (strided) tensor");
    TORCH_CHECK(g[i].layout() == at::kStrided, owner, ": the gradient of ", where,
                " is sparse; sparse gradients are not supported");
    TORCH_CHECK(g[i].scalar_type() == t, owner, ": the gradient of ", where, " has dtype ",
                dtype_text(g[i].scalar_type()), ", the parameter ", dtype_text(t));
    TORCH_CHECK(g[i].sizes().equals(p[i].sizes()), owner, ": the gradient of ", where, " has shape ",
                shape_text(g[i].sizes()), ", the parameter ", shape_text(p[i].sizes()));
    TORCH_CHECK(g[i].device() == p[i].device(), owner, ": the gradient of ", where, " is on ", g[i].device(),
                ", the parameter on ", p[i].device());
  }
}

// The op's argument checks alone, so that a step over several buckets can check
// all of them before the first one writes anything.
void check_bucket(const pybind11::list& params, const pybind11::list& grads, const pybind11::list& momentum_buffers,
                  const pybind11::list& momentum_start) {
  const BorrowedTensors p = unpack_tensors(params, "params");
  if (p.empty()) return;
  const at::Tensor iteration = at::empty({}, p[0].options().dtype(at::kLong));
  check_sgd_tensors(p, unpack_tensors(grads, "grads"), unpack_tensors(momentum_buffers, "momentum_buffers"),
                    unpack_tensors(momentum_start, "momentum_start"), iteration, c10::nullopt, c10::nullopt,
                    c10::DeviceType::Meta);
}
#endif  // CLR_EXT_NO_PYTHON

#ifndef CLR_EXT_NO_PYTHON
// cyclic_adamw_cpu_ called from Python with lists (see unpack_tensors).
void eager_adamw_step(const pybind11::list& params, const pybind11::list& grads, const pybind11::list& exp_avgs,
                      const pybind11::list& exp_avg_sqs, const pybind11::list& max_exp_avg_sqs,
                      const pybind11::list& state_steps, const at::Tensor& iteration, const std::vector<double>& bounds,
                      const std::vector<double>& shape, int64_t mode, double beta1, double beta2, double eps,
                      double weight_decay, bool amsgrad, bool maximize, bool cycle_momentum,
                      const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                      int64_t fused_width) {
  cyclic_adamw_cpu_(unpack_tensors(params, "params"), unpack_tensors(grads, "grads"),
                    unpack_tensors(exp_avgs, "exp_avgs"), unpack_tensors(exp_avg_sqs, "exp_avg_sqs"),
                    unpack_tensors(max_exp_avg_sqs, "max_exp_avg_sqs"), unpack_tensors(state_steps, "state_steps"),
                    iteration, bounds, shape, mode, beta1, beta2, eps, weight_decay, amsgrad, maximize, cycle_momentum,
                    grad_scale, found_inf, fused_width);
}

#ifdef CLR_EXT_WITH_CUDA
// cyclic_adamw_cuda_ called from Python with lists (see unpack_tensors).
void eager_adamw_cuda_step(const pybind11::list& params, const pybind11::list& grads, const pybind11::list& exp_avgs,
                           const pybind11::list& exp_avg_sqs, const pybind11::list& max_exp_avg_sqs,
                           const pybind11::list& state_steps, const at::Tensor& iteration,
                           const std::vector<double>& bounds, const std::vector<double>& shape, int64_t mode,
                           double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                           bool cycle_momentum, const c10::optional<at::Tensor>& grad_scale,
                           const c10::optional<at::Tensor>& found_inf, int64_t fused_width) {
  cyclic_adamw_cuda_(unpack_tensors(params, "params"), unpack_tensors(grads, "grads"),
                     unpack_tensors(exp_avgs, "exp_avgs"), unpack_tensors(exp_avg_sqs, "exp_avg_sqs"),
                     unpack_tensors(max_exp_avg_sqs, "max_exp_avg_sqs"), unpack_tensors(state_steps, "state_steps"),
                     iteration, bounds, shape, mode, beta1, beta2, eps, weight_decay, amsgrad, maximize, cycle_momentum,
                     grad_scale, found_inf, fused_width);
}
#endif  // CLR_EXT_WITH_CUDA

// The AdamW op's tensor checks alone, for every bucket of a step before the first writes.
void check_adamw_bucket(const pybind11::list& params, const pybind11::list& grads, const pybind11::list& exp_avgs,
                        const pybind11::list& exp_avg_sqs, const pybind11::list& max_exp_avg_sqs,
                        const pybind11::list& state_steps, bool amsgrad) {
  const BorrowedTensors p = unpack_tensors(params, "params");
  if (p.empty()) return;
  const at::Tensor iteration = at::empty({}, p[0].options().dtype(at::kLong));
  check_adamw_tensors(p, unpack_tensors(grads, "grads"), unpack_tensors(exp_avgs, "exp_avgs"),
                      unpack_tensors(exp_avg_sqs, "exp_avg_sqs"), unpack_tensors(max_exp_avg_sqs, "max_exp_avg_sqs"),
                      unpack_tensors(state_steps, "state_steps"), amsgrad, iteration, c10::nullopt, c10::nullopt,
                      c10::DeviceType::Meta);
}
#endif  // CLR_EXT_NO_PYTHON

std::string compiled_isa() {
#if defined(CLR_EXT_NO_TARGET_CLONES)
  return "baseline";
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "baseline";
#else
  return "baseline";
#endif
}

}  // namespace

}  // namespace clr_ext

TORCH_LIBRARY(clr_ext, m) { m.def(clr_ext::kCyclicSgdSchema); }

TORCH_LIBRARY_IMPL(clr_ext, CPU, m) { m.impl("cyclic_sgd_", &clr_ext::cyclic_sgd_cpu_); }

TORCH_LIBRARY_FRAGMENT(clr_ext, m) { m.def(clr_ext::kCyclicAdamwSchema); }

TORCH_LIBRARY_IMPL(clr_ext, CPU, m) { m.impl("cyclic_adamw_", &clr_ext::cyclic_adamw_cpu_); }

#ifndef CLR_EXT_NO_PYTHON
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clr_ext compiled core: the fused cyclical-LR SGD op (registered as torch.ops.clr_ext)";
  m.def("schedule", &clr_ext::schedule_point,
        "(lr, momentum) that the step with this 0-based iteration uses, from csrc/schedule.h",
        pybind11::arg("iteration"), pybind11::arg("base_lr"), pybind11::arg("max_lr"), pybind11::arg("base_momentum"),
        pybind11::arg("max_momentum"), pybind11::arg("step_size_up"), pybind11::arg("step_size_down"),
        pybind11::arg("mode"), pybind11::arg("gamma"), pybind11::arg("custom_scale") = 1.0);
  m.def("schedule_at", &clr_ext::schedule_at,
        "(lr, momentum) of the step with this 0-based iteration, from the op's bounds, shape and mode",
        pybind11::arg("iteration"), pybind11::arg("bounds"), pybind11::arg("shape"), pybind11::arg("mode"));
  m.def("cyclic_sgd_cpu_", &clr_ext::eager_step<&clr_ext::cyclic_sgd_cpu_>,
        "The CPU kernel called directly, bypassing the dispatcher (eager fast path)");
  m.def("check_bucket", &clr_ext::check_bucket, "Raises if the tensors of one bucket do not fit the op");
  m.def("validate_group", &clr_ext::validate_group,
        "Raises, naming the parameter, if a param group's params or gradients cannot be stepped",
        pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("group_index"), pybind11::arg("owner"));
  m.def("cpu_isa", &clr_ext::compiled_isa, "The instruction set the CPU kernel's clones run with here");
  m.def("cyclic_adamw_cpu_", &clr_ext::eager_adamw_step,
        "The CPU AdamW kernel called directly, bypassing the dispatcher (eager fast path)", pybind11::arg("params"),
        pybind11::arg("grads"), pybind11::arg("exp_avgs"), pybind11::arg("exp_avg_sqs"),
        pybind11::arg("max_exp_avg_sqs"), pybind11::arg("state_steps"), pybind11::arg("iteration"),
        pybind11::arg("bounds"), pybind11::arg("shape"), pybind11::arg("schedule_mode"), pybind11::arg("beta1"),
        pybind11::arg("beta2"), pybind11::arg("eps"), pybind11::arg("weight_decay"), pybind11::arg("amsgrad"),
        pybind11::arg("maximize"), pybind11::arg("cycle_momentum"), pybind11::arg("grad_scale") = pybind11::none(),
        pybind11::arg("found_inf") = pybind11::none(), pybind11::arg("fused_width") = 0);
  m.def("check_adamw_bucket", &clr_ext::check_adamw_bucket,
        "Raises if the tensors of one AdamW bucket do not fit the op", pybind11::arg("params"), pybind11::arg("grads"),
        pybind11::arg("exp_avgs"), pybind11::arg("exp_avg_sqs"), pybind11::arg("max_exp_avg_sqs"),
        pybind11::arg("state_steps"), pybind11::arg("amsgrad"));
#ifdef CLR_EXT_WITH_CUDA
  m.def("cyclic_sgd_cuda_", &clr_ext::eager_step<&clr_ext::cyclic_sgd_cuda_>,
        "The CUDA kernel called directly, bypassing the dispatcher (eager fast path; no host sync)");
  m.def("cuda_max_tensors_per_launch", &clr_ext::cuda_max_tensors_per_launch,
        "How many tensors one CUDA kernel launch takes");
  m.def("cyclic_adamw_cuda_", &clr_ext::eager_adamw_cuda_step,
        "The CUDA AdamW kernel called directly, bypassing the dispatcher (eager fast path; no host sync)",
        pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("exp_avgs"), pybind11::arg("exp_avg_sqs"),
        pybind11::arg("max_exp_avg_sqs"), pybind11::arg("state_steps"), pybind11::arg("iteration"),
        pybind11::arg("bounds"), pybind11::arg("shape"), pybind11::arg("schedule_mode"), pybind11::arg("beta1"),
        pybind11::arg("beta2"), pybind11::arg("eps"), pybind11::arg("weight_decay"), pybind11::arg("amsgrad"),
        pybind11::arg("maximize"), pybind11::arg("cycle_momentum"), pybind11::arg("grad_scale") = pybind11::none(),
        pybind11::arg("found_inf") = pybind11::none(), pybind11::arg("fused_width") = 0);
  m.def("cuda_adamw_max_tensors_per_launch", &clr_ext::cuda_adamw_max_tensors_per_launch,
        "How many tensors one CUDA AdamW update launch takes");
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
#endif  // CLR_EXT_NO_PYTHON
