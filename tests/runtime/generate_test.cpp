// generate(): every token comes from the Sampler (greedy included), so a repetition penalty at
// temperature 0 acts as transformers applies it; the finish reasons and token counts it reports.
// The tiny golden llama model (vocabulary 512) with the default model's tokenizer, which has a
// token for every id below 512.

#include <gtest/gtest.h>

#include <algorithm>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/generate.h"
#include "support/golden.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using testing::golden_dir;

const fs::path kTokenizerDir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";

#define REQUIRE_TOKENIZER() \
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)"

auto accept_all = [](std::string_view) { return true; };

// What generate() must produce: the session's logits through sampler.sample with the history so far,
// one token at a time.
std::vector<int32_t> by_hand(const Engine& engine, const SamplerParams& params, std::vector<int32_t> history, int n) {
  Sampler sampler(params);
  Session s(engine);
  std::vector<float> logits = s.forward(history);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const int32_t id = sampler.sample(logits, history);
    out.push_back(id);
    history.push_back(id);
    logits = s.forward(std::span<const int32_t>(&id, 1));
  }
  return out;
}

std::vector<int32_t> argmax_loop(const Engine& engine, std::vector<int32_t> prompt, int n) {
  Session s(engine);
  std::vector<float> logits = s.forward(prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    logits = s.forward(std::span<const int32_t>(&out.back(), 1));
  }
  return out;
}

TEST(Generate, GreedyWithRepeatPenaltyEqualsTheSamplersGreedy) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"));
  const std::vector<int32_t> prompt = {3, 5, 7, 9, 11};
  constexpr int kTokens = 24;
  GenerateOptions go;
  go.max_tokens = kTokens;

  // --temp 0 --repeat-penalty 1.3: token for token the sampler's greedy over the growing history.
  const SamplerParams penalised{.temperature = 0.0f, .repeat_penalty = 1.3f};
  Sampler sampler(penalised);
  Session s(engine);
  const GenerateResult r = generate(s, tok, sampler, prompt, go, accept_all);
  EXPECT_EQ(r.tokens, by_hand(engine, penalised, prompt, kTokens));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.generated_tokens, kTokens);
  EXPECT_EQ(r.prompt_tokens, 5);
  EXPECT_EQ(r.text, tok.decode(r.tokens, /*skip_special_tokens=*/true));

  // Plain greedy is the argmax, as before; the penalty changes the continuation of this random
  // model (which repeats itself), so the test above is not vacuous.
  Sampler greedy({.temperature = 0.0f});
  Session s2(engine);
  const GenerateResult plain = generate(s2, tok, greedy, prompt, go, accept_all);
  const std::vector<int32_t> argmax = argmax_loop(engine, prompt, kTokens);
  EXPECT_EQ(plain.tokens, argmax);
  EXPECT_NE(r.tokens, argmax) << "the penalty never changed the choice; pick another prompt";
}

TEST(Generate, SeededSamplingEqualsTheSamplerStepByStep) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"));
  const SamplerParams params{.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .presence_penalty = 0.3f, .seed = 11};
  Sampler sampler(params);
  Session s(engine);
  GenerateOptions go;
  go.max_tokens = 16;
  const GenerateResult r = generate(s, tok, sampler, std::vector<int32_t>{1, 2, 3}, go, accept_all);
  EXPECT_EQ(r.tokens, by_hand(engine, params, {1, 2, 3}, 16));
}

TEST(Generate, ContextFinishReasonWhenTheCacheIsFull) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"));
  Sampler greedy({.temperature = 0.0f});
  Session s(engine, 8);
  GenerateOptions go;
  go.max_tokens = 100;
  const GenerateResult r = generate(s, tok, greedy, std::vector<int32_t>{3, 5, 7, 9, 11}, go, accept_all);
  // 5 prompt tokens, then 3 sampled tokens fed back fill the 8 positions; the 4th has no place.
  EXPECT_EQ(r.finish_reason, "context");
  EXPECT_EQ(r.generated_tokens, 4);
  EXPECT_EQ(s.position(), 8);
  // Exactly as many tokens as max_tokens is "length", even when the cache is full too.
  Session t(engine, 8);
  go.max_tokens = 4;
  EXPECT_EQ(generate(t, tok, greedy, std::vector<int32_t>{3, 5, 7, 9, 11}, go, accept_all).finish_reason, "length");
  // A prompt longer than the context is an error before any work.
  Session u(engine, 4);
  EXPECT_THROW(generate(u, tok, greedy, std::vector<int32_t>{3, 5, 7, 9, 11}, go, accept_all), Error);
  EXPECT_EQ(u.position(), 0);
}

TEST(Generate, ReportsTheReusedPrefix) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"));
  Sampler greedy({.temperature = 0.0f});
  GenerateOptions go;
  go.max_tokens = 2;
  Session s(engine);
  s.forward(std::vector<int32_t>{3, 5, 7});
  const GenerateResult r = generate(s, tok, greedy, std::vector<int32_t>{3, 5, 7, 9, 11}, go, accept_all);
  EXPECT_EQ(r.cached_tokens, 3);
  EXPECT_EQ(r.prompt_tokens, 2);
  // The same tokens as from an empty session.
  Session fresh(engine);
  Sampler greedy2({.temperature = 0.0f});
  EXPECT_EQ(generate(fresh, tok, greedy2, std::vector<int32_t>{3, 5, 7, 9, 11}, go, accept_all).tokens, r.tokens);
  // A session holding the whole prompt runs its last token again for the logits.
  Session whole(engine);
  whole.forward(std::vector<int32_t>{3, 5, 7, 9, 11});
  const GenerateResult w = generate(whole, tok, greedy, std::vector<int32_t>{3, 5, 7, 9, 11}, go, accept_all);
  EXPECT_EQ(w.cached_tokens, 4);
  EXPECT_EQ(w.prompt_tokens, 1);
  EXPECT_EQ(w.tokens, r.tokens);
}

}  // namespace
}  // namespace moerun
