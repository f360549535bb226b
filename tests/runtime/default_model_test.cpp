// The default model (models/default, installed by scripts/setup.sh): greedy continuations equal to
// transformers' (tools/golden/make_default_goldens.py), token for token.

#include <gtest/gtest.h>

#include <algorithm>

#include "moerun/engine.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

TEST(DefaultModel, GreedyContinuationsMatchTransformers) {
#ifdef MOERUN_SANITIZED
  GTEST_SKIP() << "135M parameters through the scalar reference path take minutes under sanitizers; "
                  "the Release suite runs this test";
#endif
  const fs::path dir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";
  if (!fs::exists(dir / "model.safetensors")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const auto goldens = testing::Json::parse(testing::read_file(fs::path(MOERUN_TEST_DATA) / "default_model" / "goldens.json"));
  const Engine engine = Engine::load(dir);
  const int64_t V = engine.config().vocab_size;
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
    EXPECT_EQ(got, want) << c["messages"].dump() << "\nHF says: " << c["greedy_text"].get<std::string>();
  }
}

}  // namespace
}  // namespace moerun
