// Quantization of weight rows to q8_0 / q4_0 and back (layout: kernels/cpu/quant.h), once per
// weight at load: q8_0 in loops the compiler vectorizes; q4_0 tries two scales per block and keeps
// the better one, favouring the scale over speed.

#include "kernels/cpu/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/ops.h"

namespace moerun::cpu {
namespace {

// Quantizes one block of 32 with scale d (already fp16-representable): q = clamp(round(w / d)).
void quantize_block(const float* w, float d, int lo, int hi, int* q) {
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQuantBlock; ++j)
    q[j] = std::clamp(static_cast<int>(std::nearbyint(w[j] * inv)), lo, hi);
}

float block_error(const float* w, float d, const int* q) {
  float e = 0.0f;
  for (int j = 0; j < kQuantBlock; ++j) e += (w[j] - d * static_cast<float>(q[j])) * (w[j] - d * static_cast<float>(q[j]));
  return e;
}

float rounded_scale(float d) { return f16_to_f32(f32_to_f16(d)); }

// q8_0 rows: d = max |w| / 127 rounded to fp16, q = clamp(nearest-even(w * (1 / d)), -127, 127),
// in loops the compiler vectorizes (1.0 ns per weight at the build's SSE2 baseline, against 3.5 ns
// for a libm nearbyintf call and a branchy max per weight; one thread, 2048-wide rows). The
// rounding to the nearest integer, ties to even, adds and subtracts 1.5 * 2^23, exact for |x| <
// 2^22 (here |x| <= 1.5 * 127: d is at worst rounded down to 2/3 of max |w| / 127, among fp16
// subnormals, or to 0). A NaN weight never wins the max; a NaN product (from a NaN or an infinite
// weight) stores -127. tests/runtime/load_test.cpp checks the bits against the formula written
// plainly, on edge values and on every converted matrix.
void quantize_row_q8(const float* src, int64_t k, uint8_t* out) {
  constexpr float kRound = 0x1.8p23f;
  const int64_t nb = k / kQuantBlock, qb = quant_block_bytes(DType::q8_0);
  for (int64_t g = 0; g * kQuantGroupBlocks < nb; ++g) {
    const int64_t first = g * kQuantGroupBlocks, count = std::min(kQuantGroupBlocks, nb - first);
    uint8_t* quants = out + quant_group_offset(DType::q8_0, g);
    uint8_t* scales = quants + count * qb;
    const float* w0 = src + first * kQuantBlock;
    // A group's blocks in three passes (max |w|, scales, quants): the scales' divisions and fp16
    // conversions of different blocks then overlap instead of stalling each block's own loop.
    float amax[kQuantGroupBlocks], inv[kQuantGroupBlocks];
    for (int64_t b = 0; b < count; ++b) {
      // In 8 lanes: a NaN never wins a comparison, and max is exact, so the order does not matter.
      const float* w = w0 + b * kQuantBlock;
      float lane[8] = {};  // from 0, not from w[0..7]: a NaN there must not become the max
      for (int i = 0; i < kQuantBlock; i += 8)
        for (int l = 0; l < 8; ++l) {
          const float a = std::fabs(w[i + l]);
          lane[l] = a > lane[l] ? a : lane[l];
        }
      for (int l = 0; l < 4; ++l) lane[l] = lane[l + 4] > lane[l] ? lane[l + 4] : lane[l];
      for (int l = 0; l < 2; ++l) lane[l] = lane[l + 2] > lane[l] ? lane[l + 2] : lane[l];
      amax[b] = lane[1] > lane[0] ? lane[1] : lane[0];
    }
    for (int64_t b = 0; b < count; ++b) {
      const uint16_t h = f32_to_f16(amax[b] / 127.0f);
      const float d = f16_to_f32(h);
      inv[b] = d != 0.0f ? 1.0f / d : 0.0f;
      std::memcpy(scales + 2 * b, &h, 2);
    }
    for (int64_t b = 0; b < count; ++b) {
      const float* w = w0 + b * kQuantBlock;
      const float s = inv[b];
      uint8_t* q = quants + b * qb;
      for (int i = 0; i < kQuantBlock; ++i) {
        float r = (w[i] * s + kRound) - kRound;
        r = r < -127.0f ? -127.0f : r > 127.0f ? 127.0f : r;  // a NaN passes both
        q[i] = static_cast<uint8_t>((r == r ? static_cast<int>(r) : -127) + 128);
      }
    }
  }
}

}  // namespace

uint16_t f32_to_f16(float f) noexcept {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504: inf
  if (abs < 0x38800000u) {
    // Below the smallest normal (2^-14): a subnormal multiple of 2^-24, rounded to nearest even.
    float a;
    std::memcpy(&a, &abs, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(std::ldexp(a, 24))));
  }
  // Normal: rebias the exponent and round the 23-bit mantissa to 10 bits (nearest even); a carry
  // into the exponent is the correct result.
  const uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
}

void quantize_row(DType to, const float* src, int64_t k, void* dst) {
  auto* out = static_cast<uint8_t*>(dst);
  if (to == DType::q8_0) {
    quantize_row_q8(src, k, out);
    return;
  }
  const int64_t nb = k / kQuantBlock, qb = quant_block_bytes(to);
  for (int64_t g = 0; g * kQuantGroupBlocks < nb; ++g) {
    const int64_t first = g * kQuantGroupBlocks, count = std::min(kQuantGroupBlocks, nb - first);
    uint8_t* quants = out + quant_group_offset(to, g);
    uint8_t* scales = quants + count * qb;
    for (int64_t j = 0; j < count; ++j) {
      const float* w = src + (first + j) * kQuantBlock;
      float amax = 0.0f, extreme = 0.0f;
      for (int i = 0; i < kQuantBlock; ++i)
        if (std::fabs(w[i]) > amax) {
          amax = std::fabs(w[i]);
          extreme = w[i];
        }
      // q4_0 (q8_0 takes its own path above). The asymmetric range [-8, 7] gives the extreme value
      // its own level when it maps to -8; the symmetric max/7 is sometimes better (when the
      // extreme's sign has few neighbours).
      const float d8 = rounded_scale(extreme / -8.0f), d7 = rounded_scale(amax / 7.0f);
      int q[kQuantBlock], q7[kQuantBlock];
      quantize_block(w, d8, -8, 7, q);
      quantize_block(w, d7, -8, 7, q7);
      float d = d8;
      if (block_error(w, d7, q7) < block_error(w, d8, q)) {
        d = d7;
        std::copy(q7, q7 + kQuantBlock, q);
      }
      for (int i = 0; i < kQuantBlock / 2; ++i)
        quants[j * qb + i] = static_cast<uint8_t>((q[i] + 8) | ((q[i + kQuantBlock / 2] + 8) << 4));
      const uint16_t h = f32_to_f16(d);
      std::memcpy(scales + 2 * j, &h, 2);
    }
  }
}

void dequantize_row(DType from, const void* src, int64_t k, float* dst) {
  const int64_t nb = k / kQuantBlock, qb = quant_block_bytes(from);
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t g = 0; g * kQuantGroupBlocks < nb; ++g) {
    const int64_t first = g * kQuantGroupBlocks, count = std::min(kQuantGroupBlocks, nb - first);
    const uint8_t* quants = in + quant_group_offset(from, g);
    const uint8_t* scales = quants + count * qb;
    for (int64_t j = 0; j < count; ++j) {
      uint16_t h;
      std::memcpy(&h, scales + 2 * j, 2);
      const float d = f16_to_f32(h);
      float* w = dst + (first + j) * kQuantBlock;
      const uint8_t* q = quants + j * qb;
      if (from == DType::q8_0) {
        for (int i = 0; i < kQuantBlock; ++i) w[i] = d * static_cast<float>(static_cast<int>(q[i]) - 128);
      } else {
        for (int i = 0; i < kQuantBlock / 2; ++i) {
          w[i] = d * static_cast<float>(static_cast<int>(q[i] & 15) - 8);
          w[i + kQuantBlock / 2] = d * static_cast<float>(static_cast<int>(q[i] >> 4) - 8);
        }
      }
    }
  }
}

}  // namespace moerun::cpu
