#pragma once
// RoPE frequencies for every scaling type (docs/MODELS.md §2.3, §2.5), computed in fp32 the way
// HF's modeling_rope_utils does, so angles match at every position.

#include <cstdint>
#include <vector>

#include "moerun/config.h"

namespace moerun::runtime {

struct RopeTable {
  std::vector<float> inv_freq;  // [dim / 2]
  float attention_factor = 1.0f;  // multiplies cos and sin (YaRN); 1 otherwise
};

// `seq_len` (the largest position in the forward call + 1) matters only for dynamic NTK scaling,
// which HF recomputes when the sequence outgrows max_position_embeddings.
RopeTable rope_table(const RopeSpec& rope, int64_t max_position_embeddings, int64_t seq_len);

}  // namespace moerun::runtime
