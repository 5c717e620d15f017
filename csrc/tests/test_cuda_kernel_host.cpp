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

using clr_emu::g_failures;
using clr_emu::make_stream;
using clr_emu::store_value;
using clr_emu::Stream;

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
  const int mode = (int)(rng() % 3);  // triangular, triangular2, exp_range
  in.shape.mode = mode;
  in.shape.step_size_up = (double)(1 + rng() % 40);
  in.shape.step_size_down = (double)(1 + rng() % 40);
  in.shape.gamma = mode == CLR_MODE_EXP_RANGE ? 0.99 : 1.0;
  in.shape.custom_scale = 1.0;
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
  float scale_f = 0;
  double scale_d = 0;
  const bool unscale = rng() % 3 == 0;
  if (unscale) {
    in.grad_scale_is_double = rng() % 2;
    scale_d = (double)(1u << (rng() % 17)) * (rng() % 2 ? 1.0 : 0.75);
    scale_f = (float)scale_d;
    in.grad_scale = in.grad_scale_is_double ? (const void*)&scale_d : (const void*)&scale_f;
  }
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
    t.numel = pick_numel(rng, esize, many);
    const int aligned = rng() % 3 != 0;
    auto offset = [&]() { return aligned ? width * (int)(rng() % 3) : (int)(rng() % (2 * width)); };
    const double grad_range = unscale ? 1000.0 : 1.0;
    t.param = make_stream(rng, t.numel, esize, offset(), -2.0, 2.0, store_value<S>);
    t.grad = make_stream(rng, t.numel, esize, offset(), -grad_range, grad_range, store_value<S>);
    t.buffer = make_stream(rng, t.numel, esize, offset(), -1.0, 1.0, store_value<S>);
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
      a.grad_scale = in.grad_scale_is_double ? scale_d : (double)scale_f;
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
  // (a table of 32 KB or more: on the heap, as a launch would copy it into parameter space)
  std::unique_ptr<clr_cuda::SgdTable> table(new clr_cuda::SgdTable);
  int tables = 0;
  clr_cuda::for_each_table(entries.data(), (int64_t)entries.size(), *table,
                           [&](const clr_cuda::SgdTable& full, int64_t chunks) {
                             ++tables;
                             clr_emu::emulate_launch(rng, chunks, clr_cuda::kBlockSize, 2,
                                                     [&]() { clr_cuda::cyclic_sgd_kernel<S>(full, args); });
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
      long long element;
      if (clr_emu::first_difference(*got_s[w], *want_s[w], esize, &element)) {
        FAIL("%s case %d tensor %d (numel %lld): %s differs at element %lld%s (skip %d, unscale %d, starts %d)\n", name,
             case_index, k, (long long)got.numel, what[w], element,
             element < 0 || element >= got.numel ? ", OUTSIDE the tensor" : "", (int)skip, (int)unscale,
             (int)got.has_start);
      }
    }
    if (got.start != want.start)
      FAIL("%s case %d tensor %d: momentum start %lld, expected %lld\n", name, case_index, k, (long long)got.start,
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
