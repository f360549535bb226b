// The reference MoE router: every variant of docs/MODELS.md §3 in one function.

#include <algorithm>
#include <cmath>

#include "kernels/cpu/context.h"
#include "kernels/ops.h"

namespace moerun::cpu {
namespace {

// Indices of the k largest values (ties: lower index first), in descending order of value.
void top_k(int32_t* out, const float* v, int64_t n, int64_t k) {
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < n; ++e) {
      bool taken = false;
      for (int64_t i = 0; i < j; ++i) taken |= out[i] == e;
      if (!taken && (best < 0 || v[e] > v[best])) best = e;
    }
    out[j] = static_cast<int32_t>(best);
  }
}

}  // namespace

void route(const RouteParams& p, Context& ctx) {
  const int64_t E = p.n_experts;
  float* scores = grow(ctx.call().route, 2 * E + p.n_group);  // [E] unbiased scores: weights come from these
  float* select = scores + E;           // [E] scores + correction bias: selection uses these
  float* group_score = scores + 2 * E;  // [n_group]
  int32_t* kept = grow(ctx.call().route_groups, p.topk_group);  // [topk_group]
  const int64_t per_group = E / p.n_group;

  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const float* z = p.logits + t * E;
    if (p.score == ScoreFunc::softmax) {
      const float m = *std::max_element(z, z + E);
      float sum = 0.0f;
      for (int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(z[e] - m);
      for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
    } else {
      for (int64_t e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-z[e]));
    }
    for (int64_t e = 0; e < E; ++e) select[e] = scores[e] + (p.correction_bias ? p.correction_bias[e] : 0.0f);

    if (p.method != TopkMethod::greedy) {
      // Group-limited: score each group of consecutive experts, keep the topk_group best groups and
      // mask the others out of the selection (HF V2 fills 0.0, HF V3 -inf; they differ only if fewer
      // than top_k kept experts score above zero).
      for (int64_t g = 0; g < p.n_group; ++g) {
        const float* s = select + g * per_group;
        if (p.method == TopkMethod::group_limited_greedy) {  // DeepSeek-V2: the best expert
          group_score[g] = *std::max_element(s, s + per_group);
        } else {  // noaux_tc (DeepSeek-V3): the sum of the two best
          int32_t two[2];
          const int64_t k2 = std::min<int64_t>(2, per_group);
          top_k(two, s, per_group, k2);
          group_score[g] = 0.0f;
          for (int64_t i = 0; i < k2; ++i) group_score[g] += s[two[i]];
        }
      }
      top_k(kept, group_score, p.n_group, p.topk_group);
      for (int64_t g = 0; g < p.n_group; ++g) {
        if (std::find(kept, kept + p.topk_group, static_cast<int32_t>(g)) != kept + p.topk_group) continue;
        const float masked = p.method == TopkMethod::noaux_tc ? -INFINITY : 0.0f;
        std::fill(select + g * per_group, select + (g + 1) * per_group, masked);
      }
    }

    int32_t* ids = p.expert_ids + t * p.top_k;
    float* w = p.expert_weights + t * p.top_k;
    top_k(ids, select, E, p.top_k);
    float sum = 0.0f;
    for (int64_t j = 0; j < p.top_k; ++j) sum += w[j] = scores[ids[j]];
    for (int64_t j = 0; j < p.top_k; ++j) {
      if (p.norm_topk_prob) w[j] /= sum + 1e-20f;
      w[j] *= p.routed_scaling_factor;
    }
  }
}

}  // namespace moerun::cpu
