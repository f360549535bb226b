// The reference causal attention over a cache: for each new token and query head, scores against
// every cached position up to the token's own, fp32 softmax, weighted sum of values. With a pool,
// (token, head) pairs are split across threads, each with its own score row. The dot products and the
// value accumulation are vector loops (kernels/cpu/vec.h).

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/vec.h"
#include "kernels/ops.h"

namespace moerun::cpu {

namespace {

void attend(const AttentionParams& p, int64_t t, int64_t h, float* scores) {
  const int64_t group = p.n_heads / p.n_kv_heads;  // query heads per KV head (HF repeat_kv)
  const int64_t len = p.positions[t] + 1;
  const int64_t kvh = h / group;
  const float* q = p.q + t * p.q_token_stride + h * p.q_head_stride;
  float max_score = -INFINITY;
  for (int64_t s = 0; s < len; ++s) {
    const float* k = p.k + s * p.k_pos_stride + kvh * p.k_head_stride;
    scores[s] = vec::dot(q, k, p.qk_dim) * p.scale;
    max_score = std::max(max_score, scores[s]);
  }
  float sum = 0.0f;
  for (int64_t s = 0; s < len; ++s) {
    scores[s] = std::exp(scores[s] - max_score);
    sum += scores[s];
  }
  float* out = p.out + (t * p.n_heads + h) * p.v_dim;
  std::fill(out, out + p.v_dim, 0.0f);
  for (int64_t s = 0; s < len; ++s) {
    const float w = scores[s] / sum;
    const float* v = p.v + s * p.v_pos_stride + kvh * p.v_head_stride;
    vec::axpy(out, w, v, p.v_dim);
  }
}

}  // namespace

void attention(const AttentionParams& p) {
  if (!p.pool) {
    for (int64_t t = 0; t < p.n_tokens; ++t)
      for (int64_t h = 0; h < p.n_heads; ++h) attend(p, t, h, p.scratch);
    return;
  }
  int64_t longest = 0;
  for (int64_t t = 0; t < p.n_tokens; ++t) longest = std::max(longest, p.positions[t] + 1);
  p.pool->parallel_for(p.n_tokens * p.n_heads, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> scores;
    if (static_cast<int64_t>(scores.size()) < longest) scores.resize(static_cast<size_t>(longest));
    for (int64_t i = b; i < e; ++i) attend(p, i / p.n_heads, i % p.n_heads, scores.data());
  });
}

}  // namespace moerun::cpu
