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
#include <stddef.h>
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
  CLR_MODE_CHAIN = 9,            /* any composition of clr_ext.schedules, as a clr_chain (below) */
  CLR_MODE_COUNT = 10
};

/* The kinds of a chain's segments: clr_ext/schedules.py's KINDS, whose LAYOUTS name each
   kind's parameters slot by slot. Part of the op schema: append, never renumber. */
enum {
  CLR_KIND_CYCLIC = 0,
  CLR_KIND_ONE_CYCLE = 1,
  CLR_KIND_COSINE_RESTARTS = 2,
  CLR_KIND_LINEAR = 3,
  CLR_KIND_CONSTANT = 4,
  CLR_KIND_HF_LINEAR = 5,
  CLR_KIND_HF_COSINE = 6,
  CLR_KIND_HF_WSD = 7,
  CLR_KIND_COUNT = 8
};

/* A chain is passed by value into the CUDA kernels (no device table to copy, so nothing to
   break a graph capture): its size is bounded. Eight segments cover a warmup in front of a
   chain of several schedules. */
#define CLR_SEGMENT_WIDTH 10
#define CLR_MAX_SEGMENTS 8
/* In the op's `shape` list: the segment count, then per segment kind, start, held momentum
   and the CLR_SEGMENT_WIDTH parameters. */
#define CLR_CHAIN_HEADER 1
#define CLR_SEGMENT_VALUES (3 + CLR_SEGMENT_WIDTH)

typedef struct clr_segment {
  double start;         /* its first step (a whole number; 0 for the first segment) */
  double held_momentum; /* the momentum in force where the kind sets none; NaN: nothing cycles it */
  double p[CLR_SEGMENT_WIDTH];
  int32_t kind;
  int32_t unused;
} clr_segment;

typedef struct clr_chain {
  int32_t count;
  int32_t unused;
  clr_segment segment[CLR_MAX_SEGMENTS];
} clr_chain;

/* pi as Python's math.pi: OneCycleLR's cosine is cos(math.pi * pct). */
#define CLR_PI 3.141592653589793

/* The schedule's shape. The cyclical modes read the first four fields, the 1cycle modes
   `phases` and `phase_end`, CLR_MODE_CHAIN its `chain` (which holds a group's own values). */
typedef struct clr_shape {
  double step_size_up;
  double step_size_down;
  double gamma;
  double custom_scale; /* scale_fn(cycle or iteration), only read in CLR_MODE_CUSTOM */
  int32_t mode;
  int32_t phases;      /* 1cycle: 2, or 3 with three_phase */
  double phase_end[3]; /* 1cycle: the last step of each phase, as OneCycleLR's end_step */
  clr_chain chain;     /* CLR_MODE_CHAIN only */
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
CLR_INLINE clr_point clr_one_cycle_at(int64_t iteration, int phases, const double* phase_end, int cosine,
                                      const clr_bounds* b) {
  const int last = phases - 1;
  const double step = (double)iteration < phase_end[last] ? (double)iteration : phase_end[last];
  int phase = 0;
  double start = 0.0;
  while (phase < last && !(step <= phase_end[phase])) start = phase_end[phase++];
  const double pct = CLR_DDIV(CLR_DSUB(step, start), CLR_DSUB(phase_end[phase], start));
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
  clr_point out;
  out.lr = clr_anneal(cosine, lr_from, lr_to, pct);
  out.momentum = clr_anneal(cosine, m_from, m_to, pct);
  return out;
}

/*
 * The cyclical modes. For the three PyTorch modes this is CyclicLR.get_lr() at
 * last_epoch == iteration. The paper's extra policies (fixed, exp, decay) have no cycle;
 * their momentum moves against the lr in the same way: max_momentum where lr is at base_lr.
 */
CLR_INLINE clr_point clr_cyclic_at(int64_t iteration, int32_t mode, double step_size_up, double step_size_down,
                                   double gamma, double custom_scale, const clr_bounds* b) {
  clr_point out;
  double cycle = 1.0;
  double factor = 0.0; /* position in the ramp, 0 at base_lr */
  double scale = 1.0;  /* scale_fn(cycle) or scale_fn(iteration) */

  switch (mode) {
    case CLR_MODE_FIXED:
      out.lr = b->base_lr;
      out.momentum = b->max_momentum;
      return out;
    case CLR_MODE_EXP:
      out.lr = CLR_DMUL(b->base_lr, pow(gamma, (double)iteration));
      out.momentum = b->max_momentum;
      return out;
    case CLR_MODE_DECAY: {
      const double remaining = CLR_DSUB(1.0, CLR_DDIV((double)iteration, step_size_up));
      factor = remaining > 0.0 ? remaining : 0.0;
      break;
    }
    default:
      factor = clr_cycle_position(iteration, step_size_up, step_size_down, &cycle);
      if (mode == CLR_MODE_TRIANGULAR2) {
        scale = CLR_DDIV(1.0, pow(2.0, CLR_DSUB(cycle, 1.0)));
      } else if (mode == CLR_MODE_EXP_RANGE) {
        scale = pow(gamma, (double)iteration);
      } else if (mode == CLR_MODE_CUSTOM) {
        scale = custom_scale;
      }
      break;
  }
  /* Same association as CyclicLR: base + ((max - base) * factor) * scale. */
  out.lr = CLR_DADD(b->base_lr, CLR_DMUL(CLR_DMUL(CLR_DSUB(b->max_lr, b->base_lr), factor), scale));
  out.momentum =
      CLR_DSUB(b->max_momentum, CLR_DMUL(CLR_DMUL(CLR_DSUB(b->max_momentum, b->base_momentum), factor), scale));
  return out;
}

/* --- The kinds a chain adds: each the formula of clr_ext/schedules.py's FORMULAS for its
   kind, operation by operation, on its parameter vector p (LAYOUTS) at the local step t. */

CLR_INLINE double clr_at_least(double x, double low) { return x > low ? x : low; } /* Python's max(low, x) */

/* CosineAnnealingWarmRestarts after t steps; T_cur and T_i found from t (integers in double). */
CLR_INLINE double clr_cosine_restarts(double t, const double* p) {
  const double initial_lr = p[0], t_0 = p[1], t_mult = p[2], eta_min = p[3];
  double t_cur = t, t_i = t_0;
  if (t_mult == 1.0) {
    t_cur = fmod(t_cur, t_0);
  } else {
    while (t_cur >= t_i) { /* at most log2(t) restarts */
      t_cur = CLR_DSUB(t_cur, t_i);
      t_i = CLR_DMUL(t_i, t_mult);
    }
  }
  const double cos_out = CLR_DADD(1.0, cos(CLR_DDIV(CLR_DMUL(CLR_PI, t_cur), t_i)));
  return CLR_DADD(eta_min, CLR_DDIV(CLR_DMUL(CLR_DSUB(initial_lr, eta_min), cos_out), 2.0));
}

/* LinearLR's closed form. */
CLR_INLINE double clr_linear(double t, const double* p) {
  const double total = p[3];
  const double done = t < total ? t : total;
  return CLR_DMUL(p[0], CLR_DADD(p[1], CLR_DDIV(CLR_DMUL(CLR_DSUB(p[2], p[1]), done), total)));
}

/* ConstantLR as its step() leaves it: lr * factor, then that * (1 / factor) from total_iters. */
CLR_INLINE double clr_constant(double t, const double* p) {
  const double scaled = CLR_DMUL(p[0], p[1]);
  return t < p[2] ? scaled : CLR_DMUL(scaled, CLR_DDIV(1.0, p[1]));
}

/* transformers' warmup / decay shapes (HF_SHAPES: 0 linear, 1 cosine, 2 1-sqrt). */
CLR_INLINE double clr_hf_ratio(double factor, double min_ratio) {
  return clr_at_least(CLR_DADD(CLR_DMUL(factor, CLR_DSUB(1.0, min_ratio)), min_ratio), 0.0);
}

CLR_INLINE double clr_hf_cosine_factor(double cycles, double progress) {
  return CLR_DMUL(0.5, CLR_DADD(1.0, cos(CLR_DMUL(CLR_DMUL(CLR_DMUL(CLR_PI, cycles), 2.0), progress))));
}

CLR_INLINE double clr_hf_linear(double t, const double* p) {
  const double initial_lr = p[0], warmup = p[1], total = p[2];
  if (t < warmup) return CLR_DMUL(initial_lr, CLR_DDIV(t, clr_at_least(warmup, 1.0)));
  return CLR_DMUL(initial_lr,
                  clr_at_least(CLR_DDIV(CLR_DSUB(total, t), clr_at_least(CLR_DSUB(total, warmup), 1.0)), 0.0));
}

CLR_INLINE double clr_hf_cosine(double t, const double* p) {
  const double initial_lr = p[0], warmup = p[1], total = p[2], cycles = p[3];
  if (t < warmup) return CLR_DMUL(initial_lr, CLR_DDIV(t, clr_at_least(warmup, 1.0)));
  const double progress = CLR_DDIV(CLR_DSUB(t, warmup), clr_at_least(CLR_DSUB(total, warmup), 1.0));
  return CLR_DMUL(initial_lr, clr_at_least(clr_hf_cosine_factor(cycles, progress), 0.0));
}

CLR_INLINE double clr_hf_wsd(double t, const double* p) {
  const double initial_lr = p[0], warmup = p[1], stable = p[2], decay = p[3], min_ratio = p[6], cycles = p[7];
  if (t < warmup) {
    const double progress = CLR_DDIV(t, clr_at_least(warmup, 1.0));
    const int shape = (int)p[4];
    const double factor = shape == 0   ? progress
                          : shape == 1 ? CLR_DMUL(0.5, CLR_DSUB(1.0, cos(CLR_DMUL(CLR_PI, progress))))
                                       : CLR_DSUB(1.0, sqrt(CLR_DSUB(1.0, progress)));
    return CLR_DMUL(initial_lr, clr_hf_ratio(factor, min_ratio));
  }
  if (t < CLR_DADD(warmup, stable)) return CLR_DMUL(initial_lr, 1.0);
  if (t < CLR_DADD(CLR_DADD(warmup, stable), decay)) {
    const double progress = CLR_DDIV(CLR_DSUB(CLR_DSUB(t, warmup), stable), clr_at_least(decay, 1.0));
    const int shape = (int)p[5];
    const double factor = shape == 0   ? CLR_DSUB(1.0, progress)
                          : shape == 1 ? clr_hf_cosine_factor(cycles, progress)
                                       : CLR_DSUB(1.0, sqrt(progress));
    return CLR_DMUL(initial_lr, clr_hf_ratio(factor, min_ratio));
  }
  return CLR_DMUL(initial_lr, min_ratio);
}

/* One segment at its local step t: (lr, momentum), the momentum NaN where the kind sets none. */
CLR_INLINE clr_point clr_segment_point(int64_t t, const clr_segment* s) {
  const double* p = s->p;
  clr_point out;
  out.momentum = NAN;
  switch (s->kind) {
    case CLR_KIND_CYCLIC: {
      /* p: base_lr, max_lr, step_size_up, step_size_down, gamma, base_momentum, max_momentum,
         mode, scale_by_iteration, custom_scale (the host's scale_fn value) */
      const clr_bounds b = {p[0], p[1], p[5], p[6], p[0]};
      return clr_cyclic_at(t, (int32_t)p[7], p[2], p[3], p[4], p[9], &b);
    }
    case CLR_KIND_ONE_CYCLE: {
      /* p: initial_lr, max_lr, min_lr, base_momentum, max_momentum, end_0..2, phases, cosine */
      const clr_bounds b = {p[0], p[1], p[3], p[4], p[2]};
      return clr_one_cycle_at(t, (int)p[8], p + 5, p[9] != 0.0, &b);
    }
    case CLR_KIND_COSINE_RESTARTS:
      out.lr = clr_cosine_restarts((double)t, p);
      break;
    case CLR_KIND_LINEAR:
      out.lr = clr_linear((double)t, p);
      break;
    case CLR_KIND_CONSTANT:
      out.lr = clr_constant((double)t, p);
      break;
    case CLR_KIND_HF_LINEAR:
      out.lr = clr_hf_linear((double)t, p);
      break;
    case CLR_KIND_HF_COSINE:
      out.lr = clr_hf_cosine((double)t, p);
      break;
    default: /* CLR_KIND_HF_WSD (clr_chain_read refuses unknown kinds) */
      out.lr = clr_hf_wsd((double)t, p);
      break;
  }
  return out;
}

/* A chain at `iteration`: the last segment that has started, at its own step count (as
   SequentialLR restarts each scheduler at its milestone), the momentum held where the
   segment sets none. */
CLR_INLINE clr_point clr_chain_point(int64_t iteration, const clr_chain* chain) {
  int k = 0;
  while (k + 1 < chain->count && (double)iteration >= chain->segment[k + 1].start) ++k;
  const clr_segment* s = &chain->segment[k];
  clr_point out = clr_segment_point(iteration - (int64_t)s->start, s);
  if (out.momentum != out.momentum) out.momentum = s->held_momentum; /* NaN: not set by this kind */
  return out;
}

/*
 * Reads a chain from the op's `shape` list (n values): the segment count, then per segment
 * kind, start, held momentum and CLR_SEGMENT_WIDTH parameters (clr_ext.schedules writes
 * it). Returns NULL, or what is wrong with it. The one parser of a chain: the op's
 * argument checks and the Cython fallback both call it.
 */
static inline const char* clr_chain_read(const double* values, int64_t n, clr_chain* out) {
  if (n < CLR_CHAIN_HEADER) return "a chain needs a segment count";
  const double count = values[0];
  if (!(count >= 1.0 && count <= (double)CLR_MAX_SEGMENTS && count == floor(count)))
    return "a chain has 1 to CLR_MAX_SEGMENTS (8) segments";
  if (n != CLR_CHAIN_HEADER + (int64_t)count * CLR_SEGMENT_VALUES) return "the chain's length does not match its count";
  out->count = (int32_t)count;
  out->unused = 0;
  for (int k = 0; k < out->count; ++k) {
    const double* v = values + CLR_CHAIN_HEADER + k * CLR_SEGMENT_VALUES;
    clr_segment* s = &out->segment[k];
    if (!(v[0] >= 0.0 && v[0] < (double)CLR_KIND_COUNT && v[0] == floor(v[0]))) return "unknown segment kind";
    s->kind = (int32_t)v[0];
    s->unused = 0;
    s->start = v[1];
    if (k == 0 ? v[1] != 0.0 : !(v[1] > out->segment[k - 1].start && v[1] == floor(v[1]) && v[1] < 9007199254740992.0))
      return "segment starts must be whole numbers increasing from 0";
    s->held_momentum = v[2];
    for (int i = 0; i < CLR_SEGMENT_WIDTH; ++i) s->p[i] = v[3 + i];
    if (s->kind == CLR_KIND_CYCLIC) {
      const double mode = s->p[7];
      if (!(mode >= 0.0 && mode <= (double)CLR_MODE_CUSTOM && mode == floor(mode))) return "unknown cyclic mode";
      if (!(s->p[2] > 0.0 && s->p[3] >= 0.0)) return "a cyclic segment needs step_size_up > 0, step_size_down >= 0";
    } else if (s->kind == CLR_KIND_ONE_CYCLE) {
      if (!(s->p[8] == 2.0 || s->p[8] == 3.0)) return "a 1cycle segment has 2 or 3 phases";
      if (s->p[5] == 0.0) return "the first 1cycle phase has no length";
    } else if (s->kind == CLR_KIND_COSINE_RESTARTS) {
      if (!(s->p[1] >= 1.0 && s->p[2] >= 1.0)) return "a cosine-restarts segment needs T_0 >= 1, T_mult >= 1";
    } else if (s->kind == CLR_KIND_LINEAR || s->kind == CLR_KIND_CONSTANT) {
      if (!(s->p[s->kind == CLR_KIND_LINEAR ? 3 : 2] >= 1.0)) return "total_iters must be >= 1";
      if (s->kind == CLR_KIND_CONSTANT && !(s->p[1] > 0.0)) return "a constant segment's factor must be > 0";
    } else if (s->kind == CLR_KIND_HF_WSD) {
      if (!(s->p[4] >= 0.0 && s->p[4] <= 2.0 && s->p[5] >= 0.0 && s->p[5] <= 2.0)) return "unknown warmup/decay type";
    }
  }
  return NULL;
}

/*
 * lr and momentum (the cycled one where the schedule cycles it) used by the step with
 * 0-based index `iteration`.
 */
CLR_INLINE clr_point clr_schedule(int64_t iteration, const clr_shape* shape, const clr_bounds* b) {
  switch (shape->mode) {
    case CLR_MODE_ONE_CYCLE_COS:
    case CLR_MODE_ONE_CYCLE_LINEAR:
      return clr_one_cycle_at(iteration, shape->phases, shape->phase_end, shape->mode == CLR_MODE_ONE_CYCLE_COS, b);
    case CLR_MODE_CHAIN:
      return clr_chain_point(iteration, &shape->chain);
    default:
      return clr_cyclic_at(iteration, shape->mode, shape->step_size_up, shape->step_size_down, shape->gamma,
                           shape->custom_scale, b);
  }
}

#endif /* CLR_EXT_SCHEDULE_H */
