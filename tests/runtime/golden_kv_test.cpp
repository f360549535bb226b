// KV caches of every type (--kv-type) against Hugging Face transformers' f32 logits: the goldens'
// models (GQA, MoE, MLA; FP8 kept) with the cache stored as f16, bf16 or q8_0, each type with its
// own budget (below); the measured errors are printed. Decoding token by token through a typed
// cache must also agree with one forward pass over the same tokens.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "support/expect.h"
#include "support/golden.h"
#include "moerun/engine.h"
#include "moerun/error.h"

namespace moerun {
namespace {

using testing::golden_dir;
using testing::max_abs_diff;
using testing::read_golden;

struct KvCase {
  KvType type;
  float decode_tol;  // decoding token by token against one forward pass (see below)
};

constexpr KvCase kKvCases[] = {{KvType::f16, 5e-4f}, {KvType::bf16, 3e-3f}, {KvType::q8_0, 5e-3f}};
constexpr const char* kModels[] = {"llama", "mixtral", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3", "deepseek_v3_fp8"};
// q8_0 needs head_dim (MLA: kv_lora_rank and qk_rope_head_dim) to be whole 32-blocks; of the goldens'
// tiny models these are.
bool q8_fits(const std::string& name) { return name == "qwen3_moe" || name == "deepseek_v3_fp8"; }

// f16 rounds every cached element by at most 2^-11 relative: every logit of every model stays
// within 5e-3 of HF's (measured: at most 1.9e-3). bf16 (2^-8) and q8_0 (1/254 of a block's largest
// value) perturb the tiny models' nearly tied routers enough to flip an expert at some positions
// (a flip moves logits by 0.3-1.5 there), so they are held to the bf16 rule of support/golden.h:
// most positions within 0.1 and the same top token wherever HF's is decisive.
TEST(GoldenKv, EveryTypeStaysWithinItsBudgetOfTransformers) {
  for (const char* name : kModels) {
    const testing::Golden g = read_golden(name);
    for (const KvCase& k : kKvCases) {
      if (k.type == KvType::q8_0 && !q8_fits(name)) continue;
      const Engine engine = Engine::load(golden_dir(name), {.kv_type = k.type, .backend = BackendKind::cpu});
      ASSERT_EQ(engine.kv_type(), k.type);
      float worst = 0.0f;
      testing::Closeness total;
      for (size_t i = 0; i < g.ids.size(); ++i) {
        Session s(engine);
        const std::vector<float> got = s.forward(g.ids[i], true);
        worst = std::max(worst, max_abs_diff(got, g.logits[i]));
        total += testing::closeness(got, g.logits[i], engine.config().vocab_size);
      }
      const std::string what = std::string(name) + " kv " + std::string(kv_type_name(k.type));
      if (k.type == KvType::f16) EXPECT_LE(worst, 5e-3f) << what;
      else testing::expect_close_to_bf16_reference(total, what.c_str());
      std::printf("[golden-kv] %-18s %-5s max |logit - HF f32| = %.3g\n", name, std::string(kv_type_name(k.type)).c_str(), worst);
    }
  }
}

// Decoding token by token and one forward pass store the same rows, but the rows come from
// different kernels (GEMV vs GEMM: summation order), and a rounding to the cache's type can turn a
// difference of one ulp into one step of the type: 2^-11, 2^-8 or a q8_0 quantum.
TEST(GoldenKv, DecodingThroughATypedCacheEqualsOneForwardPass) {
  for (const char* name : {"qwen3_moe", "deepseek_v3_fp8"}) {
    const testing::Golden g = read_golden(name);
    for (const KvCase& k : kKvCases) {
      const Engine engine = Engine::load(golden_dir(name), {.kv_type = k.type, .backend = BackendKind::cpu});
      const std::vector<int32_t>& ids = g.ids[2];
      const int64_t V = engine.config().vocab_size;
      Session full(engine), step(engine);
      const std::vector<float> all = full.forward(ids, true);
      float worst = 0.0f;
      for (size_t t = 0; t < ids.size(); ++t) {
        const std::vector<float> one = step.forward(std::span<const int32_t>(&ids[t], 1));
        const std::vector<float> want(all.begin() + static_cast<int64_t>(t) * V, all.begin() + static_cast<int64_t>(t + 1) * V);
        worst = std::max(worst, max_abs_diff(one, want));
      }
      EXPECT_LE(worst, k.decode_tol) << name << " kv " << kv_type_name(k.type);
      std::printf("[golden-kv] %-18s %-5s decode vs one pass: max |diff| = %.3g\n", name, std::string(kv_type_name(k.type)).c_str(), worst);
    }
  }
}

TEST(GoldenKv, Q8NeedsWholeBlocksAndNaiveMlaNeedsF32) {
  // The goldens' llama has head_dim 16: a q8_0 row would split blocks across heads.
  const std::string head = testing::error_of([] { Engine::load(golden_dir("llama"), {.kv_type = KvType::q8_0, .backend = BackendKind::cpu}); });
  EXPECT_NE(head.find("head_dim must be a multiple of 32"), std::string::npos) << head;
  const std::string mla = testing::error_of([] {
    Engine::load(golden_dir("deepseek_v3"), {.kv_type = KvType::q8_0, .backend = BackendKind::cpu});
  });
  EXPECT_NE(mla.find("qk_rope_head_dim"), std::string::npos) << mla;
  const std::string naive = testing::error_of([] {
    Engine::load(golden_dir("deepseek_v3"), {.kv_type = KvType::bf16, .mla = MlaMode::naive, .backend = BackendKind::cpu});
  });
  EXPECT_NE(naive.find("--mla naive"), std::string::npos) << naive;
}

}  // namespace
}  // namespace moerun
