// The CUDA kernel's work layout (csrc/cuda/multi_tensor.cuh), checked on the host with
// no GPU: for tables of tensors of many sizes, including one of more than 2^31
// elements, every chunk index maps to one tensor and one range, and the ranges of each
// tensor tile [0, numel) exactly, in order, with 64-bit offsets. Also checks that chunk
// starts keep 16-byte alignment for every element size, and that the table fits the
// kernel-parameter space.
#include <stdint.h>
#include <stdio.h>

#include <random>
#include <vector>

#include "cuda/multi_tensor.cuh"

static int g_failures = 0;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      if (++g_failures <= 20) fprintf(stderr, __VA_ARGS__); \
    }                                                       \
  } while (0)

// Packs numels as the launcher does (no flush needed: at most kMaxTensors here) and
// walks every chunk the kernel's blocks would run.
static void check_table(const std::vector<int64_t>& numels) {
  using namespace clr_cuda;
  std::vector<int32_t> chunk_end;
  std::vector<int64_t> numel;
  int64_t chunks = 0;
  for (int64_t n : numels) {
    if (n == 0) continue;  // the launcher skips empty tensors
    chunks += chunks_of(n);
    chunk_end.push_back((int32_t)chunks);
    numel.push_back(n);
  }
  const int count = (int)numel.size();
  if (count == 0) return;
  std::vector<int64_t> next(count, 0);  // the next element each tensor expects
  for (int64_t c = 0; c < chunks; ++c) {
    const int t = find_tensor(chunk_end.data(), count, c);
    CHECK(t >= 0 && t < count, "chunk %lld: tensor %d out of range\n", (long long)c, t);
    if (t < 0 || t >= count) continue;
    const ChunkRange r = chunk_range(chunk_end.data(), numel.data(), t, c);
    CHECK(r.begin == next[t], "tensor %d chunk %lld: begins at %lld, expected %lld\n", t, (long long)c,
          (long long)r.begin, (long long)next[t]);
    CHECK(r.size > 0 && r.size <= kChunkElems, "tensor %d chunk %lld: size %d\n", t, (long long)c, r.size);
    CHECK(r.begin % kChunkElems == 0, "tensor %d: chunk start %lld not a multiple of the chunk size\n", t,
          (long long)r.begin);
    next[t] = r.begin + r.size;
  }
  for (int t = 0; t < count; ++t)
    CHECK(next[t] == numel[t], "tensor %d: covered %lld of %lld elements\n", t, (long long)next[t],
          (long long)numel[t]);
}

int main() {
  using namespace clr_cuda;
  // chunk starts stay 16-byte aligned for 2-, 4- and 8-byte elements
  CHECK(kChunkElems * 2 % kVectorBytes == 0 && kChunkElems * 4 % kVectorBytes == 0, "chunk size\n");
  CHECK(sizeof(TensorTable) + sizeof(StepArgs) <= (size_t)kKernelParamBytes, "table too large\n");
  CHECK(kMaxTensors >= 80, "only %d tensors per launch\n", kMaxTensors);

  check_table({1});
  check_table({kChunkElems});
  check_table({kChunkElems + 1, 0, 3, kChunkElems - 1, 2 * kChunkElems});
  // past 2^31 elements: offsets beyond INT32_MAX, a tail chunk of 33 elements
  check_table({5, (int64_t(1) << 31) + 33, 7});
  check_table({(int64_t(1) << 33) + 1});
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> numels(1 + rng() % (size_t)kMaxTensors);
    for (auto& n : numels) {
      const int kind = (int)(rng() % 4);
      n = kind == 0 ? (int64_t)(rng() % 8) : kind == 1 ? (int64_t)(rng() % 5000)
                                                       : (int64_t)(rng() % (4 * kChunkElems + 17));
    }
    check_table(numels);
  }
  if (g_failures) {
    fprintf(stderr, "test_cuda_index: %d failures\n", g_failures);
    return 1;
  }
  printf("test_cuda_index: ok (%d tensors per launch with %d-byte kernel parameters)\n", kMaxTensors,
         kKernelParamBytes);
  return 0;
}
