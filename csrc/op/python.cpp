// clr_ext._C's Python entry (pybind11): the schedule for tests and tools, and the eager
// fast path that calls the ops' CPU / CUDA implementations directly with Python lists,
// bypassing the dispatcher (and bumping the autograd version counters of what they
// write, as the dispatcher's ADInplaceOrView kernel does: op/register.cpp).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/python.h>

#include <string>

#include "adamw_op.h"
#include "sgd_op.h"

namespace clr_ext {

namespace {

// The schedule as the kernels evaluate it, for the host mirror, the tests and tools.
std::pair<double, double> schedule_point(int64_t iteration, double base_lr, double max_lr, double base_momentum,
                                         double max_momentum, double step_size_up, double step_size_down, int64_t mode,
                                         double gamma, double custom_scale) {
  const clr_shape s = shape_from({step_size_up, step_size_down, gamma, custom_scale}, mode);
  const clr_bounds b = bounds_from({base_lr, max_lr, base_momentum, max_momentum}, mode);
  const clr_point p = clr_schedule(iteration, &s, &b);
  return {p.lr, p.momentum};
}

// Any schedule from the op's own arguments (bounds, shape, mode), as the kernels see them.
std::pair<double, double> schedule_at(int64_t iteration, const std::vector<double>& bounds,
                                      const std::vector<double>& shape, int64_t mode) {
  const clr_shape s = shape_from(shape, mode);
  const clr_bounds b = bounds_from(bounds, mode);
  const clr_point p = clr_schedule(iteration, &s, &b);
  return {p.lr, p.momentum};
}

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

// What the dispatcher's ADInplaceOrView kernel does for an op called through it
// (op/register.cpp): autograd then sees the step's in-place writes, and a backward through
// a tensor the step changed raises "modified by an inplace operation", as after
// torch.optim.SGD's step.
void bump_versions(at::TensorList written) {
  for (const at::Tensor& t : written) torch::autograd::impl::bump_version(t);
}

// An SGD implementation called from Python with lists (see unpack_tensors).
template <SgdOp* kStep>
void eager_sgd_step(const pybind11::list& params, const pybind11::list& grads, const pybind11::list& momentum_buffers,
                    const pybind11::list& momentum_start, const at::Tensor& iteration,
                    const std::vector<double>& bounds, const std::vector<double>& shape, int64_t mode, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool maximize, bool cycle_momentum,
                    bool first_step, const c10::optional<at::Tensor>& grad_scale,
                    const c10::optional<at::Tensor>& found_inf, const c10::optional<at::Tensor>& lr_scale) {
  const BorrowedTensors p = unpack_tensors(params, "params");
  const BorrowedTensors g = unpack_tensors(grads, "grads");
  const BorrowedTensors b = unpack_tensors(momentum_buffers, "momentum_buffers");
  const BorrowedTensors s = unpack_tensors(momentum_start, "momentum_start");
  kStep(p, g, b, s, iteration, bounds, shape, mode, momentum, dampening, weight_decay, nesterov, maximize,
        cycle_momentum, first_step, grad_scale, found_inf, lr_scale);
  for (at::TensorList written : {at::TensorList(p), at::TensorList(b), at::TensorList(s)}) bump_versions(written);
  if (grad_scale.has_value()) bump_versions(g);  // unscaled in place
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

// An AdamW implementation called from Python with lists (see unpack_tensors).
template <AdamwOp* kStep>
void eager_adamw_step(const pybind11::list& params, const pybind11::list& grads, const pybind11::list& exp_avgs,
                      const pybind11::list& exp_avg_sqs, const pybind11::list& max_exp_avg_sqs,
                      const pybind11::list& state_steps, const at::Tensor& iteration, const std::vector<double>& bounds,
                      const std::vector<double>& shape, int64_t mode, double beta1, double beta2, double eps,
                      double weight_decay, bool amsgrad, bool maximize, bool cycle_momentum,
                      const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                      int64_t fused_width, const c10::optional<at::Tensor>& lr_scale) {
  const BorrowedTensors p = unpack_tensors(params, "params");
  const BorrowedTensors g = unpack_tensors(grads, "grads");
  const BorrowedTensors m = unpack_tensors(exp_avgs, "exp_avgs");
  const BorrowedTensors v = unpack_tensors(exp_avg_sqs, "exp_avg_sqs");
  const BorrowedTensors vmax = unpack_tensors(max_exp_avg_sqs, "max_exp_avg_sqs");
  const BorrowedTensors steps = unpack_tensors(state_steps, "state_steps");
  kStep(p, g, m, v, vmax, steps, iteration, bounds, shape, mode, beta1, beta2, eps, weight_decay, amsgrad, maximize,
        cycle_momentum, grad_scale, found_inf, fused_width, lr_scale);
  for (at::TensorList written :
       {at::TensorList(p), at::TensorList(m), at::TensorList(v), at::TensorList(vmax), at::TensorList(steps)})
    bump_versions(written);
  if (grad_scale.has_value()) bump_versions(g);  // unscaled in place
}

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

// The step's per-param reads, one pass each in C++: in Python, list(map(attrgetter("grad"),
// params)) and any(map(operator.is_, ..., repeat(None))) cost ~60 ns a param, ~12 us of a
// 200-param step; these ~5 ns. Each returns (values, whether any is None).
//
// A param's .grad, as Tensor's own getter reads it: directly where that getter would (a
// torch.Tensor or nn.Parameter, which has no __torch_function__ of its own, with no torch
// function mode active), else through the attribute itself (subclasses, modes).
std::pair<pybind11::list, bool> grads_of(const pybind11::list& params) {
  static PyObject* const parameter_type =
      pybind11::object(pybind11::module_::import("torch.nn").attr("Parameter")).release().ptr();  // (kept)
  const bool direct = !at::impl::torch_function_mode_enabled();
  pybind11::list grads(params.size());
  bool missing = false;
  size_t i = 0;
  for (const pybind11::handle param : params) {
    PyObject* const type = (PyObject*)Py_TYPE(param.ptr());
    PyObject* grad;
    if (direct && (type == THPVariableClass || type == parameter_type)) {
      grad = THPVariable_Wrap(THPVariable_Unpack(param.ptr()).grad());
    } else {
      grad = PyObject_GetAttrString(param.ptr(), "grad");
    }
    if (grad == nullptr) throw pybind11::error_already_set();
    missing = missing || grad == Py_None;
    PyList_SET_ITEM(grads.ptr(), i++, grad);  // (steals the reference)
  }
  return {std::move(grads), missing};
}

// dict.get(key) of each of a list of dicts (the params' state), and whether any is None.
std::pair<pybind11::list, bool> entries_of(const pybind11::list& dicts, const pybind11::str& key) {
  pybind11::list values(dicts.size());
  bool missing = false;
  size_t i = 0;
  for (const pybind11::handle d : dicts) {
    PyObject* value;
    if (PyDict_Check(d.ptr())) {
      value = PyDict_GetItemWithError(d.ptr(), key.ptr());  // (borrowed; no __missing__, as dict.get)
      if (value == nullptr && PyErr_Occurred()) throw pybind11::error_already_set();
      value = value == nullptr ? Py_None : value;
      Py_INCREF(value);
    } else {
      value = PyObject_CallMethod(d.ptr(), "get", "O", key.ptr());
      if (value == nullptr) throw pybind11::error_already_set();
    }
    missing = missing || value == Py_None;
    PyList_SET_ITEM(values.ptr(), i++, value);
  }
  return {std::move(values), missing};
}

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

// The eager entries of one rule, on each device: the op's keywords, written once per rule.
template <typename Entry>
void def_sgd_entry(pybind11::module_& m, const char* name, Entry entry, const char* doc) {
  m.def(name, entry, doc, pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("momentum_buffers"),
        pybind11::arg("momentum_start"), pybind11::arg("iteration"), pybind11::arg("bounds"), pybind11::arg("shape"),
        pybind11::arg("schedule_mode"), pybind11::arg("momentum"), pybind11::arg("dampening"),
        pybind11::arg("weight_decay"), pybind11::arg("nesterov"), pybind11::arg("maximize"),
        pybind11::arg("cycle_momentum"), pybind11::arg("first_step"), pybind11::arg("grad_scale") = pybind11::none(),
        pybind11::arg("found_inf") = pybind11::none(), pybind11::arg("lr_scale") = pybind11::none());
}

template <typename Entry>
void def_adamw_entry(pybind11::module_& m, const char* name, Entry entry, const char* doc) {
  m.def(name, entry, doc, pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("exp_avgs"),
        pybind11::arg("exp_avg_sqs"), pybind11::arg("max_exp_avg_sqs"), pybind11::arg("state_steps"),
        pybind11::arg("iteration"), pybind11::arg("bounds"), pybind11::arg("shape"), pybind11::arg("schedule_mode"),
        pybind11::arg("beta1"), pybind11::arg("beta2"), pybind11::arg("eps"), pybind11::arg("weight_decay"),
        pybind11::arg("amsgrad"), pybind11::arg("maximize"), pybind11::arg("cycle_momentum"),
        pybind11::arg("grad_scale") = pybind11::none(), pybind11::arg("found_inf") = pybind11::none(),
        pybind11::arg("fused_width") = 0, pybind11::arg("lr_scale") = pybind11::none());
}

}  // namespace

}  // namespace clr_ext

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clr_ext compiled core: the fused cyclical-LR SGD op (registered as torch.ops.clr_ext)";
  m.def("schedule", &clr_ext::schedule_point,
        "(lr, momentum) that the step with this 0-based iteration uses, from csrc/math/schedule.h",
        pybind11::arg("iteration"), pybind11::arg("base_lr"), pybind11::arg("max_lr"), pybind11::arg("base_momentum"),
        pybind11::arg("max_momentum"), pybind11::arg("step_size_up"), pybind11::arg("step_size_down"),
        pybind11::arg("mode"), pybind11::arg("gamma"), pybind11::arg("custom_scale") = 1.0);
  m.def("schedule_at", &clr_ext::schedule_at,
        "(lr, momentum) of the step with this 0-based iteration, from the op's bounds, shape and mode",
        pybind11::arg("iteration"), pybind11::arg("bounds"), pybind11::arg("shape"), pybind11::arg("mode"));
  clr_ext::def_sgd_entry(m, "cyclic_sgd_cpu_", &clr_ext::eager_sgd_step<&clr_ext::scheduled_sgd<c10::DeviceType::CPU>>,
                         "The CPU kernel called directly, bypassing the dispatcher (eager fast path)");
  m.def("check_bucket", &clr_ext::check_bucket, "Raises if the tensors of one bucket do not fit the op");
  m.def("validate_group", &clr_ext::validate_group,
        "Raises, naming the parameter, if a param group's params or gradients cannot be stepped",
        pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("group_index"), pybind11::arg("owner"));
  m.def("cpu_isa", &clr_ext::compiled_isa, "The instruction set the CPU kernel's clones run with here");
  m.def("grads_of", &clr_ext::grads_of, "([p.grad for p in params], whether any is None)", pybind11::arg("params"));
  m.def("entries_of", &clr_ext::entries_of, "([d.get(key) for d in dicts], whether any is None)",
        pybind11::arg("dicts"), pybind11::arg("key"));
  clr_ext::def_adamw_entry(m, "cyclic_adamw_cpu_",
                           &clr_ext::eager_adamw_step<&clr_ext::scheduled_adamw<c10::DeviceType::CPU>>,
                           "The CPU AdamW kernel called directly, bypassing the dispatcher (eager fast path)");
  m.def("check_adamw_bucket", &clr_ext::check_adamw_bucket,
        "Raises if the tensors of one AdamW bucket do not fit the op", pybind11::arg("params"), pybind11::arg("grads"),
        pybind11::arg("exp_avgs"), pybind11::arg("exp_avg_sqs"), pybind11::arg("max_exp_avg_sqs"),
        pybind11::arg("state_steps"), pybind11::arg("amsgrad"));
#ifdef CLR_EXT_WITH_CUDA
  clr_ext::def_sgd_entry(m, "cyclic_sgd_cuda_",
                         &clr_ext::eager_sgd_step<&clr_ext::scheduled_sgd<c10::DeviceType::CUDA>>,
                         "The CUDA kernel called directly, bypassing the dispatcher (eager fast path; no host sync)");
  m.def("cuda_max_tensors_per_launch", &clr_ext::cuda_max_tensors_per_launch,
        "How many tensors one CUDA kernel launch takes");
  clr_ext::def_adamw_entry(
      m, "cyclic_adamw_cuda_", &clr_ext::eager_adamw_step<&clr_ext::scheduled_adamw<c10::DeviceType::CUDA>>,
      "The CUDA AdamW kernel called directly, bypassing the dispatcher (eager fast path; no host sync)");
  m.def("cuda_adamw_max_tensors_per_launch", &clr_ext::cuda_adamw_max_tensors_per_launch,
        "How many tensors one CUDA AdamW update launch takes");
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  // Every eager entry above bumps the version counters of what it writes (bump_versions),
  // so the Python side must not bump them a second time (clr_ext/backends.py).
  m.attr("bumps_versions") = true;
}
