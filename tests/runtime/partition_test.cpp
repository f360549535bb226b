// A rank's share (model/partition.h), in one process: how heads, experts, columns and the
// vocabulary are dealt (uneven counts, fewer KV heads than ranks, FP8 block boundaries), what a
// split refuses, the weights cut to each share (row views, column copies, FP8 off the block grid
// dequantized), and the per-rank memory plan. The ranks' results are checked against one process
// under mpirun in tests/parallel.

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/ops.h"
#include "model/partition.h"
#include "moerun/config.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "moerun/plan.h"
#include "support/golden.h"

namespace moerun::model {
namespace {

using moerun::testing::golden_dir;

TEST(Share, UnevenCountsCoverEverythingOnce) {
  for (int ranks : {1, 2, 3, 5}) {
    for (int64_t n : {5, 8, 9, 64, 100}) {
      if (n < ranks) continue;
      int64_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const Range s = share(n, r, ranks);
        EXPECT_EQ(s.begin, next) << n << " over " << ranks;
        EXPECT_GE(s.size(), n / ranks);
        EXPECT_LE(s.size(), n / ranks + 1);
        next = s.end;
      }
      EXPECT_EQ(next, n);
    }
  }
  EXPECT_EQ(share(8, 0, 3), (Range{0, 3}));
  EXPECT_EQ(share(8, 2, 3), (Range{6, 8}));
}

TEST(Share, BoundariesFallOnUnitsWhenThereAreEnough) {
  EXPECT_EQ(share(320, 0, 2, 128), (Range{0, 256}));  // 3 blocks: 2 + 1
  EXPECT_EQ(share(320, 1, 2, 128), (Range{256, 320}));
  EXPECT_EQ(share(2048, 1, 8, 128), (Range{256, 512}));
  EXPECT_EQ(share(96, 1, 2, 128), (Range{48, 96}));  // fewer blocks than ranks: single items
}

ModelConfig config_of(const std::string& name) { return load_model_config(golden_dir(name) / "config.json"); }

TEST(Partition, GqaSplitsKvHeadsAndTheirQueryGroups) {
  const ModelConfig c = config_of("llama");  // 4 heads, 2 KV heads
  const Partition r1 = make_partition(c, SplitMode::tp, 1, 2);
  EXPECT_EQ(r1.kv_heads, (Range{1, 2}));
  EXPECT_EQ(r1.q_heads, (Range{2, 4}));
  EXPECT_TRUE(r1.attn_split && r1.ffn_split && r1.head_split && r1.embed_split);
  // Three ranks, two KV heads: ranks 0 and 1 share KV head 0 (a query head each), rank 2 has head 1.
  const Partition a = make_partition(c, SplitMode::tp, 0, 3), b = make_partition(c, SplitMode::tp, 1, 3),
                  d = make_partition(c, SplitMode::tp, 2, 3);
  EXPECT_EQ(a.kv_heads, (Range{0, 1}));
  EXPECT_EQ(a.q_heads, (Range{0, 1}));
  EXPECT_EQ(b.kv_heads, (Range{0, 1}));
  EXPECT_EQ(b.q_heads, (Range{1, 2}));
  EXPECT_EQ(d.kv_heads, (Range{1, 2}));
  EXPECT_EQ(d.q_heads, (Range{2, 4}));
  const ModelConfig local = local_config(c, b);
  EXPECT_EQ(local.num_attention_heads, 1);
  EXPECT_EQ(local.num_key_value_heads, 1);
}

TEST(Partition, ExpertsAreDealtUnevenlyAndSharedExpertStaysOnRankZeroUnderEp) {
  const ModelConfig c = config_of("deepseek_v3");  // 16 experts, a shared expert, MLA with 4 heads
  int64_t held = 0;
  for (int r = 0; r < 3; ++r) {
    const Partition p = make_partition(c, SplitMode::ep, r, 3);
    EXPECT_TRUE(p.experts_ep);
    EXPECT_FALSE(p.attn_split);
    EXPECT_EQ(p.shared_here, r == 0);
    EXPECT_EQ(p.head_here, r == 0);
    held += p.experts.size();
  }
  EXPECT_EQ(held, 16);
  const Partition t = make_partition(c, SplitMode::ep_tp, 2, 3);
  EXPECT_EQ(t.q_heads, (Range{3, 4}));  // MLA: heads 2, 1, 1
  EXPECT_TRUE(t.shared_here);           // split by columns instead
  EXPECT_EQ(t.shared_cols.size(), 32 / 3);
}

TEST(Partition, RefusesWhatCannotBeSplitAndAutomaticFallsBack) {
  const ModelConfig llama = config_of("llama");
  try {
    make_partition(llama, SplitMode::tp, 0, 5);
    FAIL() << "5 ranks over 4 heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 attention heads cannot be split over 5 ranks"), std::string::npos) << e.what();
  }
  const ModelConfig moe = config_of("qwen3_moe");  // 4 heads, 8 experts
  EXPECT_THROW(make_partition(moe, SplitMode::ep, 0, 9), Error);
  // 6 ranks: more than the heads, so the automatic split takes the experts alone.
  const Partition p = make_partition(moe, SplitMode::automatic, 0, 6);
  EXPECT_EQ(p.split, SplitMode::ep);
  EXPECT_EQ(make_partition(moe, SplitMode::automatic, 0, 2).split, SplitMode::ep_tp);
  EXPECT_EQ(make_partition(llama, SplitMode::automatic, 0, 2).split, SplitMode::tp);
  EXPECT_EQ(parse_split("ep+tp"), SplitMode::ep_tp);
  EXPECT_THROW(parse_split("dp"), Error);
}

TEST(Partition, OlmoeComputesWholeQueriesAndKeysForItsFullWidthNorm) {
  const Partition p = make_partition(config_of("olmoe"), SplitMode::tp, 1, 2);
  EXPECT_TRUE(p.full_qk);
  EXPECT_EQ(p.heads_total, 4);
}

// The ranks' cuts of a weight put together give the weight back: rows as views into it, columns as
// copies of its bytes.
TEST(SliceWeights, RankCutsReassembleTheWeights) {
  const Model m = Model::load(golden_dir("qwen2_moe"));
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  constexpr int kRanks = 3;
  std::vector<ModelWeights> cut;
  for (int r = 0; r < kRanks; ++r) cut.push_back(slice_weights(w, c, make_partition(c, SplitMode::tp, r, kRanks)));
  // q_proj rows: views.
  const Tensor& q = w.layers[0].q_proj.weight;
  int64_t rows = 0;
  for (int r = 0; r < kRanks; ++r) {
    const Tensor& part = cut[static_cast<size_t>(r)].layers[0].q_proj.weight;
    EXPECT_EQ(part.data(), static_cast<const char*>(q.data()) + rows * q.dim(1) * static_cast<int64_t>(dtype_size(q.dtype())));
    rows += part.dim(0);
  }
  EXPECT_EQ(rows, q.dim(0));
  // o_proj columns: copies, bias on rank 0 only.
  const Tensor& o = w.layers[0].o_proj.weight;
  const size_t e = dtype_size(o.dtype());
  int64_t col = 0;
  for (int r = 0; r < kRanks; ++r) {
    const LinearWeight& part = cut[static_cast<size_t>(r)].layers[0].o_proj;
    ASSERT_EQ(part.weight.dim(0), o.dim(0));
    for (int64_t i = 0; i < o.dim(0); ++i)
      ASSERT_EQ(std::memcmp(static_cast<const char*>(part.weight.data()) + static_cast<size_t>(i * part.weight.dim(1)) * e,
                            static_cast<const char*>(o.data()) + static_cast<size_t>(i * o.dim(1) + col) * e,
                            static_cast<size_t>(part.weight.dim(1)) * e),
                0)
          << "rank " << r << " row " << i;
    col += part.weight.dim(1);
    EXPECT_EQ(part.bias.defined(), r == 0 && w.layers[0].o_proj.bias.defined());
  }
  EXPECT_EQ(col, o.dim(1));
}

TEST(SliceWeights, ExpertParallelLeavesOtherRanksExpertsOut) {
  const Model m = Model::load(golden_dir("mixtral"));
  const ModelConfig& c = m.config();
  const Partition p = make_partition(c, SplitMode::ep, 1, 3);  // experts 3-5 of 8
  const ModelWeights w = slice_weights(m.weights(), c, p);
  for (size_t e = 0; e < w.layers[0].experts.size(); ++e)
    EXPECT_EQ(w.layers[0].experts[e].gate_proj.defined(), e >= 3 && e < 6) << e;
  EXPECT_FALSE(w.lm_head.defined());  // rank 0 computes the logits under ep
  EXPECT_TRUE(w.embed_tokens.defined());
}

// FP8 columns off the 128-column block grid are dequantized with their block scales.
TEST(SliceWeights, Fp8OffTheBlockGridIsDequantized) {
  const Model m = Model::load(golden_dir("deepseek_v3_fp8"));
  const ModelConfig& c = m.config();
  const Partition p = make_partition(c, SplitMode::tp, 1, 2);  // experts' 96 columns: 48-95 on rank 1
  const ModelWeights w = slice_weights(m.weights(), c, p);
  size_t l = 0;
  while (m.weights().layers[l].experts.empty()) ++l;
  const LinearWeight& whole = m.weights().layers[l].experts[0].down_proj;  // [256, 96]
  const LinearWeight& part = w.layers[l].experts[0].down_proj;
  ASSERT_EQ(part.weight.dtype(), DType::f32);
  EXPECT_FALSE(part.weight_scale_inv.defined());
  ASSERT_EQ(part.weight.dim(1), 48);
  const float* values = cpu::f8_e4m3_values();
  const auto* q = whole.weight.data_as<uint8_t>();
  for (int64_t i = 0; i < whole.weight.dim(0); i += 37) {
    const int64_t j = 50;  // column 50 of the whole, 2 of the part
    const uint8_t b = q[i * 96 + j];
    const float v = (b & 0x80) ? -values[b & 0x7f] : values[b & 0x7f];
    const Tensor& s = whole.weight_scale_inv;
    const float scale = s.dtype() == DType::f32 ? s.data_as<float>()[(i / 128) * s.dim(1) + j / 128]
                                                : cpu::bf16_to_f32(s.data_as<uint16_t>()[(i / 128) * s.dim(1) + j / 128]);
    EXPECT_EQ(part.weight.data_as<float>()[i * 48 + 2], v * scale) << "row " << i;
  }
  // Rows on the grid stay FP8 views with their scales' rows: the dense layer's 320 columns as 256 + 64.
  const LinearWeight& gate = w.layers[0].mlp.gate_proj;
  EXPECT_EQ(gate.weight.dtype(), DType::f8_e4m3);
  EXPECT_EQ(gate.weight.dim(0), 64);
  EXPECT_EQ(gate.weight_scale_inv.dim(0), 1);
}

// Each rank's plan holds its share: together about the whole model (what every rank keeps counted
// once per rank), each far less than it.
TEST(RankPlan, SharesAddUpToTheModel) {
  const ModelConfig c = load_model_config(std::string(MOERUN_TEST_DATA) + "/configs/qwen3_30b_a3b.json");
  EngineOptions o;
  o.memory_check = false;
  const MemoryPlan whole = plan_memory(c, o);
  o.ranks = 4;
  o.split = SplitMode::ep_tp;
  uint64_t sum = 0;
  for (int r = 0; r < 4; ++r) {
    o.rank = r;
    const MemoryPlan p = plan_memory(c, o);
    EXPECT_EQ(p.rank, r);
    EXPECT_EQ(p.ranks, 4);
    EXPECT_EQ(p.split, "ep+tp");
    EXPECT_LT(p.weights_bytes, whole.weights_bytes / 3);
    EXPECT_LT(p.kv_bytes, whole.kv_bytes);  // its KV heads only
    sum += p.weights_bytes;
  }
  EXPECT_GE(sum, whole.weights_bytes * 99 / 100);
  EXPECT_LE(sum, whole.weights_bytes * 101 / 100);
}

// Without mpirun an engine is rank 0 of 1, and asking for more ranks is refused with the fix.
TEST(RankPlan, EngineWithoutALauncherIsOneRank) {
  if (launch_size() > 1) GTEST_SKIP() << "runs without mpirun";
  const Engine e = Engine::load(golden_dir("llama"));
  EXPECT_EQ(e.ranks(), 1);
  EXPECT_TRUE(e.leader());
  e.follow();  // returns at once
  EngineOptions o;
  o.ranks = 2;
  try {
    Engine::load(golden_dir("llama"), o);
    FAIL() << "2 ranks without a launcher";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("mpirun -np N"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace moerun::model
