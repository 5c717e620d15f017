// torch.ops.clr_ext.cyclic_sgd_ through the PyTorch dispatcher, from C++ (libtorch, no
// Python): the op is registered by linking libclr_ext, found by name, and run on CPU
// tensors; the result is compared with the same SGD step written with ATen ops, whose
// lr/momentum come from csrc/math/schedule.h. Also: a bad argument throws before anything
// is written, and the op does not advance the iteration counter.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <vector>

#include "math/schedule.h"
#include "expect.h"

using OpSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
                   at::ArrayRef<double>, at::ArrayRef<double>, int64_t, double, double, double, bool, bool, bool, bool,
                   const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                   const c10::optional<at::Tensor>&);

int main() {
  auto handle = c10::Dispatcher::singleton().findSchema({"clr_ext::cyclic_sgd_", ""});
  if (!handle.has_value()) {
    fprintf(stderr, "FAIL: clr_ext::cyclic_sgd_ is not registered (libclr_ext not loaded?)\n");
    return 1;
  }
  auto op = handle->typed<OpSig>();

  for (auto dtype : {at::kFloat, at::kDouble}) {
    at::manual_seed(0);
    const std::vector<std::vector<int64_t>> shapes = {{3}, {17, 5}, {64, 3, 3, 3}, {1031}, {70000}};
    std::vector<at::Tensor> params, grads, bufs, ref_p, ref_b;
    for (const auto& s : shapes) {
      params.push_back(at::randn(s, at::TensorOptions().dtype(dtype)));
      grads.push_back(at::randn(s, at::TensorOptions().dtype(dtype)));
      bufs.push_back(at::zeros(s, at::TensorOptions().dtype(dtype)));
      ref_p.push_back(params.back().clone());
      ref_b.push_back(bufs.back().clone());
    }
    at::Tensor counter = at::zeros({}, at::TensorOptions().dtype(at::kLong));
    const double base_lr = 0.01, max_lr = 0.1, base_m = 0.8, max_m = 0.9, wd = 5e-4;
    const std::vector<double> bounds = {base_lr, max_lr, base_m, max_m};
    const std::vector<double> shape = {5.0, 3.0, 1.0, 1.0};
    clr_shape cs = {5.0, 3.0, 1.0, 1.0, CLR_MODE_TRIANGULAR2};
    clr_bounds cb = {base_lr, max_lr, base_m, max_m};

    for (int64_t it = 0; it < 20; ++it) {
      counter.fill_(it);
      const bool first = it == 0;
      op.call(params, grads, bufs, {}, counter, bounds, shape, CLR_MODE_TRIANGULAR2, 0.0, 0.0, wd, false, false, true,
              first, c10::nullopt, c10::nullopt, c10::nullopt);
      EXPECT(counter.item<int64_t>() == it, "the op advanced the counter");
      const clr_point pt = clr_schedule(it, &cs, &cb);
      for (size_t i = 0; i < shapes.size(); ++i) {
        at::Tensor g = grads[i] + ref_p[i] * wd;  // torch.optim.SGD: d_p = grad + wd * p
        if (first)
          ref_b[i].copy_(g);
        else
          ref_b[i].mul_(pt.momentum).add_(g);
        ref_p[i].add_(ref_b[i], -pt.lr);
      }
    }
    for (size_t i = 0; i < shapes.size(); ++i) {
      const double tol = dtype == at::kFloat ? 1e-5 : 1e-12;
      EXPECT(at::allclose(params[i], ref_p[i], tol, tol), "param %zu (dtype %s) differs by %g", i, c10::toString(dtype),
             (params[i] - ref_p[i]).abs().max().item<double>());
      EXPECT(at::allclose(bufs[i], ref_b[i], tol, tol), "buffer %zu differs", i);
    }

    // A gradient of the wrong shape: c10::Error, and no tensor of the bucket changes.
    std::vector<at::Tensor> bad_grads = grads;
    bad_grads.back() = at::randn({3}, at::TensorOptions().dtype(dtype));
    std::vector<at::Tensor> before;
    for (auto& p : params) before.push_back(p.clone());
    bool threw = false;
    try {
      op.call(params, bad_grads, bufs, {}, counter, bounds, shape, 0, 0.0, 0.0, wd, false, false, true, false,
              c10::nullopt, c10::nullopt, c10::nullopt);
    } catch (const c10::Error&) {
      threw = true;
    }
    EXPECT(threw, "a mis-shaped gradient did not throw");
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT(at::equal(params[i], before[i]), "param %zu changed by a failing call", i);
  }

  if (g_failures) {
    fprintf(stderr, "test_op: %d checks failed\n", g_failures);
    return 1;
  }
  printf("test_op: the dispatcher op matches the ATen reference\n");
  return 0;
}
