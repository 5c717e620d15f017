// The CUDA kernel's work layout (csrc/cuda/multi_tensor.cuh), checked on the host with
// no GPU: the launcher's packing into tables (in order, closing at kMaxTensors tensors
// and below 2^31 - 1 chunks); for tables of tensors of many sizes, including one of more than 2^31
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

// Packs numels with the launcher's own for_each_table (empty tensors dropped first, as
// the launcher does) and walks every chunk of every table as the kernel's blocks would.
static void check_table(const std::vector<int64_t>& numels) {
  using namespace clr_cuda;
  std::vector<SgdTable::Entry> entries;
  for (int64_t n : numels) {
    if (n == 0) continue;
    SgdTable::Entry e = {};
    e.numel = n;
    entries.push_back(e);
  }
  size_t next_entry = 0;
  SgdTable table;
  for_each_table(entries.data(), (int64_t)entries.size(), table, [&](const SgdTable& full, int64_t chunks) {
    const int count = full.count;
    CHECK(count >= 1 && count <= kMaxTensors, "table of %d tensors\n", count);
    CHECK(chunks == full.chunk_end[count - 1] && chunks < INT32_MAX, "table of %lld chunks\n", (long long)chunks);
    std::vector<int64_t> next(count, 0);  // the next element each tensor expects
    for (int64_t c = 0; c < chunks; ++c) {
      const int t = find_tensor(full.chunk_end, count, c);
      CHECK(t >= 0 && t < count, "chunk %lld: tensor %d out of range\n", (long long)c, t);
      if (t < 0 || t >= count) continue;
      const ChunkRange r = chunk_range(full.chunk_end, full.numel, t, c);
      CHECK(r.begin == next[t], "tensor %d chunk %lld: begins at %lld, expected %lld\n", t, (long long)c,
            (long long)r.begin, (long long)next[t]);
      CHECK(r.size > 0 && r.size <= kChunkElems, "tensor %d chunk %lld: size %d\n", t, (long long)c, r.size);
      CHECK(r.begin % kChunkElems == 0, "tensor %d: chunk start %lld not a multiple of the chunk size\n", t,
            (long long)r.begin);
      next[t] = r.begin + r.size;
    }
    for (int t = 0; t < count; ++t) {
      CHECK(next[t] == full.numel[t], "tensor %d: covered %lld of %lld elements\n", t, (long long)next[t],
            (long long)full.numel[t]);
      // the tables hold the entries in order, each exactly once
      CHECK(next_entry < entries.size() && full.numel[t] == entries[next_entry].numel,
            "table entry %d is not entry %zu\n", t, next_entry);
      ++next_entry;
    }
  });
  CHECK(next_entry == entries.size(), "%zu of %zu entries packed\n", next_entry, entries.size());
}

// How many tables for_each_table makes of these numels.
static int tables_for(const std::vector<int64_t>& numels) {
  std::vector<clr_cuda::SgdTable::Entry> entries;
  for (int64_t n : numels) {
    clr_cuda::SgdTable::Entry e = {};
    e.numel = n;
    entries.push_back(e);
  }
  int tables = 0;
  clr_cuda::SgdTable table;
  clr_cuda::for_each_table(entries.data(), (int64_t)entries.size(), table,
                           [&](const clr_cuda::SgdTable&, int64_t) { ++tables; });
  return tables;
}

int main() {
  using namespace clr_cuda;
  // chunk starts stay 16-byte aligned for 2-, 4- and 8-byte elements
  CHECK(kChunkElems * 2 % kVectorBytes == 0 && kChunkElems * 4 % kVectorBytes == 0, "chunk size\n");
  CHECK(sizeof(SgdTable) + sizeof(SgdStepArgs) <= (size_t)kKernelParamBytes, "table too large\n");
  // 4 KB of kernel parameters (toolkits before CUDA 13) hold the schedule chain's ~0.9 KB
  // beside the table: ~69 SGD tensors per launch; CUDA 13's 32 KB hold ~720.
  CHECK(kMaxTensors >= 64, "only %d tensors per launch\n", kMaxTensors);

  check_table({1});
  check_table({kChunkElems});
  check_table({kChunkElems + 1, 0, 3, kChunkElems - 1, 2 * kChunkElems});
  // past 2^31 elements: offsets beyond INT32_MAX, a tail chunk of 33 elements
  check_table({5, (int64_t(1) << 31) + 33, 7});
  check_table({(int64_t(1) << 33) + 1});
  // a table closes at kMaxTensors tensors, and before its grid would reach 2^31 - 1 blocks
  CHECK(tables_for(std::vector<int64_t>(kMaxTensors, 1)) == 1, "kMaxTensors tensors: not one table\n");
  CHECK(tables_for(std::vector<int64_t>(kMaxTensors + 1, 1)) == 2, "kMaxTensors + 1 tensors: not two tables\n");
  CHECK(tables_for(std::vector<int64_t>(2 * kMaxTensors + 1, 7)) == 3, "2 kMaxTensors + 1: not three tables\n");
  const int64_t huge = (int64_t)(INT32_MAX / 2) * kChunkElems;  // ~2^30 chunks each
  CHECK(tables_for({huge, huge}) == 1, "two tensors of 2^30 - 1 chunks: not one table\n");
  CHECK(tables_for({huge, huge, kChunkElems}) == 2, "a table reached 2^31 - 1 chunks\n");
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> numels(1 + rng() % (size_t)(3 * kMaxTensors));
    for (auto& n : numels) {
      const int kind = (int)(rng() % 4);
      n = kind == 0   ? (int64_t)(rng() % 8)
          : kind == 1 ? (int64_t)(rng() % 5000)
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
