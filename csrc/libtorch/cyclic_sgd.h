// clr::CyclicSGD: SGD with a cyclical learning rate (and inversely cycled momentum) for
// C++ programs built against libtorch, the counterpart of the Python clr_ext.CyclicSGD.
//
// One step() is exactly torch::optim::SGD's step with the lr (and momentum) that
// torch.optim.lr_scheduler.CyclicLR gives the current iteration (0-based), then the
// iteration advances: the schedule comes from csrc/math/schedule.h and the update is the
// registered op clr_ext::cyclic_sgd_ (the same fused kernel the Python package runs).
//
//   #include <clr_ext/optim/cyclic_sgd.h>
//   clr::CyclicSGD opt(model->parameters(),
//                      clr::CyclicSGDOptions(/*base_lr=*/1e-3, /*max_lr=*/6e-3)
//                          .step_size_up(2000).mode(clr::CyclicMode::kTriangular2));
//   ... loss.backward(); opt.step(); opt.zero_grad();
//
// Per-group values (base_lr, max_lr, base_momentum, max_momentum, momentum, dampening,
// weight_decay, nesterov, maximize) come from a group's own CyclicSGDOptions when it has
// them, else from the defaults. The schedule's shape (step_size_up, step_size_down, mode,
// gamma, cycle_momentum) is one for all groups: the defaults' values.
//
// Reported values: after construction and after every step, each group's options hold
// in lr() (and, with cycle_momentum, in momentum()) the values the NEXT step uses, as
// PyTorch's param groups do after CyclicLR.step(); get_last_lr() lists them.
#pragma once

#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../math/schedule.h"  // CLR_MODE_*

namespace clr {

// The schedule's policy. The first three are torch.optim.lr_scheduler.CyclicLR's modes;
// fixed (lr = base_lr), exp (base_lr * gamma^iteration) and decay (max_lr falling
// linearly to base_lr over step_size_up, then flat) are the paper's other policies.
// The values are the op's schedule modes (csrc/math/schedule.h).
enum class CyclicMode : int64_t {
  kTriangular = CLR_MODE_TRIANGULAR,
  kTriangular2 = CLR_MODE_TRIANGULAR2,
  kExpRange = CLR_MODE_EXP_RANGE,
  kFixed = CLR_MODE_FIXED,
  kExp = CLR_MODE_EXP,
  kDecay = CLR_MODE_DECAY,
};

// "triangular", "triangular2", "exp_range", "fixed", "exp", "decay" (the Python names).
// Throws std::invalid_argument naming `mode` for any other string.
CyclicMode cyclic_mode_from_string(const std::string& name);
const char* cyclic_mode_name(CyclicMode mode);

struct CyclicSGDOptions : public torch::optim::OptimizerCloneableOptions<CyclicSGDOptions> {
  CyclicSGDOptions(double base_lr, double max_lr);
  // max_lr = base_lr (a flat schedule); also what loading an archive starts from.
  explicit CyclicSGDOptions(double base_lr);

  TORCH_ARG(double, base_lr);
  TORCH_ARG(double, max_lr);
  TORCH_ARG(double, step_size_up) = 2000;
  // std::nullopt: same as step_size_up.
  TORCH_ARG(std::optional<double>, step_size_down) = std::nullopt;
  TORCH_ARG(CyclicMode, mode) = CyclicMode::kTriangular;
  TORCH_ARG(double, gamma) = 1.0;
  TORCH_ARG(double, momentum) = 0.0;
  TORCH_ARG(double, dampening) = 0.0;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(bool, nesterov) = false;
  TORCH_ARG(bool, maximize) = false;
  TORCH_ARG(bool, cycle_momentum) = true;
  TORCH_ARG(double, base_momentum) = 0.8;
  TORCH_ARG(double, max_momentum) = 0.9;
  // Reported, not an input: the lr the next step uses (rewritten by the optimizer).
  TORCH_ARG(double, lr) = 0.0;

 public:
  // mode by its Python name (throws std::invalid_argument for an unknown one).
  CyclicSGDOptions& mode(const std::string& name) {
    mode_ = cyclic_mode_from_string(name);
    return *this;
  }

  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend bool operator==(const CyclicSGDOptions& lhs, const CyclicSGDOptions& rhs);
  // The lr the next step uses. set_lr() only changes the reported value: the
  // schedule rewrites it at the next step (change base_lr/max_lr instead).
  double get_lr() const override;
  void set_lr(const double lr) override;
};

struct CyclicSGDParamState : public torch::optim::OptimizerCloneableParamState<CyclicSGDParamState> {
  TORCH_ARG(torch::Tensor, momentum_buffer);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend bool operator==(const CyclicSGDParamState& lhs, const CyclicSGDParamState& rhs);
};

class CyclicSGD : public torch::optim::Optimizer {
 public:
  // Throws std::invalid_argument naming the argument for a bad option (negative, NaN or
  // infinite lr / momentum / weight_decay, max_lr < base_lr, step_size_up <= 0,
  // step_size_down < 0, gamma <= 0, an unknown mode, nesterov without momentum or
  // with dampening). Momentum above 1 only warns, as in PyTorch.
  explicit CyclicSGD(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, CyclicSGDOptions defaults);
  explicit CyclicSGD(std::vector<torch::Tensor> params, CyclicSGDOptions defaults);

  // One SGD step with this iteration's lr and momentum, then the iteration advances.
  // Returns the closure's loss (undefined without a closure). Params with an undefined
  // grad are skipped; the schedule advances anyway.
  torch::Tensor step(LossClosure closure = nullptr) override;

  // Adds a group (checked like the constructor's); its schedule continues at the
  // current iteration. Hides torch::optim::Optimizer::add_param_group, which would
  // drop a custom optimizer's per-group options.
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

  // The number of completed steps (the 0-based index of the next step).
  int64_t iteration() const noexcept { return iteration_; }
  // Moves the schedule to `iteration` (e.g. to resume a run whose state was not saved).
  void set_iteration(int64_t iteration);
  // The lr each group's next step uses (CyclicLR.get_last_lr()).
  std::vector<double> get_last_lr() const;
  // The first group's next lr.
  double current_lr() const;
  // The momentum each group's next step uses (the cycled one with cycle_momentum).
  std::vector<double> current_momentum() const;

  // The iteration, the schedule's shape (the defaults), the per-group options and the
  // momentum buffers (torch::optim::SGD's layout): a loaded optimizer continues exactly
  // where the saved one was. torch::save(opt, path) / torch::load(opt, path) call these.
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  CyclicSGDOptions& group_options(size_t index);
  const CyclicSGDOptions& group_options(size_t index) const;
  const CyclicSGDOptions& shape_options() const;
  void check_group(const CyclicSGDOptions& options, size_t index) const;
  void refresh_groups();
  torch::Tensor& counter(const c10::Device& device);

  int64_t iteration_ = 0;
  // The iteration as an int64 tensor on each device the params live on (as the Python
  // class keeps it): the op reads it there, so a CUDA step needs no host sync.
  std::unordered_map<c10::Device, torch::Tensor> counters_;
};

}  // namespace clr
