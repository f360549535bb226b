// The default model (models/default, installed by scripts/setup.sh): greedy continuations equal to
// transformers' (tools/golden/make_default_goldens.py), token for token.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "moerun/engine.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

// With every KV cache type: the default one (kDefaultKvType, chosen by this measurement; see
// docs/performance.md) and f32 must match; the others are printed (docs/performance.md has them).
TEST(DefaultModel, GreedyContinuationsMatchTransformers) {
#ifdef MOERUN_SANITIZED
  GTEST_SKIP() << "135M parameters through the scalar reference path take minutes under sanitizers; "
                  "the Release suite runs this test";
#endif
  const fs::path dir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";
  if (!fs::exists(dir / "model.safetensors")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const auto goldens = testing::Json::parse(testing::read_file(fs::path(MOERUN_TEST_DATA) / "default_model" / "goldens.json"));
  for (KvType kv : {KvType::f32, KvType::f16, KvType::bf16, KvType::q8_0}) {
    const Engine engine = Engine::load(dir, {.kv_type = kv});
    const int64_t V = engine.config().vocab_size;
    int matched = 0, total = 0;
    for (const auto& c : goldens["cases"]) {
      const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
      const auto want = c["greedy_ids"].get<std::vector<int32_t>>();
      Session s(engine);
      std::vector<float> logits = s.forward(prompt);
      std::vector<int32_t> got;
      while (got.size() < want.size()) {
        got.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin()));
        logits = s.forward(std::span<const int32_t>(&got.back(), 1));
      }
      ++total;
      matched += got == want;
      if (kv == KvType::f32 || kv == kDefaultKvType) {
        EXPECT_EQ(got, want) << "kv " << kv_type_name(kv) << ": " << c["messages"].dump()
                             << "\nHF says: " << c["greedy_text"].get<std::string>();
      }
    }
    std::printf("[default-model] kv %-5s greedy continuations equal to transformers: %d of %d\n",
                std::string(kv_type_name(kv)).c_str(), matched, total);
  }
}

}  // namespace
}  // namespace moerun
