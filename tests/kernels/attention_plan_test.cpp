// The CUDA attention's split and tiling arithmetic (kernels/cuda/attention_plan.h), tested on the CPU: splits
// cover the cache exactly once, the grid depends only on max_len and shapes, live-length splits cover the live
// rows with the fixed split count and share them evenly, the workspace matches what the kernels index, and the
// shared-memory layouts (tiled kernel in fp32 and 16-bit, MMA kernel) are aligned and fit the devices we build for.

#include "kernels/cuda/attention_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace moerun::cuda::attention_plan {
namespace {

constexpr int kH200Sms = 132;

TEST(AttentionPlan, SplitsCoverTheCacheOnceInWholeTiles) {
  for (int64_t max_len : {1, 2, 31, 32, 33, 127, 128, 129, 1000, 3001, 8192, 32768, 131072}) {
    for (int64_t blocks : {1, 2, 3, 8, 100, 264, 10000}) {
      const Splits s = plan_splits(max_len, blocks, kH200Sms);
      ASSERT_GE(s.n_splits, 1) << "max_len=" << max_len << " blocks=" << blocks;
      EXPECT_EQ(s.rows_per_split % kRowAlign, 0) << "max_len=" << max_len << " blocks=" << blocks;
      // Every row in [0, max_len) lies in exactly one split, and no split is empty.
      EXPECT_GE(s.n_splits * s.rows_per_split, max_len);
      EXPECT_LT((s.n_splits - 1) * s.rows_per_split, max_len);
      for (int64_t sp = 0; sp < s.n_splits; ++sp) EXPECT_LT(split_begin(s, sp), split_end(s, sp, max_len));
      // No split is shorter than the minimum unless the whole cache is.
      if (s.n_splits > 1) {
        EXPECT_GE(s.rows_per_split, kMinSplitRows) << "max_len=" << max_len;
      }
    }
  }
}

TEST(AttentionPlan, DecodeFillsTheDevicePrefillDoesNotSplit) {
  // GQA decode, 4 KV heads, one token: one query tile per KV head, so ~2 blocks per SM come from splitting.
  const Splits gqa = plan_splits(8192, 4, kH200Sms);
  EXPECT_EQ(gqa.n_splits, 64);  // ceil(264 / 4) = 66 wanted, capped at 8192 / kMinSplitRows = 64
  EXPECT_EQ(gqa.rows_per_split, 128);
  // MLA absorbed (1 KV head, 16 heads, one token): capped by the minimum split length.
  const Splits mla = plan_splits(8192, 1, kH200Sms);
  EXPECT_EQ(mla.rows_per_split, kMinSplitRows);
  EXPECT_EQ(mla.n_splits, 64);
  // Prefill of 2048 tokens, GQA 8 per KV head, 4 KV heads: 4096 blocks already, one split.
  EXPECT_EQ(plan_splits(32768, query_tiles(2048, 8) * 4, kH200Sms).n_splits, 1);
  // A short cache is never split below the minimum.
  EXPECT_EQ(plan_splits(100, 1, kH200Sms).n_splits, 1);
}

TEST(AttentionPlan, GridDependsOnMaxLenNotOnPositions) {
  // The plan takes no position: the same max_len gives the same grid whatever the context length is now.
  // What changes with the position is only how many splits hold rows, which the kernels read on the device.
  const Splits s = plan_splits(4096, 2, kH200Sms);
  EXPECT_EQ(splits_for_len(s, 1), 1);
  EXPECT_EQ(splits_for_len(s, s.rows_per_split), 1);
  EXPECT_EQ(splits_for_len(s, s.rows_per_split + 1), 2);
  EXPECT_EQ(splits_for_len(s, 4096), s.n_splits);
  EXPECT_EQ(split_end(s, 0, 5), 5);  // a split ends at the token's length inside it
  EXPECT_EQ(split_end(s, 0, 100000), s.rows_per_split);
}

TEST(AttentionPlan, QueryTilesAreTokenMajorGroupRows) {
  EXPECT_EQ(query_tiles(1, 8), 1);    // GQA 32/4: 8 query rows, one half-full tile
  EXPECT_EQ(query_tiles(1, 16), 1);   // MLA, 16 heads
  EXPECT_EQ(query_tiles(1, 128), 8);  // MLA, DeepSeek-V3's 128 heads
  EXPECT_EQ(query_tiles(3, 3), 1);    // 9 query rows of 3 tokens x 3 heads
  EXPECT_EQ(query_tiles(7, 3), 2);
}

TEST(AttentionPlan, WorkspaceMatchesThePartialIndexing) {
  const Splits one{.rows_per_split = 4096, .n_splits = 1};
  EXPECT_EQ(workspace_bytes(one, 3, 32, 128), 0u);
  const Splits s{.rows_per_split = 128, .n_splits = 64};
  // part_o[(split * n_tokens * n_heads + idx) * v_dim + c] and part_ml[(...) * 2 + {0, 1}].
  const int64_t n_tokens = 2, n_heads = 16, v_dim = 512;
  const int64_t last_o = ((s.n_splits - 1) * n_tokens * n_heads + (n_tokens * n_heads - 1)) * v_dim + (v_dim - 1);
  EXPECT_EQ(partial_out_floats(s, n_tokens, n_heads, v_dim), last_o + 1);
  const int64_t last_ml = ((s.n_splits - 1) * n_tokens * n_heads + (n_tokens * n_heads - 1)) * 2 + 1;
  EXPECT_EQ(partial_stat_floats(s, n_tokens, n_heads), last_ml + 1);
  EXPECT_EQ(workspace_bytes(s, n_tokens, n_heads, v_dim),
            static_cast<size_t>(last_o + 1 + last_ml + 1) * sizeof(float));
}

TEST(AttentionPlan, PaddedRowsAreOddFloat4Counts) {
  for (int64_t d : {1, 3, 4, 40, 64, 72, 128, 129, 512, 576}) {
    const int64_t ld = padded_ld(d);
    EXPECT_GE(ld, d + 1) << d;  // room for zero padding past the last column read as a float4
    EXPECT_EQ(ld % 4, 0) << d;
    EXPECT_EQ((ld / 4) % 2, 1) << d;  // consecutive rows in different 16-byte bank groups
  }
  EXPECT_EQ(padded_ld(576), 580);
  EXPECT_EQ(padded_ld(128), 132);
}

TEST(AttentionPlan, TileLayoutIsAlignedAndChosenByDevice) {
  constexpr size_t kH100 = 227u << 10, kA100 = 163u << 10, kAda = 99u << 10;
  // MLA absorbed on Hopper: 32-row tiles, double-buffered, values read from the key tile.
  const TileLayout mla = choose_tile(576, 512, /*v_aliases_k=*/true, kH100);
  EXPECT_EQ(mla.rows, 32);
  EXPECT_EQ(mla.stages, 2);
  EXPECT_EQ(mla.v, mla.part) << "no value buffer when v aliases k";
  EXPECT_LE(mla.bytes(), kH100);
  const TileLayout mla_a100 = choose_tile(576, 512, true, kA100);
  EXPECT_EQ(mla_a100.rows, 32);
  EXPECT_EQ(mla_a100.stages, 1);
  const TileLayout mla_ada = choose_tile(576, 512, true, kAda);
  EXPECT_EQ(mla_ada.rows, 16);
  EXPECT_LE(mla_ada.bytes(), kAda);
  // Separate large K and V do not fit a 99 KB part at all: the warp kernel takes over.
  EXPECT_EQ(choose_tile(576, 512, false, kAda).rows, 0);
  // GQA head_dim 128 is small everywhere.
  const TileLayout gqa = choose_tile(128, 128, false, kAda);
  EXPECT_EQ(gqa.rows, 32);
  EXPECT_EQ(gqa.stages, 2);
  const struct {
    TileLayout t;
    bool alias;
  } cases[] = {{mla, true}, {mla_a100, true}, {mla_ada, true}, {gqa, false}};
  for (const auto& [t, alias] : cases) {
    for (int64_t off : {t.q, t.k, t.v, t.part, t.p, t.stat, t.floats}) EXPECT_EQ(off % 4, 0);  // float4 / cp.async 16
    EXPECT_EQ(t.v - t.k, int64_t{t.stages} * t.rows * t.ld_qk);
    EXPECT_EQ(t.part - t.v, alias ? 0 : int64_t{t.stages} * t.rows * t.ld_v);
    EXPECT_EQ(t.p - t.part, int64_t{kThreads} * kQueryTile);  // (256 / rows) slices x 16 queries x rows
    EXPECT_EQ(t.floats - t.stat, 4 * kQueryTile + 4);  // stats, lengths, then the live length
  }
}

TEST(AttentionPlan, LiveSplitsCoverTheLiveRowsWithTheFixedCount) {
  for (int64_t max_len : {1, 33, 128, 4096, 8192 + 77, 32768}) {
    for (int64_t blocks : {1, 2, 4, 264}) {
      const Splits cap = plan_splits(max_len, blocks, kH200Sms);
      for (int64_t live : {int64_t{1}, int64_t{2}, int64_t{31}, int64_t{32}, int64_t{33}, int64_t{1000},
                           max_len / 2, max_len - 1, max_len}) {
        if (live < 1 || live > max_len) continue;
        const int64_t rows = live_rows_per_split(live, cap.n_splits, kRowAlign);
        ASSERT_GT(rows, 0);
        EXPECT_EQ(rows % kRowAlign, 0);
        EXPECT_LE(rows, cap.rows_per_split) << "live rows never need longer splits than the capacity";
        // The fixed count of splits covers every live row exactly once, in order.
        EXPECT_GE(cap.n_splits * rows, live) << "max_len=" << max_len << " live=" << live;
        int64_t covered = 0;
        for (int64_t sp = 0; sp < cap.n_splits; ++sp) {
          const int64_t b = live_split_begin(rows, sp), e = live_split_end(rows, sp, live);
          if (b >= e) continue;
          EXPECT_EQ(b, covered);
          covered = e;
        }
        EXPECT_EQ(covered, live);
        // The combine reads exactly the splits holding rows of a query, never past n_splits.
        for (int64_t len : {int64_t{1}, live}) {
          const int64_t ns = live_splits_for_len(rows, cap.n_splits, len);
          EXPECT_GE(ns, 1);
          EXPECT_LE(ns, cap.n_splits);
          EXPECT_GE(ns * rows, len);
          EXPECT_LT((ns - 1) * rows, len);
        }
      }
    }
  }
}

TEST(AttentionPlan, EarlyInALongContextEverySplitShares) {
  // MLA decode at position 1023 of a 32k context: 64 splits (at capacity 512 rows each, so the first two
  // would hold all 1024 live rows); live splits give each 32 rows.
  const Splits cap = plan_splits(32768, 2, kH200Sms);
  ASSERT_GT(cap.n_splits, 8);
  const int64_t rows = live_rows_per_split(1024, cap.n_splits, kRowAlign);
  EXPECT_EQ(rows, round_up(ceil_div(int64_t{1024}, cap.n_splits), kRowAlign));
  EXPECT_EQ(ceil_div(int64_t{1024}, rows), std::min<int64_t>(cap.n_splits, 1024 / kRowAlign));
  // Near the end the split length is back at the capacity plan's.
  EXPECT_EQ(live_rows_per_split(32768, cap.n_splits, kRowAlign), cap.rows_per_split);
  // One split: the whole live length.
  EXPECT_EQ(live_rows_per_split(700, 1, kRowAlign), 704);
}

TEST(AttentionPlan, SixteenBitTilesHalveTheCacheBuffers) {
  constexpr size_t kAda = 99u << 10;
  const TileLayout f32 = tile_layout(32, 2, 128, 128, false, 4), b16 = tile_layout(32, 2, 128, 128, false, 2);
  EXPECT_EQ(b16.v - b16.k, (f32.v - f32.k) / 2);
  EXPECT_EQ(b16.part - b16.v, (f32.part - f32.v) / 2);
  for (const TileLayout& t : {b16, tile_layout(16, 1, 576, 512, true, 2), tile_layout(32, 2, 40, 24, false, 2)})
    for (int64_t off : {t.q, t.k, t.v, t.part, t.p, t.stat, t.floats}) EXPECT_EQ(off % 4, 0);
  // MLA over a bf16 cache on a 99 KB part: a 32-row double-buffered tile now fits.
  const TileLayout mla_ada = choose_tile(576, 512, true, kAda, 2);
  EXPECT_EQ(mla_ada.rows, 32);
  EXPECT_LE(mla_ada.bytes(), kAda);
  // Forced layouts are exactly the named shapes.
  EXPECT_EQ(forced_tile(Layout::tile16x1, 128, 128, false, 2).rows, 16);
  EXPECT_EQ(forced_tile(Layout::tile16x1, 128, 128, false, 2).stages, 1);
  EXPECT_EQ(forced_tile(Layout::tile32x2, 128, 128, false, 4).bytes(), tile_layout(32, 2, 128, 128, false, 4).bytes());
  EXPECT_EQ(forced_tile(Layout::warp, 128, 128, false, 4).rows, 0);
  EXPECT_EQ(forced_tile(Layout::mma, 576, 512, true, 2).rows, 0);
}

TEST(AttentionPlan, MmaLayoutFitsHopperAndAmpere) {
  constexpr size_t kH100 = 227u << 10, kA100 = 163u << 10, kAda = 99u << 10;
  const MmaLayout h = choose_mma(576, kH100), a = choose_mma(576, kA100);
  EXPECT_EQ(h.stages, 3);
  EXPECT_EQ(a.stages, 2);
  EXPECT_EQ(choose_mma(576, kAda).stages, 0);  // sm_89's 99 KB: the tiled kernel serves it
  for (const MmaLayout& m : {h, a}) {
    EXPECT_EQ(m.ld, 584);
    EXPECT_EQ((m.ld * 2 / 16) % 2, 1) << "rows an odd number of 16-byte pieces: ldmatrix conflict-free";
    for (int64_t off : {m.q, m.k, m.x, m.len, m.bytes}) EXPECT_EQ(off % 16, 0);
    EXPECT_EQ(m.k - m.q, int64_t{kMmaQueryRows} * m.ld * 2);
    EXPECT_EQ(m.x - m.k, int64_t{m.stages} * kMmaRows * m.ld * 2);
    EXPECT_EQ(m.len - m.x, int64_t{kThreads / 32} * 16 * kMmaRows * 4);
  }
  EXPECT_LE(static_cast<size_t>(h.bytes), kH100);
  EXPECT_LE(static_cast<size_t>(a.bytes), kA100);
  // Shapes: the MLA absorbed form over 16-bit caches only.
  EXPECT_TRUE(mma_shapes_fit(576, 512, true, 2, true));
  EXPECT_TRUE(mma_shapes_fit(64, 32, true, 2, true));
  EXPECT_FALSE(mma_shapes_fit(576, 512, true, 4, true));   // f32 cache
  EXPECT_FALSE(mma_shapes_fit(576, 512, false, 2, true));  // separate values
  EXPECT_FALSE(mma_shapes_fit(575, 511, true, 2, true));
  EXPECT_FALSE(mma_shapes_fit(576, 496, true, 2, true));  // v_dim not whole pairs of 8-column tiles per half
  EXPECT_FALSE(mma_shapes_fit(576, 512, true, 2, false));  // rows not 16-byte aligned
}

}  // namespace
}  // namespace moerun::cuda::attention_plan
