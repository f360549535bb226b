// The reference RMSNorm: a plain loop with the sum of squares accumulated in fp32, as HF does.

#include <cmath>

#include "kernels/ops.h"

namespace moerun::cpu {

void rms_norm(const RmsNormParams& p) {
  const int64_t stride = p.stride ? p.stride : p.cols;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * stride;
    float* out = p.out + r * stride;
    float sum = 0.0f;
    for (int64_t i = 0; i < p.cols; ++i) sum += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(p.cols) + p.eps);
    for (int64_t i = 0; i < p.cols; ++i) out[i] = p.weight[i] * (x[i] * inv);
  }
}

}  // namespace moerun::cpu
