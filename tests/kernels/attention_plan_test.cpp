// The CUDA attention's split and tiling arithmetic (kernels/cuda/attention_plan.h), tested on the CPU: splits
// cover the cache exactly once, the grid depends only on max_len and shapes, the workspace matches what the
// kernels index, and the shared-memory layout is aligned and fits the devices we build for.

#include "kernels/cuda/attention_plan.h"

#include <gtest/gtest.h>

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
    EXPECT_EQ(t.floats - t.stat, 4 * kQueryTile);
  }
}

}  // namespace
}  // namespace moerun::cuda::attention_plan
