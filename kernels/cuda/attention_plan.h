#pragma once
// The arithmetic behind cuda::attention (kernels/cuda/attention.cu), kept free of CUDA so the CPU suite
// tests it (tests/kernels/attention_plan_test.cpp): how the cache is split across blocks, which rows a split
// covers, the workspace the split partials need, and the shared-memory layout of the tiled kernel.
//
// The kernel's unit of work is one block = (query tile, KV head, split). A query tile is kQueryTile query
// rows of one KV head's group, taken token-major (query row = token * group + head in group), so the MLA
// absorbed form with 16 heads is one tile per token and a GQA group of 8 is two tokens per tile. A split is
// a contiguous range of cache rows. Everything here depends only on shapes, max_len and the device, never on
// positions, so a decode step captured in a CUDA graph keeps its grid as the context grows: blocks whose
// rows lie past every one of their tokens' lengths exit at once.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/launch.h"

namespace moerun::cuda::attention_plan {

inline constexpr int kThreads = 256;           // 8 warps per block
inline constexpr int kQueryTile = 16;          // query rows per block (4 groups of 4 in the kernel's micro-tiles)
inline constexpr int kMaxQkDim = 576;          // MLA absorbed: kv_lora_rank 512 + qk_rope_head_dim 64
inline constexpr int kMaxVDim = 512;           // the kernel's output columns: 2 chunks of 64 threads x 4 floats
inline constexpr int64_t kRowAlign = 32;       // split lengths are whole tiles of the largest tile shape
inline constexpr int64_t kMinSplitRows = 128;  // below this a split's fixed costs (Q load, partial write) dominate
inline constexpr int kBlocksPerSm = 2;         // target blocks per multiprocessor when splitting

using ::moerun::cuda::ceil_div;
using ::moerun::cuda::round_up;

// Query rows of one KV head (tokens x heads per KV head) and the tiles they make.
constexpr int64_t query_rows(int64_t n_tokens, int64_t group) { return n_tokens * group; }
constexpr int64_t query_tiles(int64_t n_tokens, int64_t group) {
  return ceil_div(query_rows(n_tokens, group), kQueryTile);
}

struct Splits {
  int64_t rows_per_split = 0;  // a multiple of kRowAlign
  int64_t n_splits = 0;        // ceil(max_len / rows_per_split), >= 1
};

// Splits the cache capacity so that (blocks per split) * n_splits is about kBlocksPerSm blocks per
// multiprocessor, but no split shorter than kMinSplitRows (unless max_len itself is). When the query tiles
// alone fill the device (prefill) this is one split, and the kernel writes the output directly.
constexpr Splits plan_splits(int64_t max_len, int64_t blocks_per_split, int sm_count) {
  const int64_t target = std::max<int64_t>(1, int64_t{kBlocksPerSm} * std::max(sm_count, 1));
  const int64_t want = ceil_div(target, std::max<int64_t>(blocks_per_split, 1));
  const int64_t most = std::max<int64_t>(1, max_len / kMinSplitRows);
  const int64_t n = std::clamp<int64_t>(want, 1, most);
  Splits s;
  s.rows_per_split = round_up(ceil_div(std::max<int64_t>(max_len, 1), n), kRowAlign);
  s.n_splits = ceil_div(std::max<int64_t>(max_len, 1), s.rows_per_split);
  return s;
}

// Cache rows [split_begin, split_end) of split s for a query that attends `len` rows (positions[t] + 1).
constexpr int64_t split_begin(const Splits& s, int64_t split) { return split * s.rows_per_split; }
constexpr int64_t split_end(const Splits& s, int64_t split, int64_t len) {
  return std::min(len, (split + 1) * s.rows_per_split);
}
// Splits that hold at least one of a query's rows; the combine reads exactly these, in order.
constexpr int64_t splits_for_len(const Splits& s, int64_t len) {
  return std::max<int64_t>(1, ceil_div(len, s.rows_per_split));
}

// Workspace floats for the split partials: per split and query row (token, head) the unnormalised output
// [v_dim] plus (running max, sum of exponentials). None with one split.
constexpr int64_t partial_out_floats(const Splits& s, int64_t n_tokens, int64_t n_heads, int64_t v_dim) {
  return s.n_splits > 1 ? s.n_splits * n_tokens * n_heads * v_dim : 0;
}
constexpr int64_t partial_stat_floats(const Splits& s, int64_t n_tokens, int64_t n_heads) {
  return s.n_splits > 1 ? s.n_splits * n_tokens * n_heads * 2 : 0;
}
constexpr size_t workspace_bytes(const Splits& s, int64_t n_tokens, int64_t n_heads, int64_t v_dim) {
  return static_cast<size_t>(partial_out_floats(s, n_tokens, n_heads, v_dim) +
                             partial_stat_floats(s, n_tokens, n_heads)) *
         sizeof(float);
}

// Shared-memory row length for a head dimension: padded to a multiple of 4 (float4 reads) and then to an odd
// number of float4s, so the 8 rows one quarter-warp reads at once fall in 8 different 16-byte bank groups.
constexpr int64_t padded_ld(int64_t dim) { return round_up(std::max<int64_t>(dim, 1), 8) + 4; }

// The tiled kernel's shared memory, in floats from the start (every offset a multiple of 4 floats):
//   q     [kQueryTile][ld_qk]            the block's queries (zero rows past the last query)
//   k     [stages][rows][ld_qk]          cache key tiles, double-buffered when stages == 2
//   v     [stages][rows][ld_v]           value tiles; absent when v aliases k (MLA absorbed), which reads k
//   part  [kThreads / rows][kQueryTile][rows]  per-warp-slice partial dot products
//   p     [rows][kQueryTile]             softmax numerators of the current tile
//   stat  [4][kQueryTile]                per query: rescale factor, running max, running sum, length (int)
struct TileLayout {
  int rows = 0;    // cache rows per tile: 32 or 16
  int stages = 0;  // 2: the next tile loads while this one computes
  int64_t ld_qk = 0, ld_v = 0;
  int64_t q = 0, k = 0, v = 0, part = 0, p = 0, stat = 0;  // offsets in floats
  int64_t floats = 0;
  size_t bytes() const { return static_cast<size_t>(floats) * sizeof(float); }
};

constexpr TileLayout tile_layout(int rows, int stages, int64_t qk_dim, int64_t v_dim, bool v_aliases_k) {
  TileLayout t;
  t.rows = rows;
  t.stages = stages;
  t.ld_qk = padded_ld(qk_dim);
  t.ld_v = v_aliases_k ? t.ld_qk : padded_ld(v_dim);
  t.q = 0;
  t.k = t.q + kQueryTile * t.ld_qk;
  t.v = t.k + int64_t{stages} * rows * t.ld_qk;
  const int64_t v_floats = v_aliases_k ? 0 : int64_t{stages} * rows * t.ld_v;
  t.part = t.v + v_floats;
  t.p = t.part + int64_t{kThreads / rows} * kQueryTile * rows;
  t.stat = t.p + int64_t{rows} * kQueryTile;
  t.floats = t.stat + 4 * kQueryTile;
  return t;
}

// The fastest layout that fits `smem_limit` bytes per block (the device's opt-in maximum): 32-row tiles
// double-buffered, then single-buffered, then 16-row tiles. rows == 0: none fits, use the warp kernel.
constexpr TileLayout choose_tile(int64_t qk_dim, int64_t v_dim, bool v_aliases_k, size_t smem_limit) {
  constexpr int kChoices[4][2] = {{32, 2}, {32, 1}, {16, 2}, {16, 1}};
  for (const auto& c : kChoices) {
    const TileLayout t = tile_layout(c[0], c[1], qk_dim, v_dim, v_aliases_k);
    if (t.bytes() <= smem_limit) return t;
  }
  return TileLayout{};
}

}  // namespace moerun::cuda::attention_plan
