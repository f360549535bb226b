// DeepSeek-V3's multi-token-prediction layer against the numpy reference of the technical report's
// equations (tools/golden/make_mtp_golden.py; transformers has no MTP): the layer's logits at every
// position, the drafted chain, its cache kept through truncation, loading errors, and `info`'s view
// of the layer when it is not loaded.

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "moerun/plan.h"
#include "support/golden.h"

namespace moerun {
namespace {

using testing::golden_dir;

const std::string kModel = "deepseek_v3_mtp";

struct MtpGolden {
  std::vector<int32_t> ids, chain;
  std::vector<float> logits;  // [n - 1, V]
  int64_t n = 0;
};

MtpGolden read_mtp(int n) {
  const auto f = io::SafetensorsFile::open(golden_dir(kModel) / "mtp_golden.safetensors");
  MtpGolden g;
  g.n = n;
  g.ids = testing::read_tensor<int32_t>(*f, "ids_" + std::to_string(n));
  g.chain = testing::read_tensor<int32_t>(*f, "chain_" + std::to_string(n));
  g.logits = testing::read_tensor<float>(*f, "mtp_logits_" + std::to_string(n));
  return g;
}

Engine load_mtp(KvType kv = KvType::f32) {
  return Engine::load(golden_dir(kModel), {.kv_type = kv, .threads = 2, .backend = BackendKind::cpu, .mtp = true});
}

float max_abs(std::span<const float> a, const float* b, size_t n) {
  if (a.size() != n) return INFINITY;
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Fed one token at a time, the layer's row for position j (hidden j joined with id j + 1) is what
// mtp_draft computes first: its logits are the reference's row j.
TEST(Mtp, LogitsAtEveryPositionMatchTheNumpyReference) {
  const Engine engine = load_mtp();
  ASSERT_TRUE(engine.has_mtp());
  const int64_t V = engine.config().vocab_size;
  for (int n : {7, 33}) {
    const MtpGolden g = read_mtp(n);
    Session s(engine, 64);
    std::vector<int32_t> drafts;
    float worst = 0;
    for (int64_t j = 0; j + 1 < n; ++j) {
      s.forward(std::span<const int32_t>(&g.ids[static_cast<size_t>(j)], 1));
      ASSERT_EQ(s.mtp_draft(g.ids[static_cast<size_t>(j + 1)], 1, drafts), 1u);
      worst = std::max(worst, max_abs(s.mtp_logits(), g.logits.data() + j * V, static_cast<size_t>(V)));
    }
    std::printf("MTP logits, %d positions one by one: max |diff| %.3g\n", n - 1, worst);
    EXPECT_LT(worst, 1e-4f) << "n=" << n;
  }
}

// A whole prompt at once: the first draft brings the layer's cache up to date over every row (one
// MTP step of n rows), then the chain feeds each block output back with the token it drafted.
TEST(Mtp, ChainAfterAPromptMatchesTheReference) {
  for (KvType kv : {KvType::f32, KvType::f16}) {
    const Engine engine = load_mtp(kv);
    const int64_t V = engine.config().vocab_size;
    for (int n : {7, 33}) {
      const MtpGolden g = read_mtp(n);
      Session s(engine, 64);
      const std::vector<float> logits = s.forward(g.ids);
      ASSERT_EQ(testing::argmax(logits.data(), V), g.chain[0]) << "the main model's next token";
      std::vector<int32_t> drafts;
      ASSERT_EQ(s.mtp_draft(g.chain[0], 4, drafts), 4u);
      EXPECT_EQ(drafts, std::vector<int32_t>(g.chain.begin() + 1, g.chain.end())) << "n=" << n << " kv " << kv_type_name(kv);
      EXPECT_EQ(s.position(), n) << "drafting leaves the main cache alone";
      // Drafting again from the same state gives the same chain (its own rows were rolled back).
      std::vector<int32_t> again;
      s.mtp_draft(g.chain[0], 4, again);
      EXPECT_EQ(again, drafts);
    }
  }
}

// After a verification keeps only part of the drafts (the session truncated), the next draft equals
// a fresh session's fed the same ids: the MTP cache holds exactly the accepted positions.
TEST(Mtp, RollbackLeavesTheCacheAsAFreshSession) {
  const Engine engine = load_mtp();
  const int64_t V = engine.config().vocab_size;
  const MtpGolden g = read_mtp(33);
  Session s(engine, 64);
  std::vector<int32_t> ids(g.ids.begin(), g.ids.begin() + 20);
  s.forward(ids);
  std::vector<int32_t> drafts;
  s.mtp_draft(g.ids[20], 4, drafts);
  // Verify [t20, d1..d4]; keep t20 and one draft (whatever it was), as a rejection would.
  std::vector<int32_t> step{g.ids[20]};
  step.insert(step.end(), drafts.begin(), drafts.end());
  s.forward(step, /*all_positions=*/true);
  s.truncate(22);
  ids.push_back(g.ids[20]);
  ids.push_back(drafts[0]);
  std::vector<int32_t> after, fresh_drafts;
  s.mtp_draft(7, 3, after);
  const std::vector<float> got(s.mtp_logits().begin(), s.mtp_logits().end());
  Session fresh(engine, 64);
  fresh.forward(ids);
  fresh.mtp_draft(7, 3, fresh_drafts);
  EXPECT_EQ(after, fresh_drafts);
  EXPECT_LT(max_abs(fresh.mtp_logits(), got.data(), static_cast<size_t>(V)), 1e-5f);
  // And a truncation far back (a chat turn reusing a short prefix).
  s.truncate(5);
  std::vector<int32_t> back, fresh_back;
  s.mtp_draft(g.ids[5], 2, back);
  Session fresh5(engine, 64);
  fresh5.forward(std::span<const int32_t>(g.ids.data(), 5));
  fresh5.mtp_draft(g.ids[5], 2, fresh_back);
  EXPECT_EQ(back, fresh_back);
}

TEST(Mtp, DraftsStopAtTheContext) {
  const Engine engine = load_mtp();
  const MtpGolden g = read_mtp(33);
  Session s(engine, 10);
  s.forward(std::span<const int32_t>(g.ids.data(), 8));
  std::vector<int32_t> drafts;
  EXPECT_EQ(s.mtp_draft(g.ids[8], 8, drafts), 2u);  // the verification of next + 2 drafts fills the context
  Session empty(engine, 10);
  EXPECT_EQ(empty.mtp_draft(1, 4, drafts), 0u);  // no hidden state yet
  EXPECT_THROW(s.mtp_draft(-1, 1, drafts), Error);
}

TEST(Mtp, LoadingWithoutTheLayerIsAClearError) {
  // The plain golden DeepSeek-V3 declares num_nextn_predict_layers 1 but stores no layer 3.
  try {
    Engine::load(golden_dir("deepseek_v3"), {.backend = BackendKind::cpu, .mtp = true});
    FAIL() << "loaded without MTP tensors";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("multi-token-prediction"), std::string::npos) << what;
    EXPECT_NE(what.find("model.layers.3.eh_proj.weight"), std::string::npos) << what;
  }
  try {
    Engine::load(golden_dir("llama"), {.backend = BackendKind::cpu, .mtp = true});
    FAIL() << "a llama model has no MTP layer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_nextn_predict_layers 0"), std::string::npos) << e.what();
  }
  // Without the option the engine has none, and drafting with it says so.
  const Engine plain = Engine::load(golden_dir(kModel), {.backend = BackendKind::cpu});
  EXPECT_FALSE(plain.has_mtp());
  Session s(plain, 16);
  s.forward(std::vector<int32_t>{5, 6});
  std::vector<int32_t> drafts;
  EXPECT_THROW(s.mtp_draft(7, 1, drafts), Error);
}

TEST(Mtp, UnloadedLayerStaysAWarningAndTheMainModelIsUnchanged) {
  const Model model = Model::load(golden_dir(kModel));
  bool warned = false;
  for (const std::string& w : model.warnings()) warned = warned || w.find("multi-token-prediction") != std::string::npos;
  EXPECT_TRUE(warned);
  EXPECT_EQ(model.mtp_weights().size(), 1u);
  // The main model's logits equal transformers' whether or not the layer is loaded.
  const testing::Golden golden = testing::read_golden(kModel);
  for (bool mtp : {false, true}) {
    const Engine engine = Engine::load(golden_dir(kModel), {.kv_type = KvType::f32, .backend = BackendKind::cpu, .mtp = mtp});
    Session s(engine, 64);
    const std::vector<float> logits = s.forward(golden.ids[2], /*all_positions=*/true);
    EXPECT_LT(testing::max_abs_diff(logits, golden.logits[2]), 1e-3f) << "mtp " << mtp;
  }
}

TEST(Mtp, MemoryPlanCountsTheLayer) {
  const Model model = Model::load(golden_dir(kModel));
  const MemoryPlan without = plan_memory(model, {.backend = BackendKind::cpu});
  const MemoryPlan with = plan_memory(model, {.backend = BackendKind::cpu, .mtp = true});
  EXPECT_GT(with.weights_bytes, without.weights_bytes);
  EXPECT_GT(with.workspace_bytes, without.workspace_bytes);  // its cache, hidden rows and input buffer
  const Engine engine = Engine::load(golden_dir(kModel), {.backend = BackendKind::cpu, .mtp = true});
  Session s(engine);
  EXPECT_EQ(s.memory_bytes(), with.kv_bytes + with.workspace_bytes);
}

}  // namespace
}  // namespace moerun
