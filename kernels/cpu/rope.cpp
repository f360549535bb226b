// The reference rotary embedding (docs/MODELS.md §2.3, §2.4). Angles are position * inv_freq in
// fp32 as HF computes them; cos and sin in fp32, scaled by the attention factor.

#include <cmath>

#include "kernels/ops.h"

namespace moerun::cpu {

void rope(const RopeParams& p, Context&) {
  const int64_t half = p.rot_dim / 2;
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const float pos = static_cast<float>(p.positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * p.inv_freq[i];
      const float c = std::cos(angle) * p.attention_factor, s = std::sin(angle) * p.attention_factor;
      // neox pairs element i with i + d/2; interleaved pairs 2i with 2i + 1.
      const int64_t a = p.style == RopeStyle::neox ? i : 2 * i;
      const int64_t b = p.style == RopeStyle::neox ? i + half : 2 * i + 1;
      for (int64_t h = 0; h < p.n_heads; ++h) {
        float* x = p.x + t * p.token_stride + h * p.head_stride + p.rot_offset;
        const float x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x1 * c + x0 * s;
      }
    }
  }
}

}  // namespace moerun::cpu
