#pragma once
// The arithmetic behind cuda::attention (kernels/cuda/attention.cu), kept free of CUDA so the CPU suite
// tests it (tests/kernels/attention_plan_test.cpp): how the cache is split across blocks, which rows a split
// covers, the workspace the split partials need, the shared-memory layouts of the tiled and MMA kernels,
// and the layout override the GPU tests use to run every kernel shape on any device.
//
// The tiled kernel's unit of work is one block = (query tile, KV head, split). A query tile is kQueryTile
// query rows of one KV head's group, taken token-major (query row = token * group + head in group), so the
// MLA absorbed form with 16 heads is one tile per token and a GQA group of 8 is two tokens per tile. The MMA
// kernel (MLA absorbed, 16-bit cache) takes kMmaQueryRows query rows per block the same way. A split is a
// contiguous range of cache rows.
//
// Graph safety and live lengths: the split COUNT depends only on shapes, max_len and the device, never on
// positions, so a decode step captured in a CUDA graph keeps its grid as the context grows. The split
// LENGTH is computed on the device from the live length (the longest attended length of the step's tokens,
// max over t of positions[t] + 1, which every block reads): live_rows_per_split below, round_up(ceil(live /
// n_splits), kRowAlign), so at position 1k of a 32k context all splits share the 1k rows instead of the first
// few doing all the work. The kernels and the combine compute it identically, and the combine reads splits in
// a fixed order (deterministic). With one split the range is simply [0, max_len).

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
  int64_t rows_per_split = 0;  // at capacity (live length max_len); a multiple of kRowAlign
  int64_t n_splits = 0;        // ceil(max_len / rows_per_split), >= 1: the grid's split dimension
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

// Rows per split for the live length `live` (the longest length any token of the step attends, <= max_len):
// n_splits fixed, the length shrunk to what the live rows need, in whole tiles (`align` rows). With
// live <= max_len this never exceeds the capacity plan's rows_per_split, so n_splits of these cover live.
MOERUN_HOST_DEVICE constexpr int64_t live_rows_per_split(int64_t live, int64_t n_splits, int64_t align) {
  const int64_t n = n_splits > 1 ? n_splits : 1;
  const int64_t l = live > 1 ? live : 1;
  return ((l + n - 1) / n + align - 1) / align * align;
}
// Cache rows [split * rows, min(len, (split + 1) * rows)) of a split for a query attending `len` rows.
MOERUN_HOST_DEVICE constexpr int64_t live_split_begin(int64_t rows, int64_t split) { return split * rows; }
MOERUN_HOST_DEVICE constexpr int64_t live_split_end(int64_t rows, int64_t split, int64_t len) {
  return len < (split + 1) * rows ? len : (split + 1) * rows;
}
// Splits holding at least one of a query's `len` rows, capped at n_splits: the combine reads exactly these.
MOERUN_HOST_DEVICE constexpr int64_t live_splits_for_len(int64_t rows, int64_t n_splits, int64_t len) {
  const int64_t k = len > 0 ? (len + rows - 1) / rows : 1;
  return k < 1 ? 1 : (k > n_splits ? n_splits : k);
}

// Cache rows [split_begin, split_end) of split s at capacity for a query that attends `len` rows.
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

// Shared-memory row length for a head dimension, in elements: padded to a multiple of 4 and then to an odd
// number of 4-element groups, so the 8 rows one quarter-warp reads at once (a float4 of an fp32 tile, 8 bytes
// of a 16-bit tile) fall in 8 different bank groups.
constexpr int64_t padded_ld(int64_t dim) { return round_up(std::max<int64_t>(dim, 1), 8) + 4; }

// The tiled kernel's shared memory, in floats from the start (every offset a multiple of 4 floats):
//   q     [kQueryTile][ld_qk] fp32          the block's queries (zero rows past the last query)
//   k     [stages][rows][ld_qk] cache type  key tiles as stored (f32, bf16 or f16: widened when read),
//                                           double-buffered when stages == 2
//   v     [stages][rows][ld_v] cache type   value tiles; absent when v aliases k (MLA absorbed), which reads k
//   part  [kThreads / rows][kQueryTile][rows]  per-warp-slice partial dot products
//   p     [rows][kQueryTile]                softmax numerators of the current tile
//   stat  [4][kQueryTile] + 4               per query: rescale factor, running max, running sum, length (int);
//                                           then the step's live length (int)
struct TileLayout {
  int rows = 0;        // cache rows per tile: 32 or 16
  int stages = 0;      // 2: the next tile loads while this one computes
  int elem_bytes = 4;  // cache element: 4 (f32) or 2 (bf16, f16)
  int64_t ld_qk = 0, ld_v = 0;  // in elements
  int64_t q = 0, k = 0, v = 0, part = 0, p = 0, stat = 0;  // offsets in floats
  int64_t floats = 0;
  size_t bytes() const { return static_cast<size_t>(floats) * sizeof(float); }
};

constexpr TileLayout tile_layout(int rows, int stages, int64_t qk_dim, int64_t v_dim, bool v_aliases_k,
                                 int elem_bytes = 4) {
  TileLayout t;
  t.rows = rows;
  t.stages = stages;
  t.elem_bytes = elem_bytes;
  t.ld_qk = padded_ld(qk_dim);
  t.ld_v = v_aliases_k ? t.ld_qk : padded_ld(v_dim);
  t.q = 0;
  t.k = t.q + kQueryTile * t.ld_qk;
  // ld is a multiple of 4 elements, so a 16-bit tile is a whole number of 16-byte pieces.
  t.v = t.k + int64_t{stages} * rows * t.ld_qk * elem_bytes / 4;
  const int64_t v_floats = v_aliases_k ? 0 : int64_t{stages} * rows * t.ld_v * elem_bytes / 4;
  t.part = t.v + v_floats;
  t.p = t.part + int64_t{kThreads / rows} * kQueryTile * rows;
  t.stat = t.p + int64_t{rows} * kQueryTile;
  t.floats = t.stat + 4 * kQueryTile + 4;  // + the live length (one int, padded to 16 bytes)
  return t;
}

// The fastest layout that fits `smem_limit` bytes per block (the device's opt-in maximum): 32-row tiles
// double-buffered, then single-buffered, then 16-row tiles. rows == 0: none fits, use the warp kernel.
constexpr TileLayout choose_tile(int64_t qk_dim, int64_t v_dim, bool v_aliases_k, size_t smem_limit,
                                 int elem_bytes = 4) {
  constexpr int kChoices[4][2] = {{32, 2}, {32, 1}, {16, 2}, {16, 1}};
  for (const auto& c : kChoices) {
    const TileLayout t = tile_layout(c[0], c[1], qk_dim, v_dim, v_aliases_k, elem_bytes);
    if (t.bytes() <= smem_limit) return t;
  }
  return TileLayout{};
}

// ------------------------------------------------------------------------------------------------
// The MMA kernel (MLA absorbed decode on tensor cores, sm_80+): kMmaQueryRows query rows per block (8 warps:
// 4 row groups of 16 x 2 halves), cache tiles of kMmaRows rows copied as stored (bf16 or f16) with cp.async,
// kMmaStages deep where it fits. Shared memory, in bytes from the start:
//   q     [kMmaQueryRows][ld] 16-bit   queries rounded to the cache's 16-bit type
//   k     [stages][kMmaRows][ld] 16-bit  cache tiles; values are their first v_dim columns (k == v)
//   x     [8 warps][16][kMmaRows] fp32  each warp's half of the score dot products, summed by its partner
//   len   [kMmaQueryRows] int           attended length per query row, then one int (live length)
// ld = qk_dim + 8 elements: a row is an odd number of 16-byte pieces, so ldmatrix's 8 row reads of one
// 8x8 matrix hit 8 different bank groups.
inline constexpr int kMmaQueryRows = 64;
inline constexpr int kMmaRows = 32;
inline constexpr int kMmaMaxStages = 3;

constexpr int64_t mma_ld(int64_t qk_dim) { return qk_dim + 8; }

struct MmaLayout {
  int stages = 0;  // 0: does not fit
  int64_t ld = 0;  // elements
  int64_t q = 0, k = 0, x = 0, len = 0, bytes = 0;  // byte offsets and total
};

constexpr MmaLayout mma_layout(int64_t qk_dim, int stages) {
  MmaLayout m;
  m.stages = stages;
  m.ld = mma_ld(qk_dim);
  m.q = 0;
  m.k = m.q + kMmaQueryRows * m.ld * 2;
  m.x = m.k + int64_t{stages} * kMmaRows * m.ld * 2;
  m.len = m.x + int64_t{kThreads / 32} * 16 * kMmaRows * 4;
  m.bytes = m.len + (kMmaQueryRows + 4) * 4;
  return m;
}

// The deepest pipeline (3, then 2 stages) that fits smem_limit; stages == 0 where none does.
constexpr MmaLayout choose_mma(int64_t qk_dim, size_t smem_limit) {
  for (int st = kMmaMaxStages; st >= 2; --st) {
    const MmaLayout m = mma_layout(qk_dim, st);
    if (static_cast<size_t>(m.bytes) <= smem_limit) return m;
  }
  return MmaLayout{};
}

// Whether the MMA kernel can run these shapes: values alias keys (MLA absorbed), a 16-bit cache, head dims
// in whole MMA steps (qk_dim % 16 for the score k-steps split between two warps; v_dim % 32 for pairs of
// 8-column tiles per half), rows copyable in 16-byte pieces, an sm_80+ device and the shared memory.
constexpr bool mma_shapes_fit(int64_t qk_dim, int64_t v_dim, bool v_aliases_k, int elem_bytes, bool rows_aligned16) {
  return v_aliases_k && elem_bytes == 2 && rows_aligned16 && qk_dim % 16 == 0 && qk_dim >= 32 &&
         qk_dim <= kMaxQkDim && v_dim % 32 == 0 && v_dim <= kMaxVDim && v_dim <= qk_dim;
}

// ------------------------------------------------------------------------------------------------
// Test hook: forces one kernel shape for every later cuda::attention call in the process (automatic: the
// normal choice). A forced layout the shapes or the device cannot run makes cuda::attention throw an Error
// naming it. Defined in attention.cu; not thread-safe (set it before launching work).
enum class Layout { automatic, mma, tile32x2, tile32x1, tile16x2, tile16x1, warp };
void set_layout_override(Layout layout);
Layout layout_override();

// Tile rows and stages of a forced tiled layout; {0, 0} for the others.
constexpr TileLayout forced_tile(Layout l, int64_t qk_dim, int64_t v_dim, bool v_aliases_k, int elem_bytes) {
  switch (l) {
    case Layout::tile32x2: return tile_layout(32, 2, qk_dim, v_dim, v_aliases_k, elem_bytes);
    case Layout::tile32x1: return tile_layout(32, 1, qk_dim, v_dim, v_aliases_k, elem_bytes);
    case Layout::tile16x2: return tile_layout(16, 2, qk_dim, v_dim, v_aliases_k, elem_bytes);
    case Layout::tile16x1: return tile_layout(16, 1, qk_dim, v_dim, v_aliases_k, elem_bytes);
    default: return TileLayout{};
  }
}

}  // namespace moerun::cuda::attention_plan
