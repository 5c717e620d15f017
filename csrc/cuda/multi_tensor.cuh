/*
 * The multi-tensor launch of the CUDA step: the table of tensors passed by value as
 * a kernel argument, the per-step scalars, and how a block finds its piece of work.
 *
 * Layout of the work. Every tensor is cut into chunks of kChunkElems elements (the
 * last chunk of a tensor may be shorter); one block runs one chunk at a time. The
 * table lists, per tensor, its three addresses (param, grad, momentum buffer), its
 * element count and the running total of chunks up to and including it
 * (chunk_end). A block with chunk index c finds its tensor by a binary search over
 * chunk_end: the table then needs no per-block entries, so one launch covers any
 * number of chunks, and only the tensor count limits what one launch can hold.
 *
 * Kernel-argument space. CUDA 12.1 raised the limit for kernel parameters from 4,096
 * to 32,764 bytes on sm_70 and newer (driver >= 530). A CUDA 13 toolkit only targets
 * sm_75 and newer and needs a driver >= 580, so every CUDA 13 build can use the large
 * space: the table then holds kMaxTensors = ~740 tensors, enough for one launch per
 * step for nearly every model. Older toolkits (or -DCLR_EXT_SMALL_KERNEL_ARGS) use
 * the classic 4 KB: ~100 tensors per launch, more launches, same results.
 * Large arguments cost nothing per step under CUDA-graph replay (they are captured by
 * value) and need no extra host-to-device copy that could break capture, unlike a
 * metadata buffer copied with cudaMemcpyAsync.
 *
 * 64-bit: element counts and offsets are int64; within a chunk the index is int32
 * (a chunk is at most kChunkElems elements); chunk indices are int32 per launch (the
 * host starts a new launch before 2^31 chunks).
 *
 * Host-compilable (no device code outside __CUDACC__) so that the index math can be
 * checked on the host as well.
 */
#ifndef CLR_EXT_CUDA_MULTI_TENSOR_CUH
#define CLR_EXT_CUDA_MULTI_TENSOR_CUH

#include <stdint.h>

#include "../schedule.h"

#if defined(__CUDACC__)
#include <cuda_runtime_api.h>
#define CLR_HD __host__ __device__ __forceinline__
#else
#define CLR_HD inline
#endif

/* __grid_constant__ lets the kernel index its by-value table without a local copy
   (CUDA 11.7+, sm_70+). */
#if defined(__CUDACC__) && defined(__CUDACC_VER_MAJOR__) &&                                     \
    (__CUDACC_VER_MAJOR__ > 11 || (__CUDACC_VER_MAJOR__ == 11 && __CUDACC_VER_MINOR__ >= 7)) && \
    (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700)
#define CLR_GRID_CONSTANT __grid_constant__
#else
#define CLR_GRID_CONSTANT
#endif

namespace clr_cuda {

#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000 && !defined(CLR_EXT_SMALL_KERNEL_ARGS)
constexpr int kKernelParamBytes = 32764;
#else
constexpr int kKernelParamBytes = 4096;
#endif

constexpr int kBlockSize = 512;         // threads per block
constexpr int kMaxUnroll = 2;           // 16-byte vectors in flight per thread and stream
constexpr int kMinBlocksPerSm = 2;      // caps registers at 64 per thread: 1,024+ threads per SM
constexpr int64_t kChunkElems = 65536;  // elements per chunk: a multiple of every vector width
constexpr int kVectorBytes = 16;

/* What every block of one step needs besides the table. Device pointers only: the
   iteration, the loss scale and the overflow flag are read on the device. */
struct StepArgs {
  const int64_t* iteration;
  const void* grad_scale;  // nullptr: no unscaling
  const void* found_inf;   // nullptr: never skip
  clr_shape shape;
  clr_bounds bounds;
  double momentum;  // used when !cycle_momentum
  double dampening;
  double weight_decay;
  int32_t grad_scale_is_double;  // else float32
  int32_t found_inf_is_double;   // else float32
  int32_t has_buffers;
  int32_t first_step;  // used for tensors without a momentum start
  int32_t cycle_momentum;
  int32_t nesterov;
  int32_t maximize;
  int32_t use_weight_decay;
};

/* Per tensor: 4 addresses, an int64 count and an int32 running chunk total. */
constexpr int kBytesPerTensor = 4 * 8 + 8 + 4;
constexpr int kMaxTensors =
    (kKernelParamBytes - (int)sizeof(StepArgs) - 16 /* count + alignment slack */) / kBytesPerTensor;

struct TensorTable {
  void* param[kMaxTensors];
  void* grad[kMaxTensors];
  void* buffer[kMaxTensors];             // unused entries when the step has no buffers
  int64_t* momentum_start[kMaxTensors];  // nullptr: args.first_step decides
  int64_t numel[kMaxTensors];
  int32_t chunk_end[kMaxTensors];  // chunks of tensors 0..t, cumulative
  int32_t count;
};

static_assert(sizeof(TensorTable) + sizeof(StepArgs) <= (size_t)kKernelParamBytes,
              "the kernel arguments must fit the kernel-parameter space");

CLR_HD int64_t chunks_of(int64_t numel) { return (numel + kChunkElems - 1) / kChunkElems; }

/* The tensor that owns chunk c: the first t with chunk_end[t] > c (count >= 1, c < chunk_end[count-1]). */
CLR_HD int find_tensor(const int32_t* chunk_end, int count, int64_t c) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if ((int64_t)chunk_end[mid] > c) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

/* Elements [begin, begin + size) of tensor t form chunk c. */
struct ChunkRange {
  int64_t begin;
  int32_t size;
};

CLR_HD ChunkRange chunk_range(const int32_t* chunk_end, const int64_t* numel, int t, int64_t c) {
  const int64_t first = t == 0 ? 0 : (int64_t)chunk_end[t - 1];
  ChunkRange r;
  r.begin = (c - first) * kChunkElems;
  const int64_t left = numel[t] - r.begin;
  r.size = (int32_t)(left < kChunkElems ? left : kChunkElems);
  return r;
}

// ------------------------------------------------------------------ packing

struct Entry {
  void* param;
  void* grad;
  void* buffer;
  int64_t* momentum_start;
  int64_t numel;  // > 0, fewer than INT32_MAX chunks (the launcher checks)
};

/* Packs the entries, in order, into as few tables as possible and calls
   launch_table(table, chunks) for each full one and the last: one kernel launch per
   table, chunks blocks. A table closes at kMaxTensors tensors or before its chunk
   count would reach INT32_MAX (the grid's x limit). Host code. */
template <typename LaunchTable>
inline void for_each_table(const Entry* entries, int64_t n_entries, TensorTable& table, LaunchTable&& launch_table) {
  table.count = 0;
  int64_t chunks = 0;
  for (int64_t k = 0; k < n_entries; ++k) {
    const Entry& e = entries[k];
    const int64_t n_chunks = chunks_of(e.numel);
    if (table.count == kMaxTensors || chunks + n_chunks >= INT32_MAX) {
      launch_table(table, chunks);
      table.count = 0;
      chunks = 0;
    }
    const int t = table.count;
    table.param[t] = e.param;
    table.grad[t] = e.grad;
    table.buffer[t] = e.buffer;
    table.momentum_start[t] = e.momentum_start;
    table.numel[t] = e.numel;
    chunks += n_chunks;
    table.chunk_end[t] = (int32_t)chunks;
    table.count = t + 1;
  }
  if (table.count > 0) launch_table(table, chunks);
}

// ------------------------------------------------------------------ AdamW's tables

/* What every block of one AdamW step needs besides its table: the device pointers
   (iteration, loss scale, overflow flag) and the rule's scalars. */
struct AdamwStepArgs {
  const int64_t* iteration;
  const void* grad_scale;  // nullptr: no unscaling
  const void* found_inf;   // nullptr: never skip
  clr_shape shape;
  clr_bounds bounds;
  double beta1;  // used when !cycle_momentum
  double beta2;
  double eps;
  double weight_decay;
  int32_t grad_scale_is_double;  // else float32
  int32_t found_inf_is_double;   // else float32
  int32_t cycle_momentum;
  int32_t maximize;
};

/* Per tensor: 6 addresses (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step), an
   int64 count and an int32 running chunk total: ~540 tensors per launch with 32 KB of
   kernel parameters, ~65 with 4 KB. */
constexpr int kAdamwBytesPerTensor = 6 * 8 + 8 + 4;
constexpr int kAdamwMaxTensors =
    (kKernelParamBytes - (int)sizeof(AdamwStepArgs) - 16 /* count + alignment slack */) / kAdamwBytesPerTensor;

struct AdamwTensorTable {
  void* param[kAdamwMaxTensors];
  void* grad[kAdamwMaxTensors];
  void* exp_avg[kAdamwMaxTensors];
  void* exp_avg_sq[kAdamwMaxTensors];
  void* max_exp_avg_sq[kAdamwMaxTensors];  // unused entries without amsgrad
  const float* step[kAdamwMaxTensors];     // the step count before this step (read only here)
  int64_t numel[kAdamwMaxTensors];
  int32_t chunk_end[kAdamwMaxTensors];  // chunks of tensors 0..t, cumulative
  int32_t count;
};

static_assert(sizeof(AdamwTensorTable) + sizeof(AdamwStepArgs) <= (size_t)kKernelParamBytes,
              "the AdamW kernel arguments must fit the kernel-parameter space");

struct AdamwEntry {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;  // nullptr without amsgrad
  const float* step;
  int64_t numel;  // > 0, fewer than INT32_MAX chunks (the launcher checks)
};

/* for_each_table for AdamW entries: the same packing rules (in order; a table closes at
   kAdamwMaxTensors tensors or before its chunk count would reach INT32_MAX). Host code. */
template <typename LaunchTable>
inline void for_each_adamw_table(const AdamwEntry* entries, int64_t n_entries, AdamwTensorTable& table,
                                 LaunchTable&& launch_table) {
  table.count = 0;
  int64_t chunks = 0;
  for (int64_t k = 0; k < n_entries; ++k) {
    const AdamwEntry& e = entries[k];
    const int64_t n_chunks = chunks_of(e.numel);
    if (table.count == kAdamwMaxTensors || chunks + n_chunks >= INT32_MAX) {
      launch_table(table, chunks);
      table.count = 0;
      chunks = 0;
    }
    const int t = table.count;
    table.param[t] = e.param;
    table.grad[t] = e.grad;
    table.exp_avg[t] = e.exp_avg;
    table.exp_avg_sq[t] = e.exp_avg_sq;
    table.max_exp_avg_sq[t] = e.max_exp_avg_sq;
    table.step[t] = e.step;
    table.numel[t] = e.numel;
    chunks += n_chunks;
    table.chunk_end[t] = (int32_t)chunks;
    table.count = t + 1;
  }
  if (table.count > 0) launch_table(table, chunks);
}

/* The second launch of an AdamW step: every param's step count (empty params included)
   advanced by one thread each, unless found_inf says the step was skipped. */
struct StepCountArgs {
  const void* found_inf;  // nullptr: never skip
  int32_t found_inf_is_double;
};

constexpr int kStepCountBlock = 256;  // threads per block of the step-count launch
constexpr int kMaxStepCounts = (kKernelParamBytes - (int)sizeof(StepCountArgs) - 16) / 8;

struct StepCountTable {
  float* step[kMaxStepCounts];
  int32_t count;
};

static_assert(sizeof(StepCountTable) + sizeof(StepCountArgs) <= (size_t)kKernelParamBytes,
              "the step-count kernel arguments must fit the kernel-parameter space");

/* Packs the step counts kMaxStepCounts at a time; launch_table(table) for each. Host code. */
template <typename LaunchTable>
inline void for_each_step_table(float* const* steps, int64_t n_steps, StepCountTable& table,
                                LaunchTable&& launch_table) {
  table.count = 0;
  for (int64_t k = 0; k < n_steps; ++k) {
    if (table.count == kMaxStepCounts) {
      launch_table(table);
      table.count = 0;
    }
    table.step[table.count++] = steps[k];
  }
  if (table.count > 0) launch_table(table);
}

}  // namespace clr_cuda

#endif /* CLR_EXT_CUDA_MULTI_TENSOR_CUH */
