/*
 * The multi-tensor CPU SGD step: every parameter of a (dtype) bucket in one pass, over
 * the rule's element body (clr_sgd_element, math/sgd_update.h) with every flag a
 * compile-time constant so that the loop vectorizes; the bucket is cut and walked as
 * cpu/multi_tensor.h says (ISA clones, threads, spans). No torch headers: the Cython
 * fallback compiles these very loops.
 */
#ifndef CLR_EXT_CPU_SGD_CPU_H
#define CLR_EXT_CPU_SGD_CPU_H

#include <stdint.h>

#include "../math/sgd_update.h"
#include "multi_tensor.h"

namespace clr_cpu {

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
  S unused;  // the buffer's stand-in without momentum (buffer is null then)
  for (int64_t i = 0; i < n; ++i)
    clr_sgd_element<S, kMomentum, kUnscale>(param[i], grad[i], kMomentum != CLR_MOMENTUM_NONE ? buffer[i] : unused, c,
                                            grad_scale, kWeightDecay, kNesterov);
}

template <typename S>
CLR_ALWAYS_INLINE void span_dispatch(S* param, S* grad, S* buffer, int64_t n, const StepArgs& a) {
  typedef typename clr_storage<S>::compute C;
  const clr_sgd_coeffs<C> c = clr_sgd_coeffs_make<C>(a.lr, a.weight_decay, a.momentum, a.dampening, a.maximize);
  const C scale = (C)a.grad_scale;
  with_flag(a.unscale, [&](auto unscale) CLR_LAMBDA_INLINE {
    constexpr bool kUnscale = decltype(unscale)::value;
    with_flag(a.weight_decay != 0.0, [&](auto wd) CLR_LAMBDA_INLINE {
      constexpr bool kWd = decltype(wd)::value;
      // Without momentum nesterov changes nothing: one instantiation less.
      if (a.momentum_state == CLR_MOMENTUM_NONE)
        return span_loop<S, kWd, CLR_MOMENTUM_NONE, false, kUnscale>(param, grad, buffer, n, c, scale);
      with_flag(a.nesterov, [&](auto nesterov) CLR_LAMBDA_INLINE {
        constexpr bool kNesterov = decltype(nesterov)::value;
        if (a.momentum_state == CLR_MOMENTUM_FIRST)
          span_loop<S, kWd, CLR_MOMENTUM_FIRST, kNesterov, kUnscale>(param, grad, buffer, n, c, scale);
        else
          span_loop<S, kWd, CLR_MOMENTUM_STEADY, kNesterov, kUnscale>(param, grad, buffer, n, c, scale);
      });
    });
  });
}

/* span_f32, span_f64, span_f16, span_bf16: the ISA-cloned entries. */
CLR_CPU_ENTRIES(span, (void* param, void* grad, void* buffer, int64_t n, const StepArgs* a),
                span_dispatch<S>((S*)param, (S*)grad, (S*)buffer, n, *a))

/* Runs elements [begin, end) of the flattened bucket (cpu/multi_tensor.h, for_each_piece). */
inline void run_range(int32_t dtype, const Span* spans, const int64_t* offsets, int64_t n_spans, int64_t begin,
                      int64_t end, const StepArgs& a) {
  if (begin >= end) return;
  const auto span_fn = entry_for(dtype, span_f32, span_f64, span_f16, span_bf16);
  const int64_t esize = element_size(dtype);
  for_each_piece(offsets, n_spans, begin, end, [&](int64_t s, int64_t lo, int64_t hi) {
    const Span& sp = spans[s];
    char* buf = (char*)sp.momentum_buffer;
    span_fn((char*)sp.param + lo * esize, (char*)sp.grad + lo * esize, buf ? buf + lo * esize : nullptr, hi - lo, &a);
  });
}

}  // namespace clr_cpu

#endif /* CLR_EXT_CPU_SGD_CPU_H */
