/*
 * The SGD-with-momentum update for one element: the one place it is written.
 *
 * One C++ template over the compute type T (the CPU loops, the Cython fallback and the
 * CUDA kernel include it, as ATen's sgd_math<scalar_t, depth>). The order is
 * torch.optim.SGD's and ATen's fused kernel's: maximize, weight decay, momentum
 * (buffer = gradient on the first step, no dampening then), nesterov, then
 * param -= lr * g. T is the compute type (float for float32/float16/bfloat16
 * storage, double for float64), so half-precision parameters are updated in
 * float registers as PyTorch's fused SGD does.
 *
 * Rounding follows ATen's CPU kernels, which compute every `x.add_(y, alpha=a)` as one
 * fused multiply-add (Vectorized::fmadd): weight decay fma(wd, p, g), the buffer
 * fma(1 - dampening, g, momentum * buf) after a rounded product (`buf.mul_(momentum)`),
 * nesterov fma(momentum, buf, g) and the step fma(-lr, g, p). The fmas are explicit,
 * and everything else is built with -ffp-contract=off (--fmad=false on CUDA), so every
 * backend, CPU clone and device rounds the same way, and fp32/fp64 results are bit for
 * bit those of torch.optim.SGD on the CPU (tests/rules/test_parity.py checks the bits).
 *
 * The flags are plain ints that callers pass as compile-time constants; after
 * inlining, the untaken branches vanish and the loop around the call vectorizes.
 *
 * clr_sgd_element is the stored element's whole step (load through clr_storage, AMP
 * unscale, update, store): the body of the CPU loops (cpu/sgd_cpu.h, which the Cython
 * fallback compiles too) and of the CUDA kernel (cuda/scheduled_sgd_kernel.cuh).
 */
#ifndef CLR_EXT_SGD_UPDATE_H
#define CLR_EXT_SGD_UPDATE_H

#include "schedule.h"
#include "storage.h"

enum {
  CLR_MOMENTUM_NONE = 0,  /* momentum == 0: no buffer is read or written */
  CLR_MOMENTUM_FIRST = 1, /* the parameter's first step with momentum: buffer = g */
  CLR_MOMENTUM_STEADY = 2 /* buffer = momentum * buffer + (1 - dampening) * g */
};

/* A multiply-add rounded once, in the compute type: where ATen's kernels call fmadd. */
CLR_INLINE float clr_fma(float a, float b, float c) { return fmaf(a, b, c); }
CLR_INLINE double clr_fma(double a, double b, double c) { return fma(a, b, c); }

/* What is the same for every element of one step, in the compute type T. */
template <typename T>
struct clr_sgd_coeffs {
  T neg_lr; /* -lr: an exact negation, so fma(-lr, g, p) is ATen's p.add_(g, alpha=-lr) */
  T weight_decay;
  T momentum;
  T one_minus_dampening;
  T grad_sign; /* -1 when maximizing: an exact negation that needs no branch */
};

/* Rounds the double-precision schedule and hyper-parameters to the compute type once,
   as PyTorch does when it passes Python floats as scalars to a float tensor op. */
template <typename T>
CLR_INLINE clr_sgd_coeffs<T> clr_sgd_coeffs_make(double lr, double weight_decay, double momentum, double dampening,
                                                 int maximize) {
  clr_sgd_coeffs<T> c;
  c.neg_lr = -(T)lr;
  c.weight_decay = (T)weight_decay;
  c.momentum = (T)momentum;
  c.one_minus_dampening = (T)(1.0 - dampening);
  c.grad_sign = maximize ? (T)-1 : (T)1;
  return c;
}

/* One element's update; returns the new param and writes the buffer (when momentum is on). */
template <typename T>
CLR_INLINE T clr_sgd_update(T param, T grad, T* momentum_buffer, const clr_sgd_coeffs<T>& c, int use_weight_decay,
                            int momentum_state, int nesterov) {
  T g = grad * c.grad_sign;
  if (use_weight_decay) g = clr_fma(c.weight_decay, param, g);
  if (momentum_state != CLR_MOMENTUM_NONE) {
    const T buf =
        momentum_state == CLR_MOMENTUM_FIRST ? g : clr_fma(c.one_minus_dampening, g, c.momentum * *momentum_buffer);
    *momentum_buffer = buf;
    g = nesterov ? clr_fma(c.momentum, buf, g) : buf;
  }
  return clr_fma(c.neg_lr, g, param);
}

/* One stored element: the gradient widened and, with kUnscale, divided by the loss scale
   and written back (as torch's _amp_foreach_non_finite_check_and_unscale_ leaves it); the
   buffer read only when it continues, written whenever momentum is on (`buffer` is then
   the element's, else a dummy the body never touches). */
template <typename S, int kMomentum, bool kUnscale>
CLR_ELEMENT_INLINE void clr_sgd_element(S& param, S& grad, S& buffer,
                                        const clr_sgd_coeffs<typename clr_storage<S>::compute>& c,
                                        typename clr_storage<S>::compute grad_scale, int use_weight_decay,
                                        int nesterov) {
  typedef typename clr_storage<S>::compute C;
  C g = clr_storage<S>::load(grad);
  if (kUnscale) {
    g = g / grad_scale;
    grad = clr_storage<S>::store(g);
  }
  C b = kMomentum == CLR_MOMENTUM_STEADY ? clr_storage<S>::load(buffer) : C(0);
  const C p = clr_sgd_update<C>(clr_storage<S>::load(param), g, &b, c, use_weight_decay, kMomentum, nesterov);
  if (kMomentum != CLR_MOMENTUM_NONE) buffer = clr_storage<S>::store(b);
  param = clr_storage<S>::store(p);
}

#endif /* CLR_EXT_SGD_UPDATE_H */
