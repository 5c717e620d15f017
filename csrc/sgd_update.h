/*
 * The SGD-with-momentum update for one element: the one place it is written.
 *
 * Plain C99 (C++, CUDA and the Cython fallback include it). The order is
 * torch.optim.SGD's and ATen's fused kernel's: maximize, weight decay, momentum
 * (buffer = gradient on the first step, no dampening then), nesterov, then
 * param -= lr * g. T is the compute type (float for float32/float16/bfloat16
 * storage, double for float64), so half-precision parameters are updated in
 * float registers as PyTorch's fused SGD does.
 *
 * The flags are plain ints that callers pass as compile-time constants; after
 * inlining, the untaken branches vanish and the loop around the call vectorizes.
 */
#ifndef CLR_EXT_SGD_UPDATE_H
#define CLR_EXT_SGD_UPDATE_H

#include "schedule.h"

enum {
  CLR_MOMENTUM_NONE = 0,   /* momentum == 0: no buffer is read or written */
  CLR_MOMENTUM_FIRST = 1,  /* the parameter's first step with momentum: buffer = g */
  CLR_MOMENTUM_STEADY = 2  /* buffer = momentum * buffer + (1 - dampening) * g */
};

#define CLR_DEFINE_SGD_UPDATE(T, SUFFIX)                                                        \
  typedef struct clr_sgd_coeffs_##SUFFIX {                                                      \
    T lr;                                                                                       \
    T weight_decay;                                                                             \
    T momentum;                                                                                 \
    T one_minus_dampening;                                                                      \
    T grad_sign; /* -1 when maximizing: an exact negation that needs no branch */               \
  } clr_sgd_coeffs_##SUFFIX;                                                                    \
                                                                                                \
  CLR_INLINE T clr_sgd_update_##SUFFIX(T param, T grad, T* momentum_buffer,                     \
                                       const clr_sgd_coeffs_##SUFFIX* c, int use_weight_decay,  \
                                       int momentum_state, int nesterov) {                      \
    T g = grad * c->grad_sign;                                                                  \
    if (use_weight_decay) g = g + c->weight_decay * param;                                      \
    if (momentum_state != CLR_MOMENTUM_NONE) {                                                  \
      const T buf = momentum_state == CLR_MOMENTUM_FIRST                                        \
                        ? g                                                                     \
                        : c->momentum * *momentum_buffer + c->one_minus_dampening * g;          \
      *momentum_buffer = buf;                                                                   \
      g = nesterov ? g + c->momentum * buf : buf;                                               \
    }                                                                                           \
    return param - c->lr * g;                                                                   \
  }                                                                                             \
                                                                                                \
  /* Rounds the double-precision schedule and hyper-parameters to the compute type once, */     \
  /* as PyTorch does when it passes Python floats as scalars to a float tensor op. */           \
  CLR_INLINE clr_sgd_coeffs_##SUFFIX clr_sgd_coeffs_make_##SUFFIX(                              \
      double lr, double weight_decay, double momentum, double dampening, int maximize) {        \
    clr_sgd_coeffs_##SUFFIX c;                                                                  \
    c.lr = (T)lr;                                                                               \
    c.weight_decay = (T)weight_decay;                                                           \
    c.momentum = (T)momentum;                                                                   \
    c.one_minus_dampening = (T)(1.0 - dampening);                                               \
    c.grad_sign = maximize ? (T)-1 : (T)1;                                                      \
    return c;                                                                                   \
  }

CLR_DEFINE_SGD_UPDATE(float, f32)
CLR_DEFINE_SGD_UPDATE(double, f64)

#endif /* CLR_EXT_SGD_UPDATE_H */
