// The CUDA SGD kernel (csrc/cuda/scheduled_sgd_kernel.cuh) run on the host, block by block and
// thread by thread (csrc/tests/cuda_host_emulation.h), against the CPU kernel
// (csrc/cpu/sgd_cpu.h) with the momentum state decided independently per tensor.
//
// Random steps over every storage dtype: tensors of sizes around the vector width, the
// chunk size and many chunks; param, grad and buffer each at its own element offset
// (16-byte aligned or not, so the vector path, the scalar path and the tail all run);
// more tensors than one kernel-argument table holds (several launches); blocks in
// shuffled order and grids smaller than the chunk count; every schedule mode, cycled
// or fixed momentum (0 included), nesterov, maximize, weight decay, dampening; per-tensor
// momentum starts (not started, started, begun before it had a start) or the step's
// first_step flag; AMP unscaling with a float or double scale and found_inf 0, 1 or 2
// (any non-zero flag skips the step).
//
// Checked bit for bit: every byte of every allocation (so a write outside a tensor
// shows), and the momentum starts. No GPU, no torch; runs under ASan/UBSan in
// .ci/sanitizers.sh.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "tests/cuda_host_emulation.h"
// after the emulation
#include "cpu/sgd_cpu.h"
#include "cuda/scheduled_sgd_kernel.cuh"

static long long g_cases = 0, g_launches = 0, g_multi_table_steps = 0, g_racing_starts = 0;

namespace {

struct Tensor {
  int64_t numel;
  clr_emu::Stream param, grad, buffer;
  bool has_start;
  int64_t start;
};

template <typename S>
void run_case(std::mt19937_64& rng, int case_index) {
  const char* const name = clr_emu::StorageInfo<S>::name;
  const int esize = (int)sizeof(S);
  const int width = clr_cuda::kVectorBytes / esize;
  const bool many = rng() % 6 == 0;  // more tensors than one table holds
  const int n_tensors =
      many ? clr_cuda::kMaxTensors + 1 + (int)(rng() % (size_t)(2 * clr_cuda::kMaxTensors)) : 1 + (int)(rng() % 6);

  // ---- the step
  clr_cuda::SgdStepArgs args;
  memset(&args, 0, sizeof args);
  clr_cuda::StepInputs& in = args.step;
  clr_emu::pick_cyclic_shape(rng, (int)(rng() % 3), &in.shape);
  in.bounds.base_lr = 0.001 + 0.01 * (double)(rng() % 10);
  in.bounds.max_lr = in.bounds.base_lr + 0.05 * (double)(rng() % 10);
  const bool cycle_momentum = rng() % 2;
  in.cycle_momentum = cycle_momentum;
  in.bounds.base_momentum = rng() % 4 == 0 ? 0.0 : 0.8;
  in.bounds.max_momentum = rng() % 5 == 0 ? in.bounds.base_momentum : 0.9;
  in.momentum = rng() % 4 == 0 ? 0.0 : 0.9;
  args.dampening = rng() % 2 ? 0.0 : 0.25;
  args.weight_decay = rng() % 2 ? 0.0 : 5e-4;
  args.use_weight_decay = args.weight_decay != 0.0;
  args.nesterov = args.dampening == 0.0 && rng() % 2;
  in.maximize = rng() % 4 == 0;
  args.has_buffers = rng() % 5 != 0;
  args.first_step = rng() % 3 == 0;
  int64_t iteration = (int64_t)(rng() % 200);
  // a cycle point where the cycled momentum is base_momentum (possibly 0)
  if (rng() % 8 == 0) iteration = (int64_t)in.shape.step_size_up;
  in.iteration = &iteration;
  clr_emu::GradScale scale;
  const bool unscale = clr_emu::pick_grad_scale(rng, &scale, &in.grad_scale, &in.grad_scale_is_double);
  // scale_schedule's factor, as a float32 or float64 device scalar, in a third of the steps
  float lr_scale_f = 1.0f;
  double lr_scale_d = 1.0;
  if (rng() % 3 == 0) {
    in.lr_scale_is_double = rng() % 2;
    lr_scale_d = in.lr_scale_is_double ? 0.1 * (double)(1 + rng() % 10) : 0.375;
    lr_scale_f = (float)lr_scale_d;
    in.lr_scale = in.lr_scale_is_double ? (const void*)&lr_scale_d : (const void*)&lr_scale_f;
  }
  const bool skip = rng() % 6 == 0;
  clr_emu::FoundInf inf;
  clr_emu::pick_found_inf(rng, skip, &inf, &in.found_inf, &in.found_inf_is_double);
  const bool use_starts = rng() % 3 != 0;

  // ---- the tensors, with aligned or misaligned streams
  std::vector<Tensor> tensors(n_tensors);
  for (Tensor& t : tensors) {
    t.numel = clr_emu::pick_numel(rng, esize, many ? 300 : 0);
    const bool aligned = rng() % 3 != 0;
    auto offset = [&]() { return clr_emu::pick_offset(rng, aligned, width); };
    const double grad_range = unscale ? 1000.0 : 1.0;
    t.param = clr_emu::make_stream(rng, t.numel, esize, offset(), -2.0, 2.0, clr_emu::store_value<S>);
    t.grad = clr_emu::make_stream(rng, t.numel, esize, offset(), -grad_range, grad_range, clr_emu::store_value<S>);
    t.buffer = clr_emu::make_stream(rng, t.numel, esize, offset(), -1.0, 1.0, clr_emu::store_value<S>);
    t.has_start = use_starts && rng() % 4 != 0;
    const int kind = (int)(rng() % 3);
    t.start = kind == 0 ? std::numeric_limits<int64_t>::max() : kind == 1 ? iteration - 1 - (int64_t)(rng() % 3) : -1;
  }

  // ---- reference: the CPU kernel per tensor, the momentum state decided here
  std::vector<Tensor> expected = tensors;
  const clr_point point = clr_schedule(iteration, &in.shape, &in.bounds);
  const double momentum = cycle_momentum ? point.momentum : in.momentum;
  if (!skip) {
    for (Tensor& t : expected) {
      int state = CLR_MOMENTUM_NONE;
      if (args.has_buffers && momentum != 0.0) {
        if (t.has_start) {
          state = t.start >= iteration ? CLR_MOMENTUM_FIRST : CLR_MOMENTUM_STEADY;
          t.start = std::min(t.start, iteration);
        } else {
          state = args.first_step ? CLR_MOMENTUM_FIRST : CLR_MOMENTUM_STEADY;
        }
      }
      clr_cpu::StepArgs a;
      a.lr = in.lr_scale != nullptr ? point.lr * (in.lr_scale_is_double ? lr_scale_d : (double)lr_scale_f) : point.lr;
      a.momentum = momentum;
      a.dampening = args.dampening;
      a.weight_decay = args.weight_decay;
      a.momentum_state = state;
      a.nesterov = args.nesterov;
      a.maximize = in.maximize;
      a.unscale = unscale;
      a.grad_scale = scale.value();
      const clr_cpu::Span span = {t.param.data(), t.grad.data(), state != CLR_MOMENTUM_NONE ? t.buffer.data() : nullptr,
                                  t.numel};
      const int64_t offsets[2] = {0, t.numel};
      clr_cpu::run_range(clr_emu::StorageInfo<S>::code, &span, offsets, 1, 0, t.numel, a);
    }
  }

  // ---- the CUDA kernel, packed as the launcher packs it, each table's grid emulated
  std::vector<clr_cuda::SgdTable::Entry> entries;
  for (Tensor& t : tensors) {
    clr_cuda::SgdTable::Entry e;
    e.address[clr_cuda::kParam] = t.param.data();
    e.address[clr_cuda::kGrad] = t.grad.data();
    e.address[clr_cuda::kBuffer] = args.has_buffers ? t.buffer.data() : nullptr;
    e.extra = t.has_start ? &t.start : nullptr;
    e.numel = t.numel;
    entries.push_back(e);
    const int64_t chunks = clr_cuda::chunks_of(t.numel);
    if (t.has_start && t.start == std::numeric_limits<int64_t>::max() && chunks > 1) ++g_racing_starts;
  }
  const int tables = clr_emu::emulate_tables<clr_cuda::SgdTable>(
      rng, entries, clr_cuda::kBlockSize, 2,
      [&](const clr_cuda::SgdTable& table) { clr_cuda::cyclic_sgd_kernel<S>(table, args); });
  g_launches += tables;
  if (tables > 1) ++g_multi_table_steps;
  ++g_cases;

  // ---- every byte, every start
  for (int k = 0; k < n_tensors; ++k) {
    const Tensor& got = tensors[k];
    const Tensor& want = expected[k];
    char context[64];
    snprintf(context, sizeof context, "skip %d, unscale %d, starts %d", (int)skip, (int)unscale, (int)got.has_start);
    clr_emu::compare_streams(name, case_index, k, got.numel, esize, {"param", "grad", "buffer"},
                             {&got.param, &got.grad, &got.buffer}, {&want.param, &want.grad, &want.buffer}, context);
    if (got.start != want.start)
      FAIL("%s case %d tensor %d: momentum start %lld, expected %lld\n", name, case_index, k, (long long)got.start,
           (long long)want.start);
  }
}

}  // namespace

int main(int argc, char** argv) {
  clr_emu::for_each_case(argc > 1 ? atoi(argv[1]) : 120, 20261128,
                         [](auto storage, std::mt19937_64& rng, int c) { run_case<decltype(storage)>(rng, c); });
  // the test must have reached the paths it claims to cover
  if (g_multi_table_steps == 0) FAIL("no step needed more than one table\n");
  if (g_racing_starts == 0) FAIL("no multi-chunk tensor started its buffer\n");
  return clr_emu::finish("test_cuda_kernel_host", std::to_string(g_cases) + " steps, " + std::to_string(g_launches) +
                                                      " emulated launches, " + std::to_string(g_multi_table_steps) +
                                                      " with several tables, " + std::to_string(g_racing_starts) +
                                                      " multi-chunk buffer starts");
}
