/*
 * The schedules (the cyclical modes and 1cycle): the one place their formulas are written.
 *
 * Valid C99 as well as C++ (.ci/sanitizers.sh compiles it with -std=c99 -pedantic), so
 * that the CPU loops, the CUDA kernels and the Cython fallback include the same text.
 * The arithmetic follows torch.optim.lr_scheduler.CyclicLR (and OneCycleLR)
 * operation by operation (same order, double precision, the same libm pow), so
 * that a host compiled with -ffp-contract=off produces bit-identical values to
 * PyTorch and to the Python oracle in clr_ext/schedule.py. On a CUDA device the
 * same expressions go through explicitly rounded intrinsics, because nvcc fuses
 * multiply-adds by default and that would change the last bit.
 */
#ifndef CLR_EXT_SCHEDULE_H
#define CLR_EXT_SCHEDULE_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define CLR_HOST_DEVICE __host__ __device__
#else
#define CLR_HOST_DEVICE
#endif

#define CLR_INLINE static inline CLR_HOST_DEVICE

#if defined(__CUDA_ARCH__)
#define CLR_DMUL(a, b) __dmul_rn((a), (b))
#define CLR_DADD(a, b) __dadd_rn((a), (b))
#define CLR_DSUB(a, b) __dsub_rn((a), (b))
#define CLR_DDIV(a, b) __ddiv_rn((a), (b))
#else
#define CLR_DMUL(a, b) ((a) * (b))
#define CLR_DADD(a, b) ((a) + (b))
#define CLR_DSUB(a, b) ((a) - (b))
#define CLR_DDIV(a, b) ((a) / (b))
#endif

/* Mode numbers are part of the op schema: append, never renumber. */
enum {
  CLR_MODE_TRIANGULAR = 0,
  CLR_MODE_TRIANGULAR2 = 1,
  CLR_MODE_EXP_RANGE = 2,
  CLR_MODE_FIXED = 3,            /* the paper's Caffe baseline: lr = base_lr */
  CLR_MODE_EXP = 4,              /* Caffe's exp: lr = base_lr * gamma**iteration */
  CLR_MODE_DECAY = 5,            /* max_lr falling linearly to base_lr over step_size_up, then flat */
  CLR_MODE_CUSTOM = 6,           /* a user scale_fn evaluated on the host; its value arrives as custom_scale */
  CLR_MODE_ONE_CYCLE_COS = 7,    /* the 1cycle policy (OneCycleLR), cosine annealing */
  CLR_MODE_ONE_CYCLE_LINEAR = 8, /* the 1cycle policy, linear annealing */
  CLR_MODE_COUNT = 9
};

/* pi as Python's math.pi: OneCycleLR's cosine is cos(math.pi * pct). */
#define CLR_PI 3.141592653589793

/* The schedule's shape: shared by every parameter group of an optimizer. The cyclical
   modes read the first four fields, the 1cycle modes `phases` and `phase_end`. */
typedef struct clr_shape {
  double step_size_up;
  double step_size_down;
  double gamma;
  double custom_scale; /* scale_fn(cycle or iteration), only read in CLR_MODE_CUSTOM */
  int32_t mode;
  int32_t phases;      /* 1cycle: 2, or 3 with three_phase */
  double phase_end[3]; /* 1cycle: the last step of each phase, as OneCycleLR's end_step */
} clr_shape;

/* One group's bounds. For 1cycle, base_lr is the initial LR (max_lr / div_factor) and
   min_lr the final one (initial / final_div_factor); the cyclical modes ignore min_lr. */
typedef struct clr_bounds {
  double base_lr;
  double max_lr;
  double base_momentum;
  double max_momentum;
  double min_lr;
} clr_bounds;

typedef struct clr_point {
  double lr;
  double momentum;
} clr_point;

/*
 * Where in its cycle `iteration` lies, as CyclicLR computes it:
 * cycle = floor(1 + i/total); x = 1 + i/total - cycle;
 * factor = x/ratio on the way up, (x-1)/(ratio-1) on the way down.
 * The int64 -> double conversion is exact below 2^53 iterations.
 */
CLR_INLINE double clr_cycle_position(int64_t iteration, double step_size_up, double step_size_down, double* cycle_out) {
  const double total = CLR_DADD(step_size_up, step_size_down);
  const double ratio = CLR_DDIV(step_size_up, total);
  const double it_over_total = CLR_DDIV((double)iteration, total);
  const double cycle = floor(CLR_DADD(1.0, it_over_total));
  const double x = CLR_DSUB(CLR_DADD(1.0, it_over_total), cycle);
  *cycle_out = cycle;
  if (x <= ratio) return CLR_DDIV(x, ratio);
  return CLR_DDIV(CLR_DSUB(x, 1.0), CLR_DSUB(ratio, 1.0));
}

/* OneCycleLR's _annealing_cos / _annealing_linear, operation by operation. */
CLR_INLINE double clr_anneal(int cosine, double start, double end, double pct) {
  if (cosine) {
    const double cos_out = CLR_DADD(cos(CLR_DMUL(CLR_PI, pct)), 1.0);
    return CLR_DADD(end, CLR_DMUL(CLR_DDIV(CLR_DSUB(start, end), 2.0), cos_out));
  }
  return CLR_DADD(CLR_DMUL(CLR_DSUB(end, start), pct), start);
}

/*
 * The 1cycle policy: OneCycleLR.get_lr() at last_epoch == iteration. Past the last
 * phase the final values are held (OneCycleLR raises; an extrapolated LR there would
 * be below min_lr, and negative with linear annealing).
 */
CLR_INLINE clr_point clr_one_cycle(int64_t iteration, const clr_shape* shape, const clr_bounds* b) {
  const int last = shape->phases - 1;
  const double step = (double)iteration < shape->phase_end[last] ? (double)iteration : shape->phase_end[last];
  int phase = 0;
  double start = 0.0;
  while (phase < last && !(step <= shape->phase_end[phase])) start = shape->phase_end[phase++];
  const double pct = CLR_DDIV(CLR_DSUB(step, start), CLR_DSUB(shape->phase_end[phase], start));
  /* (lr from, lr to, momentum from, momentum to) of each phase, as OneCycleLR lists them. */
  double lr_from = b->base_lr, lr_to = b->max_lr, m_from = b->max_momentum, m_to = b->base_momentum;
  if (phase == 1) {
    lr_from = b->max_lr;
    lr_to = last == 1 ? b->min_lr : b->base_lr;
    m_from = b->base_momentum;
    m_to = b->max_momentum;
  } else if (phase == 2) {
    lr_from = b->base_lr;
    lr_to = b->min_lr;
    m_from = b->max_momentum;
    m_to = b->max_momentum;
  }
  const int cosine = shape->mode == CLR_MODE_ONE_CYCLE_COS;
  clr_point out;
  out.lr = clr_anneal(cosine, lr_from, lr_to, pct);
  out.momentum = clr_anneal(cosine, m_from, m_to, pct);
  return out;
}

/*
 * lr and (inverse-cycled) momentum used by the step with 0-based index `iteration`.
 * For the three PyTorch modes this is CyclicLR.get_lr() at last_epoch == iteration.
 * The paper's extra policies (fixed, exp, decay) have no cycle; their momentum
 * moves against the lr in the same way: max_momentum where lr is at base_lr.
 */
CLR_INLINE clr_point clr_schedule(int64_t iteration, const clr_shape* shape, const clr_bounds* b) {
  clr_point out;
  double cycle = 1.0;
  double factor = 0.0; /* position in the ramp, 0 at base_lr */
  double scale = 1.0;  /* scale_fn(cycle) or scale_fn(iteration) */

  switch (shape->mode) {
    case CLR_MODE_ONE_CYCLE_COS:
    case CLR_MODE_ONE_CYCLE_LINEAR:
      return clr_one_cycle(iteration, shape, b);
    case CLR_MODE_FIXED:
      out.lr = b->base_lr;
      out.momentum = b->max_momentum;
      return out;
    case CLR_MODE_EXP:
      out.lr = CLR_DMUL(b->base_lr, pow(shape->gamma, (double)iteration));
      out.momentum = b->max_momentum;
      return out;
    case CLR_MODE_DECAY: {
      const double remaining = CLR_DSUB(1.0, CLR_DDIV((double)iteration, shape->step_size_up));
      factor = remaining > 0.0 ? remaining : 0.0;
      break;
    }
    default:
      factor = clr_cycle_position(iteration, shape->step_size_up, shape->step_size_down, &cycle);
      if (shape->mode == CLR_MODE_TRIANGULAR2) {
        scale = CLR_DDIV(1.0, pow(2.0, CLR_DSUB(cycle, 1.0)));
      } else if (shape->mode == CLR_MODE_EXP_RANGE) {
        scale = pow(shape->gamma, (double)iteration);
      } else if (shape->mode == CLR_MODE_CUSTOM) {
        scale = shape->custom_scale;
      }
      break;
  }
  /* Same association as CyclicLR: base + ((max - base) * factor) * scale. */
  out.lr = CLR_DADD(b->base_lr, CLR_DMUL(CLR_DMUL(CLR_DSUB(b->max_lr, b->base_lr), factor), scale));
  out.momentum =
      CLR_DSUB(b->max_momentum, CLR_DMUL(CLR_DMUL(CLR_DSUB(b->max_momentum, b->base_momentum), factor), scale));
  return out;
}

#endif /* CLR_EXT_SCHEDULE_H */
