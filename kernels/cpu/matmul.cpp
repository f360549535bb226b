// The reference projection y = x W^T + b: one dot product per output, fp32 accumulation, weights
// converted element by element from their stored dtype.

#include <vector>

#include "kernels/ops.h"

namespace moerun::cpu {
namespace {

// One weight row as fp32, converted once per row so the inner loop is a plain dot product.
void load_row(float* dst, const void* weight, DType dtype, int64_t row, int64_t n) {
  const int64_t base = row * n;
  switch (dtype) {
    case DType::f32: {
      const float* w = static_cast<const float*>(weight) + base;
      for (int64_t i = 0; i < n; ++i) dst[i] = w[i];
      break;
    }
    case DType::bf16: {
      const uint16_t* w = static_cast<const uint16_t*>(weight) + base;
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(w[i]);
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) dst[i] = load_f32(weight, dtype, base + i);
      break;
  }
}

// fp32 dot product with eight independent partial sums: a fixed summation order the compiler can
// keep in one vector register (a single running sum would serialise every add).
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

}  // namespace

void matmul(const MatmulParams& p) {
  const int64_t xs = p.x_stride ? p.x_stride : p.in_features;
  const int64_t os = p.out_stride ? p.out_stride : p.out_features;
  std::vector<float> w(static_cast<size_t>(p.in_features));
  for (int64_t o = 0; o < p.out_features; ++o) {
    load_row(w.data(), p.weight, p.weight_dtype, o, p.in_features);
    const float b = p.bias ? p.bias[o] : 0.0f;
    for (int64_t t = 0; t < p.n; ++t) {
      p.out[t * os + o] = dot(p.x + t * xs, w.data(), p.in_features) + b;
    }
  }
}

}  // namespace moerun::cpu
