// Elementwise activations.

#include <cmath>

#include "kernels/ops.h"

namespace moerun::cpu {

void silu_mul(const SiluMulParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const float g = p.gate[i];
    p.out[i] = g / (1.0f + std::exp(-g)) * p.up[i];
  }
}

}  // namespace moerun::cpu
