// The bench library: byte counts per decode step, synthetic models, and the measurements' shape.
// (Speed itself is never asserted.)

#include <gtest/gtest.h>

#include <cmath>

#include "moerun/bench.h"
#include "moerun/error.h"
#include "support/golden.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

using testing::golden_dir;

TEST(Bench, DecodeBytesCountOnlyTheRoutedExpertsAndOneEmbeddingRow) {
  // qwen3_moe golden: fp32, D 64, V 512, 3 layers (layer 0 dense), 8 experts of width 32, top-2.
  const Engine engine = Engine::load(golden_dir("qwen3_moe"), {.kv_type = KvType::f32});
  const ModelConfig& c = engine.config();
  const double f = 4;  // fp32 weights
  const double D = 64, V = 512, H = 4, Hkv = 2, dh = 32, I = 128, Ie = 32, E = 8, k = 2;
  const double attn = (H * dh * D + 2 * Hkv * dh * D + D * H * dh + 2 * dh) * f;  // q, k, v, o + q/k norms
  const double norms = 2 * D * f;
  const double dense = 3 * I * D * f, expert = 3 * Ie * D * f, router = E * D * f;
  const double want_weights = D * f /* embedding row */ + V * D * f /* lm_head */ + D * f /* final norm */ +
                              3 * (attn + norms) + dense + 2 * (router + k * expert);
  EXPECT_DOUBLE_EQ(decode_bytes_per_token(engine, 0), want_weights);
  // Each cached position adds K and V rows (fp32) in every layer.
  EXPECT_DOUBLE_EQ(decode_bytes_per_token(engine, 10) - want_weights, 10 * 3 * 2 * Hkv * dh * 4);
  EXPECT_EQ(c.num_moe_layers(), 2);
}

TEST(Bench, MlaCachesOneLatentRowPerPosition) {
  for (const auto& [kv, bytes] : {std::pair{KvType::f32, 4.0}, std::pair{KvType::f16, 2.0}, std::pair{KvType::bf16, 2.0}}) {
    const Engine engine = Engine::load(golden_dir("deepseek_v3"), {.kv_type = kv});
    const double per_position = decode_bytes_per_token(engine, 1) - decode_bytes_per_token(engine, 0);
    EXPECT_DOUBLE_EQ(per_position, 3 * (32 + 8) * bytes);  // layers * (kv_lora_rank + qk_rope_head_dim) * element
  }
  // q8_0: 34 bytes per 32 elements (the goldens' qwen3_moe: 3 layers, K and V of 2 heads x 32).
  const Engine q8 = Engine::load(golden_dir("qwen3_moe"), {.kv_type = KvType::q8_0});
  EXPECT_DOUBLE_EQ(decode_bytes_per_token(q8, 1) - decode_bytes_per_token(q8, 0), 3 * 2 * 2 * 34.0);
}

TEST(Bench, SyntheticModelsRunEveryFamily) {
  for (const std::string& name : testing::tiny_config_names()) {
    const fs::path dir = testing::fresh_dir("synthetic_" + name);
    testing::write_file(dir / "config.json", testing::tiny_config(name).dump());
    const ModelConfig config = load_model_config(dir / "config.json", {.num_hidden_layers = 3, .max_routed_experts = 4});
    EXPECT_EQ(config.num_hidden_layers, 3);
    if (config.is_moe()) {
      EXPECT_LE(config.router.n_routed_experts, 4) << name;
      EXPECT_EQ(config.router.n_routed_experts % config.router.n_group, 0) << name;
    }
    const Engine engine = Engine::from_model(Model::synthetic(config, 7));
    Session s(engine);
    const std::vector<float> logits = s.forward(std::vector<int32_t>{1, 2, 3});
    ASSERT_EQ(logits.size(), static_cast<size_t>(config.vocab_size)) << name;
    for (float l : logits) ASSERT_TRUE(std::isfinite(l)) << name;
    EXPECT_GT(engine.model().total_params(), 0);
  }
}

TEST(Bench, ResultsHaveOneRatePerRepetition) {
  const Engine engine = Engine::load(golden_dir("llama"));
  const BenchResult pp = bench_prefill(engine, 8, 3);
  EXPECT_EQ(pp.test, "pp8");
  ASSERT_EQ(pp.tps.size(), 3u);
  EXPECT_GT(pp.mean, 0);
  EXPECT_EQ(pp.bytes_per_token, 0);
  const BenchResult tg = bench_decode(engine, 4, 2);
  EXPECT_EQ(tg.test, "tg4");
  // The llama golden's decode step: embed, LM head and 9 ops per layer (launch_count_test).
  EXPECT_EQ(tg.ops_per_token, 2 + 9 * engine.config().num_hidden_layers);
  EXPECT_EQ(tg.launches_per_token, 0);  // no recorded graph on the CPU
  ASSERT_EQ(tg.tps.size(), 2u);
  EXPECT_DOUBLE_EQ(tg.bytes_per_token, decode_bytes_per_token(engine, 2));
  EXPECT_NEAR(tg.gbps, tg.bytes_per_token * tg.mean / 1e9, 1e-12);
  EXPECT_GT(measure_read_bandwidth(1, 8 << 20).gbps, 0);
}

// bench --spec: the speculating run and the plain one on the same prompt, each `reps` timed runs of
// exactly `tokens` greedy tokens; the engine as its own draft model accepts every draft.
TEST(Bench, SpeculativeTestPairsTheSpeculatingAndPlainRuns) {
  const Engine engine = Engine::load(golden_dir("llama"));
  std::vector<int32_t> prompt;
  for (int i = 0; i < 24; ++i) prompt.push_back(5 + i % 6);  // repeats: prompt lookup finds drafts
  const SpecBench ngram = bench_speculative(engine, nullptr, prompt, SpecKind::ngram, 4, 12, 3);
  EXPECT_EQ(ngram.spec.test, "tg12 spec ngram");
  EXPECT_EQ(ngram.spec.spec, "ngram");
  EXPECT_EQ(ngram.plain.test, "tg12 prompt");
  EXPECT_EQ(ngram.plain.spec, "none");
  for (const BenchResult* r : {&ngram.spec, &ngram.plain}) {
    EXPECT_EQ(r->tokens, 12);
    ASSERT_EQ(r->tps.size(), 3u);
    EXPECT_GT(r->mean, 0);
    EXPECT_GT(r->bytes_per_token, 0);  // a decode row
    EXPECT_LE(r->accepted, r->drafted);
    // Each run: 11 tokens from decode forwards, each forward one token plus the drafts it accepted.
    EXPECT_EQ(r->steps + r->accepted, 3 * 11);
  }
  EXPECT_EQ(ngram.plain.drafted, 0);
  EXPECT_DOUBLE_EQ(ngram.plain.bytes_per_token, decode_bytes_per_token(engine, 24 + 6));
  // Fewer forwards than tokens: fewer weight bytes per token.
  EXPECT_NEAR(ngram.spec.bytes_per_token, ngram.plain.bytes_per_token * static_cast<double>(ngram.spec.steps) / 33.0, 1e-6);

  Session draft(engine, 64);
  const SpecBench self = bench_speculative(engine, &draft, prompt, SpecKind::draft, 4, 12, 1);
  EXPECT_EQ(self.spec.test, "tg12 spec draft");
  EXPECT_GT(self.spec.drafted, 0);
  EXPECT_EQ(self.spec.accepted, self.spec.drafted);  // the same model drafts what it then picks
  EXPECT_GT(self.spec.accepted_per_step(), 0.0);

  EXPECT_THROW(bench_speculative(engine, nullptr, prompt, SpecKind::draft, 4, 12, 1), Error);  // no draft session
  EXPECT_THROW(bench_speculative(engine, nullptr, prompt, SpecKind::none, 4, 12, 1), Error);
  EXPECT_THROW(bench_speculative(engine, nullptr, {}, SpecKind::ngram, 4, 12, 1), Error);
}

// bench --spec mtp on random weights (bench --synthetic): the MTP layer drafts, and a decode step's
// bytes leave it out (it is the drafter's, not the step's).
TEST(Bench, MtpSpeculationOnASyntheticModel) {
  const fs::path dir = testing::fresh_dir("synthetic_mtp");
  auto config_json = testing::tiny_config("deepseek_v3");
  config_json["num_nextn_predict_layers"] = 1;
  testing::write_file(dir / "config.json", config_json.dump());
  const ModelConfig config = load_model_config(dir / "config.json");
  const Engine plain = Engine::from_model(Model::synthetic(config, 7));
  const Engine mtp = Engine::from_model(Model::synthetic(config, 7, /*lazy=*/false, /*mtp=*/true), {.mtp = true});
  ASSERT_TRUE(mtp.has_mtp());
  EXPECT_DOUBLE_EQ(decode_bytes_per_token(mtp, 10), decode_bytes_per_token(plain, 10));
  std::vector<int32_t> prompt;
  for (int i = 0; i < 16; ++i) prompt.push_back(3 + (i * 37) % 500);
  const SpecBench r = bench_speculative(mtp, nullptr, prompt, SpecKind::mtp, 2, 8, 1);
  EXPECT_EQ(r.spec.test, "tg8 spec mtp");
  EXPECT_EQ(r.spec.steps + r.spec.accepted, 7);
  EXPECT_LE(r.spec.accepted, r.spec.drafted);
}

}  // namespace
}  // namespace moerun
