// Every family against Hugging Face transformers (tools/golden/make_goldens.py): logits at every
// position, the greedy continuation, and decoding one token at a time through the cache.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <string>
#include <utility>

#include "io/safetensors.h"
#include "support/golden.h"
#include "support/writer.h"
#include "moerun/engine.h"
#include "moerun/error.h"

namespace moerun {
namespace {

using testing::argmax;
using testing::golden_dir;
using testing::max_abs_diff;
using testing::read_golden;
template <class T>
std::vector<T> read(const io::SafetensorsFile& f, const std::string& name) {
  return testing::read_tensor<T>(f, name);
}

struct Case {
  std::string name;
  float tol;  // max |logit difference| against HF
  EngineOptions options;
};

// fp32 checkpoints: HF and moerun both compute in fp32; only summation order differs, so the spec's
// 1e-3 budget holds with a wide margin (measured values are printed by each test).
constexpr float kF32Tol = 1e-3f;

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* name : {"llama", "llama3_tied", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite",
                           "deepseek_v2", "deepseek_v3"})
    out.push_back({name, kF32Tol, {.backend = BackendKind::cpu}});
  // hidden_act other than silu, through dense MLPs, shared and routed experts (prefill and decode):
  // gelu_pytorch_tanh (Qwen2-MoE) and the exact gelu (OLMoE). Run as SiLU they miss by far more.
  for (const char* name : {"qwen2_moe_gelu_tanh", "olmoe_gelu"}) out.push_back({name, kF32Tol, {.backend = BackendKind::cpu}});
  // MLA's naive form decompresses K/V like HF does; it must meet the same budget.
  for (const char* name : {"deepseek_v2_lite", "deepseek_v2", "deepseek_v3"})
    out.push_back({std::string(name), kF32Tol, {.mla = MlaMode::naive, .backend = BackendKind::cpu}});
  // FP8 weights dequantized to f32 are exactly the weights HF ran; kept as FP8 (the default) the
  // kernels apply the same block scales in fp32.
  out.push_back({"deepseek_v3_fp8", kF32Tol, {.fp8_dequant = DType::f32, .backend = BackendKind::cpu}});
  out.push_back({"deepseek_v3_fp8", kF32Tol, {.backend = BackendKind::cpu}});
  // The f32 cache: what HF keeps (other KV types have their own budgets below).
  for (Case& c : out) c.options.kv_type = KvType::f32;
  return out;
}

std::string label(const Case& c) {
  return c.name + (c.options.mla == MlaMode::naive ? "_naive" : "") + (c.options.fp8_dequant == DType::f32 ? "_f32" : "") +
         (c.name.ends_with("fp8") && c.options.fp8_dequant == DType::f8_e4m3 ? "_kept" : "");
}
std::string case_name(const ::testing::TestParamInfo<Case>& p) { return label(p.param); }
void PrintTo(const Case& c, std::ostream* os) { *os << label(c); }  // GetParam() by name, not bytes

class GoldenLogits : public ::testing::TestWithParam<Case> {};

TEST_P(GoldenLogits, EveryPositionMatchesTransformers) {
  const Case& c = GetParam();
  const testing::Golden g = read_golden(c.name);
  const Engine engine = Engine::load(golden_dir(c.name), c.options);
  float worst = 0.0f;
  for (size_t i = 0; i < g.ids.size(); ++i) {
    Session s(engine);
    const std::vector<float> got = s.forward(g.ids[i], /*all_positions=*/true);
    const float err = max_abs_diff(got, g.logits[i]);
    worst = std::max(worst, err);
    EXPECT_LE(err, c.tol) << c.name << " prompt length " << g.ids[i].size();
  }
  std::printf("[golden] %-28s max |logit - HF %s| = %.3g\n", label(c).c_str(), g.transformers.c_str(), worst);
}

TEST_P(GoldenLogits, GreedyContinuationMatchesTransformers) {
  const Case& c = GetParam();
  const testing::Golden g = read_golden(c.name);
  const Engine engine = Engine::load(golden_dir(c.name), c.options);
  Session s(engine);
  std::vector<float> logits = s.forward(g.ids[1]);
  std::vector<int32_t> got;
  for (size_t i = 0; i < g.greedy.size(); ++i) {
    got.push_back(argmax(logits.data(), engine.config().vocab_size));
    logits = s.forward(std::span<const int32_t>(&got.back(), 1));
  }
  EXPECT_EQ(got, g.greedy);
}

TEST_P(GoldenLogits, DecodingTokenByTokenEqualsOneForwardPass) {
  const Case& c = GetParam();
  const testing::Golden g = read_golden(c.name);
  const Engine engine = Engine::load(golden_dir(c.name), c.options);
  const std::vector<int32_t>& ids = g.ids[2];
  const int64_t V = engine.config().vocab_size;
  Session full(engine);
  const std::vector<float> all = full.forward(ids, true);
  Session step(engine);
  float worst = 0.0f;
  for (size_t t = 0; t < ids.size(); ++t) {
    const std::vector<float> one = step.forward(std::span<const int32_t>(&ids[t], 1));
    const std::vector<float> want(all.begin() + static_cast<int64_t>(t) * V, all.begin() + static_cast<int64_t>(t + 1) * V);
    worst = std::max(worst, max_abs_diff(one, want));
  }
  EXPECT_EQ(step.position(), static_cast<int64_t>(ids.size()));
  // Same fp32 arithmetic on the same cache; only the attention length per call differs.
  EXPECT_LE(worst, 1e-4f) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Hf, GoldenLogits, ::testing::ValuesIn(cases()), case_name);

TEST(GoldenActivation, RunningTheCheckpointAsSiluMissesTransformers) {
  // Regression: hidden_act was never read and every model ran SiLU. The same checkpoints with
  // "silu" in config.json (what moerun used to run) miss HF's logits by far more than the budget,
  // so the goldens above tell the activations apart.
  for (const auto& [name, act] : {std::pair{"qwen2_moe_gelu_tanh", Activation::gelu_tanh}, std::pair{"olmoe_gelu", Activation::gelu}}) {
    const testing::Golden g = read_golden(name);
    EXPECT_EQ(Engine::load(golden_dir(name), {.backend = BackendKind::cpu}).config().hidden_act, act) << name;
    const std::filesystem::path dir = testing::fresh_dir(std::string(name) + "_as_silu");
    std::filesystem::copy_file(golden_dir(name) / "model.safetensors", dir / "model.safetensors");
    auto config = testing::Json::parse(testing::read_file(golden_dir(name) / "config.json"));
    config["hidden_act"] = "silu";
    testing::write_file(dir / "config.json", config.dump());
    const Engine silu = Engine::load(dir, {.backend = BackendKind::cpu});
    Session s(silu);
    const float err = max_abs_diff(s.forward(g.ids[2], true), g.logits[2]);
    EXPECT_GT(err, 100 * kF32Tol) << name << " run as silu";
    std::printf("[golden] %-28s run as silu: max |logit - HF| = %.3g\n", name, err);
  }
}

TEST(GoldenMla, NaiveAndAbsorbedFormsAgree) {
  for (const char* name : {"deepseek_v2_lite", "deepseek_v2", "deepseek_v3"}) {
    const testing::Golden g = read_golden(name);
    const Engine absorbed = Engine::load(golden_dir(name), {.kv_type = KvType::f32, .mla = MlaMode::absorbed, .backend = BackendKind::cpu});
    const Engine naive = Engine::load(golden_dir(name), {.kv_type = KvType::f32, .mla = MlaMode::naive, .backend = BackendKind::cpu});
    Session a(absorbed), n(naive);
    EXPECT_LE(max_abs_diff(a.forward(g.ids[2], true), n.forward(g.ids[2], true)), 1e-4f) << name;
  }
}

// Against HF's own bf16 arithmetic only closeness can be asked (support/golden.h explains).
using testing::Closeness;
using testing::closeness;
using testing::expect_close_to_bf16_reference;


TEST(GoldenBf16, Bf16WeightsMatchTransformersInFp32Exactly) {
  // moerun reads bf16 weights and computes in fp32: HF in fp32 on the same weights is its exact twin.
  const Engine engine = Engine::load(golden_dir("deepseek_v3_bf16"), {.kv_type = KvType::f32, .backend = BackendKind::cpu});
  const auto f = io::SafetensorsFile::open(golden_dir("deepseek_v3_bf16") / "golden.safetensors");
  float worst = 0.0f;
  for (int n : {1, 7, 33}) {
    Session s(engine);
    const float err = max_abs_diff(s.forward(read<int32_t>(*f, "ids_" + std::to_string(n)), true),
                                   read<float>(*f, "f32_logits_" + std::to_string(n)));
    EXPECT_LE(err, kF32Tol) << "prompt length " << n;
    worst = std::max(worst, err);
  }
  std::printf("[golden] deepseek_v3_bf16 vs HF fp32 on the bf16 weights: max |logit diff| = %.3g\n", worst);
}

TEST(GoldenBf16, Bf16CheckpointIsCloseToTransformersBf16Arithmetic) {
  const testing::Golden g = read_golden("deepseek_v3_bf16");
  const Engine engine = Engine::load(golden_dir("deepseek_v3_bf16"), {.backend = BackendKind::cpu});
  Closeness total;
  for (size_t i = 0; i < g.ids.size(); ++i) {
    Session s(engine);
    total += closeness(s.forward(g.ids[i], true), g.logits[i], engine.config().vocab_size);
  }
  expect_close_to_bf16_reference(total, "deepseek_v3_bf16 vs HF bf16");
}

TEST(GoldenFp8, KeptEqualsTheExactF32Dequantization) {
  // FP8 kept as FP8 (zero copy, the default) against the weights dequantized exactly to f32: the
  // same products, summed in another order. Within 1e-4 of the largest logit at every position.
  const testing::Golden g = read_golden("deepseek_v3_fp8");
  const Engine kept = Engine::load(golden_dir("deepseek_v3_fp8"), {.kv_type = KvType::f32, .backend = BackendKind::cpu});
  const Engine exact =
      Engine::load(golden_dir("deepseek_v3_fp8"), {.fp8_dequant = DType::f32, .kv_type = KvType::f32, .backend = BackendKind::cpu});
  ASSERT_EQ(kept.weights().layers[0].q_a_proj.weight.dtype(), DType::f8_e4m3);
  ASSERT_EQ(kept.weights().layers[0].q_a_proj.weight.data(), kept.model().weights().layers[0].q_a_proj.weight.data());  // zero copy
  ASSERT_EQ(exact.weights().layers[0].q_a_proj.weight.dtype(), DType::f32);
  for (size_t i = 0; i < g.ids.size(); ++i) {
    Session a(kept), b(exact);
    const std::vector<float> x = a.forward(g.ids[i], true), y = b.forward(g.ids[i], true);
    float largest = 0.0f;
    for (float v : y) largest = std::max(largest, std::fabs(v));
    const float rel = max_abs_diff(x, y) / largest;
    EXPECT_LE(rel, 1e-4f) << "prompt " << i;
    std::printf("[golden] deepseek_v3_fp8 kept vs f32: max |diff| / max |logit| = %.3g (prompt %zu)\n", rel, i);
  }
}

TEST(GoldenFp8, DequantizedToBf16StaysClose) {
  // --fp8 bf16 dequantizes FP8 to bf16: one extra rounding of every weight (relative 2^-9) against
  // HF on the exact f32 products; like bf16 arithmetic it can flip a near-tied expert.
  const testing::Golden g = read_golden("deepseek_v3_fp8");
  const Engine engine = Engine::load(golden_dir("deepseek_v3_fp8"), {.fp8_dequant = DType::bf16, .backend = BackendKind::cpu});
  EXPECT_EQ(engine.weights().layers[0].q_a_proj.weight.dtype(), DType::bf16);
  EXPECT_EQ(engine.model().weights().layers[0].q_a_proj.weight.dtype(), DType::f8_e4m3);
  Session s(engine);
  expect_close_to_bf16_reference(closeness(s.forward(g.ids[2], true), g.logits[2], engine.config().vocab_size),
                                 "deepseek_v3_fp8 dequantized to bf16 vs HF");
}

}  // namespace
}  // namespace moerun
