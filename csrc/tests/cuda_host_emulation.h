/*
 * Just enough of CUDA's device language, as host C++, to run the CUDA kernels
 * (csrc/cuda/scheduled_*_kernel.cuh) on the CPU when no GPU is lent: the kernel keywords,
 * the thread and block indices, __syncthreads and __shared__; and the harness the rules'
 * emulation tests share (test_cuda_kernel_host.cpp for SGD, test_cuda_adamw_host.cpp for
 * AdamW): streams with guard bytes at any alignment, values stored as a storage type
 * stores them, a launch's grid emulated in a random order, and the byte comparison.
 *
 * emulate_grid() runs every block in a given order and, within a block, every thread
 * to completion one after another, thread 0 first. That is one legal schedule of a
 * kernel whose only intra-block dependency is "thread 0 fills shared memory, barrier,
 * everyone reads it" (the CLR kernel's shape), so a correct kernel must give correct
 * results under it; a different block order is another legal schedule. What it cannot
 * show: memory-model races between threads of a block, vector-load codegen,
 * occupancy, launch limits. Those need the GPU run (bench/gpu_check.sh).
 *
 * The kernels' 16-bit conversions need nothing here: compiled for the host, clr_storage
 * (csrc/math/storage.h) takes its round-to-nearest-even bit conversions, the CPU loops' own
 * (tested against _Float16 and torch); CUDA's __float2half_rn and __float2bfloat16_rn,
 * which it takes on the device, round the same way for every non-NaN input.
 */
#ifndef CLR_EXT_TESTS_CUDA_HOST_EMULATION_H
#define CLR_EXT_TESTS_CUDA_HOST_EMULATION_H

#if defined(__CUDACC__)
#error "cuda_host_emulation.h is for host compilers; nvcc has the real thing"
#endif

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#define CLR_CUDA_HOST_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, so one static instance per kernel instantiation is its shared memory.
#define __shared__ static

struct clr_emu_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline clr_emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
inline void __syncthreads() {}

/* Runs run_thread() once per (block, thread): blocks in block_order (a permutation of
   0..grid-1), threads 0..block-1 in order. */
template <typename RunThread>
void emulate_grid(unsigned grid, unsigned block, const std::vector<unsigned>& block_order, RunThread&& run_thread) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b : block_order) {
    blockIdx.x = b;
    for (unsigned t = 0; t < block; ++t) {
      threadIdx.x = t;
      run_thread();
    }
  }
}

// ------------------------------------------------------------------ the tests' harness

#include "cpu/multi_tensor.h"
#include "cuda/multi_tensor.cuh"
#include "math/storage.h"  // after the builtins above
#include "tests/storage_info.h"

namespace clr_emu {

// The failures a test has reported (FAIL prints the first 25).
inline int g_failures = 0;
#define FAIL(...)                                                  \
  do {                                                             \
    if (++clr_emu::g_failures <= 25) fprintf(stderr, __VA_ARGS__); \
  } while (0)

// A storage type's dtype code in the CPU loops, whose run_range overloads are the
// references the kernels are compared with, and its torch name (for messages).
using clr_test::StorageInfo;

// v rounded to S's compute type, then stored as S rounds it (as both the CPU loops and the
// kernels write values).
template <typename S>
void store_value(void* at, double v) {
  const S stored = clr_storage<S>::store((typename clr_storage<S>::compute)v);
  memcpy(at, &stored, sizeof stored);
}

// One stream of one tensor: an allocation whose data starts `offset` elements past a
// 16-byte boundary and ends a few random guard bytes after the tensor, so that a write
// outside the tensor shows in the byte comparison.
struct Stream {
  std::vector<uint8_t> bytes;
  size_t data_at = 0;  // byte index of element 0
  uint8_t* data() { return bytes.data() + data_at; }
};

// n values uniform in [lo, hi), stored with `store`.
inline Stream make_stream(std::mt19937_64& rng, int64_t n, int esize, int offset, double lo, double hi,
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

// The element of the first byte where got and want differ (negative or >= numel: outside
// the tensor), or false when they are identical.
inline bool first_difference(const Stream& got, const Stream& want, int esize, long long* element) {
  if (got.bytes == want.bytes) return false;
  size_t at = 0;
  while (got.bytes[at] == want.bytes[at]) ++at;
  *element = ((long long)at - (long long)got.data_at) / esize;
  return true;
}

// One launch of `chunks` blocks, as the launcher sizes it or, one time in four, a smaller
// grid (the grid-stride loop covers the rest); the blocks in order or, unless
// rng() % keep_order_one_in == 0, shuffled.
template <typename RunThread>
void emulate_launch(std::mt19937_64& rng, int64_t chunks, unsigned block, unsigned keep_order_one_in,
                    RunThread&& run_thread) {
  const unsigned grid = rng() % 4 == 0 ? (unsigned)(1 + rng() % chunks) : (unsigned)chunks;
  std::vector<unsigned> order(grid);
  for (unsigned b = 0; b < grid; ++b) order[b] = b;
  if (rng() % keep_order_one_in != 0) std::shuffle(order.begin(), order.end(), rng);
  emulate_grid(grid, block, order, run_thread);
}

// The overflow flag of a random step: absent, 0, or (skip) 1 or 2 (GradScaler's sum over
// two devices that both overflowed), as float32 or float64.
struct FoundInf {
  float f = 0;
  double d = 0;
};
inline void pick_found_inf(std::mt19937_64& rng, bool skip, FoundInf* flag, const void** ptr, int32_t* is_double) {
  if (rng() % 3 == 0 || skip) {
    *is_double = rng() % 2;
    flag->d = skip ? (rng() % 2 ? 1.0 : 2.0) : 0.0;
    flag->f = (float)flag->d;
    *ptr = *is_double ? (const void*)&flag->d : (const void*)&flag->f;
  }
}

// The loss scale of a random step, in a third of them (unscale): a power of two or three
// quarters of one, as float32 or float64.
struct GradScale {
  float f = 0;
  double d = 0;
  int32_t is_double = 0;
  double value() const { return is_double ? d : (double)f; }
};
inline bool pick_grad_scale(std::mt19937_64& rng, GradScale* scale, const void** ptr, int32_t* is_double) {
  if (rng() % 3 != 0) return false;
  scale->is_double = *is_double = rng() % 2;
  scale->d = (double)(1u << (rng() % 17)) * (rng() % 2 ? 1.0 : 0.75);
  scale->f = (float)scale->d;
  *ptr = *is_double ? (const void*)&scale->d : (const void*)&scale->f;
  return true;
}

// A random cyclical shape of `mode` (triangular, triangular2 or exp_range).
inline void pick_cyclic_shape(std::mt19937_64& rng, int mode, clr_shape* shape) {
  shape->mode = mode;
  shape->step_size_up = (double)(1 + rng() % 40);
  shape->step_size_down = (double)(1 + rng() % 40);
  shape->gamma = mode == CLR_MODE_EXP_RANGE ? 0.99 : 1.0;
  shape->custom_scale = 1.0;
}

// A tensor's element count: up to many_max in a step with many tensors (many_max > 0),
// else around the vector width, up to 5,000, around one chunk, several chunks, whole
// unrolled strides of a block, or up to 64.
inline int64_t pick_numel(std::mt19937_64& rng, int esize, int64_t many_max) {
  const int64_t width = clr_cuda::kVectorBytes / esize;
  if (many_max > 0) return 1 + (int64_t)(rng() % (uint64_t)many_max);
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

// A stream's element offset past a 16-byte boundary: whole vectors of `width` elements
// when the tensor is aligned, any offset otherwise.
inline int pick_offset(std::mt19937_64& rng, bool aligned, int width) {
  return aligned ? width * (int)(rng() % 3) : (int)(rng() % (2 * width));
}

// The entries packed into tables as the launcher packs them, each table's launch of
// `block` threads emulated (emulate_launch) with run_kernel(table) as its threads' code.
// Returns how many tables (launches) it took.
template <typename Table, typename RunKernel>
int emulate_tables(std::mt19937_64& rng, const std::vector<typename Table::Entry>& entries, unsigned block,
                   unsigned keep_order_one_in, RunKernel&& run_kernel) {
  // (a table of 32 KB or more: on the heap, as a launch would copy it into parameter space)
  std::unique_ptr<Table> table(new Table);
  int tables = 0;
  clr_cuda::for_each_table(entries.data(), (int64_t)entries.size(), *table, [&](const Table& full, int64_t chunks) {
    ++tables;
    emulate_launch(rng, chunks, block, keep_order_one_in, [&]() { run_kernel(full); });
  });
  return tables;
}

// Every byte of a tensor's streams (got[w], named what[w]) against the reference's; a
// difference is reported with the case and `context`.
template <size_t N>
void compare_streams(const char* dtype, int case_index, int tensor, int64_t numel, int esize,
                     const char* const (&what)[N], const Stream* const (&got)[N], const Stream* const (&want)[N],
                     const char* context) {
  for (size_t w = 0; w < N; ++w) {
    long long element;
    if (first_difference(*got[w], *want[w], esize, &element)) {
      FAIL("%s case %d tensor %d (numel %lld): %s differs at element %lld%s (%s)\n", dtype, case_index, tensor,
           (long long)numel, what[w], element, element < 0 || element >= numel ? ", OUTSIDE the tensor" : "", context);
    }
  }
}

// run_case(S(), rng, c) for c < cases and every storage type, from one seed.
template <typename RunCase>
void for_each_case(int cases, uint64_t seed, RunCase&& run_case) {
  std::mt19937_64 rng(seed);
  for (int c = 0; c < cases; ++c) {
    run_case(float(), rng, c);
    run_case(double(), rng, c);
    run_case(clr_float16(), rng, c);
    run_case(clr_bfloat16(), rng, c);
  }
}

// The test's exit status: 1 with its failures, else 0 with what it ran.
inline int finish(const char* test, const std::string& ran) {
  if (g_failures) {
    fprintf(stderr, "%s: %d failures\n", test, g_failures);
    return 1;
  }
  printf("%s: ok (%s)\n", test, ran.c_str());
  return 0;
}

}  // namespace clr_emu

#endif /* CLR_EXT_TESTS_CUDA_HOST_EMULATION_H */
