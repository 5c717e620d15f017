// csrc/math/schedule.h against values computed independently here: the triangular ramp is
// rebuilt from integer arithmetic (position = iteration mod cycle length), not from
// CyclicLR's floating-point formula, and a few points are written out by hand.
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "math/schedule.h"

static int g_failures = 0;
static int g_checks = 0;

static void expect_close(double got, double want, double rel, const char* what, long long it) {
  ++g_checks;
  const double tol = rel * (fabs(want) > 1e-300 ? fabs(want) : 1.0);
  if (!(fabs(got - want) <= tol)) {
    if (++g_failures <= 20)
      fprintf(stderr, "FAIL %s at iteration %lld: got %.17g, want %.17g (rel tol %g)\n", what, it, got, want, rel);
  }
}

static clr_shape make_shape(int32_t mode, double up, double down, double gamma) {
  clr_shape s;
  s.step_size_up = up;
  s.step_size_down = down;
  s.gamma = gamma;
  s.custom_scale = 1.0;
  s.mode = mode;
  return s;
}

static clr_bounds make_bounds(double base_lr, double max_lr, double base_m, double max_m) {
  clr_bounds b;
  b.base_lr = base_lr;
  b.max_lr = max_lr;
  b.base_momentum = base_m;
  b.max_momentum = max_m;
  return b;
}

// Ramp position in [0, 1] from integers: 0 at the cycle's start, 1 at its peak.
static double ramp(int64_t it, int64_t up, int64_t down, int64_t* cycle_index) {
  const int64_t total = up + down;
  const int64_t pos = it % total;
  *cycle_index = it / total;  // 0-based
  if (pos <= up) return (double)pos / (double)up;
  return (double)(total - pos) / (double)down;
}

// A chain table as clr_ext.schedules writes it (clr_chain_read's layout).
typedef struct {
  double values[CLR_CHAIN_HEADER + CLR_MAX_SEGMENTS * CLR_SEGMENT_VALUES];
  int64_t n;
} chain_table;

static void chain_begin(chain_table* t) {
  t->values[0] = 0.0;
  t->n = CLR_CHAIN_HEADER;
}

static void chain_add(chain_table* t, int kind, double start, double held, const double* p, int np) {
  double* v = t->values + t->n;
  v[0] = kind;
  v[1] = start;
  v[2] = held;
  for (int i = 0; i < CLR_SEGMENT_WIDTH; ++i) v[3 + i] = i < np ? p[i] : 0.0;
  t->n += CLR_SEGMENT_VALUES;
  t->values[0] += 1.0;
}

// A warmup, a triangular cycle, SGDR: each segment recomputed here from its definition.
static void check_chain(void) {
  const double linear[] = {0.2, 0.1, 1.0, 10};
  const double cyclic[] = {0.001, 0.006, 5, 5, 1.0, 0.85, 0.95, CLR_MODE_TRIANGULAR, 0, 1.0};
  const double restarts[] = {0.2, 4, 2, 0.0};
  chain_table t;
  chain_begin(&t);
  chain_add(&t, CLR_KIND_LINEAR, 0, 0.95, linear, 4);
  chain_add(&t, CLR_KIND_CYCLIC, 10, NAN, cyclic, 10);
  int64_t cycle = 0;
  const double last_momentum = 0.95 - 0.1 * ramp(29, 5, 5, &cycle);
  chain_add(&t, CLR_KIND_COSINE_RESTARTS, 40, last_momentum, restarts, 4);
  clr_shape s;
  s.mode = CLR_MODE_CHAIN;
  const char* error = clr_chain_read(t.values, t.n, &s.chain);
  expect_close(error == NULL, 1.0, 0.0, "chain read", 0);
  const clr_bounds unused = make_bounds(0, 0, 0, 0);
  for (int64_t it = 0; it < 200; ++it) {
    double lr = 0.0, momentum = 0.0;
    if (it < 10) {
      lr = 0.2 * (0.1 + 0.9 * (double)it / 10.0);
      momentum = 0.95;
    } else if (it < 40) {
      const double f = ramp(it - 10, 5, 5, &cycle);
      lr = 0.001 + 0.005 * f;
      momentum = 0.95 - 0.1 * f;
    } else {
      int64_t t_cur = it - 40, t_i = 4;
      while (t_cur >= t_i) {
        t_cur -= t_i;
        t_i *= 2;
      }
      lr = 0.2 * (1.0 + cos(M_PI * (double)t_cur / (double)t_i)) / 2.0;
      momentum = last_momentum;
    }
    const clr_point p = clr_schedule(it, &s, &unused);
    expect_close(p.lr, lr, 1e-14, "chain lr", (long long)it);
    expect_close(p.momentum, momentum, 1e-14, "chain momentum", (long long)it);
  }

  // transformers' WSD (linear warmup, cosine decay to 10%): 5 + 10 + 20 steps
  const double wsd[] = {0.3, 5, 10, 20, 0, 1, 0.1, 0.5};
  chain_begin(&t);
  chain_add(&t, CLR_KIND_HF_WSD, 0, NAN, wsd, 8);
  expect_close(clr_chain_read(t.values, t.n, &s.chain) == NULL, 1.0, 0.0, "wsd read", 0);
  for (int64_t it = 0; it < 50; ++it) {
    double factor = 1.0;
    if (it < 5) factor = (double)it / 5.0;
    if (it >= 15 && it < 35) factor = 0.5 * (1.0 + cos(M_PI * (double)(it - 15) / 20.0));
    if (it >= 35) factor = 0.0;
    const clr_point p = clr_schedule(it, &s, &unused);
    expect_close(p.lr, 0.3 * (0.1 + 0.9 * factor), 1e-14, "wsd lr", (long long)it);
    expect_close(p.momentum != p.momentum, 1.0, 0.0, "wsd sets no momentum", (long long)it);
  }

  // What the reader refuses: each table differs from a good one in one value.
  chain_begin(&t);
  chain_add(&t, CLR_KIND_LINEAR, 0, NAN, linear, 4);
  chain_add(&t, CLR_KIND_CYCLIC, 10, NAN, cyclic, 10);
  const int64_t second = CLR_CHAIN_HEADER + CLR_SEGMENT_VALUES;
  struct {
    int64_t index;
    double value;
    const char* what;
  } bad[] = {{0, 0.0, "no segment"},
             {0, 9.0, "too many segments"},
             {0, 1.5, "fractional count"},
             {CLR_CHAIN_HEADER, 8.0, "bad kind"},
             {CLR_CHAIN_HEADER + 1, 1.0, "first start"},
             {second + 1, 0.0, "start order"},
             {second + 1, 10.5, "fractional start"},
             {second + 3 + 7, 7.0, "cyclic mode"},
             {second + 3 + 2, 0.0, "step size"}};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
    chain_table broken = t;
    broken.values[bad[k].index] = bad[k].value;
    expect_close(clr_chain_read(broken.values, broken.n, &s.chain) != NULL, 1.0, 0.0, bad[k].what, (long long)k);
  }
  expect_close(clr_chain_read(t.values, t.n - 1, &s.chain) != NULL, 1.0, 0.0, "short table", 0);
}

static void check_sequence(int32_t mode, int64_t up, int64_t down, double gamma, int64_t first, int64_t count,
                           double rel, const char* name) {
  const clr_shape s = make_shape(mode, (double)up, (double)down, gamma);
  const clr_bounds b = make_bounds(0.001, 0.006, 0.85, 0.95);
  for (int64_t it = first; it < first + count; ++it) {
    int64_t cycle = 0;
    const double f = ramp(it, up, down, &cycle);
    double scale = 1.0;
    if (mode == CLR_MODE_TRIANGULAR2) scale = ldexp(1.0, -(int)(cycle > 2000 ? 2000 : cycle));
    if (mode == CLR_MODE_EXP_RANGE) scale = exp((double)it * log(gamma));
    const double want_lr = 0.001 + 0.005 * f * scale;
    const double want_m = 0.95 - 0.1 * f * scale;
    const clr_point p = clr_schedule(it, &s, &b);
    expect_close(p.lr, want_lr, rel, name, (long long)it);
    expect_close(p.momentum, want_m, rel, name, (long long)it);
  }
}

int main() {
  // Three full cycles and more, symmetric and asymmetric ramps, every CyclicLR mode.
  check_sequence(CLR_MODE_TRIANGULAR, 2000, 2000, 1.0, 0, 13000, 1e-12, "triangular 2000/2000");
  check_sequence(CLR_MODE_TRIANGULAR, 7, 3, 1.0, 0, 1000, 1e-12, "triangular 7/3");
  check_sequence(CLR_MODE_TRIANGULAR, 1, 1, 1.0, 0, 1000, 1e-12, "triangular 1/1");
  check_sequence(CLR_MODE_TRIANGULAR2, 5, 11, 1.0, 0, 200, 1e-12, "triangular2 5/11");
  check_sequence(CLR_MODE_TRIANGULAR2, 2000, 2000, 1.0, 0, 13000, 1e-12, "triangular2 2000/2000");
  check_sequence(CLR_MODE_EXP_RANGE, 2000, 1000, 0.99994, 0, 10000, 1e-11, "exp_range 2000/1000");
  check_sequence(CLR_MODE_EXP_RANGE, 4, 4, 0.9, 0, 100, 1e-11, "exp_range 4/4");

  // Points written out by hand (base 0.001, max 0.006, step 2000 up and down).
  {
    const clr_shape tri = make_shape(CLR_MODE_TRIANGULAR, 2000, 2000, 1.0);
    const clr_shape tri2 = make_shape(CLR_MODE_TRIANGULAR2, 2000, 2000, 1.0);
    const clr_shape expr = make_shape(CLR_MODE_EXP_RANGE, 2000, 2000, 0.99994);
    const clr_bounds b = make_bounds(0.001, 0.006, 0.85, 0.95);
    expect_close(clr_schedule(0, &tri, &b).lr, 0.001, 1e-15, "tri start", 0);
    expect_close(clr_schedule(0, &tri, &b).momentum, 0.95, 1e-15, "tri start momentum", 0);
    expect_close(clr_schedule(1000, &tri, &b).lr, 0.0035, 1e-14, "tri quarter", 1000);
    expect_close(clr_schedule(2000, &tri, &b).lr, 0.006, 1e-14, "tri peak", 2000);
    expect_close(clr_schedule(2000, &tri, &b).momentum, 0.85, 1e-14, "tri peak momentum", 2000);
    expect_close(clr_schedule(3000, &tri, &b).lr, 0.0035, 1e-14, "tri three quarters", 3000);
    expect_close(clr_schedule(4000, &tri, &b).lr, 0.001, 1e-14, "tri end", 4000);
    expect_close(clr_schedule(6000, &tri2, &b).lr, 0.0035, 1e-14, "tri2 second peak", 6000);
    expect_close(clr_schedule(10000, &tri2, &b).lr, 0.00225, 1e-14, "tri2 third peak", 10000);
    expect_close(clr_schedule(2000, &expr, &b).lr, 0.001 + 0.005 * pow(0.99994, 2000.0), 1e-14, "exp_range peak", 2000);
  }

  // Huge iteration counts: int64 in, no wrap-around, no fp32 truncation.
  {
    const int64_t huge = (int64_t)1 << 40;  // 1099511627776 = 274877906 * 4000 + 3776
    const clr_shape tri = make_shape(CLR_MODE_TRIANGULAR, 2000, 2000, 1.0);
    const clr_shape tri2 = make_shape(CLR_MODE_TRIANGULAR2, 2000, 2000, 1.0);
    const clr_shape expr = make_shape(CLR_MODE_EXP_RANGE, 2000, 2000, 0.99994);
    const clr_bounds b = make_bounds(0.001, 0.006, 0.85, 0.95);
    // 224 steps before the end of a cycle: factor = 224/2000 = 0.112.
    // i/total carries ~2^-25 absolute error at this magnitude, hence the tolerance.
    expect_close(clr_schedule(huge, &tri, &b).lr, 0.001 + 0.005 * 0.112, 1e-6, "tri 2^40", (long long)huge);
    expect_close(clr_schedule(huge, &tri, &b).momentum, 0.95 - 0.1 * 0.112, 1e-6, "tri 2^40 momentum", (long long)huge);
    check_sequence(CLR_MODE_TRIANGULAR, 2000, 2000, 1.0, huge - 5000, 10000, 1e-6, "triangular near 2^40");
    check_sequence(CLR_MODE_TRIANGULAR, 3, 5, 1.0, ((int64_t)1 << 50) - 20, 40, 1e-3, "triangular near 2^50");
    // Amplitudes 2^-274877906 and 0.99994^(2^40) underflow to zero: lr = base_lr exactly.
    expect_close(clr_schedule(huge, &tri2, &b).lr, 0.001, 0.0, "tri2 2^40", (long long)huge);
    expect_close(clr_schedule(huge, &expr, &b).lr, 0.001, 0.0, "exp_range 2^40", (long long)huge);
    const clr_point p = clr_schedule(huge, &tri, &b);
    ++g_checks;
    if (!(isfinite(p.lr) && isfinite(p.momentum) && p.lr >= 0.001 && p.lr <= 0.006)) {
      ++g_failures;
      fprintf(stderr, "FAIL tri 2^40 out of bounds: %.17g\n", p.lr);
    }
  }

  // The paper's non-cyclic policies.
  {
    const clr_bounds b = make_bounds(0.01, 0.1, 0.8, 0.9);
    const clr_shape fixed = make_shape(CLR_MODE_FIXED, 10, 10, 1.0);
    const clr_shape ex = make_shape(CLR_MODE_EXP, 10, 10, 0.5);
    const clr_shape decay = make_shape(CLR_MODE_DECAY, 10, 10, 1.0);
    for (int64_t it = 0; it < 40; ++it) {
      expect_close(clr_schedule(it, &fixed, &b).lr, 0.01, 0.0, "fixed", (long long)it);
      expect_close(clr_schedule(it, &ex, &b).lr, ldexp(0.01, -(int)it), 1e-15, "exp", (long long)it);
      const double f = it < 10 ? (10.0 - (double)it) / 10.0 : 0.0;
      expect_close(clr_schedule(it, &decay, &b).lr, 0.01 + 0.09 * f, 1e-14, "decay", (long long)it);
      expect_close(clr_schedule(it, &decay, &b).momentum, 0.9 - 0.1 * f, 1e-14, "decay momentum", (long long)it);
    }
  }

  check_chain();

  if (g_failures) {
    fprintf(stderr, "test_schedule: %d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  printf("test_schedule: %d checks passed\n", g_checks);
  return 0;
}
