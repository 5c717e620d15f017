// The CUDA AdamW kernels (csrc/cuda/scheduled_adamw_kernel.cuh) run on the host, block by
// block and thread by thread (csrc/tests/cuda_host_emulation.h), against the CPU AdamW
// loops (csrc/cpu/adamw_cpu.h) with each param's step count advanced on the host.
//
// Random steps over every storage dtype: tensors around the vector width, one chunk and
// many chunks (many blocks read one tensor's step count in the same launch, in shuffled
// orders); every stream (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq) at its own
// element offset, 16-byte aligned or not; params without elements (their count advances
// too); more tensors than one update table holds (several launches) and, now and then,
// more step counts than one step-count table holds; grids smaller than the chunk count;
// every schedule mode (1cycle included), cycled or fixed beta1, amsgrad, maximize, weight
// decay 0 or not, each param at its own step count; AMP unscaling with a float or double
// scale, found_inf 0, 1 or 2 (any non-zero flag: nothing at all changes, step counts
// included).
//
// The square root: the CPU loops take MKL's vector sqrt only where libtorch_cpu provides
// it; this test has no torch, so they take the IEEE sqrt, which is what the device uses:
// every byte is compared bit for bit, no tolerance. (On the GPU, against torch's MKL-backed
// CPU AdamW, tests/cuda/test_cuda_adamw.py compares with a tolerance.)
// No GPU, no torch; builds under CTest and .ci/cuda_build.sh (32 KB tables).
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "tests/cuda_host_emulation.h"
// after the emulation
#include "cpu/adamw_cpu.h"
#include "cuda/scheduled_adamw_kernel.cuh"

static long long g_cases = 0, g_launches = 0, g_count_launches = 0, g_multi_table_steps = 0;
static long long g_multi_chunk_tensors = 0, g_skipped = 0, g_empty = 0, g_multi_count_tables = 0;

namespace {

struct Tensor {
  int64_t numel;
  clr_emu::Stream param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;
  float step;
};

template <typename S>
void run_case(std::mt19937_64& rng, int case_index) {
  const char* const name = clr_emu::StorageInfo<S>::name;
  const int esize = (int)sizeof(S);
  const int width = clr_cuda::kVectorBytes / esize;
  const int many_kind = (int)(rng() % 10);  // 0: more tensors than an update table; 1: than a step-count table
  const bool many = many_kind <= 1;
  const int n_tensors = many_kind == 1 ? clr_cuda::kMaxStepCounts + 1 + (int)(rng() % 300)
                        : many_kind == 0
                            ? clr_cuda::kAdamwMaxTensors + 1 + (int)(rng() % (size_t)(2 * clr_cuda::kAdamwMaxTensors))
                            : 1 + (int)(rng() % 6);

  // ---- the step
  clr_cuda::AdamwStepArgs args;
  memset(&args, 0, sizeof args);
  clr_cuda::StepInputs& in = args.step;
  const int mode = (int)(rng() % 5);
  if (mode >= 3) {  // 1cycle, cos or linear, two or three phases
    in.shape.mode = mode == 3 ? CLR_MODE_ONE_CYCLE_COS : CLR_MODE_ONE_CYCLE_LINEAR;
    in.shape.phases = rng() % 2 ? 2 : 3;
    in.shape.phase_end[0] = (double)(5 + rng() % 40);
    in.shape.phase_end[1] = in.shape.phase_end[0] + (double)(5 + rng() % 60);
    in.shape.phase_end[2] = in.shape.phase_end[1] + (double)(5 + rng() % 60);
  } else {
    clr_emu::pick_cyclic_shape(rng, mode, &in.shape);
  }
  in.bounds.base_lr = 1e-4 + 1e-3 * (double)(rng() % 10);
  in.bounds.max_lr = in.bounds.base_lr + 5e-3 * (double)(rng() % 10);
  in.bounds.min_lr = in.bounds.base_lr * 1e-3;
  in.cycle_momentum = rng() % 2;
  in.bounds.base_momentum = rng() % 4 == 0 ? 0.0 : 0.85;
  in.bounds.max_momentum = rng() % 5 == 0 ? in.bounds.base_momentum : 0.95;
  in.momentum = rng() % 4 == 0 ? 0.0 : (rng() % 2 ? 0.9 : 0.3);  // 0.3: lerp from the gradient's end
  args.beta2 = rng() % 3 == 0 ? 0.99 : 0.999;
  args.eps = rng() % 3 == 0 ? 1e-6 : 1e-8;
  args.weight_decay = rng() % 3 == 0 ? 0.0 : 1e-2;
  in.maximize = rng() % 4 == 0;
  const bool amsgrad = rng() % 2;
  int64_t iteration = (int64_t)(rng() % 200);
  in.iteration = &iteration;
  clr_emu::GradScale scale;
  const bool unscale = clr_emu::pick_grad_scale(rng, &scale, &in.grad_scale, &in.grad_scale_is_double);
  const bool skip = rng() % 6 == 0;
  clr_emu::FoundInf inf;
  clr_emu::pick_found_inf(rng, skip, &inf, &in.found_inf, &in.found_inf_is_double);
  if (skip) ++g_skipped;

  // ---- the tensors
  std::vector<Tensor> tensors(n_tensors);
  for (Tensor& t : tensors) {
    // no elements now and then: no chunk, but its step still counts
    t.numel = rng() % 12 == 0 ? 0 : clr_emu::pick_numel(rng, esize, many ? 200 : 0);
    if (t.numel == 0) ++g_empty;
    if (clr_cuda::chunks_of(t.numel) > 1) ++g_multi_chunk_tensors;
    const bool aligned = rng() % 3 != 0;
    auto offset = [&]() { return clr_emu::pick_offset(rng, aligned, width); };
    t.param = clr_emu::make_stream(rng, t.numel, esize, offset(), -2.0, 2.0, clr_emu::store_value<S>);
    t.grad = clr_emu::make_stream(rng, t.numel, esize, offset(), unscale ? -1000.0 : -1.0, unscale ? 1000.0 : 1.0,
                                  clr_emu::store_value<S>);
    t.exp_avg = clr_emu::make_stream(rng, t.numel, esize, offset(), -0.1, 0.1, clr_emu::store_value<S>);
    t.exp_avg_sq = clr_emu::make_stream(rng, t.numel, esize, offset(), 0.0, 0.01, clr_emu::store_value<S>);
    t.max_exp_avg_sq = clr_emu::make_stream(rng, t.numel, esize, offset(), 0.0, 0.012, clr_emu::store_value<S>);
    t.step = (float)(rng() % 4 == 0 ? 0 : rng() % 500);  // each param at its own count
  }

  // ---- reference: the CPU loops per tensor, the step counts advanced on the host
  std::vector<Tensor> expected = tensors;
  const clr_point point = clr_schedule(iteration, &in.shape, &in.bounds);
  if (!skip) {
    clr_cpu::AdamwArgs a;
    a.lr = point.lr;
    a.beta1 = in.cycle_momentum ? point.momentum : in.momentum;
    a.beta2 = args.beta2;
    a.eps = args.eps;
    a.weight_decay = args.weight_decay;
    a.amsgrad = amsgrad;
    a.maximize = in.maximize;
    a.unscale = unscale;
    a.grad_scale = scale.value();
    a.vsqrt = nullptr;  // IEEE sqrt, as on the device
    a.fused_width = 0;  // AdamW's default path, which the device computes (it ignores fused_width)
    for (Tensor& t : expected) {
      clr_cpu::AdamwSpan sp;
      clr_cpu::adamw_prepare_span(&sp, &t.step, a);
      if (t.numel == 0) continue;
      sp.param = t.param.data();
      sp.grad = t.grad.data();
      sp.exp_avg = t.exp_avg.data();
      sp.exp_avg_sq = t.exp_avg_sq.data();
      sp.max_exp_avg_sq = amsgrad ? t.max_exp_avg_sq.data() : nullptr;
      sp.numel = t.numel;
      // in two pieces now and then: the CPU's parallel split must not matter either
      const int64_t cut = t.numel > 1 && rng() % 2 ? (int64_t)(rng() % (uint64_t)t.numel) : 0;
      const int64_t offsets[2] = {0, t.numel};
      if (cut > 0) clr_cpu::run_range(clr_emu::StorageInfo<S>::code, &sp, offsets, 1, 0, cut, a);
      clr_cpu::run_range(clr_emu::StorageInfo<S>::code, &sp, offsets, 1, cut, t.numel, a);
    }
  }

  // ---- the CUDA kernels, packed as the launcher packs them, each grid emulated
  std::vector<clr_cuda::AdamwTable::Entry> entries;
  std::vector<float*> steps;
  for (Tensor& t : tensors) {
    steps.push_back(&t.step);
    if (t.numel == 0) continue;
    clr_cuda::AdamwTable::Entry e;
    e.address[clr_cuda::kParam] = t.param.data();
    e.address[clr_cuda::kGrad] = t.grad.data();
    e.address[clr_cuda::kExpAvg] = t.exp_avg.data();
    e.address[clr_cuda::kExpAvgSq] = t.exp_avg_sq.data();
    e.address[clr_cuda::kMaxExpAvgSq] = amsgrad ? t.max_exp_avg_sq.data() : nullptr;
    e.extra = &t.step;
    e.numel = t.numel;
    entries.push_back(e);
  }
  const int tables = clr_emu::emulate_tables<clr_cuda::AdamwTable>(
      rng, entries, clr_cuda::kBlockSize, 4, [&](const clr_cuda::AdamwTable& table) {
        if (amsgrad)
          clr_cuda::cyclic_adamw_kernel<S, true>(table, args);
        else
          clr_cuda::cyclic_adamw_kernel<S, false>(table, args);
      });
  g_launches += tables;
  if (tables > 1) ++g_multi_table_steps;
  clr_cuda::StepCountArgs count_args;
  count_args.found_inf = in.found_inf;
  count_args.found_inf_is_double = in.found_inf_is_double;
  std::unique_ptr<clr_cuda::StepCountTable> count_table(new clr_cuda::StepCountTable);
  int count_tables = 0;
  clr_cuda::for_each_table(
      steps.data(), (int64_t)steps.size(), *count_table, [&](const clr_cuda::StepCountTable& full, int64_t) {
        ++count_tables;
        const unsigned grid = (unsigned)((full.count + clr_cuda::kStepCountBlock - 1) / clr_cuda::kStepCountBlock);
        std::vector<unsigned> order(grid);
        for (unsigned b = 0; b < grid; ++b) order[b] = b;
        std::shuffle(order.begin(), order.end(), rng);
        emulate_grid(grid, clr_cuda::kStepCountBlock, order,
                     [&]() { clr_cuda::adamw_step_count_kernel(full, count_args); });
        ++g_count_launches;
      });
  if (count_tables > 1) ++g_multi_count_tables;
  ++g_cases;

  // ---- every byte, every step count
  for (int k = 0; k < n_tensors; ++k) {
    const Tensor& got = tensors[k];
    const Tensor& want = expected[k];
    char context[64];
    snprintf(context, sizeof context, "skip %d, unscale %d, amsgrad %d", (int)skip, (int)unscale, (int)amsgrad);
    clr_emu::compare_streams(name, case_index, k, got.numel, esize,
                             {"param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
                             {&got.param, &got.grad, &got.exp_avg, &got.exp_avg_sq, &got.max_exp_avg_sq},
                             {&want.param, &want.grad, &want.exp_avg, &want.exp_avg_sq, &want.max_exp_avg_sq}, context);
    if (memcmp(&got.step, &want.step, sizeof got.step) != 0)
      FAIL("%s case %d tensor %d: step %g, expected %g (skip %d)\n", name, case_index, k, (double)got.step,
           (double)want.step, (int)skip);
  }
}

}  // namespace

int main(int argc, char** argv) {
  clr_emu::for_each_case(argc > 1 ? atoi(argv[1]) : 60, 20261201,
                         [](auto storage, std::mt19937_64& rng, int c) { run_case<decltype(storage)>(rng, c); });
  // the test must have reached the paths it claims to cover
  if (g_multi_table_steps == 0) FAIL("no step needed more than one update table\n");
  if (g_multi_count_tables == 0) FAIL("no step needed more than one step-count table\n");
  if (g_multi_chunk_tensors == 0) FAIL("no tensor had several chunks\n");
  if (g_skipped == 0) FAIL("no step was skipped\n");
  if (g_empty == 0) FAIL("no param without elements\n");
  return clr_emu::finish(
      "test_cuda_adamw_host",
      std::to_string(g_cases) + " steps, " + std::to_string(g_launches) + " update launches, " +
          std::to_string(g_count_launches) + " step-count launches, " + std::to_string(g_multi_table_steps) +
          " steps with several update tables, " + std::to_string(g_multi_count_tables) +
          " with several step-count tables, " + std::to_string(g_multi_chunk_tensors) + " multi-chunk tensors, " +
          std::to_string(g_skipped) + " skipped steps, " + std::to_string(g_empty) + " empty params");
}
