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
#include <array>
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
struct GroupedTiling {
  int64_t group = 1, chunk = 1, tokens = 1, per_kv = 1, kv_items = 1, items = 0, scores = 0, scratch = 0;
};

GroupedTiling grouped_tiling(const AttentionParams& p, int64_t threads) {
  constexpr int64_t kTileQueries = 12;
  GroupedTiling g;
  g.group = p.n_heads / p.n_kv_heads;
  g.chunk = g.group;
  g.tokens = std::clamp<int64_t>(kTileQueries / g.group, 1, p.n_tokens);
  auto per_kv = [&] { return (g.group + g.chunk - 1) / g.chunk; };
  auto items = [&] { return (p.n_tokens + g.tokens - 1) / g.tokens * p.n_kv_heads * per_kv(); };
  while (g.tokens > 1 && items() < 4 * threads) g.tokens = (g.tokens + 1) / 2;
  while (g.chunk > 1 && items() < threads) g.chunk = (g.chunk + 1) / 2;
  g.per_kv = per_kv();
  g.kv_items = p.n_kv_heads * g.per_kv;
  g.items = items();
  g.scores = g.tokens * g.chunk * longest_row(p);  // to the longest context seen
  g.scratch = attend_avx512_scratch(p);
  return g;
}

void grouped_item(const AttentionParams& p, const GroupedTiling& g, int64_t i, float* scores, float* widened) {
  const int64_t t0 = i / g.kv_items * g.tokens, rest = i % g.kv_items;
  const int64_t h0 = rest / g.per_kv * g.group + rest % g.per_kv * g.chunk;
  const int64_t heads = std::min(g.chunk, (rest / g.per_kv + 1) * g.group - h0);
  attend_avx512(p, t0, std::min(g.tokens, p.n_tokens - t0), h0, heads, scores, widened);
}

void attention_grouped(const AttentionParams& p, Context& ctx) {
  const GroupedTiling g = grouped_tiling(p, ctx.threads());
  ctx.reserve_each(&WorkerScratch::scores, g.scores);
  ctx.reserve_each(&WorkerScratch::kv_rows, g.scratch);
  ctx.parallel_for(g.items, [&](int64_t b, int64_t e, int worker) {
    float* scores = ctx.worker(worker).scores.data();
    float* widened = ctx.worker(worker).kv_rows.data();
    for (int64_t i = b; i < e; ++i) grouped_item(p, g, i, scores, widened);
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

void attention_many_isa(std::span<const AttentionParams> ps, Context& ctx, Isa isa) {
  if (isa != Isa::avx512 || ps.size() == 1) {
    for (const AttentionParams& p : ps) attention_isa(p, ctx, isa);
    return;
  }
  // Every call's items (tiled as that call alone would be, so each gives exactly what it gives
  // alone) in one pass over the pool: a batched decode step's sequences cost one dispatch per layer.
  constexpr size_t kMax = 256;
  if (ps.size() > kMax) {
    attention_many_isa(ps.first(kMax), ctx, isa);
    attention_many_isa(ps.subspan(kMax), ctx, isa);
    return;
  }
  std::array<GroupedTiling, kMax> tiling;
  std::array<int64_t, kMax + 1> first{};  // call c owns items [first[c], first[c + 1])
  int64_t scores = 0, scratch = 0;
  for (size_t c = 0; c < ps.size(); ++c) {
    check_kv_layout(ps[c]);
    tiling[c] = grouped_tiling(ps[c], ctx.threads());
    first[c + 1] = first[c] + tiling[c].items;
    scores = std::max(scores, tiling[c].scores);
    scratch = std::max(scratch, tiling[c].scratch);
  }
  ctx.reserve_each(&WorkerScratch::scores, scores);
  ctx.reserve_each(&WorkerScratch::kv_rows, scratch);
  ctx.parallel_for(first[ps.size()], [&](int64_t b, int64_t e, int worker) {
    float* sc = ctx.worker(worker).scores.data();
    float* widened = ctx.worker(worker).kv_rows.data();
    size_t c = static_cast<size_t>(std::upper_bound(first.begin(), first.begin() + static_cast<int64_t>(ps.size()) + 1, b) - first.begin()) - 1;
    for (int64_t i = b; i < e; ++i) {
      while (i >= first[c + 1]) ++c;
      grouped_item(ps[c], tiling[c], i - first[c], sc, widened);
    }
  });
}

}  // namespace detail

void attention(const AttentionParams& p, Context& ctx) { detail::attention_isa(p, ctx, detail::best_isa()); }
void attention_many(const AttentionParams* ps, size_t count, Context& ctx) {
  detail::attention_many_isa(std::span<const AttentionParams>(ps, count), ctx, detail::best_isa());
}

}  // namespace moerun::cpu
