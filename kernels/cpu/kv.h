#pragma once
// KV cache elements (KvType, moerun/dtype.h) to and from fp32, a span at a time: store_rows converts
// new rows with kv_from_f32, the portable attention loop widens one key or value row at a time with
// kv_to_f32, and the tests use both as the reference of every other path.
//
// Exactly what is stored for each fp32 x:
//   f32   x itself.
//   f16   x rounded to nearest even (f32_to_f16: overflow to inf, NaN stays NaN).
//   bf16  x rounded to nearest even (f32_to_bf16).
//   q8_0  each block of 32 on its own (layout in moerun/dtype.h): amax = max |x| over the block,
//         d = fp16(amax / 127) (fp32 division, then nearest even; saturated to 65504 rather than
//         inf), q = clamp(nearbyint(x / d), -127, 127) with x / d an fp32 division and nearbyint ties
//         to even. Quantizing with the rounded d (not amax / 127) keeps every |x - d q| <= d / 2 while
//         d is a normal fp16 (amax >= 127 * 2^-14); below that d is subnormal, coarse, and the clamp
//         may cost more. amax == 0 (or d rounding to 0) stores d = 0 and q = 0; a block with a NaN or
//         infinity stores d = NaN and q = 0, so all of it reads back NaN, as an f32 cache would
//         poison the same scores.
// Reading back is exact: f16 and bf16 widen exactly, and d * q (an 11-bit by 8-bit product) is exact
// in fp32, so every path that widens an element gets the same float.

#include <cstdint>

#include "moerun/dtype.h"

namespace moerun::cpu {

// Byte offset of cache element e (q8_0: e a multiple of 32, the start of its block).
constexpr int64_t kv_offset(KvType t, int64_t e) noexcept {
  switch (t) {
    case KvType::f32: return e * 4;
    case KvType::q8_0: return e / kKvBlock * static_cast<int64_t>(kKvBlockBytes);
    default: return e * 2;
  }
}
inline const void* kv_at(const void* cache, KvType t, int64_t e) noexcept {
  return static_cast<const char*>(cache) + kv_offset(t, e);
}
inline void* kv_at(void* cache, KvType t, int64_t e) noexcept { return static_cast<char*>(cache) + kv_offset(t, e); }

// dst (kv_offset(t, n) bytes) = src[0, n) converted to t; q8_0: n a multiple of 32.
void kv_from_f32(KvType t, const float* src, int64_t n, void* dst) noexcept;
// dst[0, n) = the n elements at src widened to fp32; q8_0: n a multiple of 32, src a block start.
void kv_to_f32(KvType t, const void* src, int64_t n, float* dst) noexcept;

}  // namespace moerun::cpu
