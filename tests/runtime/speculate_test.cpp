// Speculative decoding (issue 18, prompt lookup so far): the draft source and the drafting policy
// alone, and generate() with --spec ngram against plain decoding: token for token the same greedy
// output on every golden model and on the default model, for draft lengths 1, 4, 8 and 15, with
// drafts accepted on repetitive prompts, and the session's cache left as plain decoding leaves it.

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/generate.h"
#include "moerun/sampler.h"
#include "moerun/tokenizer.h"
#include "runtime/speculate.h"
#include "support/golden.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using testing::golden_dir;

const fs::path kTokenizerDir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";

TEST(NgramDraft, ProposesWhatFollowedTheLatestLongestMatch) {
  std::vector<int32_t> out;
  // ... 1 2 3 [9 9] ... 1 2 3 [7 8 5] ... 1 2 3: the latest occurrence of "1 2 3" wins.
  const std::vector<int32_t> h = {1, 2, 3, 9, 9, 4, 1, 2, 3, 7, 8, 5, 6, 1, 2, 3};
  EXPECT_EQ(runtime::ngram_draft(h, 2, out), 2u);
  EXPECT_EQ(out, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(runtime::ngram_draft(h, 10, out), 7u);  // up to the end of the history
  EXPECT_EQ(out, (std::vector<int32_t>{7, 8, 5, 6, 1, 2, 3}));
  // The longest suffix that occurred before: "4 1" (no longer one did).
  const std::vector<int32_t> g = {5, 1, 6, 4, 1, 2, 0, 4, 1};
  EXPECT_EQ(runtime::ngram_draft(g, 3, out), 3u);
  EXPECT_EQ(out, (std::vector<int32_t>{2, 0, 4}));
  EXPECT_EQ(runtime::ngram_draft(std::vector<int32_t>{1, 2, 3, 4}, 4, out), 0u);  // no repeat
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(runtime::ngram_draft(std::vector<int32_t>{}, 4, out), 0u);
  EXPECT_EQ(runtime::ngram_draft(h, 0, out), 0u);
  // A run of one token matches itself one token back.
  EXPECT_EQ(runtime::ngram_draft(std::vector<int32_t>{3, 3, 3, 3}, 4, out), 1u);
  EXPECT_EQ(out, (std::vector<int32_t>{3}));
}

TEST(DraftPolicy, FollowsAcceptanceAndPausesWhenNothingIsAccepted) {
  runtime::DraftPolicy p(8);
  EXPECT_EQ(p.next(), 8u);
  p.record(8, 0);
  EXPECT_EQ(p.next(), 4u);
  p.record(4, 4);
  EXPECT_EQ(p.next(), 8u);
  p.record(8, 3);  // partly accepted: the length stays
  EXPECT_EQ(p.next(), 8u);
  for (int i = 0; i < runtime::DraftPolicy::kColdLimit; ++i) p.record(1, 0);
  for (int i = 0; i < runtime::DraftPolicy::kPause; ++i) EXPECT_EQ(p.next(), 0u) << i;
  EXPECT_EQ(p.next(), 1u);
}

struct Outcome {
  GenerateResult result;
  int64_t position = 0;
  std::vector<float> next;  // the logits of a token fed after generation: the cache's content shows in them
};

Outcome run(const Engine& engine, const Tokenizer& tok, const std::vector<int32_t>& prompt, SpecKind spec, int64_t spec_max,
        int64_t max_tokens, std::vector<int32_t> eos = {}, float penalty = 1.1f) {
  SamplerParams sp;
  sp.temperature = 0.0f;
  sp.repeat_penalty = penalty;  // (1.1: penalties see the accepted drafts as the history they are)
  Sampler sampler(sp);
  Session session(engine);
  GenerateOptions o;
  o.max_tokens = max_tokens;
  o.spec = spec;
  o.spec_max = spec_max;
  o.eos_ids = std::move(eos);
  Outcome r;
  r.result = generate(session, tok, sampler, prompt, o, [](std::string_view) { return true; });
  r.position = session.position();
  r.next = session.forward(std::vector<int32_t>{5});
  return r;
}

// A prompt that repeats itself, so prompt lookup has something to draft.
std::vector<int32_t> repetitive(int64_t vocab, uint64_t seed) {
  std::vector<int32_t> base;
  for (int i = 0; i < 9; ++i) base.push_back(static_cast<int32_t>((seed * 131 + static_cast<uint64_t>(i) * 37) % static_cast<uint64_t>(vocab)));
  std::vector<int32_t> p;
  for (int rep = 0; rep < 4; ++rep) p.insert(p.end(), base.begin(), base.end());
  return p;
}

TEST(Speculation, GreedyOutputIsUnchangedOnEveryGoldenModel) {
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  int64_t accepted = 0;
  for (const char* name : {"llama", "llama3_tied", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v2_lite",
                           "deepseek_v3", "deepseek_v3_fp8"}) {
    SCOPED_TRACE(name);
    const Engine engine = Engine::load(golden_dir(name));
    const testing::Golden g = testing::read_golden(name);
    for (const std::vector<int32_t>& prompt : {g.ids[2], repetitive(engine.config().vocab_size, 3)}) {
      const Outcome plain = run(engine, tok, prompt, SpecKind::none, 8, 40);
      for (int64_t k : {int64_t{1}, int64_t{4}, int64_t{8}, kMaxDraft}) {
        const Outcome spec = run(engine, tok, prompt, SpecKind::ngram, k, 40);
        ASSERT_EQ(spec.result.tokens, plain.result.tokens) << "spec_max " << k;
        EXPECT_EQ(spec.result.finish_reason, plain.result.finish_reason);
        EXPECT_EQ(spec.position, plain.position) << "spec_max " << k;
        EXPECT_EQ(spec.next, plain.next) << "spec_max " << k;  // the cache holds the same rows
        EXPECT_LE(spec.result.accepted_tokens, spec.result.drafted_tokens);
        accepted += spec.result.accepted_tokens;
      }
      EXPECT_EQ(plain.result.drafted_tokens, 0);
    }
  }
  EXPECT_GT(accepted, 0) << "no draft was ever accepted: the test would not see a wrong rollback";
}

// The default model on real text that repeats (code to copy): drafts are accepted and the text is
// the same; an EOS and the context's end stop speculation where they stop plain decoding.
TEST(Speculation, DefaultModelCopiesTheSameTextWithFewerSteps) {
  if (!fs::exists(kTokenizerDir / "model.safetensors")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(kTokenizerDir);
  const std::vector<std::string> texts = {
      "Repeat this code exactly:\ndef add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\nAnswer:\n",
      "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick brown",
      "What is the capital of France?"};
  for (const std::string& text : texts) {
    SCOPED_TRACE(text.substr(0, 30));
    const std::vector<int32_t> prompt = tok.encode(text);
    const std::vector<int32_t> eos = tok.eos_ids();
    const Outcome plain = run(engine, tok, prompt, SpecKind::none, 8, 64, eos);
    for (int64_t k : {int64_t{1}, int64_t{4}, int64_t{8}}) {
      const Outcome spec = run(engine, tok, prompt, SpecKind::ngram, k, 64, eos);
      ASSERT_EQ(spec.result.tokens, plain.result.tokens) << "spec_max " << k;
      EXPECT_EQ(spec.result.text, plain.result.text);
      EXPECT_EQ(spec.position, plain.position);
      EXPECT_EQ(spec.next, plain.next);
    }
  }
  // Without a repetition penalty the model goes on repeating the sentence, and the drafts are taken.
  const Outcome plain = run(engine, tok, tok.encode(texts[1]), SpecKind::none, 8, 64, tok.eos_ids(), 1.0f);
  const Outcome copy = run(engine, tok, tok.encode(texts[1]), SpecKind::ngram, 8, 64, tok.eos_ids(), 1.0f);
  EXPECT_EQ(copy.result.tokens, plain.result.tokens);
  EXPECT_GT(copy.result.accepted_tokens, 10) << "the repeated sentence should be drafted: " << copy.result.text;
}

TEST(Speculation, RefusesDraftLengthsOutsideTheExactRange) {
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"));
  for (int64_t k : {int64_t{0}, kMaxDraft + 1})
    EXPECT_THROW(run(engine, tok, std::vector<int32_t>{1, 2, 3}, SpecKind::ngram, k, 4), Error) << k;
}

}  // namespace
}  // namespace moerun
