// y = x W^T + b on the CPU: output rows split across the thread pool, fp32 accumulation in sixteen
// fixed lanes. Weights are read in their stored dtype; bf16 rows are widened inside the dot product
// for a few tokens (decode reads each weight once) and once per row for many tokens (prefill reuses
// the widened row for every token). The dot products are compiled for AVX-512, AVX2+FMA and plain
// x86-64 and picked at run time (GCC target_clones).

#include <bit>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"

namespace moerun::cpu {
namespace {

constexpr int kLanes = 16;
// Up to this many tokens, bf16 weights are widened inside the dot product; beyond it, once per row.
constexpr int64_t kFusedMaxTokens = 4;

#define MOERUN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

float reduce(const float* acc, float tail) {
  float s = 0.0f;
  for (int j = 0; j < kLanes / 2; ++j) s += acc[j] + acc[j + kLanes / 2];
  return s + tail;
}

MOERUN_CPU_CLONES float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return reduce(acc, tail);
}

float widen(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

MOERUN_CPU_CLONES float dot_bf16(const float* x, const uint16_t* w, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * widen(w[i + j]);
  float tail = 0.0f;
  for (; i < n; ++i) tail += x[i] * widen(w[i]);
  return reduce(acc, tail);
}

MOERUN_CPU_CLONES void widen_row(float* dst, const uint16_t* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = widen(w[i]);
}

}  // namespace

void matmul(const MatmulParams& p) {
  const int64_t xs = p.x_stride ? p.x_stride : p.in_features;
  const int64_t os = p.out_stride ? p.out_stride : p.out_features;
  const int64_t in = p.in_features;
  auto rows = [&](int64_t o0, int64_t o1) {
    thread_local std::vector<float> row;  // one widened weight row per thread, reused across calls
    for (int64_t o = o0; o < o1; ++o) {
      const float b = p.bias ? p.bias[o] : 0.0f;
      const float* w = nullptr;
      if (p.weight_dtype == DType::f32) {
        w = static_cast<const float*>(p.weight) + o * in;
      } else if (p.weight_dtype == DType::bf16 && p.n <= kFusedMaxTokens) {
        const uint16_t* wb = static_cast<const uint16_t*>(p.weight) + o * in;
        for (int64_t t = 0; t < p.n; ++t) p.out[t * os + o] = dot_bf16(p.x + t * xs, wb, in) + b;
        continue;
      } else {
        if (static_cast<int64_t>(row.size()) < in) row.resize(static_cast<size_t>(in));
        if (p.weight_dtype == DType::bf16) {
          widen_row(row.data(), static_cast<const uint16_t*>(p.weight) + o * in, in);
        } else {
          for (int64_t i = 0; i < in; ++i) row[static_cast<size_t>(i)] = load_f32(p.weight, p.weight_dtype, o * in + i);
        }
        w = row.data();
      }
      for (int64_t t = 0; t < p.n; ++t) p.out[t * os + o] = dot_f32(p.x + t * xs, w, in) + b;
    }
  };
  if (p.pool) {
    p.pool->parallel_for(p.out_features, rows, /*align=*/16);
  } else {
    rows(0, p.out_features);
  }
}

}  // namespace moerun::cpu
