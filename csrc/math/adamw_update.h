/*
 * The AdamW update for one element: the one place it is written.
 *
 * C++ (a template over the compute type T: float for float32/float16/bfloat16 storage,
 * double for float64), host and device inline, so that the CPU loops, the Cython
 * fallback (compiled as C++) and a CUDA kernel include the same text, as ATen's
 * adam_math is shared by its fused kernels.
 *
 * Semantics are torch.optim.AdamW's default CPU path (_single_tensor_adam with decoupled
 * weight decay), one tensor op after another:
 *   param.mul_(1 - lr * wd); exp_avg.lerp_(g, 1 - beta1);
 *   exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2);
 *   denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)   (amsgrad: the max)
 *   param.addcdiv_(exp_avg, denom, value=-step_size)
 * and each operation rounds as ATen's CPU kernel for it does, so that fp32/fp64 results
 * are bit for bit those of torch.optim.AdamW(foreach=False) on the CPU:
 * - every Python float reaches the kernel as a Scalar rounded to T once;
 * - lerp is ATen's lerp_vec: fma(w, end - start, start) for |w| < 0.5, else
 *   fma(w - 1, end - start, end), with w - 1 computed in T;
 * - addcmul is self + (value * t1) * t2, which ATen's build contracts into
 *   fma(value * t1, t2, self) in both its vector and its scalar loops (measured on
 *   torch 2.13's x86-64 wheel; tests/backends/test_adamw_ops.py checks the bits);
 * - addcdiv is self + (value * t1) / t2, nothing fused; div and add of a scalar and mul
 *   are single IEEE operations;
 * - sqrt is IEEE's, except where torch is built with MKL: there torch.sqrt is MKL's
 *   vector sqrt (vmsSqrt / vmdSqrt, within 1 ulp but not always correctly rounded), which
 *   the CPU loops call in its place; hence the split at the square root below.
 * The fmas are explicit; the sources are built with -ffp-contract=off (--fmad=false on
 * CUDA), so nothing else is fused and every ISA clone and backend rounds alike.
 *
 * torch.optim.AdamW(fused=True) rounds otherwise on the CPU (ATen's FusedAdamKernel.cpp,
 * measured on torch 2.13's x86-64 wheel): IEEE square roots, bias_correction2_sqrt from
 * sqrt rather than ** 0.5, and the same operations as above in its vector loops, but the
 * scalar code for the last numel % (32 bytes / element size) elements of each tensor
 * contracts the second moment the other way, fma(exp_avg_sq, beta2, ((1 - beta2) * g) * g).
 * The kFusedTail flag below reproduces that loop (see cpu/adamw_cpu.h for where it runs).
 */
#ifndef CLR_EXT_ADAMW_UPDATE_H
#define CLR_EXT_ADAMW_UPDATE_H

#include "sgd_update.h" /* clr_fma */
#include "storage.h"
CLR_INLINE float clr_sqrt(float a) { return sqrtf(a); }
CLR_INLINE double clr_sqrt(double a) { return sqrt(a); }

/* torch.maximum: NaN if either side is NaN (a plain max would drop a NaN second moment). */
template <typename T>
CLR_INLINE T clr_maximum(T a, T b) {
  return (a != a || b != b) ? a + b : (a > b ? a : b);
}

/*
 * One parameter's step scalars in double, as torch.optim.AdamW computes them in Python
 * from its own step count: bias_correction1 = 1 - beta1 ** step, step_size = lr /
 * bias_correction1, bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5. Python's float
 * ** is libm's pow (also for ** 0.5, which is not always sqrt's correctly rounded value);
 * torch_fused takes the square root as AdamW(fused=True) does.
 */
CLR_INLINE void clr_adamw_step_scalars(double lr, double beta1, double beta2, double step, int torch_fused,
                                       double* step_size, double* bias_correction2_sqrt) {
  const double bias_correction1 = CLR_DSUB(1.0, pow(beta1, step));
  const double bias_correction2 = CLR_DSUB(1.0, pow(beta2, step));
  *step_size = CLR_DDIV(lr, bias_correction1);
  *bias_correction2_sqrt = torch_fused ? sqrt(bias_correction2) : pow(bias_correction2, 0.5);
}

/* Everything an element needs, rounded to the compute type once per (step, param). */
template <typename T>
struct clr_adamw_coeffs {
  T decay;           /* 1 - lr * weight_decay */
  T grad_sign;       /* -1 when maximizing: an exact negation that needs no branch */
  T lerp_coeff;      /* 1 - beta1, or (1 - beta1) - 1 when lerping from the gradient's end */
  int lerp_from_end; /* ATen's lerp switches ends at |weight| >= 0.5 */
  T beta2;
  T one_minus_beta2;
  T eps;
  T neg_step_size; /* -step_size: addcdiv's value */
  T bias_correction2_sqrt;
};

/* The double expressions are Python's (1 - beta1 etc. in double, then one rounding). */
template <typename T>
CLR_INLINE clr_adamw_coeffs<T> clr_adamw_coeffs_make(double lr, double beta1, double beta2, double eps,
                                                     double weight_decay, int maximize, double step_size,
                                                     double bias_correction2_sqrt) {
  clr_adamw_coeffs<T> c;
  c.decay = (T)CLR_DSUB(1.0, CLR_DMUL(lr, weight_decay));
  c.grad_sign = maximize ? (T)-1 : (T)1;
  const T weight = (T)CLR_DSUB(1.0, beta1);
  c.lerp_from_end = !(fabs((double)weight) < 0.5);
  c.lerp_coeff = c.lerp_from_end ? weight - (T)1 : weight;
  c.beta2 = (T)beta2;
  c.one_minus_beta2 = (T)CLR_DSUB(1.0, beta2);
  c.eps = (T)eps;
  c.neg_step_size = (T)(-step_size);
  c.bias_correction2_sqrt = (T)bias_correction2_sqrt;
  return c;
}

/*
 * One element in two halves, because the CPU build takes the square root in between from
 * wherever torch.sqrt takes it (MKL's vector sqrt, which is not always correctly rounded;
 * see cpu/adamw_cpu.h). clr_adamw_moments updates the moments in place and returns the
 * second moment the denominator uses (the running max with amsgrad); clr_adamw_finish
 * takes its square root and returns the new parameter. The flags are compile-time so that
 * the loops around the calls vectorize; without kAmsgrad max_exp_avg_sq is not touched
 * (it may be null).
 */
template <typename T, bool kAmsgrad, bool kFusedTail = false>
CLR_INLINE T clr_adamw_moments(T grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, const clr_adamw_coeffs<T>& c) {
  const T g = grad * c.grad_sign;
  const T m0 = *exp_avg;
  *exp_avg = clr_fma(c.lerp_coeff, g - m0, c.lerp_from_end ? g : m0);
  const T v = kFusedTail ? clr_fma(*exp_avg_sq, c.beta2, (c.one_minus_beta2 * g) * g)
                         : clr_fma(c.one_minus_beta2 * g, g, *exp_avg_sq * c.beta2);
  *exp_avg_sq = v;
  if (!kAmsgrad) return v;
  const T second = clr_maximum(*max_exp_avg_sq, v);
  *max_exp_avg_sq = second;
  return second;
}

/* param.mul_(decay) commutes with the moments (it reads neither), so it can wait until here. */
template <typename T, bool kWeightDecay>
CLR_INLINE T clr_adamw_finish(T param, T exp_avg, T sqrt_second, const clr_adamw_coeffs<T>& c) {
  if (kWeightDecay) param = param * c.decay;
  const T denom = sqrt_second / c.bias_correction2_sqrt + c.eps;
  return param + (c.neg_step_size * exp_avg) / denom;
}

/* The whole element with an IEEE square root (as ATen computes it without MKL, and CUDA). */
template <typename T, bool kWeightDecay, bool kAmsgrad, bool kFusedTail = false>
CLR_INLINE T clr_adamw_update(T param, T grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq,
                              const clr_adamw_coeffs<T>& c) {
  const T second = clr_adamw_moments<T, kAmsgrad, kFusedTail>(grad, exp_avg, exp_avg_sq, max_exp_avg_sq, c);
  return clr_adamw_finish<T, kWeightDecay>(param, *exp_avg, clr_sqrt(second), c);
}

/* One stored element's whole step with an IEEE square root: the body of the CPU loops'
   one-pass path (cpu/adamw_cpu.h, also in the Cython fallback) and of the CUDA kernel
   (cuda/scheduled_adamw_kernel.cuh). The gradient is unscaled and written back with
   kUnscale; the parameter takes the compute-type moments, not their rounded 16-bit
   copies. Without kAmsgrad max_exp_avg_sq is a dummy the body never touches. */
template <typename S, bool kWeightDecay, bool kAmsgrad, bool kUnscale, bool kFusedTail>
CLR_ELEMENT_INLINE void clr_adamw_element(S& param, S& grad, S& exp_avg, S& exp_avg_sq, S& max_exp_avg_sq,
                                          const clr_adamw_coeffs<typename clr_storage<S>::compute>& c,
                                          typename clr_storage<S>::compute grad_scale) {
  typedef typename clr_storage<S>::compute C;
  C g = clr_storage<S>::load(grad);
  if (kUnscale) {
    g = g / grad_scale;
    grad = clr_storage<S>::store(g);
  }
  C m = clr_storage<S>::load(exp_avg);
  C v = clr_storage<S>::load(exp_avg_sq);
  C vmax = kAmsgrad ? clr_storage<S>::load(max_exp_avg_sq) : C(0);
  const C p = clr_adamw_update<C, kWeightDecay, kAmsgrad, kFusedTail>(clr_storage<S>::load(param), g, &m, &v, &vmax, c);
  param = clr_storage<S>::store(p);
  exp_avg = clr_storage<S>::store(m);
  exp_avg_sq = clr_storage<S>::store(v);
  if (kAmsgrad) max_exp_avg_sq = clr_storage<S>::store(vmax);
}

#endif /* CLR_EXT_ADAMW_UPDATE_H */
