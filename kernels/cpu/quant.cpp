// Scalar quantization of weight rows to q8_0 / q4_0 and back (layout: kernels/cpu/quant.h). Runs
// once per weight at load, so it favours the better scale over speed.

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
  const int64_t nb = k / kQuantBlock, qb = quant_block_bytes(to);
  auto* out = static_cast<uint8_t*>(dst);
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
      int q[kQuantBlock];
      float d;
      if (to == DType::q8_0) {
        d = rounded_scale(amax / 127.0f);
        quantize_block(w, d, -127, 127, q);
        for (int i = 0; i < kQuantBlock; ++i) quants[j * qb + i] = static_cast<uint8_t>(q[i] + 128);
      } else {
        // The asymmetric range [-8, 7] gives the extreme value its own level when it maps to -8;
        // the symmetric max/7 is sometimes better (when the extreme's sign has few neighbours).
        const float d8 = rounded_scale(extreme / -8.0f), d7 = rounded_scale(amax / 7.0f);
        int q7[kQuantBlock];
        quantize_block(w, d8, -8, 7, q);
        quantize_block(w, d7, -8, 7, q7);
        d = d8;
        if (block_error(w, d7, q7) < block_error(w, d8, q)) {
          d = d7;
          std::copy(q7, q7 + kQuantBlock, q);
        }
        for (int i = 0; i < kQuantBlock / 2; ++i)
          quants[j * qb + i] = static_cast<uint8_t>((q[i] + 8) | ((q[i + kQuantBlock / 2] + 8) << 4));
      }
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
