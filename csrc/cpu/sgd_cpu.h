/*
 * The multi-tensor CPU step: every parameter of a (dtype) bucket in one pass.
 *
 * Header-only C++ with no torch headers, so that both the torch extension
 * (clr_ext._C, parallel through ATen) and the Cython fallback (parallel through
 * OpenMP) compile the very same loops. Work is split over the flattened element
 * space of all tensors, not per tensor, so a model of many small tensors costs
 * one parallel region, not one per tensor. Elements are widened to the compute type
 * and rounded back by clr_storage (csrc/storage.h), the conversions the CUDA kernels
 * use too.
 *
 * Vectorization: each per-dtype entry point is compiled three times (AVX-512,
 * AVX2+FMA+F16C, baseline x86-64) with GCC's target_clones and the loader picks
 * the best clone for the running CPU. Sources must be compiled with
 * -ffp-contract=off (the update's fused multiply-adds are explicit fma calls): every
 * backend then rounds exactly like the scalar code, so results are bit-identical
 * across backends and CPUs (the baseline clone calls libm's exact fma).
 */
#ifndef CLR_EXT_CPU_SGD_CPU_H
#define CLR_EXT_CPU_SGD_CPU_H

#include <stdint.h>

#include <algorithm>

#include "../sgd_update.h"
#include "../storage.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(CLR_EXT_NO_TARGET_CLONES)
#define CLR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLR_CPU_CLONES
#endif

#if defined(__GNUC__)
#define CLR_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define CLR_ALWAYS_INLINE inline
#endif

namespace clr_cpu {

/* Numbering shared with the Python layer (clr_ext/backends.py). */
enum DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

/* One parameter's memory: param, grad and (optionally) momentum buffer, all dense and alike. */
struct Span {
  void* param;
  void* grad;
  void* momentum_buffer; /* nullptr when the step uses no momentum */
  int64_t numel;
};

/* What is the same for every element of one bucket in one step. */
struct StepArgs {
  double lr;
  double momentum;
  double dampening;
  double weight_decay;
  int32_t momentum_state; /* CLR_MOMENTUM_* */
  int32_t nesterov;
  int32_t maximize;
  int32_t unscale;   /* divide the gradient by grad_scale and write it back (AMP) */
  double grad_scale; /* the loss scale, only read when unscale */
};

/* The innermost loop, with every flag a compile-time constant so that it vectorizes. */
template <typename S, bool kWeightDecay, int kMomentum, bool kNesterov, bool kUnscale>
CLR_ALWAYS_INLINE void span_loop(S* __restrict param, S* __restrict grad, S* __restrict buffer, int64_t n,
                                 const clr_sgd_coeffs<typename clr_storage<S>::compute>& c,
                                 typename clr_storage<S>::compute grad_scale) {
  typedef typename clr_storage<S>::compute C;
  for (int64_t i = 0; i < n; ++i) {
    C g = clr_storage<S>::load(grad[i]);
    if (kUnscale) {
      g = g / grad_scale;
      grad[i] = clr_storage<S>::store(g);
    }
    C b = kMomentum == CLR_MOMENTUM_STEADY ? clr_storage<S>::load(buffer[i]) : C(0);
    const C p = clr_sgd_update<C>(clr_storage<S>::load(param[i]), g, &b, c, kWeightDecay, kMomentum, kNesterov);
    if (kMomentum != CLR_MOMENTUM_NONE) buffer[i] = clr_storage<S>::store(b);
    param[i] = clr_storage<S>::store(p);
  }
}

template <typename S, bool kUnscale>
CLR_ALWAYS_INLINE void span_dispatch(S* param, S* grad, S* buffer, int64_t n, const StepArgs& a) {
  typedef typename clr_storage<S>::compute C;
  const clr_sgd_coeffs<C> c = clr_sgd_coeffs_make<C>(a.lr, a.weight_decay, a.momentum, a.dampening, a.maximize);
  const C scale = (C)a.grad_scale;
  const bool wd = a.weight_decay != 0.0;
#define CLR_SPAN(WD, MS, NEST) span_loop<S, WD, MS, NEST, kUnscale>(param, grad, buffer, n, c, scale)
  switch (a.momentum_state) {
    case CLR_MOMENTUM_NONE:
      if (wd)
        CLR_SPAN(true, CLR_MOMENTUM_NONE, false);
      else
        CLR_SPAN(false, CLR_MOMENTUM_NONE, false);
      break;
    case CLR_MOMENTUM_FIRST:
      if (wd) {
        if (a.nesterov)
          CLR_SPAN(true, CLR_MOMENTUM_FIRST, true);
        else
          CLR_SPAN(true, CLR_MOMENTUM_FIRST, false);
      } else {
        if (a.nesterov)
          CLR_SPAN(false, CLR_MOMENTUM_FIRST, true);
        else
          CLR_SPAN(false, CLR_MOMENTUM_FIRST, false);
      }
      break;
    default:
      if (wd) {
        if (a.nesterov)
          CLR_SPAN(true, CLR_MOMENTUM_STEADY, true);
        else
          CLR_SPAN(true, CLR_MOMENTUM_STEADY, false);
      } else {
        if (a.nesterov)
          CLR_SPAN(false, CLR_MOMENTUM_STEADY, true);
        else
          CLR_SPAN(false, CLR_MOMENTUM_STEADY, false);
      }
      break;
  }
#undef CLR_SPAN
}

/* One entry point per storage type: these are the functions that get ISA clones. */
#define CLR_DEFINE_SPAN_ENTRY(NAME, S)                                                                        \
  CLR_CPU_CLONES __attribute__((noinline)) static void NAME(void* param, void* grad, void* buffer, int64_t n, \
                                                            const StepArgs* a) {                              \
    if (a->unscale)                                                                                           \
      span_dispatch<S, true>((S*)param, (S*)grad, (S*)buffer, n, *a);                                         \
    else                                                                                                      \
      span_dispatch<S, false>((S*)param, (S*)grad, (S*)buffer, n, *a);                                        \
  }

CLR_DEFINE_SPAN_ENTRY(span_f32, float)
CLR_DEFINE_SPAN_ENTRY(span_f64, double)
CLR_DEFINE_SPAN_ENTRY(span_f16, clr_float16)
CLR_DEFINE_SPAN_ENTRY(span_bf16, clr_bfloat16)
#undef CLR_DEFINE_SPAN_ENTRY

inline int64_t element_size(int32_t dtype) { return dtype == kFloat64 ? 8 : (dtype == kFloat32 ? 4 : 2); }

/*
 * Runs elements [begin, end) of the flattened bucket. `offsets` holds the prefix
 * sums of the spans' numel (offsets[0] = 0, offsets[n_spans] = total), so any
 * thread can find its first span by binary search and walk on from there.
 */
inline void run_range(int32_t dtype, const Span* spans, const int64_t* offsets, int64_t n_spans, int64_t begin,
                      int64_t end, const StepArgs& a) {
  if (begin >= end) return;
  void (*span_fn)(void*, void*, void*, int64_t, const StepArgs*) = dtype == kFloat32   ? span_f32
                                                                   : dtype == kFloat64 ? span_f64
                                                                   : dtype == kFloat16 ? span_f16
                                                                                       : span_bf16;
  const int64_t esize = element_size(dtype);
  int64_t s = (int64_t)(std::upper_bound(offsets, offsets + n_spans + 1, begin) - offsets) - 1;
  for (; s < n_spans && offsets[s] < end; ++s) {
    const int64_t lo = std::max(begin, offsets[s]) - offsets[s];
    const int64_t hi = std::min(end, offsets[s + 1]) - offsets[s];
    if (hi <= lo) continue;
    const Span& sp = spans[s];
    char* buf = (char*)sp.momentum_buffer;
    span_fn((char*)sp.param + lo * esize, (char*)sp.grad + lo * esize, buf ? buf + lo * esize : nullptr, hi - lo, &a);
  }
}

/* Below this many elements a bucket runs on one thread: waking others costs more. */
static const int64_t kParallelGrain = 32768;
/* Thread ranges are cut at multiples of this many elements (a few cache lines). */
static const int64_t kRangeAlign = 1024;

}  // namespace clr_cpu

#endif /* CLR_EXT_CPU_SGD_CPU_H */
