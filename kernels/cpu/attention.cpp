// Causal attention over a cache: for each new token and query head, scores against every cached
// position up to the token's own, fp32 softmax, weighted sum of values. The portable loop below
// takes one (token, head) at a time with the vector loops of kernels/cpu/vec.h; on AVX-512 the heads
// that share a KV head go together (attention_avx512.cpp), so each cache row is read once for the
// group. With a pool the items are split across threads, each with its own score rows (the
// context's worker scratch). The portable loop reads an f32 cache in place; an f16, bf16 or q8_0
// cache it widens one row at a time into the worker's kv_rows (kernels/cpu/kv.h), for all the query
// heads of the row's KV head at once, then runs the same vector loops in the same order, so its
// results equal those over the f32 cache of the widened values.

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/context.h"
#include "kernels/cpu/kv.h"
#include "kernels/cpu/vec.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cpu {

namespace {

void attend(const AttentionParams& p, int64_t t, int64_t h, float* scores) {
  const int64_t group = p.n_heads / p.n_kv_heads;  // query heads per KV head (HF repeat_kv)
  const int64_t len = p.positions[t] + 1;
  const int64_t kvh = h / group;
  const float* q = p.q + t * p.q_token_stride + h * p.q_head_stride;
  float max_score = -INFINITY;
  for (int64_t s = 0; s < len; ++s) {
    const float* k = static_cast<const float*>(p.k) + s * p.k_pos_stride + kvh * p.k_head_stride;
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
    const float* v = static_cast<const float*>(p.v) + s * p.v_pos_stride + kvh * p.v_head_stride;
    vec::axpy(out, w, v, p.v_dim);
  }
}

constexpr int64_t kWidenedHeads = 64;  // most query heads sharing one widened row (sums on the stack)

// attend() for query heads [h0, h0 + heads) of token t (heads <= kWidenedHeads, one KV head) over an
// f16, bf16 or q8_0 cache: each key and value row is widened once into `row` for all of them. Per
// head the arithmetic is attend()'s, in the same order. scores: heads * (positions[t] + 1) floats.
void attend_widened(const AttentionParams& p, int64_t t, int64_t h0, int64_t heads, float* scores, float* row) {
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t len = p.positions[t] + 1;
  const int64_t kvh = h0 / group;
  const float* q = p.q + t * p.q_token_stride + h0 * p.q_head_stride;
  for (int64_t s = 0; s < len; ++s) {
    kv_to_f32(p.kv_type, kv_at(p.k, p.kv_type, s * p.k_pos_stride + kvh * p.k_head_stride), p.qk_dim, row);
    for (int64_t j = 0; j < heads; ++j) scores[j * len + s] = vec::dot(q + j * p.q_head_stride, row, p.qk_dim) * p.scale;
  }
  float sum[kWidenedHeads];
  for (int64_t j = 0; j < heads; ++j) {
    float* sc = scores + j * len;
    float max_score = -INFINITY;
    for (int64_t s = 0; s < len; ++s) max_score = std::max(max_score, sc[s]);
    sum[j] = 0.0f;
    for (int64_t s = 0; s < len; ++s) {
      sc[s] = std::exp(sc[s] - max_score);
      sum[j] += sc[s];
    }
    float* out = p.out + (t * p.n_heads + h0 + j) * p.v_dim;
    std::fill(out, out + p.v_dim, 0.0f);
  }
  for (int64_t s = 0; s < len; ++s) {
    kv_to_f32(p.kv_type, kv_at(p.v, p.kv_type, s * p.v_pos_stride + kvh * p.v_head_stride), p.v_dim, row);
    for (int64_t j = 0; j < heads; ++j)
      vec::axpy(p.out + (t * p.n_heads + h0 + j) * p.v_dim, scores[j * len + s] / sum[j], row, p.v_dim);
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
  ctx.reserve_each(&WorkerScratch::kv_rows, attend_avx512_scratch(p));
  ctx.parallel_for(items(), [&](int64_t b, int64_t e, int worker) {
    float* scores = ctx.worker(worker).scores.data();
    float* widened = ctx.worker(worker).kv_rows.data();
    for (int64_t i = b; i < e; ++i) {
      const int64_t t0 = i / kv_items * tokens, rest = i % kv_items;
      const int64_t h0 = rest / per_kv() * group + rest % per_kv() * chunk;
      const int64_t heads = std::min(chunk, (rest / per_kv() + 1) * group - h0);
      attend_avx512(p, t0, std::min(tokens, p.n_tokens - t0), h0, heads, scores, widened);
    }
  });
}

}  // namespace

void check_kv_layout(const AttentionParams& p) {
  switch (p.kv_type) {
    case KvType::f32:
    case KvType::f16:
    case KvType::bf16: return;
    case KvType::q8_0: break;
    default: throw Error("cpu::attention", moerun::detail::cat("unknown KV cache type ", static_cast<int>(p.kv_type)));
  }
  // q8_0 elements are only addressable per block of 32: every row, head and slice must start on one.
  const std::pair<const char*, int64_t> sizes[] = {{"qk_dim", p.qk_dim},
                                                   {"v_dim", p.v_dim},
                                                   {"k_pos_stride", p.k_pos_stride},
                                                   {"k_head_stride", p.k_head_stride},
                                                   {"v_pos_stride", p.v_pos_stride},
                                                   {"v_head_stride", p.v_head_stride}};
  for (const auto& [name, value] : sizes)
    if (value % kKvBlock != 0)
      throw Error("cpu::attention", moerun::detail::cat("a q8_0 KV cache needs ", name, " (", value,
                                                        ") to be a multiple of 32 (one block); use an f16 or bf16 cache"));
}

void attention_isa(const AttentionParams& p, Context& ctx, Isa isa) {
  check_kv_layout(p);
  if (isa == Isa::avx512) {
    attention_grouped(p, ctx);
    return;
  }
  if (p.kv_type == KvType::f32) {
    ctx.reserve_each(&WorkerScratch::scores, longest_row(p));
    ctx.parallel_for(p.n_tokens * p.n_heads, [&](int64_t b, int64_t e, int worker) {
      float* scores = ctx.worker(worker).scores.data();
      for (int64_t i = b; i < e; ++i) attend(p, i / p.n_heads, i % p.n_heads, scores);
    });
    return;
  }
  // Other types: items are (token, chunk of a KV head's query heads), so each widened row serves
  // the chunk; chunks are halved while there are fewer items than twice the threads.
  const int64_t group = p.n_heads / p.n_kv_heads;
  int64_t chunk = std::min(group, kWidenedHeads);
  auto per_kv = [&] { return (group + chunk - 1) / chunk; };
  while (chunk > 1 && p.n_tokens * p.n_kv_heads * per_kv() < 2 * ctx.threads()) chunk = (chunk + 1) / 2;
  const int64_t items = p.n_tokens * p.n_kv_heads * per_kv();
  ctx.reserve_each(&WorkerScratch::scores, chunk * longest_row(p));
  ctx.reserve_each(&WorkerScratch::kv_rows, std::max(p.qk_dim, p.v_dim));
  ctx.parallel_for(items, [&](int64_t b, int64_t e, int worker) {
    float* scores = ctx.worker(worker).scores.data();
    float* row = ctx.worker(worker).kv_rows.data();
    for (int64_t i = b; i < e; ++i) {
      const int64_t t = i / (p.n_kv_heads * per_kv()), rest = i % (p.n_kv_heads * per_kv());
      const int64_t h0 = rest / per_kv() * group + rest % per_kv() * chunk;
      attend_widened(p, t, h0, std::min(chunk, (rest / per_kv() + 1) * group - h0), scores, row);
    }
  });
}

}  // namespace detail

void attention(const AttentionParams& p, Context& ctx) { detail::attention_isa(p, ctx, detail::best_isa()); }

}  // namespace moerun::cpu
