#pragma once
// Small helpers shared by the AVX-512 kernel files (matmul_avx512.cpp, attention_avx512.cpp). Each
// carries its own target attribute, a subset of those files' targets, so the rest of the library
// stays baseline x86-64.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace moerun::cpu::detail {

// The first min(count, 16) lanes (none for count <= 0).
__attribute__((target("avx512f,bmi2"))) inline __mmask16 first_lanes(int64_t count) {
  return static_cast<__mmask16>(_bzhi_u32(0xffffu, static_cast<unsigned>(std::clamp<int64_t>(count, 0, 16))));
}

}  // namespace moerun::cpu::detail
