/*
 * The multi-tensor launch of the CUDA step: the table of tensors passed by value as
 * a kernel argument, the per-step scalars, and how a block finds its piece of work.
 *
 * Layout of the work. Every tensor is cut into chunks of kChunkElems elements (the
 * last chunk of a tensor may be shorter); one block runs one chunk at a time. The
 * table lists, per tensor, its addresses (param, grad and the rule's state), its
 * element count and the running total of chunks up to and including it
 * (chunk_end); one table type and one packer serve every rule (TensorTable,
 * for_each_table). A block with chunk index c finds its tensor by a binary search over
 * chunk_end: the table then needs no per-block entries, so one launch covers any
 * number of chunks, and only the tensor count limits what one launch can hold.
 *
 * Kernel-argument space. CUDA 12.1 raised the limit for kernel parameters from 4,096
 * to 32,764 bytes on sm_70 and newer (driver >= 530). A CUDA 13 toolkit only targets
 * sm_75 and newer and needs a driver >= 580, so every CUDA 13 build can use the large
 * space: the table then holds kMaxTensors = ~720 tensors, enough for one launch per
 * step for nearly every model. Older toolkits (or -DCLR_EXT_SMALL_KERNEL_ARGS) use
 * the classic 4 KB: ~70 tensors per launch beside the schedule (a chain takes ~0.9 KB),
 * more launches, same results.
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

#include "../math/schedule.h"

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

/* What every rule's kernel reads besides its table and its own scalars: the device
   pointers (the iteration, the loss scale and the overflow flag are read on the device),
   the schedule, and the momentum it cycles (SGD's momentum, AdamW's beta1). The first
   member of each rule's arguments; thread 0 of every block evaluates it
   (cuda/kernel_prologue.cuh). */
struct StepInputs {
  const int64_t* iteration;
  const void* grad_scale;  // nullptr: no unscaling
  const void* found_inf;   // nullptr: never skip; any non-zero value skips the step
  const void* lr_scale;    // nullptr: 1; multiplies the schedule's LR (scale_schedule)
  clr_shape shape;
  clr_bounds bounds;
  double momentum;               // the fixed momentum / beta1, used when !cycle_momentum
  int32_t grad_scale_is_double;  // else float32
  int32_t found_inf_is_double;   // else float32
  int32_t lr_scale_is_double;    // else float32
  int32_t cycle_momentum;
  int32_t maximize;
};

/* The SGD kernel's arguments (cuda/scheduled_sgd_kernel.cuh). */
struct SgdStepArgs {
  StepInputs step;
  double dampening;
  double weight_decay;
  int32_t has_buffers;
  int32_t first_step;  // used for tensors without a momentum start
  int32_t nesterov;
  int32_t use_weight_decay;
};

/* The AdamW update kernel's arguments (cuda/scheduled_adamw_kernel.cuh). */
struct AdamwStepArgs {
  StepInputs step;
  double beta2;
  double eps;
  double weight_decay;
};

CLR_HD int64_t chunks_of(int64_t numel) { return (numel + kChunkElems - 1) / kChunkElems; }

/*
 * The kernel-argument table of one launch: per tensor, kStreams addresses (param and grad
 * first, then the rule's state), one more per-tensor pointer of the rule's (Extra), the
 * element count and the running total of chunks up to and including it (chunk_end). As
 * many tensors as fit the kernel-parameter space beside the rule's Args.
 */
template <int kStreams, typename Extra, typename Args>
struct TensorTable {
  static constexpr int kBytesPerTensor = kStreams * 8 + (int)sizeof(Extra) + 8 + 4;
  static constexpr int kMaxTensors =
      (kKernelParamBytes - (int)sizeof(Args) - 16 /* count + alignment slack */) / kBytesPerTensor;

  /* One tensor as the host packs it. */
  struct Entry {
    void* address[kStreams];
    Extra extra;
    int64_t numel;  // > 0, fewer than INT32_MAX chunks (the launcher checks)
  };

  void* address[kStreams][kMaxTensors];
  Extra extra[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t chunk_end[kMaxTensors];  // chunks of tensors 0..t, cumulative
  int32_t count;

  static int64_t chunks_of_entry(const Entry& e) { return chunks_of(e.numel); }
  void put(int t, const Entry& e, int64_t chunks_so_far) {
    for (int k = 0; k < kStreams; ++k) address[k][t] = e.address[k];
    extra[t] = e.extra;
    numel[t] = e.numel;
    chunk_end[t] = (int32_t)chunks_so_far;
  }
};

/* The streams every table starts with. */
constexpr int kParam = 0;
constexpr int kGrad = 1;

/* SGD: param, grad, momentum buffer (unused entries when the step has no buffers); Extra
   is the param's momentum start (nullptr: args.first_step decides). ~720 tensors per
   launch with 32 KB of kernel parameters, ~69 with 4 KB. */
constexpr int kBuffer = 2;
typedef TensorTable<3, int64_t*, SgdStepArgs> SgdTable;
constexpr int kMaxTensors = SgdTable::kMaxTensors;

/* AdamW: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (unused entries without
   amsgrad); Extra is the param's step count before this step (read only there). ~530
   tensors per launch with 32 KB of kernel parameters, ~50 with 4 KB. */
constexpr int kExpAvg = 2;
constexpr int kExpAvgSq = 3;
constexpr int kMaxExpAvgSq = 4;
typedef TensorTable<5, const float*, AdamwStepArgs> AdamwTable;
constexpr int kAdamwMaxTensors = AdamwTable::kMaxTensors;

static_assert(sizeof(SgdTable) + sizeof(SgdStepArgs) <= (size_t)kKernelParamBytes,
              "the SGD kernel arguments must fit the kernel-parameter space");
static_assert(sizeof(AdamwTable) + sizeof(AdamwStepArgs) <= (size_t)kKernelParamBytes,
              "the AdamW kernel arguments must fit the kernel-parameter space");

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

/* The second launch of an AdamW step: every param's step count (empty params included)
   advanced by one thread each, unless found_inf says the step was skipped. */
struct StepCountArgs {
  const void* found_inf;  // nullptr: never skip
  int32_t found_inf_is_double;
};

constexpr int kStepCountBlock = 256;  // threads per block of the step-count launch

struct StepCountTable {
  static constexpr int kMaxTensors = (kKernelParamBytes - (int)sizeof(StepCountArgs) - 16) / 8;
  typedef float* Entry;

  float* step[kMaxTensors];
  int32_t count;

  static int64_t chunks_of_entry(float*) { return 0; }  // one thread per count, no chunks
  void put(int t, float* e, int64_t) { step[t] = e; }
};
constexpr int kMaxStepCounts = StepCountTable::kMaxTensors;

static_assert(sizeof(StepCountTable) + sizeof(StepCountArgs) <= (size_t)kKernelParamBytes,
              "the step-count kernel arguments must fit the kernel-parameter space");

// ------------------------------------------------------------------ packing

/* Packs the entries, in order, into as few tables as possible and calls
   launch_table(table, chunks) for each full one and the last: one kernel launch per
   table. A table closes at Table::kMaxTensors tensors or before its chunk count would
   reach INT32_MAX (the grid's x limit). Every rule's launcher packs with it. Host code. */
template <typename Table, typename LaunchTable>
inline void for_each_table(const typename Table::Entry* entries, int64_t n_entries, Table& table,
                           LaunchTable&& launch_table) {
  table.count = 0;
  int64_t chunks = 0;
  for (int64_t k = 0; k < n_entries; ++k) {
    const int64_t n_chunks = Table::chunks_of_entry(entries[k]);
    if (table.count == Table::kMaxTensors || chunks + n_chunks >= INT32_MAX) {
      launch_table(table, chunks);
      table.count = 0;
      chunks = 0;
    }
    chunks += n_chunks;
    table.put(table.count, entries[k], chunks);
    table.count = table.count + 1;
  }
  if (table.count > 0) launch_table(table, chunks);
}

}  // namespace clr_cuda

#endif /* CLR_EXT_CUDA_MULTI_TENSOR_CUH */
