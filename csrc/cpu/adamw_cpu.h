/*
 * The multi-tensor CPU AdamW step: every parameter of a (dtype) bucket in one pass.
 *
 * The same design as sgd_cpu.h (the ISA clones, grain and span walk of cpu/multi_tensor.h;
 * the rule's element body clr_adamw_element, math/adamw_update.h): header-only, no torch
 * headers, so that clr_ext._C (parallel through ATen) and the Cython fallback (OpenMP) run
 * the very same loops over the flattened element space of all tensors. AdamW differs in one way: each parameter
 * has its own step count, hence its own step_size and bias_correction2_sqrt, which the
 * host derives once per parameter (adamw_prepare_span) before the element pass.
 */
#ifndef CLR_EXT_CPU_ADAMW_CPU_H
#define CLR_EXT_CPU_ADAMW_CPU_H

#include <dlfcn.h>

#include <stdint.h>

#include "../math/adamw_update.h"
#include "multi_tensor.h"

namespace clr_cpu {

/* One parameter's memory (param, grad, moments: dense and alike) and its step scalars. */
struct AdamwSpan {
  void* param;
  void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq; /* nullptr unless amsgrad */
  int64_t numel;
  double step_size; /* lr / bias_correction1 of this param's own step */
  double bias_correction2_sqrt;
};

/*
 * torch.sqrt on a float32/float64 CPU tensor is MKL's vector sqrt wherever torch is built
 * with MKL (ATen/cpu/vml.h: vmsSqrt / vmdSqrt, VML_HA, denormals kept). It is within 1 ulp
 * but not correctly rounded (about 1 result in 6 differs from sqrtf in float32), so the
 * loops call the same functions, found in the loaded libtorch_cpu, to round like
 * torch.optim.AdamW; without them they use IEEE sqrt, which is what torch uses then.
 * n is passed as 64 bits: right for ILP64 MKL, and LP64 MKL reads the low half. The names
 * are MKL's C interfaces (mkl_set_num_threads_local, lowercase, is the Fortran one: it takes
 * a pointer).
 */
typedef void (*MklVsqrtF32)(long long n, const float* a, float* r, long long mode);
typedef void (*MklVsqrtF64)(long long n, const double* a, double* r, long long mode);
typedef int (*MklSetNumThreadsLocal)(int n);
struct VectorSqrt {
  MklVsqrtF32 f32;
  MklVsqrtF64 f64;
  MklSetNumThreadsLocal set_num_threads_local; /* may be null */
};
static const long long kMklVmlMode = 0x2 | 0x140000 | 0x100; /* VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE */

/* The functions torch.sqrt uses in this process, or null when it uses IEEE sqrt. */
inline const VectorSqrt* torch_vector_sqrt() {
  static const VectorSqrt found = [] {
    VectorSqrt v = {nullptr, nullptr, nullptr};
    void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    void* scope = torch_cpu != nullptr ? torch_cpu : RTLD_DEFAULT;
    v.f32 = (MklVsqrtF32)dlsym(scope, "vmsSqrt");
    v.f64 = (MklVsqrtF64)dlsym(scope, "vmdSqrt");
    v.set_num_threads_local = (MklSetNumThreadsLocal)dlsym(scope, "MKL_Set_Num_Threads_Local");
    if (v.f32 == nullptr || v.f64 == nullptr) v.f32 = nullptr, v.f64 = nullptr;
    return v;
  }();
  return found.f32 != nullptr ? &found : nullptr;
}

/* What is the same for every element of one bucket in one step. */
struct AdamwArgs {
  double lr;
  double beta1; /* already the cycled momentum when the schedule cycles it */
  double beta2;
  double eps;
  double weight_decay;
  int32_t amsgrad;
  int32_t maximize;
  int32_t unscale;         /* divide the gradient by grad_scale and write it back (AMP) */
  double grad_scale;       /* the loss scale, only read when unscale */
  const VectorSqrt* vsqrt; /* torch_vector_sqrt(), or null: IEEE sqrt */
  /* > 0: round as torch.optim.AdamW(fused=True), whose scalar code updates the last
     numel % fused_width elements of each tensor (clr_ext.backends.fused_adamw_width;
     vsqrt must then be null); 0: as AdamW's default path. */
  int32_t fused_width;
};

/*
 * A param's host work before the element pass: step_t += 1 (float32, as torch.optim.AdamW
 * keeps state["step"]), then the scalars of that step. Called once per param of a step
 * that is not skipped, including params with no elements (their step still counts).
 */
inline void adamw_prepare_span(AdamwSpan* span, float* state_step, const AdamwArgs& a) {
  const float step = *state_step + 1.0f;
  *state_step = step;
  clr_adamw_step_scalars(a.lr, a.beta1, a.beta2, (double)step, a.fused_width > 0, &span->step_size,
                         &span->bias_correction2_sqrt);
}

/* Elements per block: the moments pass, the square roots and the parameter pass of one
   block run while its values are in L1 (256: 8% faster than 512 at 50M float32 params;
   from 1024 on MKL's sqrt runs 1.5x slower, measured on an AVX-512 EPYC). */
static const int64_t kAdamwBlock = 256;

/* torch.sqrt's own square roots of a block (adamw_span_loop runs only where torch has them). */
CLR_ALWAYS_INLINE void block_sqrt(const VectorSqrt* vsqrt, int64_t n, const float* in, float* out) {
  vsqrt->f32(n, in, out, kMklVmlMode);
}
CLR_ALWAYS_INLINE void block_sqrt(const VectorSqrt* vsqrt, int64_t n, const double* in, double* out) {
  vsqrt->f64(n, in, out, kMklVmlMode);
}

template <typename S, bool kWeightDecay, bool kAmsgrad, bool kUnscale>
CLR_ALWAYS_INLINE void adamw_span_loop(S* __restrict param, S* __restrict grad, S* __restrict exp_avg,
                                       S* __restrict exp_avg_sq, S* __restrict max_exp_avg_sq, int64_t n,
                                       const clr_adamw_coeffs<typename clr_storage<S>::compute>& c,
                                       typename clr_storage<S>::compute grad_scale, const VectorSqrt* vsqrt) {
  typedef typename clr_storage<S>::compute C;
  // The parameter pass uses the compute-type moments, not their rounded 16-bit copies, so
  // that half storage rounds once per step, as an fp32 step on float copies would.
  C first[kAdamwBlock], second[kAdamwBlock], root[kAdamwBlock];
  for (int64_t b = 0; b < n; b += kAdamwBlock) {
    const int64_t len = std::min(kAdamwBlock, n - b);
    for (int64_t i = 0; i < len; ++i) {
      const int64_t k = b + i;
      C g = clr_storage<S>::load(grad[k]);
      if (kUnscale) {
        g = g / grad_scale;
        grad[k] = clr_storage<S>::store(g);
      }
      C m = clr_storage<S>::load(exp_avg[k]);
      C v = clr_storage<S>::load(exp_avg_sq[k]);
      C vmax = kAmsgrad ? clr_storage<S>::load(max_exp_avg_sq[k]) : C(0);
      second[i] = clr_adamw_moments<C, kAmsgrad>(g, &m, &v, &vmax, c);
      first[i] = m;
      exp_avg[k] = clr_storage<S>::store(m);
      exp_avg_sq[k] = clr_storage<S>::store(v);
      if (kAmsgrad) max_exp_avg_sq[k] = clr_storage<S>::store(vmax);
    }
    block_sqrt(vsqrt, len, second, root);
    for (int64_t i = 0; i < len; ++i) {
      const int64_t k = b + i;
      param[k] = clr_storage<S>::store(
          clr_adamw_finish<C, kWeightDecay>(clr_storage<S>::load(param[k]), first[i], root[i], c));
    }
  }
}

/* The whole update in one pass, where the square root is IEEE's: memory is read once. */
template <typename S, bool kWeightDecay, bool kAmsgrad, bool kUnscale, bool kFusedTail>
CLR_ALWAYS_INLINE void adamw_span_single(S* __restrict param, S* __restrict grad, S* __restrict exp_avg,
                                         S* __restrict exp_avg_sq, S* __restrict max_exp_avg_sq, int64_t n,
                                         const clr_adamw_coeffs<typename clr_storage<S>::compute>& c,
                                         typename clr_storage<S>::compute grad_scale) {
  S unused;  // max_exp_avg_sq's stand-in without amsgrad (it is null then)
  for (int64_t k = 0; k < n; ++k)
    clr_adamw_element<S, kWeightDecay, kAmsgrad, kUnscale, kFusedTail>(
        param[k], grad[k], exp_avg[k], exp_avg_sq[k], kAmsgrad ? max_exp_avg_sq[k] : unused, c, grad_scale);
}

/* [lo, lo + n) of a span of `numel` elements, with torch's MKL sqrt (blocked) or IEEE's
   (one pass, with AdamW(fused=True)'s scalar loop over the span's last numel % width). */
template <typename S, bool kWeightDecay, bool kAmsgrad, bool kUnscale>
CLR_ALWAYS_INLINE void adamw_span_range(S* param, S* grad, S* exp_avg, S* exp_avg_sq, S* max_exp_avg_sq, int64_t lo,
                                        int64_t n, int64_t numel,
                                        const clr_adamw_coeffs<typename clr_storage<S>::compute>& c,
                                        typename clr_storage<S>::compute grad_scale, const AdamwArgs& a) {
  S* vmax = kAmsgrad ? max_exp_avg_sq + lo : nullptr;
  if (a.fused_width <= 0 && a.vsqrt != nullptr) {
    adamw_span_loop<S, kWeightDecay, kAmsgrad, kUnscale>(param + lo, grad + lo, exp_avg + lo, exp_avg_sq + lo, vmax, n,
                                                         c, grad_scale, a.vsqrt);
    return;
  }
  const int64_t tail_start = a.fused_width > 0 ? numel - numel % a.fused_width : numel;
  const int64_t body_end = std::min(lo + n, std::max(lo, tail_start));
  adamw_span_single<S, kWeightDecay, kAmsgrad, kUnscale, false>(param + lo, grad + lo, exp_avg + lo, exp_avg_sq + lo,
                                                                vmax, body_end - lo, c, grad_scale);
  if (body_end < lo + n) {
    S* tail_vmax = kAmsgrad ? max_exp_avg_sq + body_end : nullptr;
    adamw_span_single<S, kWeightDecay, kAmsgrad, kUnscale, true>(param + body_end, grad + body_end, exp_avg + body_end,
                                                                 exp_avg_sq + body_end, tail_vmax, lo + n - body_end, c,
                                                                 grad_scale);
  }
}

/* Elements [lo, lo + n) of one span. */
template <typename S>
CLR_ALWAYS_INLINE void adamw_span_dispatch(const AdamwSpan& sp, int64_t lo, int64_t n, const AdamwArgs& a) {
  typedef typename clr_storage<S>::compute C;
  const clr_adamw_coeffs<C> c = clr_adamw_coeffs_make<C>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.maximize,
                                                         sp.step_size, sp.bias_correction2_sqrt);
  const C scale = (C)a.grad_scale;
  S* param = (S*)sp.param;
  S* grad = (S*)sp.grad;
  S* exp_avg = (S*)sp.exp_avg;
  S* exp_avg_sq = (S*)sp.exp_avg_sq;
  S* max_exp_avg_sq = (S*)sp.max_exp_avg_sq;
  // torch.optim.AdamW skips param.mul_ when weight_decay == 0; a multiply by 1 would be exact anyway.
  with_flag(a.unscale, [&](auto unscale) CLR_LAMBDA_INLINE {
    with_flag(a.weight_decay != 0.0, [&](auto wd) CLR_LAMBDA_INLINE {
      with_flag(a.amsgrad, [&](auto amsgrad) CLR_LAMBDA_INLINE {
        adamw_span_range<S, decltype(wd)::value, decltype(amsgrad)::value, decltype(unscale)::value>(
            param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lo, n, sp.numel, c, scale, a);
      });
    });
  });
}

/* adamw_span_f32, _f64, _f16, _bf16: the ISA-cloned entries. */
CLR_CPU_ENTRIES(adamw_span, (const AdamwSpan* sp, int64_t lo, int64_t n, const AdamwArgs* a),
                adamw_span_dispatch<S>(*sp, lo, n, *a))

/* Runs elements [begin, end) of the flattened bucket (cpu/multi_tensor.h, for_each_piece). */
inline void run_range(int32_t dtype, const AdamwSpan* spans, const int64_t* offsets, int64_t n_spans, int64_t begin,
                      int64_t end, const AdamwArgs& a) {
  if (begin >= end) return;
  // The caller's threads are the parallelism: after torch.set_num_threads(n) MKL would
  // otherwise treat each call as a region of n threads of its own (3x slower on 2 cores).
  const MklSetNumThreadsLocal set_local = a.vsqrt != nullptr ? a.vsqrt->set_num_threads_local : nullptr;
  const int previous = set_local != nullptr ? set_local(1) : 0;
  const auto span_fn = entry_for(dtype, adamw_span_f32, adamw_span_f64, adamw_span_f16, adamw_span_bf16);
  for_each_piece(offsets, n_spans, begin, end,
                 [&](int64_t s, int64_t lo, int64_t hi) { span_fn(&spans[s], lo, hi - lo, &a); });
  if (set_local != nullptr) set_local(previous);
}

}  // namespace clr_cpu

#endif /* CLR_EXT_CPU_ADAMW_CPU_H */
