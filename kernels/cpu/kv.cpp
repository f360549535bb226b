// KV cache element conversions (kernels/cpu/kv.h). Storing is a few rows per step, so it is plain
// scalar code; widening runs for every cache row the portable attention loop reads, so it is written
// branch-free for GCC to vectorise (target_clones, as kernels/cpu/vec.cpp) and stays exact.

#include "kernels/cpu/kv.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "kernels/cpu/quant.h"
#include "kernels/ops.h"

namespace moerun::cpu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOERUN_KV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOERUN_KV_CLONES
#endif

constexpr uint16_t kF16Max = 0x7bff;  // 65504
constexpr uint16_t kF16NaN = 0x7e00;

// f16 -> fp32 without branches, exact for every input (subnormals, infinities and NaN included):
// normals and inf/NaN rebias the exponent by a multiply by 2^-112 of the bits shifted into an fp32
// with exponent + 224; subnormals (exponent 0) are man * 2^-24, made as (0.5 + man * 2^-24) - 0.5.
inline float f16_bits_to_f32(uint16_t h) noexcept {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normal = std::bit_cast<float>((two_w >> 4) + (0xe0u << 23)) * 0x1p-112f;
  const float subnormal = std::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? std::bit_cast<uint32_t>(subnormal) : std::bit_cast<uint32_t>(normal);
  return std::bit_cast<float>(sign | magnitude);
}

// One q8_0 block (kv.h has the rule) from 32 floats.
void quantize_block(const float* x, uint8_t* block) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < kKvBlock; ++i) {
    finite = finite && std::isfinite(x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  int8_t* q = reinterpret_cast<int8_t*>(block + 2);
  uint16_t h = 0;
  if (!finite) {
    h = kF16NaN;
    std::fill(q, q + kKvBlock, int8_t{0});
  } else {
    h = f32_to_f16(amax / 127.0f);
    if (h == 0x7c00u) h = kF16Max;  // amax past 127 * 65504: the largest scale, the extremes clamp
    const float d = f16_to_f32(h);
    for (int64_t i = 0; i < kKvBlock; ++i)
      q[i] = d == 0.0f ? int8_t{0} : static_cast<int8_t>(std::clamp(std::nearbyint(x[i] / d), -127.0f, 127.0f));
  }
  std::memcpy(block, &h, 2);
}

}  // namespace

void kv_from_f32(KvType t, const float* src, int64_t n, void* dst) noexcept {
  auto* out = static_cast<uint8_t*>(dst);
  switch (t) {
    case KvType::f32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); break;
    case KvType::f16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      break;
    case KvType::bf16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      break;
    case KvType::q8_0:
      for (int64_t b = 0; b < n / kKvBlock; ++b) quantize_block(src + b * kKvBlock, out + b * kKvBlockBytes);
      break;
  }
}

MOERUN_KV_CLONES void kv_to_f32(KvType t, const void* src, int64_t n, float* dst) noexcept {
  const auto* in = static_cast<const uint8_t*>(src);
  switch (t) {
    case KvType::f32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); break;
    case KvType::f16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        dst[i] = f16_bits_to_f32(h);
      }
      break;
    case KvType::bf16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        dst[i] = std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
      }
      break;
    case KvType::q8_0:
      for (int64_t b = 0; b < n / kKvBlock; ++b) {
        const uint8_t* block = in + b * kKvBlockBytes;
        uint16_t h;
        std::memcpy(&h, block, 2);
        const float d = f16_bits_to_f32(h);
        for (int64_t i = 0; i < kKvBlock; ++i)
          dst[b * kKvBlock + i] = d * static_cast<float>(static_cast<int8_t>(block[2 + i]));
      }
      break;
  }
}

}  // namespace moerun::cpu
