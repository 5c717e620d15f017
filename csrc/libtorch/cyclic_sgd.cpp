// clr::CyclicSGD (see cyclic_sgd.h): the Python clr_ext.CyclicSGD's step for libtorch.
// The schedule is csrc/math/schedule.h's clr_schedule() and the update is the registered op
// clr_ext::cyclic_sgd_ (the CPU kernel called directly for CPU tensors, the dispatcher
// for any other device): nothing here re-implements either.
#include "cyclic_sgd.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "../op/sgd_op.h"
#include "../math/schedule.h"

namespace clr {

namespace {

const char* const kModeNames[] = {"triangular", "triangular2", "exp_range", "fixed", "exp", "decay"};
constexpr int64_t kModeCount = 6;

[[noreturn]] void invalid(const std::string& what) { throw std::invalid_argument(what); }

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

double finite(const std::string& name, double v) {
  if (!std::isfinite(v)) invalid(name + ": must be finite, got " + fmt(v));
  return v;
}

double non_negative(const std::string& name, double v) {
  finite(name, v);
  if (v < 0) invalid(name + ": must be >= 0, got " + fmt(v));
  return v;
}

void momentum_value(const std::string& name, double v) {
  non_negative(name, v);
  if (v > 1) TORCH_WARN(name, "=", v, " is outside [0, 1]: the momentum buffer will grow without bound");
}

clr_shape shape_of(const CyclicSGDOptions& o) {
  clr_shape s;
  s.step_size_up = o.step_size_up();
  s.step_size_down = o.step_size_down().value_or(o.step_size_up());
  s.gamma = o.gamma();
  s.custom_scale = 1.0;
  s.mode = (int32_t)o.mode();
  return s;
}

clr_bounds bounds_of(const CyclicSGDOptions& o) {
  clr_bounds b;
  b.base_lr = o.base_lr();
  b.max_lr = o.max_lr();
  b.base_momentum = o.base_momentum();
  b.max_momentum = o.max_momentum();
  return b;
}

using OpSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
                   at::ArrayRef<double>, at::ArrayRef<double>, int64_t, double, double, double, bool, bool, bool, bool,
                   const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                   const std::optional<at::Tensor>&);

const c10::TypedOperatorHandle<OpSig>& registered_op() {
  static const c10::TypedOperatorHandle<OpSig> op =
      c10::Dispatcher::singleton().findSchemaOrThrow("clr_ext::cyclic_sgd_", "").typed<OpSig>();
  return op;
}

// One call of the op: params of one group with one device and dtype.
struct Work {
  c10::Device device;
  std::vector<at::Tensor> params, grads, buffers;
  bool first;
  size_t group;
};

}  // namespace

CyclicMode cyclic_mode_from_string(const std::string& name) {
  for (int64_t i = 0; i < kModeCount; ++i)
    if (name == kModeNames[i]) return (CyclicMode)i;
  invalid("mode: must be one of triangular, triangular2, exp_range, fixed, exp, decay, got '" + name + "'");
}

const char* cyclic_mode_name(CyclicMode mode) {
  const int64_t m = (int64_t)mode;
  return (m >= 0 && m < kModeCount) ? kModeNames[m] : "unknown";
}

// ------------------------------------------------------------------ options / state

CyclicSGDOptions::CyclicSGDOptions(double base_lr, double max_lr) : base_lr_(base_lr), max_lr_(max_lr) {}
CyclicSGDOptions::CyclicSGDOptions(double base_lr) : base_lr_(base_lr), max_lr_(base_lr) {}

double CyclicSGDOptions::get_lr() const { return lr(); }
void CyclicSGDOptions::set_lr(const double new_lr) { lr(new_lr); }

bool operator==(const CyclicSGDOptions& a, const CyclicSGDOptions& b) {
  return a.base_lr() == b.base_lr() && a.max_lr() == b.max_lr() && a.step_size_up() == b.step_size_up() &&
         a.step_size_down() == b.step_size_down() && a.mode() == b.mode() && a.gamma() == b.gamma() &&
         a.momentum() == b.momentum() && a.dampening() == b.dampening() && a.weight_decay() == b.weight_decay() &&
         a.nesterov() == b.nesterov() && a.maximize() == b.maximize() && a.cycle_momentum() == b.cycle_momentum() &&
         a.base_momentum() == b.base_momentum() && a.max_momentum() == b.max_momentum() && a.lr() == b.lr();
}

void CyclicSGDOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(base_lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(max_lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step_size_up);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step_size_down);
  archive.write("mode", c10::IValue((int64_t)mode()));
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(gamma);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(dampening);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(nesterov);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(maximize);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(cycle_momentum);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(base_momentum);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(max_momentum);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
}

void CyclicSGDOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, base_lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, max_lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, step_size_up);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG_OPTIONAL(double, step_size_down);
  {
    c10::IValue ivalue;
    if (archive.try_read("mode", ivalue)) {
      const int64_t m = ivalue.toInt();
      TORCH_CHECK(m >= 0 && m < kModeCount, "clr::CyclicSGD: the archive holds an unknown mode ", m);
      mode((CyclicMode)m);
    }
  }
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, gamma);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, momentum);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, dampening);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, nesterov);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, maximize);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, cycle_momentum);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, base_momentum);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, max_momentum);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
}

void CyclicSGDParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum_buffer);
}

void CyclicSGDParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, momentum_buffer);
}

bool operator==(const CyclicSGDParamState& a, const CyclicSGDParamState& b) {
  if (a.momentum_buffer().defined() != b.momentum_buffer().defined()) return false;
  return !a.momentum_buffer().defined() || torch::equal(a.momentum_buffer(), b.momentum_buffer());
}

// ------------------------------------------------------------------ optimizer

CyclicSGD::CyclicSGD(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, CyclicSGDOptions defaults)
    : torch::optim::Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                              std::make_unique<CyclicSGDOptions>(defaults)) {
  // The schedule's shape is one for all groups: check it before anything else.
  const double up = finite("step_size_up", defaults.step_size_up());
  if (!(up > 0)) invalid("step_size_up: must be positive, got " + fmt(up));
  if (defaults.step_size_down().has_value()) non_negative("step_size_down", *defaults.step_size_down());
  const double gamma = finite("gamma", defaults.gamma());
  if (!(gamma > 0)) invalid("gamma: must be positive, got " + fmt(gamma));
  const int64_t mode = (int64_t)defaults.mode();
  if (mode < 0 || mode >= kModeCount) invalid("mode: unknown mode number " + std::to_string(mode));
  if (param_groups.empty()) invalid("params: optimizer got an empty parameter list");
  check_group(defaults, 0);
  for (const auto& group : param_groups) add_param_group(group);
}

CyclicSGD::CyclicSGD(std::vector<torch::Tensor> params, CyclicSGDOptions defaults)
    : CyclicSGD(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(std::move(params))},
                std::move(defaults)) {}

void CyclicSGD::check_group(const CyclicSGDOptions& o, size_t index) const {
  const std::string where = index == 0 ? "" : " (param group " + std::to_string(index) + ")";
  non_negative("base_lr" + where, o.base_lr());
  non_negative("max_lr" + where, o.max_lr());
  non_negative("weight_decay" + where, o.weight_decay());
  if (o.max_lr() < o.base_lr())
    invalid("max_lr" + where + ": must be >= base_lr (" + fmt(o.base_lr()) + "), got " + fmt(o.max_lr()));
  momentum_value("base_momentum" + where, o.base_momentum());
  momentum_value("max_momentum" + where, o.max_momentum());
  momentum_value("momentum" + where, o.momentum());
  finite("dampening" + where, o.dampening());
  // As torch.optim.SGD checks it: on the momentum argument, before any cycling.
  if (o.nesterov() && (o.momentum() <= 0 || o.dampening() != 0))
    invalid("nesterov" + where + ": Nesterov momentum requires a momentum > 0 and zero dampening");
}

void CyclicSGD::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  // The base class would replace a custom optimizer's group options by the defaults.
  std::unique_ptr<torch::optim::OptimizerOptions> options =
      param_group.has_options() ? param_group.options().clone() : defaults_->clone();
  auto* typed = dynamic_cast<CyclicSGDOptions*>(options.get());
  if (typed == nullptr) invalid("param_group: the options of a clr::CyclicSGD group must be clr::CyclicSGDOptions");
  check_group(*typed, param_groups_.size());
  torch::optim::Optimizer::add_param_group(torch::optim::OptimizerParamGroup(param_group.params()));
  param_groups_.back().set_options(std::move(options));
  refresh_groups();
}

CyclicSGDOptions& CyclicSGD::group_options(size_t index) {
  return static_cast<CyclicSGDOptions&>(param_groups_[index].options());
}

const CyclicSGDOptions& CyclicSGD::group_options(size_t index) const {
  return static_cast<const CyclicSGDOptions&>(param_groups_[index].options());
}

const CyclicSGDOptions& CyclicSGD::shape_options() const { return static_cast<const CyclicSGDOptions&>(*defaults_); }

void CyclicSGD::refresh_groups() {
  const clr_shape shape = shape_of(shape_options());
  const bool cycle = shape_options().cycle_momentum();
  for (size_t i = 0; i < param_groups_.size(); ++i) {
    CyclicSGDOptions& o = group_options(i);
    const clr_bounds b = bounds_of(o);
    const clr_point p = clr_schedule(iteration_, &shape, &b);
    o.lr(p.lr);
    if (cycle) o.momentum(p.momentum);
  }
}

void CyclicSGD::set_iteration(int64_t iteration) {
  if (iteration < 0) invalid("iteration: must be >= 0, got " + std::to_string(iteration));
  iteration_ = iteration;
  for (auto& kv : counters_) kv.second.fill_(iteration_);
  refresh_groups();
}

std::vector<double> CyclicSGD::get_last_lr() const {
  std::vector<double> out;
  out.reserve(param_groups_.size());
  for (size_t i = 0; i < param_groups_.size(); ++i) out.push_back(group_options(i).lr());
  return out;
}

double CyclicSGD::current_lr() const { return group_options(0).lr(); }

std::vector<double> CyclicSGD::current_momentum() const {
  std::vector<double> out;
  out.reserve(param_groups_.size());
  for (size_t i = 0; i < param_groups_.size(); ++i) out.push_back(group_options(i).momentum());
  return out;
}

torch::Tensor& CyclicSGD::counter(const c10::Device& device) {
  auto it = counters_.find(device);
  if (it == counters_.end())
    it = counters_
             .emplace(device, torch::full({}, iteration_, torch::TensorOptions().dtype(torch::kLong).device(device)))
             .first;
  return it->second;
}

torch::Tensor CyclicSGD::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }

  const CyclicSGDOptions& shape_opts = shape_options();
  const clr_shape shape = shape_of(shape_opts);
  const std::vector<double> shape_vec = {shape.step_size_up, shape.step_size_down, shape.gamma, shape.custom_scale};
  const int64_t mode = shape.mode;
  const bool cycle_momentum = shape_opts.cycle_momentum();

  // Plan every call first: nothing is modified until all of them are known good.
  std::vector<Work> work;
  std::vector<std::pair<at::TensorImpl*, at::Tensor>> new_buffers;
  std::vector<std::vector<double>> group_bounds(param_groups_.size());
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    const CyclicSGDOptions& o = group_options(gi);
    const clr_bounds b = bounds_of(o);
    group_bounds[gi] = {b.base_lr, b.max_lr, b.base_momentum, b.max_momentum};
    const double step_momentum = cycle_momentum ? clr_schedule(iteration_, &shape, &b).momentum : o.momentum();
    // torch.optim.SGD keeps no buffer while momentum is 0. On a GPU the choice must not
    // depend on the host iteration: buffers are passed whenever momentum can be non-zero
    // (the kernel leaves them alone in a step whose momentum is 0), as in Python.
    const bool use_buffers = step_momentum != 0;
    const bool momentum_possible = cycle_momentum ? (b.base_momentum != 0 || b.max_momentum != 0) : step_momentum != 0;

    // Group the params that have a gradient by (device, dtype), in order of appearance.
    std::vector<std::pair<std::pair<c10::Device, at::ScalarType>, std::vector<size_t>>> buckets;
    const auto& params = param_groups_[gi].params();
    for (size_t i = 0; i < params.size(); ++i) {
      if (!params[i].grad().defined()) continue;
      const auto key = std::make_pair(params[i].device(), params[i].scalar_type());
      auto it = std::find_if(buckets.begin(), buckets.end(), [&](const auto& e) { return e.first == key; });
      if (it == buckets.end()) {
        buckets.push_back({key, {}});
        it = buckets.end() - 1;
      }
      it->second.push_back(i);
    }
    for (const auto& bucket : buckets) {
      const c10::Device device = bucket.first.first;
      Work plain{device, {}, {}, {}, false, gi};
      if (!(use_buffers || (device.type() != c10::DeviceType::CPU && momentum_possible))) {
        for (size_t i : bucket.second) {
          plain.params.push_back(params[i]);
          plain.grads.push_back(params[i].grad());
        }
        work.push_back(std::move(plain));
        continue;
      }
      Work fresh{device, {}, {}, {}, true, gi};
      for (size_t i : bucket.second) {
        const at::Tensor& p = params[i];
        at::Tensor buf;
        auto st = state_.find(p.unsafeGetTensorImpl());
        if (st != state_.end()) buf = static_cast<CyclicSGDParamState&>(*st->second).momentum_buffer();
        if (buf.defined()) {
          plain.params.push_back(p);
          plain.grads.push_back(p.grad());
          plain.buffers.push_back(buf);
        } else {
          buf = torch::zeros_like(p, at::MemoryFormat::Preserve);
          fresh.params.push_back(p);
          fresh.grads.push_back(p.grad());
          fresh.buffers.push_back(buf);
          // The host knows this step's momentum: a buffer that a momentum-0 step leaves
          // alone is not kept, so the param's first step with momentum starts it (buffer
          // = g, as torch::optim::SGD), not a zero buffer (which would give (1 - d) * g).
          if (use_buffers) new_buffers.emplace_back(p.unsafeGetTensorImpl(), buf);
        }
      }
      if (!plain.params.empty()) work.push_back(std::move(plain));
      if (!fresh.params.empty()) work.push_back(std::move(fresh));
    }
  }

  // The op checks its own arguments before it writes; with several calls, check them all
  // before the first one writes (the op's checks alone, as on the meta device).
  if (work.size() > 1) {
    for (auto& w : work) {
      clr_ext::check_sgd_tensors(w.params, w.grads, w.buffers, {}, counter(w.device), std::nullopt, std::nullopt,
                                 c10::DeviceType::Meta);
    }
  }

  for (auto& w : work) {
    const CyclicSGDOptions& o = group_options(w.group);
    at::Tensor& it = counter(w.device);
    if (w.device.type() == c10::DeviceType::CPU) {
      clr_ext::scheduled_sgd<c10::DeviceType::CPU>(w.params, w.grads, w.buffers, {}, it, group_bounds[w.group],
                                                   shape_vec, mode, o.momentum(), o.dampening(), o.weight_decay(),
                                                   o.nesterov(), o.maximize(), cycle_momentum, w.first, std::nullopt,
                                                   std::nullopt, std::nullopt);
    } else {
      registered_op().call(w.params, w.grads, w.buffers, {}, it, group_bounds[w.group], shape_vec, mode, o.momentum(),
                           o.dampening(), o.weight_decay(), o.nesterov(), o.maximize(), cycle_momentum, w.first,
                           std::nullopt, std::nullopt, std::nullopt);
    }
  }

  for (auto& nb : new_buffers) {
    auto& slot = state_[nb.first];
    if (!slot) slot = std::make_unique<CyclicSGDParamState>();
    static_cast<CyclicSGDParamState&>(*slot).momentum_buffer(nb.second);
  }
  ++iteration_;
  for (auto& kv : counters_) kv.second.add_(1);
  refresh_groups();
  return loss;
}

void CyclicSGD::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<CyclicSGDParamState, CyclicSGDOptions>(archive, *this);
  archive.write("clr_ext_iteration", c10::IValue(iteration_));
  // The defaults carry the schedule's shape (one for all groups): saved too.
  torch::serialize::OutputArchive defaults_archive(archive.compilation_unit());
  shape_options().serialize(defaults_archive);
  archive.write("clr_ext_defaults", defaults_archive);
}

void CyclicSGD::load(torch::serialize::InputArchive& archive) {
  // The loaded state replaces this optimizer's (as Optimizer.load_state_dict does).
  state_.clear();
  torch::optim::serialize<CyclicSGDParamState, CyclicSGDOptions>(archive, *this);
  // Buffers come back on the CPU: move them to their param's device and dtype.
  for (const auto& group : param_groups_) {
    for (const auto& p : group.params()) {
      auto st = state_.find(p.unsafeGetTensorImpl());
      if (st == state_.end()) continue;
      auto& ps = static_cast<CyclicSGDParamState&>(*st->second);
      if (ps.momentum_buffer().defined()) ps.momentum_buffer(ps.momentum_buffer().to(p.device(), p.scalar_type()));
    }
  }
  c10::IValue ivalue;
  if (archive.try_read("clr_ext_iteration", ivalue)) {
    iteration_ = ivalue.toInt();
  }
  torch::serialize::InputArchive defaults_archive;
  if (archive.try_read("clr_ext_defaults", defaults_archive)) {
    static_cast<CyclicSGDOptions&>(*defaults_).serialize(defaults_archive);
  }
  for (auto& kv : counters_) kv.second.fill_(iteration_);
  refresh_groups();
}

}  // namespace clr
