/*
 * The multi-tensor CPU step: every parameter of a (dtype) bucket in one pass.
 *
 * Header-only C++ with no torch headers, so that both the torch extension
 * (clr_ext._C, parallel through ATen) and the Cython fallback (parallel through
 * OpenMP) compile the very same loops. Work is split over the flattened element
 * space of all tensors, not per tensor, so a model of many small tensors costs
 * one parallel region, not one per tensor.
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
#include <string.h>

#include <algorithm>
#include <cmath>

#include "../sgd_update.h"

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

/* ---- 16-bit storage formats, converted by bit manipulation (no F16C or AVX512-BF16 needed) ---- */

CLR_ALWAYS_INLINE uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

CLR_ALWAYS_INLINE float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

CLR_ALWAYS_INLINE float bf16_to_float(uint16_t h) { return bits_float((uint32_t)h << 16); }

/* Round to nearest even, quiet NaN preserved: the rounding torch.bfloat16 uses. */
CLR_ALWAYS_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)((u + rounding) >> 16);
}

CLR_ALWAYS_INLINE float fp16_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    /* zero or subnormal: mantissa * 2^-24, exact in float */
    const float magnitude = (float)mantissa * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/* IEEE binary16, round to nearest even, overflow to infinity, NaN kept quiet. */
CLR_ALWAYS_INLINE uint16_t float_to_fp16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) return (uint16_t)(sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (magnitude >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds past 65504 */
  if (magnitude < 0x38800000u) {
    /* below the smallest normal (2^-14): the result is round(|f| * 2^24) units of 2^-24;
       rint rounds to nearest even in the default mode, and 1024 lands on the first normal. */
    const float units = bits_float(magnitude) * 16777216.0f;
    return (uint16_t)(sign | (uint16_t)std::nearbyint(units));
  }
  const uint32_t exponent = (magnitude >> 23) - 112u;
  uint32_t half = (exponent << 10) | ((magnitude >> 13) & 0x3ffu);
  const uint32_t dropped = magnitude & 0x1fffu;
  if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u))) half += 1u;
  return (uint16_t)(sign | half);
}

/* Storage <-> compute conversions per storage type. */
template <typename Storage>
struct Io;

template <>
struct Io<float> {
  typedef float compute;
  static CLR_ALWAYS_INLINE float load(float v) { return v; }
  static CLR_ALWAYS_INLINE float store(float v) { return v; }
};

template <>
struct Io<double> {
  typedef double compute;
  static CLR_ALWAYS_INLINE double load(double v) { return v; }
  static CLR_ALWAYS_INLINE double store(double v) { return v; }
};

struct Bf16 {
  uint16_t bits;
};
struct Fp16 {
  uint16_t bits;
};

template <>
struct Io<Bf16> {
  typedef float compute;
  static CLR_ALWAYS_INLINE float load(Bf16 v) { return bf16_to_float(v.bits); }
  static CLR_ALWAYS_INLINE Bf16 store(float v) {
    Bf16 out;
    out.bits = float_to_bf16(v);
    return out;
  }
};

template <>
struct Io<Fp16> {
  typedef float compute;
  static CLR_ALWAYS_INLINE float load(Fp16 v) { return fp16_to_float(v.bits); }
  static CLR_ALWAYS_INLINE Fp16 store(float v) {
    Fp16 out;
    out.bits = float_to_fp16(v);
    return out;
  }
};

/* The innermost loop, with every flag a compile-time constant so that it vectorizes. */
template <typename S, bool kWeightDecay, int kMomentum, bool kNesterov, bool kUnscale>
CLR_ALWAYS_INLINE void span_loop(S* __restrict param, S* __restrict grad, S* __restrict buffer, int64_t n,
                                 const clr_sgd_coeffs<typename Io<S>::compute>& c, typename Io<S>::compute grad_scale) {
  typedef typename Io<S>::compute C;
  for (int64_t i = 0; i < n; ++i) {
    C g = Io<S>::load(grad[i]);
    if (kUnscale) {
      g = g / grad_scale;
      grad[i] = Io<S>::store(g);
    }
    C b = kMomentum == CLR_MOMENTUM_STEADY ? Io<S>::load(buffer[i]) : C(0);
    const C p = clr_sgd_update<C>(Io<S>::load(param[i]), g, &b, c, kWeightDecay, kMomentum, kNesterov);
    if (kMomentum != CLR_MOMENTUM_NONE) buffer[i] = Io<S>::store(b);
    param[i] = Io<S>::store(p);
  }
}

template <typename S, bool kUnscale>
CLR_ALWAYS_INLINE void span_dispatch(S* param, S* grad, S* buffer, int64_t n, const StepArgs& a) {
  typedef typename Io<S>::compute C;
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
CLR_DEFINE_SPAN_ENTRY(span_f16, Fp16)
CLR_DEFINE_SPAN_ENTRY(span_bf16, Bf16)
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
