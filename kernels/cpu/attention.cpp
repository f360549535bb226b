// Causal attention over a cache: for each new token and query head, scores against every cached
// position up to the token's own, fp32 softmax, weighted sum of values. The portable loop below
// takes one (token, head) at a time with the vector loops of kernels/cpu/vec.h; on AVX-512 the heads
// that share a KV head go together (attention_avx512.cpp), so each cache row is read once for the
// group. With a pool the items are split across threads, each with its own score rows (the
// context's worker scratch).

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/context.h"
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

namespace detail {
namespace {

// Cache rows the call's longest query reads: the length of a score row.
int64_t longest_row(const AttentionParams& p) {
  int64_t longest = 0;
  for (int64_t t = 0; t < p.n_tokens; ++t) longest = std::max(longest, p.positions[t] + 1);
  return longest;
}

// AVX-512: items are (block of tokens, chunk of a KV head's query heads), about 12 queries each so
// a block of keys serves them all from L1. Whole groups and up to 12 / group tokens; fewer tokens
// while that leaves under 4 items per thread, and halved groups while there are fewer items than
// threads (decode on few KV heads, e.g. MLA's one latent head; each chunk reads the whole cache, so
// chunks are kept as large as the threads allow).
void attention_grouped(const AttentionParams& p, Context& ctx) {
  constexpr int64_t kTileQueries = 12;
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t threads = ctx.threads();
  int64_t chunk = group, tokens = std::clamp<int64_t>(kTileQueries / group, 1, p.n_tokens);
  auto per_kv = [&] { return (group + chunk - 1) / chunk; };
  auto items = [&] { return (p.n_tokens + tokens - 1) / tokens * p.n_kv_heads * per_kv(); };
  while (tokens > 1 && items() < 4 * threads) tokens = (tokens + 1) / 2;
  while (chunk > 1 && items() < threads) chunk = (chunk + 1) / 2;
  const int64_t longest = longest_row(p);
  const int64_t kv_items = p.n_kv_heads * per_kv();
  ctx.reserve_each(&WorkerScratch::scores, tokens * chunk * longest);  // to the longest context seen
  ctx.parallel_for(items(), [&](int64_t b, int64_t e, int worker) {
    float* scores = ctx.worker(worker).scores.data();
    for (int64_t i = b; i < e; ++i) {
      const int64_t t0 = i / kv_items * tokens, rest = i % kv_items;
      const int64_t h0 = rest / per_kv() * group + rest % per_kv() * chunk;
      const int64_t heads = std::min(chunk, (rest / per_kv() + 1) * group - h0);
      attend_avx512(p, t0, std::min(tokens, p.n_tokens - t0), h0, heads, scores);
    }
  });
}

}  // namespace

void attention_isa(const AttentionParams& p, Context& ctx, Isa isa) {
  if (isa == Isa::avx512) {
    attention_grouped(p, ctx);
    return;
  }
  ctx.reserve_each(&WorkerScratch::scores, longest_row(p));
  ctx.parallel_for(p.n_tokens * p.n_heads, [&](int64_t b, int64_t e, int worker) {
    float* scores = ctx.worker(worker).scores.data();
    for (int64_t i = b; i < e; ++i) attend(p, i / p.n_heads, i % p.n_heads, scores);
  });
}

}  // namespace detail

void attention(const AttentionParams& p, Context& ctx) { detail::attention_isa(p, ctx, detail::best_isa()); }

}  // namespace moerun::cpu
