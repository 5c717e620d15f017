// The CUDA kernel (csrc/cuda/cyclic_sgd_kernel.cuh) run on the host, block by block and
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
// first_step flag; AMP unscaling with a float or double scale and found_inf 0 or 1.
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
#include "cuda/cyclic_sgd_kernel.cuh"

static int g_failures = 0;
static long long g_cases = 0, g_launches = 0, g_multi_table_steps = 0, g_racing_starts = 0;

#define FAIL(...)                                         \
  do {                                                    \
    if (++g_failures <= 25) fprintf(stderr, __VA_ARGS__); \
  } while (0)

namespace {

// One storage dtype (the type both kernels store, csrc/storage.h): its name and the CPU
// kernel's entry point. Values are written through clr_storage, as both kernels write them.
template <typename S>
struct Dtype;
template <>
struct Dtype<float> {
  static constexpr const char* name = "float32";
  static constexpr auto cpu_span = clr_cpu::span_f32;
};
template <>
struct Dtype<double> {
  static constexpr const char* name = "float64";
  static constexpr auto cpu_span = clr_cpu::span_f64;
};
template <>
struct Dtype<clr_float16> {
  static constexpr const char* name = "float16";
  static constexpr auto cpu_span = clr_cpu::span_f16;
};
template <>
struct Dtype<clr_bfloat16> {
  static constexpr const char* name = "bfloat16";
  static constexpr auto cpu_span = clr_cpu::span_bf16;
};

// v rounded to S's compute type, then stored as S rounds it.
template <typename S>
void store_value(void* at, double v) {
  const S stored = clr_storage<S>::store((typename clr_storage<S>::compute)v);
  memcpy(at, &stored, sizeof stored);
}

// One stream of one tensor: an allocation whose data starts `offset` elements past a
// 16-byte boundary and ends a few guard bytes after the tensor.
struct Stream {
  std::vector<uint8_t> bytes;
  size_t data_at = 0;  // byte index of element 0
  uint8_t* data() { return bytes.data() + data_at; }
};

Stream make_stream(std::mt19937_64& rng, int64_t n, int esize, int offset, double scale, void (*store)(void*, double)) {
  Stream s;
  const size_t guard = 1 + rng() % 24;
  s.bytes.resize(16 + (size_t)(offset + n) * esize + guard);
  for (auto& byte : s.bytes) byte = (uint8_t)rng();
  const size_t misalign = (uintptr_t)s.bytes.data() % 16;
  s.data_at = (misalign ? 16 - misalign : 0) + (size_t)offset * esize;
  std::uniform_real_distribution<double> value(-scale, scale);
  for (int64_t i = 0; i < n; ++i) store(s.data() + i * esize, value(rng));
  return s;
}

struct Tensor {
  int64_t numel;
  Stream param, grad, buffer;
  bool has_start;
  int64_t start;
};

int64_t pick_numel(std::mt19937_64& rng, int esize, bool many) {
  const int64_t width = clr_cuda::kVectorBytes / esize;
  if (many) return 1 + (int64_t)(rng() % 300);
  switch (rng() % 6) {
    case 0:
      return 1 + (int64_t)(rng() % 3 * width) + (int64_t)(rng() % 3);  // around the vector width
    case 1:
      return 1 + (int64_t)(rng() % 5000);
    case 2:
      return clr_cuda::kChunkElems + (int64_t)(rng() % 5) - 2;  // around one chunk
    case 3:
      return 2 * clr_cuda::kChunkElems + 1 + (int64_t)(rng() % (clr_cuda::kChunkElems));
    case 4:
      return (int64_t)(rng() % 2 ? 2 : 3) * clr_cuda::kBlockSize * width * clr_cuda::kMaxUnroll +
             (int64_t)(rng() % 3);  // whole unrolled strides of a block
    default:
      return 1 + (int64_t)(rng() % 64);
  }
}

template <typename S>
void run_case(std::mt19937_64& rng, int case_index) {
  typedef Dtype<S> D;
  const int esize = (int)sizeof(S);
  const int width = clr_cuda::kVectorBytes / esize;
  const bool many = rng() % 6 == 0;  // more tensors than one table holds
  const int n_tensors =
      many ? clr_cuda::kMaxTensors + 1 + (int)(rng() % (size_t)(2 * clr_cuda::kMaxTensors)) : 1 + (int)(rng() % 6);

  // ---- the step
  clr_cuda::StepArgs args;
  memset(&args, 0, sizeof args);
  const int mode = (int)(rng() % 3);  // triangular, triangular2, exp_range
  args.shape.mode = mode;
  args.shape.step_size_up = (double)(1 + rng() % 40);
  args.shape.step_size_down = (double)(1 + rng() % 40);
  args.shape.gamma = mode == CLR_MODE_EXP_RANGE ? 0.99 : 1.0;
  args.shape.custom_scale = 1.0;
  args.bounds.base_lr = 0.001 + 0.01 * (double)(rng() % 10);
  args.bounds.max_lr = args.bounds.base_lr + 0.05 * (double)(rng() % 10);
  const bool cycle_momentum = rng() % 2;
  args.cycle_momentum = cycle_momentum;
  args.bounds.base_momentum = rng() % 4 == 0 ? 0.0 : 0.8;
  args.bounds.max_momentum = rng() % 5 == 0 ? args.bounds.base_momentum : 0.9;
  args.momentum = rng() % 4 == 0 ? 0.0 : 0.9;
  args.dampening = rng() % 2 ? 0.0 : 0.25;
  args.weight_decay = rng() % 2 ? 0.0 : 5e-4;
  args.use_weight_decay = args.weight_decay != 0.0;
  args.nesterov = args.dampening == 0.0 && rng() % 2;
  args.maximize = rng() % 4 == 0;
  args.has_buffers = rng() % 5 != 0;
  args.first_step = rng() % 3 == 0;
  int64_t iteration = (int64_t)(rng() % 200);
  // a cycle point where the cycled momentum is base_momentum (possibly 0)
  if (rng() % 8 == 0) iteration = (int64_t)args.shape.step_size_up;
  args.iteration = &iteration;
  float scale_f = 0;
  double scale_d = 0, inf_d = 0;
  float inf_f = 0;
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
  const bool use_starts = rng() % 3 != 0;

  // ---- the tensors, with aligned or misaligned streams
  std::vector<Tensor> tensors(n_tensors);
  for (Tensor& t : tensors) {
    t.numel = pick_numel(rng, esize, many);
    const int aligned = rng() % 3 != 0;
    auto offset = [&]() { return aligned ? width * (int)(rng() % 3) : (int)(rng() % (2 * width)); };
    t.param = make_stream(rng, t.numel, esize, offset(), 2.0, store_value<S>);
    t.grad = make_stream(rng, t.numel, esize, offset(), unscale ? 1000.0 : 1.0, store_value<S>);
    t.buffer = make_stream(rng, t.numel, esize, offset(), 1.0, store_value<S>);
    t.has_start = use_starts && rng() % 4 != 0;
    const int kind = (int)(rng() % 3);
    t.start = kind == 0 ? std::numeric_limits<int64_t>::max() : kind == 1 ? iteration - 1 - (int64_t)(rng() % 3) : -1;
  }

  // ---- reference: the CPU kernel per tensor, the momentum state decided here
  std::vector<Tensor> expected = tensors;
  const clr_point point = clr_schedule(iteration, &args.shape, &args.bounds);
  const double momentum = cycle_momentum ? point.momentum : args.momentum;
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
      a.lr = point.lr;
      a.momentum = momentum;
      a.dampening = args.dampening;
      a.weight_decay = args.weight_decay;
      a.momentum_state = state;
      a.nesterov = args.nesterov;
      a.maximize = args.maximize;
      a.unscale = unscale;
      a.grad_scale = args.grad_scale_is_double ? scale_d : (double)scale_f;
      D::cpu_span(t.param.data(), t.grad.data(), state != CLR_MOMENTUM_NONE ? t.buffer.data() : nullptr, t.numel, &a);
    }
  }

  // ---- the CUDA kernel, packed as the launcher packs it, each table's grid emulated
  std::vector<clr_cuda::Entry> entries;
  for (Tensor& t : tensors) {
    clr_cuda::Entry e;
    e.param = t.param.data();
    e.grad = t.grad.data();
    e.buffer = args.has_buffers ? t.buffer.data() : nullptr;
    e.momentum_start = t.has_start ? &t.start : nullptr;
    e.numel = t.numel;
    entries.push_back(e);
    const int64_t chunks = clr_cuda::chunks_of(t.numel);
    if (t.has_start && t.start == std::numeric_limits<int64_t>::max() && chunks > 1) ++g_racing_starts;
  }
  clr_cuda::TensorTable table;
  int tables = 0;
  clr_cuda::for_each_table(
      entries.data(), (int64_t)entries.size(), table, [&](const clr_cuda::TensorTable& full, int64_t chunks) {
        ++tables;
        // the launcher's grid, or fewer blocks (the grid-stride loop)
        const unsigned grid = rng() % 4 == 0 ? (unsigned)(1 + rng() % chunks) : (unsigned)chunks;
        std::vector<unsigned> order(grid);
        for (unsigned b = 0; b < grid; ++b) order[b] = b;
        if (rng() % 2) std::shuffle(order.begin(), order.end(), rng);
        emulate_grid(grid, clr_cuda::kBlockSize, order, [&]() { clr_cuda::cyclic_sgd_kernel<S>(full, args); });
        ++g_launches;
      });
  if (tables > 1) ++g_multi_table_steps;
  ++g_cases;

  // ---- every byte, every start
  for (int k = 0; k < n_tensors; ++k) {
    const Tensor& got = tensors[k];
    const Tensor& want = expected[k];
    const char* what[3] = {"param", "grad", "buffer"};
    const Stream* got_s[3] = {&got.param, &got.grad, &got.buffer};
    const Stream* want_s[3] = {&want.param, &want.grad, &want.buffer};
    for (int w = 0; w < 3; ++w) {
      if (got_s[w]->bytes != want_s[w]->bytes) {
        size_t at = 0;
        while (got_s[w]->bytes[at] == want_s[w]->bytes[at]) ++at;
        const long long element = ((long long)at - (long long)got_s[w]->data_at) / esize;
        FAIL("%s case %d tensor %d (numel %lld): %s differs at element %lld%s (skip %d, unscale %d, starts %d)\n",
             D::name, case_index, k, (long long)got.numel, what[w], element,
             element < 0 || element >= got.numel ? ", OUTSIDE the tensor" : "", (int)skip, (int)unscale,
             (int)got.has_start);
      }
    }
    if (got.start != want.start)
      FAIL("%s case %d tensor %d: momentum start %lld, expected %lld\n", D::name, case_index, k, (long long)got.start,
           (long long)want.start);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? atoi(argv[1]) : 120;
  std::mt19937_64 rng(20261128);
  for (int c = 0; c < cases; ++c) {
    run_case<float>(rng, c);
    run_case<double>(rng, c);
    run_case<clr_float16>(rng, c);
    run_case<clr_bfloat16>(rng, c);
  }
  // the test must have reached the paths it claims to cover
  if (g_multi_table_steps == 0) FAIL("no step needed more than one table\n");
  if (g_racing_starts == 0) FAIL("no multi-chunk tensor started its buffer\n");
  if (g_failures) {
    fprintf(stderr, "test_cuda_kernel_host: %d failures\n", g_failures);
    return 1;
  }
  printf(
      "test_cuda_kernel_host: ok (%lld steps, %lld emulated launches, %lld with several tables, "
      "%lld multi-chunk buffer starts)\n",
      g_cases, g_launches, g_multi_table_steps, g_racing_starts);
  return 0;
}
