// What the C++ tests need to know of a storage type (float, double, clr_float16,
// clr_bfloat16): its dtype code in the CPU loops (cpu/multi_tensor.h) and its torch name.
#ifndef CLR_EXT_TESTS_STORAGE_INFO_H
#define CLR_EXT_TESTS_STORAGE_INFO_H

#include <stdint.h>

#include <type_traits>

#include "cpu/multi_tensor.h"
#include "math/storage.h"

namespace clr_test {

template <typename S>
struct StorageInfo {
  static constexpr int32_t code = std::is_same_v<S, float>         ? clr_cpu::kFloat32
                                  : std::is_same_v<S, double>      ? clr_cpu::kFloat64
                                  : std::is_same_v<S, clr_float16> ? clr_cpu::kFloat16
                                                                   : clr_cpu::kBFloat16;
  static constexpr const char* name = code == clr_cpu::kFloat32   ? "float32"
                                      : code == clr_cpu::kFloat64 ? "float64"
                                      : code == clr_cpu::kFloat16 ? "float16"
                                                                  : "bfloat16";
};

}  // namespace clr_test

#endif /* CLR_EXT_TESTS_STORAGE_INFO_H */
