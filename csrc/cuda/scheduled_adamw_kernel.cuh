/*
 * The CUDA AdamW step's device code: one chunk, the update kernel and the step-count
 * kernel, over the rule's element body (clr_adamw_element, math/adamw_update.h, the CPU
 * loops' too) and the prologue every rule's kernel shares (cuda/kernel_prologue.cuh).
 * The tables are packed on the host (multi_tensor.cuh).
 *
 * Host-compilable like the SGD kernel: csrc/tests/test_cuda_adamw_host.cpp runs these
 * very kernels on the CPU, block by block (csrc/tests/cuda_host_emulation.h), against
 * the CPU AdamW loops (csrc/cpu/adamw_cpu.h).
 *
 * NOTE (step counts). torch.optim.AdamW advances each param's `step` before its update
 * and takes the bias corrections from the new value. Many blocks cover one tensor and
 * blocks run in any order, so a block cannot advance the count in place: a block that
 * reads it after another block of the same step wrote it would use step + 2. Choices:
 * (a) every block computes with stored_step + 1, read-only, and a second tiny launch
 *     advances the counts after the update launches, skipping when found_inf is set;
 * (b) one block per tensor advances it after a grid-wide barrier (cooperative launch:
 *     not capturable everywhere, limits the grid) or the last block of a tensor, found
 *     with an atomic ticket per tensor (needs a zeroed device buffer per step and a
 *     memory fence; the buffer must be allocated and reset, which breaks "no allocation,
 *     capturable" or needs persistent state in the op);
 * (c) the host advances them (a host sync, or wrong under GradScaler skips).
 * (a) is chosen: no atomics, no scratch memory, no ordering assumption between blocks;
 * under stream order the second launch sees every read of the first done. It costs one
 * extra launch per step (per ~4,000 params), a few microseconds, also under graph
 * replay. It also counts the steps of params without elements, which have no chunk and
 * so no block in the update launch, exactly as the CPU op does.
 *
 * The per-param step scalars (lr / bias_correction1, sqrt(bias_correction2): two double
 * pow()s) are computed by every thread for each chunk it runs, not by thread 0 through
 * shared memory: the values are warp-uniform and identical in every thread, no barrier
 * is needed inside the grid-stride loop (a per-chunk barrier would also break the host
 * emulation, which runs a block's threads one after another), and the cost is small
 * next to a chunk's 65,536 elements. The schedule (per step, one for every block) is
 * evaluated by thread 0 as in the SGD kernel.
 *
 * Rounding: adamw_update.h's math with the device's correctly rounded sqrtf / sqrt (nvcc's
 * default -prec-sqrt=true; no --use_fast_math) and --fmad=false; on the CPU, torch and the
 * CPU op take MKL's vector sqrt (within 1 ulp), so CPU and GPU compare with a tolerance.
 */
#ifndef CLR_EXT_CUDA_SCHEDULED_ADAMW_KERNEL_CUH
#define CLR_EXT_CUDA_SCHEDULED_ADAMW_KERNEL_CUH

#include <stdint.h>

#include "../math/adamw_update.h"
#include "kernel_prologue.cuh"

namespace clr_cuda {

// One block of 512 threads per SM at least, not two as for SGD: capped at 64 registers
// (two blocks) ptxas spills the coefficients inside the element loop (up to 512 bytes of
// spill loads with amsgrad); with 80-110 registers nothing spills, and 512 threads with
// 4-5 16-byte loads each still keep ~32 KB per SM in flight. A GPU run can compare both
// (-DCLR_ADAMW_MIN_BLOCKS=2).
#ifndef CLR_ADAMW_MIN_BLOCKS
#define CLR_ADAMW_MIN_BLOCKS 1
#endif
constexpr int kAdamwMinBlocksPerSm = CLR_ADAMW_MIN_BLOCKS;

// n (<= kChunkElems) elements of one tensor. 16-byte vectors when every stream touched is
// 16-byte aligned, then a scalar tail; element by element otherwise. One vector per stream
// and thread in flight: 4-5 streams already keep 64-80 bytes per thread loading.
template <typename S, bool kAmsgrad, bool kUnscale>
__device__ __forceinline__ void run_adamw_chunk(S* __restrict__ p, S* __restrict__ g, S* __restrict__ m,
                                                S* __restrict__ v, S* __restrict__ vmax, int n,
                                                const clr_adamw_coeffs<typename clr_storage<S>::compute>& c,
                                                typename clr_storage<S>::compute scale) {
  constexpr int W = Vec<S>::kWidth;
  const uintptr_t addresses =
      (uintptr_t)p | (uintptr_t)g | (uintptr_t)m | (uintptr_t)v | (kAmsgrad ? (uintptr_t)vmax : (uintptr_t)0);
  int done = 0;
  if ((addresses % kVectorBytes) == 0) {
    const int n_vec = n / W;
    Vec<S>* __restrict__ vp = reinterpret_cast<Vec<S>*>(p);
    Vec<S>* __restrict__ vg = reinterpret_cast<Vec<S>*>(g);
    Vec<S>* __restrict__ vm = reinterpret_cast<Vec<S>*>(m);
    Vec<S>* __restrict__ vv = reinterpret_cast<Vec<S>*>(v);
    Vec<S>* __restrict__ vx = reinterpret_cast<Vec<S>*>(vmax);
    for (int i = threadIdx.x; i < n_vec; i += kBlockSize) {
      // All loads first, then the math, then the stores.
      Vec<S> rp = vp[i], rg = vg[i], rm = vm[i], rv = vv[i], rx;
      if (kAmsgrad) rx = vx[i];
#pragma unroll
      for (int k = 0; k < W; ++k)
        clr_adamw_element<S, true, kAmsgrad, kUnscale, false>(rp.v[k], rg.v[k], rm.v[k], rv.v[k], rx.v[k], c, scale);
      vp[i] = rp;
      if (kUnscale) vg[i] = rg;
      vm[i] = rm;
      vv[i] = rv;
      if (kAmsgrad) vx[i] = rx;
    }
    done = n_vec * W;
  }
  for (int i = done + (int)threadIdx.x; i < n; i += kBlockSize) {
    S dummy;
    clr_adamw_element<S, true, kAmsgrad, kUnscale, false>(p[i], g[i], m[i], v[i], kAmsgrad ? vmax[i] : dummy, c, scale);
  }
}

// The update launch: every element of every tensor of the table. Reads the step counts,
// never writes them (adamw_step_count_kernel does, after this launch). The weight decay
// is always applied: with weight_decay == 0 the factor is exactly 1 and the product is the
// param itself (torch skips the multiply; the bits are the same).
template <typename S, bool kAmsgrad>
__global__ void __launch_bounds__(kBlockSize, kAdamwMinBlocksPerSm)
    cyclic_adamw_kernel(const CLR_GRID_CONSTANT AdamwTable table, const CLR_GRID_CONSTANT AdamwStepArgs args) {
  typedef typename clr_storage<S>::compute C;
  __shared__ double s_lr;
  __shared__ double s_beta1;
  __shared__ C s_scale;
  __shared__ int s_skip;

  if (!block_step(args.step, s_skip, [&](const StepPoint& step) {
        s_lr = step.lr;
        s_beta1 = step.momentum;
        s_scale = (C)step.grad_scale;  // exact: a float scale widened to double and back, or a double
      }))
    return;
  const double lr = s_lr;
  const double beta1 = s_beta1;
  const C scale = s_scale;
  const bool unscale = args.step.grad_scale != nullptr;

  for_each_chunk(table, [&](int t, const ChunkRange& r) {
    // This step's count, as torch.optim.AdamW's step_t += 1 makes it (float32).
    const float step = *table.extra[t] + 1.0f;
    double step_size, bias_correction2_sqrt;
    clr_adamw_step_scalars(lr, beta1, args.beta2, (double)step, 0, &step_size, &bias_correction2_sqrt);
    const clr_adamw_coeffs<C> c = clr_adamw_coeffs_make<C>(lr, beta1, args.beta2, args.eps, args.weight_decay,
                                                           args.step.maximize, step_size, bias_correction2_sqrt);
    S* p = stream_at<S>(table, kParam, t, r);
    S* g = stream_at<S>(table, kGrad, t, r);
    S* m = stream_at<S>(table, kExpAvg, t, r);
    S* v = stream_at<S>(table, kExpAvgSq, t, r);
    S* vmax = kAmsgrad ? stream_at<S>(table, kMaxExpAvgSq, t, r) : nullptr;
    if (unscale)
      run_adamw_chunk<S, kAmsgrad, true>(p, g, m, v, vmax, r.size, c, scale);
    else
      run_adamw_chunk<S, kAmsgrad, false>(p, g, m, v, vmax, r.size, c, scale);
  });
}

// The step-count launch: one thread per param, after every update launch of the step.
__global__ void __launch_bounds__(kStepCountBlock)
    adamw_step_count_kernel(const CLR_GRID_CONSTANT StepCountTable table, const CLR_GRID_CONSTANT StepCountArgs args) {
  const int i = (int)(blockIdx.x * kStepCountBlock + threadIdx.x);
  if (i >= table.count) return;
  if (args.found_inf != nullptr && skips_step(read_scalar(args.found_inf, args.found_inf_is_double))) return;
  float* const step = table.step[i];
  *step = *step + 1.0f;
}

}  // namespace clr_cuda

#endif /* CLR_EXT_CUDA_SCHEDULED_ADAMW_KERNEL_CUH */
