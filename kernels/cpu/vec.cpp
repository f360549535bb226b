// The vector loops of kernels/cpu/vec.h. Written so GCC vectorises them without reassociating
// anything: reductions keep sixteen explicit lanes (one zmm, or two ymm) and fold them in a fixed order.

#include "kernels/cpu/vec.h"

#include <bit>

namespace moerun::cpu::vec {
namespace {

constexpr int kLanes = 16;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOERUN_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOERUN_VEC_CLONES
#endif

float fold(const float* acc, float tail) {
  float s = 0.0f;
  for (int j = 0; j < kLanes / 2; ++j) s += acc[j] + acc[j + kLanes / 2];
  return s + tail;
}

}  // namespace

MOERUN_VEC_CLONES float dot(const float* a, const float* b, int64_t n) noexcept {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return fold(acc, tail);
}

MOERUN_VEC_CLONES float sum_squares(const float* a, int64_t n) noexcept {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * a[i + j];
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * a[i];
  return fold(acc, tail);
}

MOERUN_VEC_CLONES void axpy(float* out, float alpha, const float* x, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) out[i] += alpha * x[i];
}

MOERUN_VEC_CLONES void axpy_bf16(float* out, float alpha, const uint16_t* w, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) out[i] += alpha * std::bit_cast<float>(static_cast<uint32_t>(w[i]) << 16);
}

MOERUN_VEC_CLONES void scale_mul(float* out, const float* x, float inv, const float* weight, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * inv);
}

MOERUN_VEC_CLONES void add(float* out, const float* x, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) out[i] += x[i];
}

}  // namespace moerun::cpu::vec
