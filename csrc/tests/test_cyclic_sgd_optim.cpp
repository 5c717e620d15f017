// clr::CyclicSGD (csrc/libtorch/) from a libtorch program:
//  - the LR (and momentum) sequences against values worked out by hand for small step
//    sizes (triangular, triangular2 halving, exp_range, asymmetric up/down, the paper's
//    fixed / exp / decay), and against an independent transcription of
//    torch.optim.lr_scheduler.CyclicLR, also at iteration 2^40;
//  - a tiny torch::nn::Linear model trained in float64 against torch::optim::SGD whose
//    lr (and momentum) are set by hand every step to the same schedule (libtorch has
//    SGD but no cyclical LR): weight decay, momentum cycling, nesterov, dampening,
//    maximize, no momentum (no buffers kept), per-group options, params without grad;
//  - invalid options throw std::invalid_argument naming the argument; a bad gradient
//    throws from step() before any parameter changes;
//  - torch::save / torch::load of the optimizer resumes bit for bit.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "libtorch/cyclic_sgd.h"
#include "expect.h"

static bool close(double a, double b, double rel = 1e-15) {
  return std::fabs(a - b) <= rel * std::max(1.0, std::max(std::fabs(a), std::fabs(b)));
}

// torch.optim.lr_scheduler.CyclicLR.get_lr(), transcribed independently of schedule.h.
struct Ref {
  double base_lr, max_lr, up, down, gamma, base_m, max_m;
  std::string mode;
  std::pair<double, double> at(int64_t it) const {
    const double total = up + down, ratio = up / total;
    const double cycle = std::floor(1 + it / total);
    const double x = 1. + it / total - cycle;
    const double scale_factor = x <= ratio ? x / ratio : (x - 1) / (ratio - 1);
    double scale = 1.0;
    if (mode == "triangular2") scale = 1 / std::pow(2., cycle - 1);
    if (mode == "exp_range") scale = std::pow(gamma, (double)it);
    const double lr = base_lr + ((max_lr - base_lr) * scale_factor) * scale;
    const double m = max_m - ((max_m - base_m) * scale_factor) * scale;
    return {lr, m};
  }
};

// The lrs that get_last_lr() reports before each of n steps (the first one right after
// construction), on a throwaway parameter.
static std::vector<double> lr_sequence(const clr::CyclicSGDOptions& options, int n,
                                       std::vector<double>* momenta = nullptr) {
  auto p = torch::zeros({2}, torch::dtype(torch::kDouble).requires_grad(true));
  p.mutable_grad() = torch::ones({2}, torch::kDouble);
  clr::CyclicSGD opt({p}, options);
  std::vector<double> out;
  for (int i = 0; i < n; ++i) {
    if (opt.iteration() != i) ++g_failures, fprintf(stderr, "FAIL: iteration() %ld != %d\n", (long)opt.iteration(), i);
    out.push_back(opt.get_last_lr().at(0));
    if (momenta) momenta->push_back(opt.current_momentum().at(0));
    opt.step();
  }
  return out;
}

static void expect_sequence(const char* what, const std::vector<double>& got, const std::vector<double>& want) {
  EXPECT(got.size() == want.size(), "%s: length", what);
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    EXPECT(close(got[i], want[i]), "%s: step %zu lr %.17g, want %.17g", what, i, got[i], want[i]);
}

static void test_lr_sequences() {
  using clr::CyclicMode;
  auto o = [] { return clr::CyclicSGDOptions(1.0, 5.0).step_size_up(2); };
  expect_sequence("triangular", lr_sequence(o(), 9), {1, 3, 5, 3, 1, 3, 5, 3, 1});
  expect_sequence("triangular2", lr_sequence(o().mode(CyclicMode::kTriangular2), 13),
                  {1, 3, 5, 3, 1, 2, 3, 2, 1, 1.5, 2, 1.5, 1});
  expect_sequence("triangular2 by name", lr_sequence(o().mode("triangular2"), 7), {1, 3, 5, 3, 1, 2, 3});
  expect_sequence("exp_range", lr_sequence(o().mode(CyclicMode::kExpRange).gamma(0.5), 8),
                  {1, 2, 2, 1.25, 1, 1.0625, 1.0625, 1.015625});
  expect_sequence("up 1 down 3", lr_sequence(o().step_size_up(1).step_size_down(3), 6),
                  {1, 5, 1 + 8.0 / 3, 1 + 4.0 / 3, 1, 5});
  expect_sequence("fixed", lr_sequence(o().mode("fixed"), 4), {1, 1, 1, 1});
  expect_sequence("exp", lr_sequence(o().mode(CyclicMode::kExp).gamma(0.5), 4), {1, 0.5, 0.25, 0.125});
  expect_sequence("decay", lr_sequence(o().mode(CyclicMode::kDecay), 5), {5, 3, 1, 1, 1});

  // Momentum moves against the lr: max_momentum at base_lr.
  std::vector<double> momenta;
  lr_sequence(o().base_momentum(0.5).max_momentum(0.75), 5, &momenta);
  expect_sequence("momentum", momenta, {0.75, 0.625, 0.5, 0.625, 0.75});
  momenta.clear();
  lr_sequence(o().momentum(0.3).cycle_momentum(false), 3, &momenta);
  expect_sequence("momentum, not cycled", momenta, {0.3, 0.3, 0.3});

  // Against the CyclicLR transcription, bit for bit, over a few cycles and at 2^40.
  for (const char* mode : {"triangular", "triangular2", "exp_range"}) {
    const Ref ref{1e-3, 6e-3, 7, 4, 0.999, 0.85, 0.95, mode};
    auto p = torch::zeros({1}, torch::dtype(torch::kDouble).requires_grad(true));
    p.mutable_grad() = torch::ones({1}, torch::kDouble);
    clr::CyclicSGD opt({p}, clr::CyclicSGDOptions(ref.base_lr, ref.max_lr)
                                .step_size_up(7)
                                .step_size_down(4)
                                .mode(mode)
                                .gamma(ref.gamma)
                                .base_momentum(0.85)
                                .max_momentum(0.95));
    for (int64_t it = 0; it < 50; ++it) {
      const auto want = ref.at(it);
      EXPECT(opt.current_lr() == want.first && opt.current_momentum()[0] == want.second,
             "%s it %ld: lr %.17g mom %.17g, want %.17g %.17g", mode, (long)it, opt.current_lr(),
             opt.current_momentum()[0], want.first, want.second);
      opt.step();
    }
    for (int64_t it : {(int64_t)1 << 40, ((int64_t)1 << 40) + 5, ((int64_t)1 << 52) + 3}) {
      opt.set_iteration(it);
      const auto want = ref.at(it);
      EXPECT(opt.iteration() == it && opt.current_lr() == want.first, "%s it %ld: lr %.17g, want %.17g", mode, (long)it,
             opt.current_lr(), want.first);
    }
  }
}

// ---------------------------------------------------------------- parity with SGD

struct Case {
  const char* name;
  clr::CyclicSGDOptions options;
  Ref ref;  // the schedule to drive torch::optim::SGD with
};

static torch::nn::Linear make_model() {
  torch::manual_seed(1);
  torch::nn::Linear lin(torch::nn::LinearOptions(4, 3));
  lin->to(torch::kDouble);
  return lin;
}

static void copy_params(torch::nn::Linear& dst, torch::nn::Linear& src) {
  torch::NoGradGuard g;
  dst->weight.copy_(src->weight);
  dst->bias.copy_(src->bias);
}

static torch::Tensor loss_of(torch::nn::Linear& lin, const torch::Tensor& x, const torch::Tensor& y) {
  return torch::mse_loss(lin->forward(x), y);
}

static double max_rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs() / (1 + b.abs())).max().item<double>();
}

static void test_parity_with_sgd() {
  torch::manual_seed(0);
  const auto x = torch::randn({16, 4}, torch::kDouble);
  const auto y = torch::randn({16, 3}, torch::kDouble);
  using clr::CyclicSGDOptions;
  std::vector<Case> cases = {
      {"triangular2, cycled momentum, weight decay",
       CyclicSGDOptions(0.01, 0.1).step_size_up(3).step_size_down(5).mode("triangular2").weight_decay(5e-4),
       {0.01, 0.1, 3, 5, 1, 0.8, 0.9, "triangular2"}},
      {"exp_range, nesterov, fixed momentum",
       CyclicSGDOptions(0.02, 0.2)
           .step_size_up(4)
           .mode("exp_range")
           .gamma(0.97)
           .momentum(0.9)
           .nesterov(true)
           .cycle_momentum(false),
       {0.02, 0.2, 4, 4, 0.97, 0.9, 0.9, "exp_range"}},
      {"triangular, dampening",
       CyclicSGDOptions(0.01, 0.3).step_size_up(5).momentum(0.5).dampening(0.25).cycle_momentum(false),
       {0.01, 0.3, 5, 5, 1, 0.5, 0.5, "triangular"}},
      {"triangular, no momentum",
       CyclicSGDOptions(0.01, 0.3).step_size_up(2).cycle_momentum(false),
       {0.01, 0.3, 2, 2, 1, 0, 0, "triangular"}},
      {"maximize, cycled momentum",
       CyclicSGDOptions(0.01, 0.1).step_size_up(3).maximize(true).base_momentum(0.7).max_momentum(0.95),
       {0.01, 0.1, 3, 3, 1, 0.7, 0.95, "triangular"}},
  };
  const int steps = 40;
  for (auto& c : cases) {
    auto model = make_model();
    auto ref_model = make_model();
    copy_params(ref_model, model);
    // A parameter that never gets a gradient: skipped, no state, unchanged.
    auto idle = torch::ones({3}, torch::dtype(torch::kDouble).requires_grad(true));
    std::vector<torch::Tensor> params = model->parameters();
    params.push_back(idle);
    clr::CyclicSGD opt(params, c.options);
    torch::optim::SGD sgd(ref_model->parameters(), torch::optim::SGDOptions(c.ref.base_lr)
                                                       .momentum(c.options.momentum())
                                                       .dampening(c.options.dampening())
                                                       .weight_decay(c.options.weight_decay())
                                                       .nesterov(c.options.nesterov()));
    const double sign = c.options.maximize() ? -1.0 : 1.0;
    double worst = 0;
    for (int it = 0; it < steps; ++it) {
      const auto point = c.ref.at(it);
      auto& so = static_cast<torch::optim::SGDOptions&>(sgd.param_groups()[0].options());
      so.lr(point.first);
      if (c.options.cycle_momentum()) so.momentum(point.second);
      EXPECT(close(opt.current_lr(), point.first, 1e-15), "%s: step %d lr %.17g, want %.17g", c.name, it,
             opt.current_lr(), point.first);

      opt.zero_grad();
      loss_of(model, x, y).backward();
      opt.step();
      sgd.zero_grad();
      (sign * loss_of(ref_model, x, y)).backward();
      sgd.step();
      worst = std::max(
          worst, std::max(max_rel_diff(model->weight, ref_model->weight), max_rel_diff(model->bias, ref_model->bias)));
    }
    EXPECT(worst <= 1e-12, "%s: params differ from torch::optim::SGD by %.3g (relative)", c.name, worst);
    EXPECT(opt.iteration() == steps, "%s: iteration %ld", c.name, (long)opt.iteration());
    EXPECT(torch::equal(idle, torch::ones({3}, torch::kDouble)), "%s: a param without grad changed", c.name);
    EXPECT(opt.state().count(idle.unsafeGetTensorImpl()) == 0, "%s: a param without grad got state", c.name);
    const bool has_momentum = c.options.cycle_momentum() || c.options.momentum() != 0;
    EXPECT((opt.state().size() == 2) == has_momentum, "%s: %zu states", c.name, opt.state().size());
  }

  // Two groups with their own bounds and weight decay vs SGD with two groups.
  {
    auto model = make_model();
    auto ref_model = make_model();
    copy_params(ref_model, model);
    const Ref rw{0.01, 0.1, 3, 3, 1, 0.8, 0.9, "triangular"};
    const Ref rb{0.001, 0.05, 3, 3, 1, 0.6, 0.7, "triangular"};
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{model->weight});
    groups.emplace_back(
        std::vector<torch::Tensor>{model->bias},
        std::make_unique<clr::CyclicSGDOptions>(
            clr::CyclicSGDOptions(0.001, 0.05).base_momentum(0.6).max_momentum(0.7).weight_decay(1e-2)));
    clr::CyclicSGD opt(groups, clr::CyclicSGDOptions(0.01, 0.1).step_size_up(3));
    std::vector<torch::optim::OptimizerParamGroup> sgd_groups;
    sgd_groups.emplace_back(std::vector<torch::Tensor>{ref_model->weight},
                            std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.01).momentum(0.9)));
    sgd_groups.emplace_back(
        std::vector<torch::Tensor>{ref_model->bias},
        std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.001).momentum(0.7).weight_decay(1e-2)));
    torch::optim::SGD sgd(sgd_groups, torch::optim::SGDOptions(0.01).momentum(0.9));
    double worst = 0;
    for (int it = 0; it < 30; ++it) {
      const Ref* refs[2] = {&rw, &rb};
      for (int g = 0; g < 2; ++g) {
        auto& so = static_cast<torch::optim::SGDOptions&>(sgd.param_groups()[g].options());
        so.lr(refs[g]->at(it).first).momentum(refs[g]->at(it).second).weight_decay(g == 0 ? 0.0 : 1e-2);
        EXPECT(opt.get_last_lr()[g] == refs[g]->at(it).first, "groups: group %d step %d lr %.17g, want %.17g", g, it,
               opt.get_last_lr()[g], refs[g]->at(it).first);
      }
      opt.zero_grad();
      loss_of(model, x, y).backward();
      opt.step();
      sgd.zero_grad();
      loss_of(ref_model, x, y).backward();
      sgd.step();
      worst = std::max(
          worst, std::max(max_rel_diff(model->weight, ref_model->weight), max_rel_diff(model->bias, ref_model->bias)));
    }
    EXPECT(worst <= 1e-12, "groups: params differ from torch::optim::SGD by %.3g (relative)", worst);
  }

  // The closure's loss comes back, computed with grad enabled.
  {
    auto model = make_model();
    clr::CyclicSGD opt(model->parameters(), clr::CyclicSGDOptions(0.01, 0.1).step_size_up(2));
    auto loss = opt.step([&] {
      opt.zero_grad();
      auto l = loss_of(model, x, y);
      l.backward();
      return l;
    });
    EXPECT(loss.defined() && loss.requires_grad(), "closure: loss not returned");
    EXPECT(opt.iteration() == 1, "closure: iteration");
  }
}

// ---------------------------------------------------------------- invalid input

static void expect_invalid(const char* name, const std::function<void()>& make) {
  try {
    make();
    EXPECT(false, "no exception for a bad %s", name);
  } catch (const std::invalid_argument& e) {
    EXPECT(std::string(e.what()).find(name) != std::string::npos, "the message for a bad %s does not name it: %s", name,
           e.what());
  } catch (const std::exception& e) {
    EXPECT(false, "a bad %s threw something other than std::invalid_argument: %s", name, e.what());
  }
}

static void test_invalid_options() {
  using clr::CyclicSGDOptions;
  auto p = torch::zeros({2}, torch::dtype(torch::kDouble).requires_grad(true));
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  auto make = [&](CyclicSGDOptions o) { return [=] { clr::CyclicSGD opt({p}, o); }; };
  expect_invalid("base_lr", make(CyclicSGDOptions(-0.1, 1)));
  expect_invalid("base_lr", make(CyclicSGDOptions(nan, 1)));
  expect_invalid("max_lr", make(CyclicSGDOptions(0.1, inf)));
  expect_invalid("max_lr", make(CyclicSGDOptions(0.5, 0.1)));
  expect_invalid("step_size_up", make(CyclicSGDOptions(0.1, 1).step_size_up(0)));
  expect_invalid("step_size_up", make(CyclicSGDOptions(0.1, 1).step_size_up(nan)));
  expect_invalid("step_size_down", make(CyclicSGDOptions(0.1, 1).step_size_down(-1)));
  expect_invalid("gamma", make(CyclicSGDOptions(0.1, 1).gamma(0)));
  expect_invalid("gamma", make(CyclicSGDOptions(0.1, 1).gamma(-0.5)));
  expect_invalid("mode", make(CyclicSGDOptions(0.1, 1).mode((clr::CyclicMode)42)));
  expect_invalid("mode", [] { CyclicSGDOptions(0.1, 1).mode("cosine"); });
  expect_invalid("weight_decay", make(CyclicSGDOptions(0.1, 1).weight_decay(-1e-4)));
  expect_invalid("momentum", make(CyclicSGDOptions(0.1, 1).momentum(-0.1)));
  expect_invalid("base_momentum", make(CyclicSGDOptions(0.1, 1).base_momentum(nan)));
  expect_invalid("max_momentum", make(CyclicSGDOptions(0.1, 1).max_momentum(-1)));
  expect_invalid("dampening", make(CyclicSGDOptions(0.1, 1).dampening(inf)));
  expect_invalid("nesterov", make(CyclicSGDOptions(0.1, 1).nesterov(true)));
  expect_invalid("nesterov", make(CyclicSGDOptions(0.1, 1).nesterov(true).momentum(0.9).dampening(0.1)));
  expect_invalid(
      "params", [] { clr::CyclicSGD opt(std::vector<torch::optim::OptimizerParamGroup>{}, CyclicSGDOptions(0.1, 1)); });
  expect_invalid("max_lr (param group 1)", [&] {
    auto q = torch::zeros({2}, torch::dtype(torch::kDouble).requires_grad(true));
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{p});
    groups.emplace_back(std::vector<torch::Tensor>{q}, std::make_unique<CyclicSGDOptions>(CyclicSGDOptions(0.5, 0.1)));
    clr::CyclicSGD opt(groups, CyclicSGDOptions(0.1, 1));
  });

  // A bad gradient throws from step() before any parameter is changed.
  {
    auto a = torch::ones({3}, torch::dtype(torch::kDouble).requires_grad(true));
    auto b = torch::ones({2}, torch::dtype(torch::kDouble).requires_grad(true));
    a.mutable_grad() = torch::ones({3}, torch::kDouble);
    b.mutable_grad() = torch::ones({2}, torch::kFloat);  // dtype differs from the param's
    clr::CyclicSGD opt({a, b}, CyclicSGDOptions(0.1, 1).momentum(0.9).cycle_momentum(false));
    bool threw = false;
    try {
      opt.step();
    } catch (const c10::Error&) {
      threw = true;
    }
    EXPECT(threw, "a gradient of the wrong dtype did not throw");
    EXPECT(torch::equal(a, torch::ones({3}, torch::kDouble)), "a param changed before the step threw");
    EXPECT(opt.iteration() == 0 && opt.state().empty(), "a failed step advanced or left state");
  }
}

// ---------------------------------------------------------------- save / load

static void test_save_load() {
  torch::manual_seed(0);
  const auto x = torch::randn({16, 4}, torch::kDouble);
  const auto y = torch::randn({16, 3}, torch::kDouble);
  const auto options =
      clr::CyclicSGDOptions(0.01, 0.1).step_size_up(3).step_size_down(2).mode("triangular2").weight_decay(1e-3);
  auto a = make_model();
  clr::CyclicSGD opt_a(a->parameters(), options);
  auto train = [&](torch::nn::Linear& m, clr::CyclicSGD& o, int n) {
    for (int i = 0; i < n; ++i) {
      o.zero_grad();
      loss_of(m, x, y).backward();
      o.step();
    }
  };
  train(a, opt_a, 7);

  std::stringstream stream;
  torch::save(opt_a, stream);
  // An optimizer with other bounds, shape and state: loading brings the saved ones back.
  auto b = make_model();
  clr::CyclicSGD opt_b(b->parameters(), clr::CyclicSGDOptions(0.5, 0.6).step_size_up(9).mode("exp_range").gamma(0.9));
  train(b, opt_b, 2);
  copy_params(b, a);
  torch::load(opt_b, stream);
  EXPECT(opt_b.iteration() == 7, "load: iteration %ld", (long)opt_b.iteration());
  EXPECT(opt_b.get_last_lr() == opt_a.get_last_lr(), "load: lr %.17g vs %.17g", opt_b.current_lr(), opt_a.current_lr());
  EXPECT(opt_b.state().size() == 2, "load: %zu momentum buffers", opt_b.state().size());

  train(a, opt_a, 9);
  train(b, opt_b, 9);
  EXPECT(torch::equal(a->weight, b->weight) && torch::equal(a->bias, b->bias),
         "load: the resumed run differs from the uninterrupted one");
  EXPECT(opt_a.get_last_lr() == opt_b.get_last_lr() && opt_b.iteration() == 16, "load: schedules diverged");
}

int main() {
  test_lr_sequences();
  test_parity_with_sgd();
  test_invalid_options();
  test_save_load();
  if (g_failures) {
    fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  printf("clr::CyclicSGD: all checks passed\n");
  return 0;
}
