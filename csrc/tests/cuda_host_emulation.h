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
#include <random>
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
#include "math/storage.h"  // after the builtins above

namespace clr_emu {

// The failures a test has reported (FAIL prints the first 25).
inline int g_failures = 0;
#define FAIL(...)                                                  \
  do {                                                             \
    if (++clr_emu::g_failures <= 25) fprintf(stderr, __VA_ARGS__); \
  } while (0)

// A storage type's torch name (for messages) and its dtype code in the CPU loops, whose
// run_range overloads are the references the kernels are compared with.
template <typename S>
struct StorageInfo;
template <>
struct StorageInfo<float> {
  static constexpr const char* name = "float32";
  static constexpr int32_t code = clr_cpu::kFloat32;
};
template <>
struct StorageInfo<double> {
  static constexpr const char* name = "float64";
  static constexpr int32_t code = clr_cpu::kFloat64;
};
template <>
struct StorageInfo<clr_float16> {
  static constexpr const char* name = "float16";
  static constexpr int32_t code = clr_cpu::kFloat16;
};
template <>
struct StorageInfo<clr_bfloat16> {
  static constexpr const char* name = "bfloat16";
  static constexpr int32_t code = clr_cpu::kBFloat16;
};

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

}  // namespace clr_emu

#endif /* CLR_EXT_TESTS_CUDA_HOST_EMULATION_H */
