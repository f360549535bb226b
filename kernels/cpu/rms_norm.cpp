// RMSNorm with the sum of squares accumulated in fp32, as HF does (in sixteen lanes, kernels/cpu/vec.h).

#include <cmath>

#include "kernels/cpu/vec.h"
#include "kernels/ops.h"

namespace moerun::cpu {

void rms_norm(const RmsNormParams& p, Context&) {
  const int64_t stride = p.stride ? p.stride : p.cols;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * stride;
    float* out = p.out + r * stride;
    const float sum = vec::sum_squares(x, p.cols);
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(p.cols) + p.eps);
    vec::scale_mul(out, x, inv, p.weight, p.cols);
  }
}

}  // namespace moerun::cpu
