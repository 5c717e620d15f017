/*
 * The storage types and their conversions to and from the compute type: the one place
 * they are written.
 *
 * clr_storage<S> says, for a tensor element stored as S (float, double, clr_float16,
 * clr_bfloat16), in which type the update rules compute (`compute`: float for float32,
 * float16 and bfloat16, double for float64, as PyTorch's fused optimizers do) and how an
 * element is widened to it (`load`) and rounded back (`store`). The CPU loops
 * (csrc/cpu/), the Cython fallback that compiles them, and the CUDA kernels (csrc/cuda/)
 * all go through it, so every backend converts alike.
 *
 * The 16-bit conversions round to nearest even, as torch does on the same side:
 *  - on the host, by bit manipulation (no F16C or AVX512-BF16 needed, so every ISA clone
 *    of the CPU loops vectorizes them alike): bfloat16 as c10's round_to_nearest_even,
 *    float16 as IEEE binary16 (tested against the compiler's _Float16 in
 *    csrc/tests/test_cpu_kernel.cpp);
 *  - on the device, through the CUDA intrinsics (__float2half_rn, __float2bfloat16_rn:
 *    the rounding of the __float2half / __float2bfloat16 that c10::Half and
 *    c10::BFloat16 call there).
 * For every non-NaN input both sides give the same bits; a NaN stays a NaN, though its
 * bits may differ between host and device, as torch's own do.
 * The host emulation of the CUDA kernels (csrc/tests/cuda_host_emulation.h) therefore
 * runs the host conversions, which is what lets it compare the kernels bit for bit with
 * the CPU loops.
 *
 * C++ (templates), no torch headers: the CPU loops must compile without them.
 */
#ifndef CLR_EXT_STORAGE_H
#define CLR_EXT_STORAGE_H

#include <stdint.h>
#include <string.h>

#include <cmath>

#include "schedule.h" /* CLR_HOST_DEVICE */

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

/* Inlined at every use, whatever the optimizer's heuristics: on the CPU into each ISA
   clone of the loops (target_clones), which then vectorizes the conversion with that
   clone's instructions; on the device into the element loop. */
#if defined(__GNUC__)
#define CLR_HOST_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define CLR_HOST_ALWAYS_INLINE inline
#endif
#if defined(__CUDACC__)
#define CLR_STORAGE_INLINE __forceinline__ CLR_HOST_DEVICE
#else
#define CLR_STORAGE_INLINE CLR_HOST_ALWAYS_INLINE
#endif
/* The rules' element bodies (clr_sgd_element, clr_adamw_element), inlined likewise. */
#define CLR_ELEMENT_INLINE CLR_STORAGE_INLINE

/* torch.float16: IEEE binary16. */
struct clr_float16 {
  uint16_t bits;
};
/* torch.bfloat16: the upper half of a float32. */
struct clr_bfloat16 {
  uint16_t bits;
};

/* ---- the host's 16-bit conversions, by bit manipulation ---- */

CLR_HOST_ALWAYS_INLINE uint32_t clr_float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

CLR_HOST_ALWAYS_INLINE float clr_bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

CLR_HOST_ALWAYS_INLINE float clr_bfloat16_bits_to_float(uint16_t h) { return clr_bits_float((uint32_t)h << 16); }

/* Round to nearest even, quiet NaN preserved: the rounding torch.bfloat16 uses. */
CLR_HOST_ALWAYS_INLINE uint16_t clr_float_to_bfloat16_bits(float f) {
  const uint32_t u = clr_float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)((u + rounding) >> 16);
}

CLR_HOST_ALWAYS_INLINE float clr_float16_bits_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return clr_bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    /* zero or subnormal: mantissa * 2^-24, exact in float */
    const float magnitude = (float)mantissa * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  return clr_bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/* IEEE binary16, round to nearest even, overflow to infinity, NaN kept quiet. */
CLR_HOST_ALWAYS_INLINE uint16_t clr_float_to_float16_bits(float f) {
  const uint32_t u = clr_float_bits(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) return (uint16_t)(sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (magnitude >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds past 65504 */
  if (magnitude < 0x38800000u) {
    /* below the smallest normal (2^-14): the result is round(|f| * 2^24) units of 2^-24;
       rint rounds to nearest even in the default mode, and 1024 lands on the first normal. */
    const float units = clr_bits_float(magnitude) * 16777216.0f;
    return (uint16_t)(sign | (uint16_t)std::nearbyint(units));
  }
  const uint32_t exponent = (magnitude >> 23) - 112u;
  uint32_t half = (exponent << 10) | ((magnitude >> 13) & 0x3ffu);
  const uint32_t dropped = magnitude & 0x1fffu;
  if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u))) half += 1u;
  return (uint16_t)(sign | half);
}

/* ---- the trait: compute type, load, store ---- */

template <typename S>
struct clr_storage;

template <>
struct clr_storage<float> {
  typedef float compute;
  static CLR_STORAGE_INLINE float load(float v) { return v; }
  static CLR_STORAGE_INLINE float store(float v) { return v; }
};

template <>
struct clr_storage<double> {
  typedef double compute;
  static CLR_STORAGE_INLINE double load(double v) { return v; }
  static CLR_STORAGE_INLINE double store(double v) { return v; }
};

/* The 16-bit types' bits widened to float and rounded back: CUDA's intrinsics on the
   device, the bit manipulation above on the host. */
#if defined(__CUDA_ARCH__)
CLR_STORAGE_INLINE float clr_widen(clr_float16 v) { return __half2float(__ushort_as_half(v.bits)); }
CLR_STORAGE_INLINE float clr_widen(clr_bfloat16 v) { return __bfloat162float(__ushort_as_bfloat16(v.bits)); }
CLR_STORAGE_INLINE void clr_round(float v, clr_float16* out) { out->bits = __half_as_ushort(__float2half_rn(v)); }
CLR_STORAGE_INLINE void clr_round(float v, clr_bfloat16* out) {
  out->bits = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
#else
CLR_STORAGE_INLINE float clr_widen(clr_float16 v) { return clr_float16_bits_to_float(v.bits); }
CLR_STORAGE_INLINE float clr_widen(clr_bfloat16 v) { return clr_bfloat16_bits_to_float(v.bits); }
CLR_STORAGE_INLINE void clr_round(float v, clr_float16* out) { out->bits = clr_float_to_float16_bits(v); }
CLR_STORAGE_INLINE void clr_round(float v, clr_bfloat16* out) { out->bits = clr_float_to_bfloat16_bits(v); }
#endif

/* float16 and bfloat16: computed in float. */
template <typename S>
struct clr_storage_16 {
  typedef float compute;
  static CLR_STORAGE_INLINE float load(S v) { return clr_widen(v); }
  static CLR_STORAGE_INLINE S store(float v) {
    S out;
    clr_round(v, &out);
    return out;
  }
};

template <>
struct clr_storage<clr_float16> : clr_storage_16<clr_float16> {};

template <>
struct clr_storage<clr_bfloat16> : clr_storage_16<clr_bfloat16> {};

#endif /* CLR_EXT_STORAGE_H */
