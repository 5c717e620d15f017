/*
 * What every rule's CUDA kernel does before and around its element loop, written once:
 * the 16-byte vector of a storage type, the read of a float32/float64 device scalar,
 * thread 0's loads and schedule evaluation (thread0_step_point) and the block's barrier
 * after it (block_step), and the grid-stride walk over a table's chunks (for_each_chunk,
 * stream_at).
 *
 * Host-compilable like the kernels: without nvcc the includer must first define the CUDA
 * builtins (csrc/tests/cuda_host_emulation.h does).
 */
#ifndef CLR_EXT_CUDA_KERNEL_PROLOGUE_CUH
#define CLR_EXT_CUDA_KERNEL_PROLOGUE_CUH

#include <stdint.h>

#if !defined(__CUDACC__) && !defined(CLR_CUDA_HOST_EMULATION)
#error "kernel_prologue.cuh needs nvcc, or csrc/tests/cuda_host_emulation.h included first"
#endif

#include "../math/schedule.h"
#include "multi_tensor.cuh"

namespace clr_cuda {

template <typename S>
struct alignas(kVectorBytes) Vec {
  static constexpr int kWidth = kVectorBytes / (int)sizeof(S);
  S v[kWidth];
};

__device__ __forceinline__ double read_scalar(const void* ptr, int is_double) {
  return is_double ? *static_cast<const double*>(ptr) : (double)*static_cast<const float*>(ptr);
}

/* GradScaler hands a fused optimizer the sum of its per-device overflow flags: any
   non-zero value (2.0 when two devices overflowed) means "skip". */
__device__ __forceinline__ bool skips_step(double found_inf) { return found_inf != 0.0; }

/* What thread 0 of a block decides for the whole step. */
struct StepPoint {
  int skip;           // found_inf is set: nothing is written
  int64_t iteration;  // the device counter
  double grad_scale;  // 1 without unscaling
  double lr;          // the schedule at the iteration (unset when skipped)
  double momentum;    // the cycled momentum / beta1, or the fixed one (unset when skipped)
};

/* Thread 0's part of every rule's prologue. The four device loads first, unconditionally,
   so that they are in flight together (one memory latency, not four, while the block
   waits at the barrier); only then the decisions and the schedule's double pow(). Every
   pointer is valid whenever it is non-null, so reading grad_scale in a step that
   found_inf skips is harmless. */
__device__ __forceinline__ StepPoint thread0_step_point(const StepInputs& in) {
  const double found_inf = in.found_inf != nullptr ? read_scalar(in.found_inf, in.found_inf_is_double) : 0.0;
  const int64_t iteration = *in.iteration;
  const double grad_scale = in.grad_scale != nullptr ? read_scalar(in.grad_scale, in.grad_scale_is_double) : 1.0;
  const double lr_scale = in.lr_scale != nullptr ? read_scalar(in.lr_scale, in.lr_scale_is_double) : 1.0;
  StepPoint s;
  s.skip = skips_step(found_inf);
  s.iteration = iteration;
  s.grad_scale = grad_scale;
  s.lr = 0.0;
  s.momentum = 0.0;
  if (!s.skip) {
    // Read in place: a chain's shape is ~0.9 KB, too large to copy into a thread's registers.
    const clr_point point = clr_schedule(iteration, &in.shape, &in.bounds);
    s.lr = in.lr_scale != nullptr ? CLR_DMUL(point.lr, lr_scale) : point.lr;
    s.momentum = in.cycle_momentum ? point.momentum : in.momentum;
  }
  return s;
}

/* Every rule's kernel prologue: thread 0 evaluates the step and, unless AMP skips it,
   hands it to decide(step), which stores what the rule's threads need of it in the block's
   shared memory; then the block's barrier. False (in every thread) when the step is
   skipped: nothing may be written, decided on the device. s_skip is the kernel's
   __shared__ flag (declared there with the rule's values: one layout of the block's
   shared memory, the kernel's). */
template <typename Decide>
__device__ __forceinline__ bool block_step(const StepInputs& in, int& s_skip, Decide&& decide) {
  if (threadIdx.x == 0) {
    const StepPoint step = thread0_step_point(in);
    s_skip = step.skip;
    if (!step.skip) decide(step);
  }
  __syncthreads();
  return !s_skip;
}

/* The block's grid-stride walk over the table's chunks: run(t, range) per chunk, t the
   tensor that owns it. */
template <typename Table, typename RunChunk>
__device__ __forceinline__ void for_each_chunk(const Table& table, RunChunk&& run) {
  const int64_t total_chunks = table.chunk_end[table.count - 1];
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const int t = find_tensor(table.chunk_end, table.count, chunk);
    run(t, chunk_range(table.chunk_end, table.numel, t, chunk));
  }
}

/* Stream k (kParam, kGrad, the rule's state) of tensor t from the chunk's first element. */
template <typename S, typename Table>
__device__ __forceinline__ S* stream_at(const Table& table, int k, int t, const ChunkRange& r) {
  return static_cast<S*>(table.address[k][t]) + r.begin;
}

}  // namespace clr_cuda

#endif /* CLR_EXT_CUDA_KERNEL_PROLOGUE_CUH */
