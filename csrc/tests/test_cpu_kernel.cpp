// The multi-tensor CPU loops of csrc/cpu/sgd_cpu.h (clr_cpu::run_range), without torch:
//  - against a scalar double-precision reference of torch.optim.SGD's update, for every
//    storage type, momentum state, weight decay / nesterov / maximize / dampening / AMP
//    unscale, and sizes around the SIMD widths (tails);
//  - fp32 / fp64 bit-exact against an independent scalar loop in the compute type (the
//    vectorized ISA clone must round exactly like scalar code: -ffp-contract=off);
//  - any split of the flattened range (as threads cut it) gives bit-identical results;
//  - the host's 16-bit conversions (csrc/math/storage.h) against the compiler's own _Float16
//    where it has one.
#include <cmath>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <random>
#include <type_traits>
#include <vector>

#include "cpu/sgd_cpu.h"
#include "tests/storage_info.h"

static int g_failures = 0;
static long long g_checks = 0;

#define FAIL(...)                                         \
  do {                                                    \
    if (++g_failures <= 25) fprintf(stderr, __VA_ARGS__); \
  } while (0)

using clr_cpu::StepArgs;

struct Config {
  double lr, momentum, dampening, weight_decay, grad_scale;
  int32_t momentum_state, nesterov, maximize, unscale;
};

// ---- storage helpers (test-side; the 16-bit conversions are checked separately below) ----
template <typename S>
struct St : clr_test::StorageInfo<S> {
  using clr_test::StorageInfo<S>::code;
  static S from(double v) { return clr_storage<S>::store((typename clr_storage<S>::compute)v); }
  static double to(S v) { return clr_storage<S>::load(v); }
  // a few float32 / float64 ulps; one bf16 ulp (8 significant bits), one fp16 ulp (11)
  static double rel_tol() {
    return code == clr_cpu::kFloat32    ? 2e-6
           : code == clr_cpu::kFloat64  ? 1e-14
           : code == clr_cpu::kBFloat16 ? 1.0 / 128
                                        : 1.0 / 1024;
  }
  static double abs_tol() { return code == clr_cpu::kFloat16 ? 0x1p-24 : 0.0; }  // fp16 subnormal spacing
};

static StepArgs args_of(const Config& c) {
  StepArgs a;
  a.lr = c.lr;
  a.momentum = c.momentum;
  a.dampening = c.dampening;
  a.weight_decay = c.weight_decay;
  a.momentum_state = c.momentum_state;
  a.nesterov = c.nesterov;
  a.maximize = c.maximize;
  a.unscale = c.unscale;
  a.grad_scale = c.grad_scale;
  return a;
}

// torch.optim.SGD's update for one element, in double. Returns the new param, updates buf and grad.
static double reference_update(double p, double* g, double* buf, const Config& c) {
  double grad = *g;
  if (c.unscale) {
    grad = grad / c.grad_scale;
    *g = grad;
  }
  if (c.maximize) grad = -grad;
  if (c.weight_decay != 0.0) grad = grad + c.weight_decay * p;
  if (c.momentum_state != CLR_MOMENTUM_NONE) {
    const double b = c.momentum_state == CLR_MOMENTUM_FIRST ? grad : c.momentum * *buf + (1.0 - c.dampening) * grad;
    *buf = b;
    grad = c.nesterov ? grad + c.momentum * b : b;
  }
  return p - c.lr * grad;
}

// The same update written independently in the compute type T (float for fp32), for bit-exactness.
template <typename T>
static T scalar_update(T p, T* g, T* buf, const Config& c) {
  const T lr = (T)c.lr, wd = (T)c.weight_decay, m = (T)c.momentum, omd = (T)(1.0 - c.dampening);
  T grad = *g;
  if (c.unscale) {
    grad = grad / (T)c.grad_scale;
    *g = grad;
  }
  if (c.maximize) grad = -grad;
  // ATen's rounding: each x.add_(y, alpha=a) is one fused multiply-add.
  if (c.weight_decay != 0.0) grad = std::fma(wd, p, grad);
  if (c.momentum_state != CLR_MOMENTUM_NONE) {
    const T b = c.momentum_state == CLR_MOMENTUM_FIRST ? grad : std::fma(omd, grad, (T)(m * *buf));
    *buf = b;
    grad = c.nesterov ? std::fma(m, b, grad) : b;
  }
  return std::fma(-lr, grad, p);
}

template <typename S>
struct Bucket {
  std::vector<std::vector<S>> p, g, b;
  std::vector<clr_cpu::Span> spans;
  std::vector<int64_t> offsets;
  void build(bool buffers) {
    spans.clear();
    offsets.assign(1, 0);
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i].empty()) continue;  // the callers drop empty tensors as well
      clr_cpu::Span sp;
      sp.param = p[i].data();
      sp.grad = g[i].data();
      sp.momentum_buffer = buffers ? (void*)b[i].data() : nullptr;
      sp.numel = (int64_t)p[i].size();
      spans.push_back(sp);
      offsets.push_back(offsets.back() + sp.numel);
    }
  }
  void run(int64_t begin, int64_t end, const StepArgs& a) {
    clr_cpu::run_range(St<S>::code, spans.data(), offsets.data(), (int64_t)spans.size(), begin, end, a);
  }
  int64_t total() const { return offsets.back(); }
};

// n == 0: a 0-element tensor's data() may be null, which memcmp must never get.
static bool same_bits(const void* a, const void* b, size_t n) { return n == 0 || memcmp(a, b, n) == 0; }

template <typename S>
static void check_case(const std::vector<int64_t>& sizes, const Config& c, std::mt19937_64& rng, const char* name) {
  std::normal_distribution<double> normal(0.0, 1.0);
  const bool buffers = c.momentum_state != CLR_MOMENTUM_NONE;
  Bucket<S> bk;
  for (int64_t n : sizes) {
    std::vector<S> p(n), g(n), b(n);
    for (int64_t i = 0; i < n; ++i) {
      p[i] = St<S>::from(normal(rng));
      g[i] = St<S>::from(normal(rng) * 0.5);
      b[i] = St<S>::from(normal(rng) * 0.3);
    }
    bk.p.push_back(p);
    bk.g.push_back(g);
    bk.b.push_back(b);
  }
  const Bucket<S> initial = bk;
  bk.build(buffers);
  const StepArgs a = args_of(c);
  bk.run(0, bk.total(), a);

  // 1) Against the double reference, on the values the storage type actually held.
  for (size_t t = 0; t < sizes.size(); ++t) {
    for (int64_t i = 0; i < sizes[t]; ++i) {
      double p0 = St<S>::to(initial.p[t][i]), g0 = St<S>::to(initial.g[t][i]), b0 = St<S>::to(initial.b[t][i]);
      double g1 = g0, b1 = b0;
      const double p1 = reference_update(p0, &g1, &b1, c);
      const double got_p = St<S>::to(bk.p[t][i]);
      // Scale of the terms involved: errors are relative to them, not to a cancelled result.
      const double mag =
          fabs(p0) + c.lr * (fabs(g0) / (c.unscale ? c.grad_scale : 1.0) + fabs(b0) + c.weight_decay * fabs(p0)) * 4.0 +
          1e-30;
      const double tol = St<S>::rel_tol() * mag + St<S>::abs_tol();
      ++g_checks;
      if (!(fabs(got_p - p1) <= tol))
        FAIL("FAIL %s: size %lld elem %lld param got %.9g want %.9g\n", name, (long long)sizes[t], (long long)i, got_p,
             p1);
      if (buffers) {
        const double got_b = St<S>::to(bk.b[t][i]);
        ++g_checks;
        if (!(fabs(got_b - b1) <=
              St<S>::rel_tol() * (fabs(b0) + fabs(g0) + c.weight_decay * fabs(p0) + 1e-30) * 2 + St<S>::abs_tol()))
          FAIL("FAIL %s: size %lld elem %lld buffer got %.9g want %.9g\n", name, (long long)sizes[t], (long long)i,
               got_b, b1);
      } else {
        ++g_checks;
        if (!same_bits(&bk.b[t][i], &initial.b[t][i], sizeof(S)))
          FAIL("FAIL %s: buffer written although momentum is off\n", name);
      }
      const double got_g = St<S>::to(bk.g[t][i]);
      ++g_checks;
      if (c.unscale ? !(fabs(got_g - g1) <= St<S>::rel_tol() * fabs(g1) + St<S>::abs_tol())
                    : !same_bits(&bk.g[t][i], &initial.g[t][i], sizeof(S)))
        FAIL("FAIL %s: grad got %.9g want %.9g\n", name, got_g, g1);
    }
  }

  // 2) fp32 / fp64: bit-identical to a plain scalar loop in the compute type.
  if constexpr (std::is_same<S, float>::value || std::is_same<S, double>::value) {
    for (size_t t = 0; t < sizes.size(); ++t) {
      for (int64_t i = 0; i < sizes[t]; ++i) {
        S gg = initial.g[t][i], bb = initial.b[t][i];
        const S pp = scalar_update<S>(initial.p[t][i], &gg, &bb, c);
        ++g_checks;
        if (!same_bits(&pp, &bk.p[t][i], sizeof(S)) || (buffers && !same_bits(&bb, &bk.b[t][i], sizeof(S))) ||
            !same_bits(&gg, &bk.g[t][i], sizeof(S)))
          FAIL("FAIL %s: size %lld elem %lld not bit-identical to the scalar loop\n", name, (long long)sizes[t],
               (long long)i);
      }
    }
  }

  // 3) The same step cut into arbitrary ranges (as parallel threads cut it): same bits.
  Bucket<S> split = initial;
  split.build(buffers);
  std::uniform_int_distribution<int64_t> cut(1, std::max<int64_t>(1, split.total() / 3 + 1));
  for (int64_t begin = 0; begin < split.total();) {
    const int64_t end = std::min(split.total(), begin + cut(rng));
    split.run(begin, end, a);
    begin = end;
  }
  split.run(5, 5, a);  // empty range: no-op
  for (size_t t = 0; t < sizes.size(); ++t) {
    ++g_checks;
    const size_t bytes = sizes[t] * sizeof(S);
    if (!same_bits(split.p[t].data(), bk.p[t].data(), bytes) || !same_bits(split.b[t].data(), bk.b[t].data(), bytes) ||
        !same_bits(split.g[t].data(), bk.g[t].data(), bytes))
      FAIL("FAIL %s: split ranges differ from one full range (tensor %zu)\n", name, t);
  }
}

template <typename S>
static void check_dtype(const char* dtype_name, std::mt19937_64& rng) {
  const std::vector<std::vector<int64_t>> layouts = {
      {1},      {7},
      {15},     {16},
      {17},     {31},
      {33},     {1031},
      {100003}, {1, 7, 0, 17, 1031, 3, 64, 4099, 2},  // a bucket of several tensors, one of them empty
  };
  const int32_t states[] = {CLR_MOMENTUM_NONE, CLR_MOMENTUM_FIRST, CLR_MOMENTUM_STEADY};
  int k = 0;
  for (int32_t ms : states) {
    for (int wd = 0; wd < 2; ++wd) {
      for (int nesterov = 0; nesterov < 2; ++nesterov) {
        if (nesterov && ms == CLR_MOMENTUM_NONE) continue;
        for (int variant = 0; variant < 3; ++variant) {
          Config c;
          c.lr = 0.0123;
          c.momentum = 0.9;
          c.dampening = (variant == 1 && !nesterov) ? 0.25 : 0.0;
          c.weight_decay = wd ? 5e-4 : 0.0;
          c.momentum_state = ms;
          c.nesterov = nesterov;
          c.maximize = variant == 1;
          c.unscale = variant == 2;
          c.grad_scale = 1024.0;
          char name[160];
          snprintf(name, sizeof name, "%s ms=%d wd=%d nesterov=%d variant=%d", dtype_name, ms, wd, nesterov, variant);
          check_case<S>(layouts[k++ % layouts.size()], c, rng, name);
          check_case<S>(layouts.back(), c, rng, name);
        }
      }
    }
  }
  for (const auto& sizes : layouts) {
    Config c = {0.05, 0.9, 0.0, 5e-4, 1.0, CLR_MOMENTUM_STEADY, 0, 0, 0};
    check_case<S>(sizes, c, rng, dtype_name);
  }
}

static void check_half_conversions() {
#if defined(__FLT16_MAX__)
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 x;
    uint16_t bits = (uint16_t)h;
    memcpy(&x, &bits, 2);
    const float want = (float)x, got = clr_float16_bits_to_float(bits);
    ++g_checks;
    if (!(memcmp(&want, &got, 4) == 0 || (isnan(want) && isnan(got))))
      FAIL("FAIL clr_float16_bits_to_float(0x%04x)\n", h);
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    if (i % 4 == 0) u = (u & 0x8000ffffu) | ((uint32_t)(96 + (rng() % 48)) << 23);  // around fp16's range
    float f;
    memcpy(&f, &u, 4);
    if (isnan(f)) continue;
    const _Float16 w = (_Float16)f;
    uint16_t want;
    memcpy(&want, &w, 2);
    ++g_checks;
    if (clr_float_to_float16_bits(f) != want)
      FAIL("FAIL clr_float_to_float16_bits(%a): 0x%04x want 0x%04x\n", f, clr_float_to_float16_bits(f), want);
  }
#endif
  // bf16: round to nearest even of the top 16 bits, checked against double arithmetic.
  std::mt19937 rng_bf(11);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng_bf();
    float f;
    memcpy(&f, &u, 4);
    if (!isfinite(f)) continue;
    const uint16_t h = clr_float_to_bfloat16_bits(f);
    const double lo = clr_bfloat16_bits_to_float((uint16_t)(u >> 16));
    // The next bf16 away from zero; past the largest finite one it is 2^128 (IEEE overflow rounding).
    const uint16_t next_bits = (uint16_t)((u >> 16) + 1);
    const double hi_bits_next = (next_bits & 0x7fffu) == 0x7f80u ? copysign(ldexp(1.0, 128), (double)f)
                                                                 : (double)clr_bfloat16_bits_to_float(next_bits);
    const double dl = fabs((double)f - lo), dh = fabs(hi_bits_next - (double)f);
    uint16_t want = (uint16_t)(u >> 16);
    if (dh < dl || (dh == dl && (want & 1u))) want = (uint16_t)(want + 1);
    ++g_checks;
    if (h != want) FAIL("FAIL clr_float_to_bfloat16_bits(%a): 0x%04x want 0x%04x\n", f, h, want);
  }
}

int main() {
  std::mt19937_64 rng(12345);
#if defined(CLR_EXT_NO_TARGET_CLONES)
  printf("test_cpu_kernel: running the baseline loops (no target_clones)\n");
#elif defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  printf("test_cpu_kernel: running the %s clone\n", __builtin_cpu_supports("avx512f") ? "AVX-512"
                                                    : __builtin_cpu_supports("avx2")  ? "AVX2"
                                                                                      : "baseline");
#endif
  check_half_conversions();
  check_dtype<float>("float32", rng);
  check_dtype<double>("float64", rng);
  check_dtype<clr_float16>("float16", rng);
  check_dtype<clr_bfloat16>("bfloat16", rng);
  if (g_failures) {
    fprintf(stderr, "test_cpu_kernel: %d of %lld checks failed\n", g_failures, g_checks);
    return 1;
  }
  printf("test_cpu_kernel: %lld checks passed\n", g_checks);
  return 0;
}
