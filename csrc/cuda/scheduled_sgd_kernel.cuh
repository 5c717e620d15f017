/*
 * The CUDA SGD step's device code: one chunk and the kernel, over the rule's element body
 * (clr_sgd_element, math/sgd_update.h, the CPU loops' too) and the prologue every rule's
 * kernel shares (cuda/kernel_prologue.cuh). The tables it reads are packed on the host
 * by multi_tensor.cuh.
 *
 * Kept apart from the launcher (scheduled_sgd_cuda.cu, which needs ATen) so that it
 * compiles as plain host C++ too: csrc/tests/test_cuda_kernel_host.cpp runs this
 * very kernel on the CPU, block by block and thread by thread, under ASan/UBSan,
 * against the CPU kernel. That checks the chunk walk, the vector/tail split at
 * every alignment, the momentum-start race and the AMP paths where no GPU is lent.
 *
 * Without nvcc the includer must first define the CUDA builtins used here
 * (__global__, __device__, __shared__, threadIdx, __syncthreads):
 * csrc/tests/cuda_host_emulation.h does. The 16-bit conversions then are clr_storage's
 * host ones, which round like the device's.
 */
#ifndef CLR_EXT_CUDA_SCHEDULED_SGD_KERNEL_CUH
#define CLR_EXT_CUDA_SCHEDULED_SGD_KERNEL_CUH

#include <stdint.h>

#include "../math/sgd_update.h"
#include "kernel_prologue.cuh"

namespace clr_cuda {

// ------------------------------------------------------------------- one chunk

// n (<= kChunkElems) elements from p, g, b. 16-byte vectors when every stream that is
// touched is 16-byte aligned (chunk starts keep the alignment of the tensor's start),
// then a scalar tail; element by element otherwise.
template <typename S, int kMomentum, bool kUnscale>
__device__ __forceinline__ void run_chunk(S* __restrict__ p, S* __restrict__ g, S* __restrict__ b, int n,
                                          const clr_sgd_coeffs<typename clr_storage<S>::compute>& c,
                                          typename clr_storage<S>::compute scale, int use_wd, int nesterov) {
  constexpr int W = Vec<S>::kWidth;
  // 16-bit types carry 8 elements per vector: one vector per stream keeps them in registers.
  constexpr int kUnroll = sizeof(S) >= 4 ? kMaxUnroll : 1;
  const uintptr_t addresses =
      (uintptr_t)p | (uintptr_t)g | (kMomentum != CLR_MOMENTUM_NONE ? (uintptr_t)b : (uintptr_t)0);
  int done = 0;
  if ((addresses % kVectorBytes) == 0) {
    const int n_vec = n / W;
    Vec<S>* __restrict__ vp = reinterpret_cast<Vec<S>*>(p);
    Vec<S>* __restrict__ vg = reinterpret_cast<Vec<S>*>(g);
    Vec<S>* __restrict__ vb = reinterpret_cast<Vec<S>*>(b);
    for (int base = threadIdx.x; base < n_vec; base += kBlockSize * kUnroll) {
      Vec<S> rp[kUnroll], rg[kUnroll], rb[kUnroll];
      // All loads first (kUnroll x 2-3 independent 16-byte loads in flight), then math, then stores.
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kBlockSize;
        if (i < n_vec) {
          rp[u] = vp[i];
          rg[u] = vg[i];
          if (kMomentum == CLR_MOMENTUM_STEADY) rb[u] = vb[i];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kBlockSize;
        if (i < n_vec) {
#pragma unroll
          for (int k = 0; k < W; ++k)
            clr_sgd_element<S, kMomentum, kUnscale>(rp[u].v[k], rg[u].v[k], rb[u].v[k], c, scale, use_wd, nesterov);
          vp[i] = rp[u];
          if (kUnscale) vg[i] = rg[u];
          if (kMomentum != CLR_MOMENTUM_NONE) vb[i] = rb[u];
        }
      }
    }
    done = n_vec * W;
  }
  for (int i = done + (int)threadIdx.x; i < n; i += kBlockSize) {
    S dummy;
    clr_sgd_element<S, kMomentum, kUnscale>(p[i], g[i], kMomentum != CLR_MOMENTUM_NONE ? b[i] : dummy, c, scale, use_wd,
                                            nesterov);
  }
}

// -------------------------------------------------------------------- the kernel

template <typename S>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSm)
    cyclic_sgd_kernel(const CLR_GRID_CONSTANT SgdTable table, const CLR_GRID_CONSTANT SgdStepArgs args) {
  typedef typename clr_storage<S>::compute C;
  typedef clr_sgd_coeffs<C> Coeffs;
  __shared__ Coeffs s_coeffs;
  __shared__ C s_scale;
  __shared__ int s_momentum_state;
  __shared__ int s_skip;
  __shared__ int64_t s_iteration;

  // One thread per block evaluates the schedule (a few double operations) and the
  // step's flags; every block of every launch of the step reads the same iteration.
  if (!block_step(args.step, s_skip, [&](const StepPoint& step) {
        s_iteration = step.iteration;
        // torch.optim.SGD leaves its buffers alone in any step whose momentum is 0.
        s_momentum_state = (args.has_buffers && step.momentum != 0.0)
                               ? (args.first_step ? CLR_MOMENTUM_FIRST : CLR_MOMENTUM_STEADY)
                               : CLR_MOMENTUM_NONE;
        s_coeffs =
            clr_sgd_coeffs_make<C>(step.lr, args.weight_decay, step.momentum, args.dampening, args.step.maximize);
        s_scale = (C)step.grad_scale;  // exact: a float scale widened to double and back, or a double
      }))
    return;
  const Coeffs coeffs = s_coeffs;
  const C scale = s_scale;
  const int block_momentum_state = s_momentum_state;
  const int64_t iteration = s_iteration;
  const bool unscale = args.step.grad_scale != nullptr;
  const int use_wd = args.use_weight_decay;
  const int nesterov = args.nesterov;

  for_each_chunk(table, [&](int t, const ChunkRange& r) {
    S* p = stream_at<S>(table, kParam, t, r);
    S* g = stream_at<S>(table, kGrad, t, r);
    int momentum_state = block_momentum_state;
    int64_t* const start = table.extra[t];
    if (momentum_state != CLR_MOMENTUM_NONE && start != nullptr) {
      // Every block that runs a chunk of tensor t reads either the value from before
      // this step or this iteration, written by another block of the step: both mean
      // "start" when the buffer had not started, so all chunks of t decide alike.
      const int64_t started = *start;
      momentum_state = started >= iteration ? CLR_MOMENTUM_FIRST : CLR_MOMENTUM_STEADY;
      if (threadIdx.x == 0 && started > iteration) *start = iteration;
    }
    S* b = momentum_state != CLR_MOMENTUM_NONE ? stream_at<S>(table, kBuffer, t, r) : nullptr;
#define CLR_RUN(MS)                                                           \
  if (unscale)                                                                \
    run_chunk<S, MS, true>(p, g, b, r.size, coeffs, scale, use_wd, nesterov); \
  else                                                                        \
    run_chunk<S, MS, false>(p, g, b, r.size, coeffs, scale, use_wd, nesterov)
    if (momentum_state == CLR_MOMENTUM_STEADY) {
      CLR_RUN(CLR_MOMENTUM_STEADY);
    } else if (momentum_state == CLR_MOMENTUM_FIRST) {
      CLR_RUN(CLR_MOMENTUM_FIRST);
    } else {
      CLR_RUN(CLR_MOMENTUM_NONE);
    }
#undef CLR_RUN
  });
}

}  // namespace clr_cuda

#endif /* CLR_EXT_CUDA_SCHEDULED_SGD_KERNEL_CUH */
