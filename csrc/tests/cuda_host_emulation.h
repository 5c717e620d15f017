/*
 * Just enough of CUDA's device language, as host C++, to run csrc/cuda/cyclic_sgd_kernel.cuh
 * on the CPU when no GPU is lent: the kernel keywords, the thread and block indices,
 * __syncthreads and __shared__.
 *
 * emulate_grid() runs every block in a given order and, within a block, every thread
 * to completion one after another, thread 0 first. That is one legal schedule of a
 * kernel whose only intra-block dependency is "thread 0 fills shared memory, barrier,
 * everyone reads it" (the CLR kernel's shape), so a correct kernel must give correct
 * results under it; a different block order is another legal schedule. What it cannot
 * show: memory-model races between threads of a block, vector-load codegen,
 * occupancy, launch limits. Those need the GPU run (bench/gpu_check.sh).
 *
 * The kernels' 16-bit conversions need nothing here: compiled for the host, clr_storage
 * (csrc/storage.h) takes its round-to-nearest-even bit conversions, the CPU loops' own
 * (tested against _Float16 and torch); CUDA's __float2half_rn and __float2bfloat16_rn,
 * which it takes on the device, round the same way for every non-NaN input.
 */
#ifndef CLR_EXT_TESTS_CUDA_HOST_EMULATION_H
#define CLR_EXT_TESTS_CUDA_HOST_EMULATION_H

#if defined(__CUDACC__)
#error "cuda_host_emulation.h is for host compilers; nvcc has the real thing"
#endif

#include <stdint.h>

#include <vector>

#define CLR_CUDA_HOST_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, so one static instance per kernel instantiation is its shared memory.
#define __shared__ static

struct clr_emu_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline clr_emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
inline void __syncthreads() {}

/* Runs run_thread() once per (block, thread): blocks in block_order (a permutation of
   0..grid-1), threads 0..block-1 in order. */
template <typename RunThread>
void emulate_grid(unsigned grid, unsigned block, const std::vector<unsigned>& block_order, RunThread&& run_thread) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b : block_order) {
    blockIdx.x = b;
    for (unsigned t = 0; t < block; ++t) {
      threadIdx.x = t;
      run_thread();
    }
  }
}

#endif /* CLR_EXT_TESTS_CUDA_HOST_EMULATION_H */
