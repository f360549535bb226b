#include "runtime/rope.h"

#include <algorithm>
#include <cmath>

namespace moerun::runtime {
namespace {

// theta_i = 1 / base^(2i/d), the exponent and power in fp32 as torch computes them.
std::vector<float> default_inv_freq(double base, int64_t dim) {
  std::vector<float> f(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i)
    f[static_cast<size_t>(i)] = 1.0f / std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(dim));
  return f;
}

}  // namespace

RopeTable rope_table(const RopeSpec& rope, int64_t max_position_embeddings, int64_t seq_len) {
  const RopeScaling& s = rope.scaling;
  const int64_t d = rope.dim;
  RopeTable t;
  switch (s.type) {
    case RopeType::none:
      t.inv_freq = default_inv_freq(rope.theta, d);
      break;
    case RopeType::linear:
      t.inv_freq = default_inv_freq(rope.theta, d);
      for (float& f : t.inv_freq) f /= static_cast<float>(s.factor);
      break;
    case RopeType::dynamic: {
      // Dynamic NTK: past the trained context, grow the base (HF _compute_dynamic_ntk_parameters).
      double base = rope.theta;
      if (seq_len > max_position_embeddings) {
        const double ratio = s.factor * static_cast<double>(seq_len) / static_cast<double>(max_position_embeddings) - (s.factor - 1.0);
        base *= std::pow(ratio, static_cast<double>(d) / static_cast<double>(d - 2));
      }
      t.inv_freq = default_inv_freq(base, d);
      break;
    }
    case RopeType::llama3: {
      t.inv_freq = default_inv_freq(rope.theta, d);
      const float old_ctx = static_cast<float>(s.original_max_position_embeddings);
      const float lo = static_cast<float>(s.low_freq_factor), hi = static_cast<float>(s.high_freq_factor);
      const float factor = static_cast<float>(s.factor);
      const float low_freq_wavelen = old_ctx / lo, high_freq_wavelen = old_ctx / hi;
      for (float& f : t.inv_freq) {
        const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
        if (wavelen > low_freq_wavelen) {
          f /= factor;  // long wavelengths: fully interpolated
        } else if (!(wavelen < high_freq_wavelen)) {
          const float smooth = (old_ctx / wavelen - lo) / (hi - lo);  // medium: blend
          f = (1.0f - smooth) * f / factor + smooth * f;
        }
      }
      break;
    }
    case RopeType::yarn: {
      const double base = rope.theta, factor = s.factor;
      const double orig = static_cast<double>(s.original_max_position_embeddings);
      auto correction_dim = [&](double rotations) {
        return static_cast<double>(d) * std::log(orig / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
      };
      double low = correction_dim(s.beta_fast), high = correction_dim(s.beta_slow);
      if (s.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(d - 1));
      if (low == high) high += 0.001;
      t.inv_freq.resize(static_cast<size_t>(d / 2));
      for (int64_t i = 0; i < d / 2; ++i) {
        const float pos_freq = std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(d));
        const float extrapolation = 1.0f / pos_freq, interpolation = 1.0f / (static_cast<float>(factor) * pos_freq);
        const float ramp = std::clamp(static_cast<float>((static_cast<double>(i) - low) / (high - low)), 0.0f, 1.0f);
        const float keep = 1.0f - ramp;  // high-frequency dims (i < low) keep theta_i
        t.inv_freq[static_cast<size_t>(i)] = interpolation * (1.0f - keep) + extrapolation * keep;
      }
      if (s.attention_factor) {
        t.attention_factor = static_cast<float>(*s.attention_factor);
      } else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0) {
        t.attention_factor = static_cast<float>(yarn_mscale(factor, s.mscale) / yarn_mscale(factor, s.mscale_all_dim));
      } else {
        t.attention_factor = static_cast<float>(yarn_mscale(factor, 1.0));
      }
      break;
    }
  }
  return t;
}

}  // namespace moerun::runtime
