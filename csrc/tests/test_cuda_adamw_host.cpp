// The CUDA AdamW kernels (csrc/cuda/cyclic_adamw_kernel.cuh) run on the host, block by
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
// scale, found_inf 0 or 1 (then nothing at all changes, step counts included).
//
// The square root: the CPU loops take MKL's vector sqrt only where libtorch_cpu provides
// it; this test has no torch, so they take the IEEE sqrt, which is what the device uses:
// every byte is compared bit for bit, no tolerance. (On the GPU, against torch's MKL-backed
// CPU AdamW, tests/test_cuda.py compares with a tolerance.)
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
#include "cuda/cyclic_adamw_kernel.cuh"

static int g_failures = 0;
static long long g_cases = 0, g_launches = 0, g_count_launches = 0, g_multi_table_steps = 0;
static long long g_multi_chunk_tensors = 0, g_skipped = 0, g_empty = 0, g_multi_count_tables = 0;

#define FAIL(...)                                         \
  do {                                                    \
    if (++g_failures <= 25) fprintf(stderr, __VA_ARGS__); \
  } while (0)

namespace {

// One storage dtype (the type both kernels store, csrc/storage.h): its name and the CPU
// loops' entry point.
template <typename S>
struct Dtype;
template <>
struct Dtype<float> {
  static constexpr const char* name = "float32";
  static constexpr auto cpu_span = clr_cpu::adamw_span_f32;
};
template <>
struct Dtype<double> {
  static constexpr const char* name = "float64";
  static constexpr auto cpu_span = clr_cpu::adamw_span_f64;
};
template <>
struct Dtype<clr_float16> {
  static constexpr const char* name = "float16";
  static constexpr auto cpu_span = clr_cpu::adamw_span_f16;
};
template <>
struct Dtype<clr_bfloat16> {
  static constexpr const char* name = "bfloat16";
  static constexpr auto cpu_span = clr_cpu::adamw_span_bf16;
};

template <typename S>
void store_value(void* at, double v) {
  const S stored = clr_storage<S>::store((typename clr_storage<S>::compute)v);
  memcpy(at, &stored, sizeof stored);
}

struct Stream {
  std::vector<uint8_t> bytes;
  size_t data_at = 0;
  uint8_t* data() { return bytes.data() + data_at; }
};

// Values in [lo, hi) (exp_avg_sq: non-negative, as AdamW keeps it).
Stream make_stream(std::mt19937_64& rng, int64_t n, int esize, int offset, double lo, double hi,
                   void (*store)(void*, double)) {
  Stream s;
  const size_t guard = 1 + rng() % 24;
  s.bytes.resize(16 + (size_t)(offset + n) * esize + guard);
  for (auto& byte : s.bytes) byte = (uint8_t)rng();
  const size_t misalign = (uintptr_t)s.bytes.data() % 16;
  s.data_at = (misalign ? 16 - misalign : 0) + (size_t)offset * esize;
  std::uniform_real_distribution<double> value(lo, hi);
  for (int64_t i = 0; i < n; ++i) store(s.data() + i * esize, value(rng));
  return s;
}

struct Tensor {
  int64_t numel;
  Stream param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;
  float step;
};

int64_t pick_numel(std::mt19937_64& rng, int esize, bool many) {
  const int64_t width = clr_cuda::kVectorBytes / esize;
  if (rng() % 12 == 0) return 0;  // no elements: no chunk, but its step still counts
  if (many) return 1 + (int64_t)(rng() % 200);
  switch (rng() % 5) {
    case 0:
      return 1 + (int64_t)(rng() % 3 * width) + (int64_t)(rng() % 3);
    case 1:
      return 1 + (int64_t)(rng() % 5000);
    case 2:
      return clr_cuda::kChunkElems + (int64_t)(rng() % 5) - 2;
    case 3:
      return 2 * clr_cuda::kChunkElems + 1 + (int64_t)(rng() % (clr_cuda::kChunkElems));
    default:
      return 1 + (int64_t)(rng() % 64);
  }
}

template <typename S>
void run_case(std::mt19937_64& rng, int case_index) {
  typedef Dtype<S> D;
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
  const int mode = (int)(rng() % 5);
  if (mode >= 3) {  // 1cycle, cos or linear, two or three phases
    args.shape.mode = mode == 3 ? CLR_MODE_ONE_CYCLE_COS : CLR_MODE_ONE_CYCLE_LINEAR;
    args.shape.phases = rng() % 2 ? 2 : 3;
    args.shape.phase_end[0] = (double)(5 + rng() % 40);
    args.shape.phase_end[1] = args.shape.phase_end[0] + (double)(5 + rng() % 60);
    args.shape.phase_end[2] = args.shape.phase_end[1] + (double)(5 + rng() % 60);
  } else {
    args.shape.mode = mode;
    args.shape.step_size_up = (double)(1 + rng() % 40);
    args.shape.step_size_down = (double)(1 + rng() % 40);
    args.shape.gamma = mode == CLR_MODE_EXP_RANGE ? 0.99 : 1.0;
    args.shape.custom_scale = 1.0;
  }
  args.bounds.base_lr = 1e-4 + 1e-3 * (double)(rng() % 10);
  args.bounds.max_lr = args.bounds.base_lr + 5e-3 * (double)(rng() % 10);
  args.bounds.min_lr = args.bounds.base_lr * 1e-3;
  args.cycle_momentum = rng() % 2;
  args.bounds.base_momentum = rng() % 4 == 0 ? 0.0 : 0.85;
  args.bounds.max_momentum = rng() % 5 == 0 ? args.bounds.base_momentum : 0.95;
  args.beta1 = rng() % 4 == 0 ? 0.0 : (rng() % 2 ? 0.9 : 0.3);  // 0.3: lerp from the gradient's end
  args.beta2 = rng() % 3 == 0 ? 0.99 : 0.999;
  args.eps = rng() % 3 == 0 ? 1e-6 : 1e-8;
  args.weight_decay = rng() % 3 == 0 ? 0.0 : 1e-2;
  args.maximize = rng() % 4 == 0;
  const bool amsgrad = rng() % 2;
  int64_t iteration = (int64_t)(rng() % 200);
  args.iteration = &iteration;
  float scale_f = 0, inf_f = 0;
  double scale_d = 0, inf_d = 0;
  const bool unscale = rng() % 3 == 0;
  if (unscale) {
    args.grad_scale_is_double = rng() % 2;
    scale_d = (double)(1u << (rng() % 17)) * (rng() % 2 ? 1.0 : 0.75);
    scale_f = (float)scale_d;
    args.grad_scale = args.grad_scale_is_double ? (const void*)&scale_d : (const void*)&scale_f;
  }
  const bool skip = rng() % 6 == 0;
  if (rng() % 3 == 0 || skip) {
    args.found_inf_is_double = rng() % 2;
    inf_d = skip ? 1.0 : 0.0;
    inf_f = (float)inf_d;
    args.found_inf = args.found_inf_is_double ? (const void*)&inf_d : (const void*)&inf_f;
  }
  if (skip) ++g_skipped;

  // ---- the tensors
  std::vector<Tensor> tensors(n_tensors);
  for (Tensor& t : tensors) {
    t.numel = pick_numel(rng, esize, many);
    if (t.numel == 0) ++g_empty;
    if (clr_cuda::chunks_of(t.numel) > 1) ++g_multi_chunk_tensors;
    const int aligned = rng() % 3 != 0;
    auto offset = [&]() { return aligned ? width * (int)(rng() % 3) : (int)(rng() % (2 * width)); };
    t.param = make_stream(rng, t.numel, esize, offset(), -2.0, 2.0, store_value<S>);
    t.grad =
        make_stream(rng, t.numel, esize, offset(), unscale ? -1000.0 : -1.0, unscale ? 1000.0 : 1.0, store_value<S>);
    t.exp_avg = make_stream(rng, t.numel, esize, offset(), -0.1, 0.1, store_value<S>);
    t.exp_avg_sq = make_stream(rng, t.numel, esize, offset(), 0.0, 0.01, store_value<S>);
    t.max_exp_avg_sq = make_stream(rng, t.numel, esize, offset(), 0.0, 0.012, store_value<S>);
    t.step = (float)(rng() % 4 == 0 ? 0 : rng() % 500);  // each param at its own count
  }

  // ---- reference: the CPU loops per tensor, the step counts advanced on the host
  std::vector<Tensor> expected = tensors;
  const clr_point point = clr_schedule(iteration, &args.shape, &args.bounds);
  if (!skip) {
    clr_cpu::AdamwArgs a;
    a.lr = point.lr;
    a.beta1 = args.cycle_momentum ? point.momentum : args.beta1;
    a.beta2 = args.beta2;
    a.eps = args.eps;
    a.weight_decay = args.weight_decay;
    a.amsgrad = amsgrad;
    a.maximize = args.maximize;
    a.unscale = unscale;
    a.grad_scale = args.grad_scale_is_double ? scale_d : (double)scale_f;
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
      if (cut > 0) D::cpu_span(&sp, 0, cut, &a);
      D::cpu_span(&sp, cut, t.numel - cut, &a);
    }
  }

  // ---- the CUDA kernels, packed as the launcher packs them, each grid emulated
  std::vector<clr_cuda::AdamwEntry> entries;
  std::vector<float*> steps;
  for (Tensor& t : tensors) {
    steps.push_back(&t.step);
    if (t.numel == 0) continue;
    clr_cuda::AdamwEntry e;
    e.param = t.param.data();
    e.grad = t.grad.data();
    e.exp_avg = t.exp_avg.data();
    e.exp_avg_sq = t.exp_avg_sq.data();
    e.max_exp_avg_sq = amsgrad ? t.max_exp_avg_sq.data() : nullptr;
    e.step = &t.step;
    e.numel = t.numel;
    entries.push_back(e);
  }
  // (a table of 32 KB or more: on the heap, as a launch would copy it into parameter space)
  std::unique_ptr<clr_cuda::AdamwTensorTable> table(new clr_cuda::AdamwTensorTable);
  int tables = 0;
  clr_cuda::for_each_adamw_table(
      entries.data(), (int64_t)entries.size(), *table, [&](const clr_cuda::AdamwTensorTable& full, int64_t chunks) {
        ++tables;
        const unsigned grid = rng() % 4 == 0 ? (unsigned)(1 + rng() % chunks) : (unsigned)chunks;
        std::vector<unsigned> order(grid);
        for (unsigned b = 0; b < grid; ++b) order[b] = b;
        if (rng() % 4 != 0) std::shuffle(order.begin(), order.end(), rng);
        emulate_grid(grid, clr_cuda::kBlockSize, order, [&]() {
          if (amsgrad)
            clr_cuda::cyclic_adamw_kernel<S, true>(full, args);
          else
            clr_cuda::cyclic_adamw_kernel<S, false>(full, args);
        });
        ++g_launches;
      });
  if (tables > 1) ++g_multi_table_steps;
  clr_cuda::StepCountArgs count_args;
  count_args.found_inf = args.found_inf;
  count_args.found_inf_is_double = args.found_inf_is_double;
  std::unique_ptr<clr_cuda::StepCountTable> count_table(new clr_cuda::StepCountTable);
  int count_tables = 0;
  clr_cuda::for_each_step_table(
      steps.data(), (int64_t)steps.size(), *count_table, [&](const clr_cuda::StepCountTable& full) {
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
    const char* what[5] = {"param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    const Stream* got_s[5] = {&got.param, &got.grad, &got.exp_avg, &got.exp_avg_sq, &got.max_exp_avg_sq};
    const Stream* want_s[5] = {&want.param, &want.grad, &want.exp_avg, &want.exp_avg_sq, &want.max_exp_avg_sq};
    for (int w = 0; w < 5; ++w) {
      if (got_s[w]->bytes != want_s[w]->bytes) {
        size_t at = 0;
        while (got_s[w]->bytes[at] == want_s[w]->bytes[at]) ++at;
        const long long element = ((long long)at - (long long)got_s[w]->data_at) / esize;
        FAIL("%s case %d tensor %d (numel %lld): %s differs at element %lld%s (skip %d, unscale %d, amsgrad %d)\n",
             D::name, case_index, k, (long long)got.numel, what[w], element,
             element < 0 || element >= got.numel ? ", OUTSIDE the tensor" : "", (int)skip, (int)unscale, (int)amsgrad);
      }
    }
    if (memcmp(&got.step, &want.step, sizeof got.step) != 0)
      FAIL("%s case %d tensor %d: step %g, expected %g (skip %d)\n", D::name, case_index, k, (double)got.step,
           (double)want.step, (int)skip);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? atoi(argv[1]) : 60;
  std::mt19937_64 rng(20261201);
  for (int c = 0; c < cases; ++c) {
    run_case<float>(rng, c);
    run_case<double>(rng, c);
    run_case<clr_float16>(rng, c);
    run_case<clr_bfloat16>(rng, c);
  }
  // the test must have reached the paths it claims to cover
  if (g_multi_table_steps == 0) FAIL("no step needed more than one update table\n");
  if (g_multi_count_tables == 0) FAIL("no step needed more than one step-count table\n");
  if (g_multi_chunk_tensors == 0) FAIL("no tensor had several chunks\n");
  if (g_skipped == 0) FAIL("no step was skipped\n");
  if (g_empty == 0) FAIL("no param without elements\n");
  if (g_failures) {
    fprintf(stderr, "test_cuda_adamw_host: %d failures\n", g_failures);
    return 1;
  }
  printf(
      "test_cuda_adamw_host: ok (%lld steps, %lld update launches, %lld step-count launches, %lld steps with "
      "several update tables, %lld with several step-count tables, %lld multi-chunk tensors, %lld skipped "
      "steps, %lld empty params)\n",
      g_cases, g_launches, g_count_launches, g_multi_table_steps, g_multi_count_tables, g_multi_chunk_tensors,
      g_skipped, g_empty);
  return 0;
}
