/*
 * What the CPU loops of every rule share: the dtype numbering, the ISA clones, and how a
 * bucket's flattened element space is cut (by ATen's threads in clr_ext._C, by OpenMP in
 * the Cython fallback) and walked span by span.
 *
 * Header-only C++ with no torch headers, so that both the torch extension and the Cython
 * fallback compile the very same loops. Work is split over the flattened element space
 * of all tensors, not per tensor, so a model of many small tensors costs one parallel
 * region, not one per tensor.
 *
 * Vectorization: each rule's per-dtype entry points are compiled three times (AVX-512,
 * AVX2+FMA+F16C, baseline x86-64) with GCC's target_clones and the loader picks the best
 * clone for the running CPU. Sources must be compiled with -ffp-contract=off (the rules'
 * fused multiply-adds are explicit fma calls): every backend then rounds exactly like the
 * scalar code, so results are bit-identical across backends and CPUs (the baseline clone
 * calls libm's exact fma).
 */
#ifndef CLR_EXT_CPU_MULTI_TENSOR_H
#define CLR_EXT_CPU_MULTI_TENSOR_H

#include <stdint.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(CLR_EXT_NO_TARGET_CLONES)
#define CLR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLR_CPU_CLONES
#endif

#if defined(__GNUC__)
#define CLR_ALWAYS_INLINE inline __attribute__((always_inline))
#define CLR_LAMBDA_INLINE __attribute__((always_inline))
#else
#define CLR_ALWAYS_INLINE inline
#define CLR_LAMBDA_INLINE
#endif

namespace clr_cpu {

/* Numbering shared with the Python layer (clr_ext/backends.py). */
enum DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline int64_t element_size(int32_t dtype) { return dtype == kFloat64 ? 8 : (dtype == kFloat32 ? 4 : 2); }

/* A rule's four entry points, one per storage type: the functions that get ISA clones
   (target_clones takes no templates, hence a macro). Defines static void NAME_f32 PARAMS,
   NAME_f64, NAME_f16 and NAME_bf16, each running BODY with S its storage type. */
#define CLR_CPU_ENTRY(NAME, STORAGE, PARAMS, BODY)                   \
  CLR_CPU_CLONES __attribute__((noinline)) static void NAME PARAMS { \
    typedef STORAGE S;                                               \
    BODY;                                                            \
  }
#define CLR_CPU_ENTRIES(NAME, PARAMS, BODY)            \
  CLR_CPU_ENTRY(NAME##_f32, float, PARAMS, BODY)       \
  CLR_CPU_ENTRY(NAME##_f64, double, PARAMS, BODY)      \
  CLR_CPU_ENTRY(NAME##_f16, clr_float16, PARAMS, BODY) \
  CLR_CPU_ENTRY(NAME##_bf16, clr_bfloat16, PARAMS, BODY)

/* A rule's per-storage-type entry (one of its four ISA-cloned functions) for a dtype code. */
template <typename Entry>
inline Entry entry_for(int32_t dtype, Entry f32, Entry f64, Entry f16, Entry bf16) {
  return dtype == kFloat32 ? f32 : dtype == kFloat64 ? f64 : dtype == kFloat16 ? f16 : bf16;
}

/* run(std::true_type()) or run(std::false_type()): a runtime flag as the compile-time
   constant the loops are instantiated on (every caller's lambda is CLR_LAMBDA_INLINE, so
   the loop still lands in the ISA clone that calls it). */
template <typename Run>
CLR_ALWAYS_INLINE void with_flag(bool flag, Run&& run) {
  if (flag)
    run(std::true_type());
  else
    run(std::false_type());
}

/* Below this many elements a bucket runs on one thread: waking others costs more. */
static const int64_t kParallelGrain = 32768;
/* Thread ranges are cut at multiples of this many elements (a few cache lines). */
static const int64_t kRangeAlign = 1024;

/*
 * Elements [begin, end) of the flattened bucket, span by span: run(s, lo, hi) for each
 * span s they touch, [lo, hi) its own elements (never empty). `offsets` holds the prefix
 * sums of the spans' numel (offsets[0] = 0, offsets[n_spans] = total), so any thread
 * finds its first span by binary search and walks on from there.
 */
template <typename RunPiece>
inline void for_each_piece(const int64_t* offsets, int64_t n_spans, int64_t begin, int64_t end, RunPiece&& run) {
  int64_t s = (int64_t)(std::upper_bound(offsets, offsets + n_spans + 1, begin) - offsets) - 1;
  for (; s < n_spans && offsets[s] < end; ++s) {
    const int64_t lo = std::max(begin, offsets[s]) - offsets[s];
    const int64_t hi = std::min(end, offsets[s + 1]) - offsets[s];
    if (hi > lo) run(s, lo, hi);
  }
}

/* A bucket's spans (one per param with elements; Span has a numel) and the prefix sums
   of their sizes that the walk searches. */
template <typename Span>
struct SpanList {
  std::vector<Span> spans;
  std::vector<int64_t> offsets;  // offsets[s]: the first element of span s; back(): the total

  SpanList() : offsets(1, 0) {}
  explicit SpanList(size_t capacity) : SpanList() { reserve(capacity); }
  void reserve(size_t capacity) {
    spans.reserve(capacity);
    offsets.reserve(capacity + 1);
  }
  void add(const Span& span) {
    spans.push_back(span);
    offsets.push_back(offsets.back() + span.numel);
  }
  int64_t size() const { return (int64_t)spans.size(); }
  int64_t total() const { return offsets.back(); }
};

/* The threads that share `total` elements: one below kParallelGrain, and never more than
   one per kParallelGrain (waking a thread costs more than that much work). */
inline int thread_count(int64_t total, int num_threads) {
  if (num_threads <= 1 || total <= kParallelGrain) return 1;
  if (num_threads > total / kParallelGrain) return (int)(total / kParallelGrain);
  return num_threads;
}

/* run(begin, end) over [0, total) on up to num_threads OpenMP threads, each an even share
   cut at kRangeAlign: the Cython fallback's parallelism (clr_ext._C uses at::parallel_for
   with the same grain and alignment). Serial where OpenMP is not compiled in. */
template <typename RunRange>
inline void openmp_ranges(int64_t total, int num_threads, RunRange&& run) {
  const int threads = thread_count(total, num_threads);
#if defined(_OPENMP)
  if (threads > 1) {
    const int64_t n_blocks = (total + kRangeAlign - 1) / kRangeAlign;
    const int64_t per_thread = (n_blocks + threads - 1) / threads * kRangeAlign;
#pragma omp parallel num_threads(threads)
    {
      const int64_t lo = (int64_t)omp_get_thread_num() * per_thread;
      const int64_t hi = lo + per_thread < total ? lo + per_thread : total;
      if (lo < hi) run(lo, hi);
    }
    return;
  }
#endif
  (void)threads;
  run(0, total);
}

/* The whole bucket on up to num_threads OpenMP threads, through the rule's run_range (the
   Cython fallback's entry, for every rule: the Span and Args types pick the rule). */
template <typename Span, typename Args>
inline void run_bucket_openmp(int32_t dtype, const SpanList<Span>& bucket, const Args& a, int num_threads) {
  openmp_ranges(bucket.total(), num_threads, [&](int64_t begin, int64_t end) {
    run_range(dtype, bucket.spans.data(), bucket.offsets.data(), bucket.size(), begin, end, a);
  });
}

}  // namespace clr_cpu

#endif /* CLR_EXT_CPU_MULTI_TENSOR_H */
