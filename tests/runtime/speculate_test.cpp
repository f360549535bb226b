// Speculative decoding (issue 18): the draft sources and the drafting policy alone; generate() with
// every source against plain decoding: token for token the same greedy output (prompt lookup on
// every golden model and on the default model, for draft lengths 1, 4, 8 and 15; a draft model on
// every golden model, another one and itself; the MTP layer when a checkpoint has one), with drafts
// accepted and the session's cache left as plain decoding leaves it; speculative sampling's output
// distribution against plain sampling's (two-sample chi-square, with a deliberately wrong scheme to
// show the test's power); and the cache after a rejected draft, for GQA and MLA and each KV type.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
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
  runtime::DraftPolicy p(8, 1);
  EXPECT_EQ(p.next(), 1u);
  p.record(1, 1);
  EXPECT_EQ(p.next(), 3u);
  p.record(3, 3);
  EXPECT_EQ(p.next(), 7u);
  p.record(7, 7);
  EXPECT_EQ(p.next(), 8u);  // at most max
  p.record(8, 0);
  EXPECT_EQ(p.next(), 3u);
  p.record(3, 3);
  EXPECT_EQ(p.next(), 7u);
  p.record(7, 3);  // partly accepted: the length stays
  EXPECT_EQ(p.next(), 7u);
  for (int i = 0; i < runtime::DraftPolicy::kColdLimit; ++i) p.record(1, 0);
  for (int i = 0; i < runtime::DraftPolicy::kPause; ++i) EXPECT_EQ(p.next(), 0u) << i;
  EXPECT_EQ(p.next(), 1u);
}

// What wrong drafts lost may not pass kAllowance + kBudget * generated tokens (plus the next
// verification's expected cost): past it no drafts until enough tokens were decoded plainly, and
// gains give the budget back.
TEST(DraftPolicy, LossStaysWithinTheBudget) {
  using P = runtime::DraftPolicy;
  P p(1, 1);
  EXPECT_EQ(p.next(0), 1u);
  p.record(1, 0, 0.5);  // lost half a step
  EXPECT_DOUBLE_EQ(p.loss(), 0.5);
  // 0.5 + 0.5 (the next one's) > 0.25 + 0.025 g until g = 30.
  EXPECT_EQ(p.next(29), 0u);
  EXPECT_EQ(p.next(30), 1u);
  p.record(1, 1, 0.5);  // accepted: gained half a step back
  EXPECT_DOUBLE_EQ(p.loss(), 0.0);
  EXPECT_EQ(p.next(0), 0u);  // the next verification's expected half step is over the allowance
  EXPECT_EQ(p.next(10), 1u);
}

// Free drafts come in lengths whose verification fills whole groups of kVerifyQuantum rows.
TEST(DraftPolicy, FreeDraftLengthsFillWholeRowGroups) {
  runtime::DraftPolicy p(15, runtime::DraftPolicy::kFirst, runtime::DraftPolicy::kVerifyQuantum);
  EXPECT_EQ(p.next(), 3u);
  p.record(3, 3);
  EXPECT_EQ(p.next(), 7u);
  p.record(7, 7);
  EXPECT_EQ(p.next(), 15u);
  p.record(15, 0);
  EXPECT_EQ(p.next(), 7u);
  p.record(7, 0);
  EXPECT_EQ(p.next(), 3u);
  p.record(3, 0);
  EXPECT_EQ(p.next(), 3u);  // the least
  runtime::DraftPolicy eight(8, runtime::DraftPolicy::kFirst, runtime::DraftPolicy::kVerifyQuantum);
  eight.record(3, 3);
  EXPECT_EQ(eight.next(), 7u);
  eight.record(7, 7);
  EXPECT_EQ(eight.next(), 7u);  // 8 would take a third group
  runtime::DraftPolicy two(2, runtime::DraftPolicy::kFirst, runtime::DraftPolicy::kVerifyQuantum);
  EXPECT_EQ(two.next(), 2u);  // below a group: the max
}

struct Outcome {
  GenerateResult result;
  int64_t position = 0;
  std::vector<float> next;  // the logits of a token fed after generation: the cache's content shows in them
};

Outcome run(const Engine& engine, const Tokenizer& tok, const std::vector<int32_t>& prompt, SpecKind spec, int64_t spec_max,
        int64_t max_tokens, std::vector<int32_t> eos = {}, float penalty = 1.1f, Session* draft = nullptr) {
  SamplerParams sp;
  sp.temperature = 0.0f;
  sp.repeat_penalty = penalty;  // (1.1: penalties see the accepted drafts as the history they are)
  Sampler sampler(sp);
  Session session(engine);
  GenerateOptions o;
  o.max_tokens = max_tokens;
  o.spec = spec;
  o.spec_max = spec_max;
  o.draft = draft;
  o.eos_ids = std::move(eos);
  // A fixed, negligible drafting cost instead of the clock: when to draft must not depend on how
  // busy the machine is, or the counts these tests assert would.
  o.draft_cost = 1e-9;
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
// the same, drafted by prompt lookup and by a draft model (the model itself: the one model with its
// tokenizer here); an EOS and the context's end stop speculation where they stop plain decoding.
TEST(Speculation, DefaultModelCopiesTheSameTextWithFewerSteps) {
#ifdef MOERUN_SANITIZED
  GTEST_SKIP() << "135M parameters take minutes under sanitizers; the golden models cover these paths there, "
                  "and the Release suite runs this test";
#endif
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
  // The draft model on the copy text's first 24 tokens (every draft token costs the model a forward).
  {
    const std::vector<int32_t> prompt = tok.encode(texts[0]);
    const Outcome plain = run(engine, tok, prompt, SpecKind::none, 8, 24, tok.eos_ids());
    for (int64_t k : {int64_t{1}, int64_t{4}, int64_t{8}}) {
      Session draft(engine);
      const Outcome drafted = run(engine, tok, prompt, SpecKind::draft, k, 24, tok.eos_ids(), 1.1f, &draft);
      ASSERT_EQ(drafted.result.tokens, plain.result.tokens) << "draft model, spec_max " << k;
      EXPECT_EQ(drafted.position, plain.position);
      EXPECT_EQ(drafted.next, plain.next);
      EXPECT_GT(drafted.result.drafted_tokens, 0);
      EXPECT_GE(drafted.result.accepted_tokens * 10, drafted.result.drafted_tokens * 9);  // its own drafts
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

const char* const kGoldenModels[] = {"llama", "llama3_tied", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "deepseek_v2",
                                     "deepseek_v2_lite", "deepseek_v3", "deepseek_v3_fp8"};

// A draft model: every golden model drafts for itself and for the next one in the list (they all
// have vocabulary 512), for draft lengths 1, 4 and 8. A model drafting for itself is right nearly
// every time (its greedy chain is the target's).
TEST(Speculation, DraftModelGreedyOutputIsUnchanged) {
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  EngineOptions one;  // these tiny models' steps are shorter than a thread pool's hand-off
  one.threads = 1;
  std::vector<Engine> engines;
  for (const char* name : kGoldenModels) engines.push_back(Engine::load(golden_dir(name), one));
  const size_t count = engines.size();
  int64_t accepted = 0, self_drafted = 0, self_accepted = 0;
  for (size_t i = 0; i < count; ++i) {
    SCOPED_TRACE(kGoldenModels[i]);
    const testing::Golden g = testing::read_golden(kGoldenModels[i]);
    for (const std::vector<int32_t>& prompt : {g.ids[2], repetitive(engines[i].config().vocab_size, 5)}) {
      const Outcome plain = run(engines[i], tok, prompt, SpecKind::none, 8, 40);
      for (size_t d : {i, (i + 1) % count}) {
        SCOPED_TRACE(std::string("draft ") + kGoldenModels[d]);
        for (int64_t k : {int64_t{1}, int64_t{4}, int64_t{8}}) {
          Session draft(engines[d]);
          const Outcome spec = run(engines[i], tok, prompt, SpecKind::draft, k, 40, {}, 1.1f, &draft);
          ASSERT_EQ(spec.result.tokens, plain.result.tokens) << "spec_max " << k;
          EXPECT_EQ(spec.position, plain.position) << "spec_max " << k;
          EXPECT_EQ(spec.next, plain.next) << "spec_max " << k;
          EXPECT_GT(spec.result.drafted_tokens, 0);
          EXPECT_LE(spec.result.accepted_tokens, spec.result.drafted_tokens);
          EXPECT_LE(draft.position(), static_cast<int64_t>(prompt.size()) + 40);  // a prefix of the tokens
          accepted += spec.result.accepted_tokens;
          if (d == i) {
            self_drafted += spec.result.drafted_tokens;
            self_accepted += spec.result.accepted_tokens;
          }
        }
      }
    }
  }
  EXPECT_GT(accepted, 0);
  EXPECT_GE(self_accepted * 10, self_drafted * 9) << self_accepted << " of " << self_drafted;
}

// A draft session used turn after turn with the same target session (as a conversation does): each
// turn's prompt extends the last turn's tokens; the draft keeps what it holds and the output is
// plain decoding's.
TEST(Speculation, DraftSessionFollowsTheTargetAcrossTurns) {
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine target = Engine::load(golden_dir("llama")), drafter = Engine::load(golden_dir("llama3_tied"));
  Session session(target), draft(drafter);
  std::vector<int32_t> prompt = repetitive(512, 9);
  for (int turn = 0; turn < 3; ++turn) {
    SCOPED_TRACE(turn);
    const Outcome plain = run(target, tok, prompt, SpecKind::none, 4, 24);
    SamplerParams sp;
    sp.temperature = 0.0f;
    sp.repeat_penalty = 1.1f;
    Sampler sampler(sp);
    GenerateOptions o;
    o.max_tokens = 24;
    o.spec = SpecKind::draft;
    o.spec_max = 4;
    o.draft = &draft;
    const GenerateResult r = generate(session, tok, sampler, prompt, o, [](std::string_view) { return true; });
    ASSERT_EQ(r.tokens, plain.result.tokens);
    EXPECT_EQ(session.position(), plain.position);
    EXPECT_LE(draft.position(), static_cast<int64_t>(prompt.size() + r.tokens.size()));
    prompt.insert(prompt.end(), r.tokens.begin(), r.tokens.end());
    for (int32_t t : {3, 1, 4, 1, 5}) prompt.push_back(t);  // the next turn's new text
  }
}

TEST(Speculation, DraftNeedsADraftSession) {
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"));
  EXPECT_THROW(run(engine, tok, std::vector<int32_t>{1, 2, 3}, SpecKind::draft, 4, 4), Error);
}

// The MTP layer drafts (Session::mtp_draft): greedy output unchanged. Needs a checkpoint with the
// layer (tests/data/golden/deepseek_v3_mtp) and an engine that loads it.
TEST(Speculation, MtpGreedyOutputIsUnchanged) {
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const fs::path dir = golden_dir("deepseek_v3_mtp");
  if (!fs::exists(dir / "config.json")) GTEST_SKIP() << dir << " does not exist yet (the MTP golden checkpoint)";
  EngineOptions eo;
  eo.mtp = true;
  const Engine engine = Engine::load(dir, eo);
  if (!engine.has_mtp()) GTEST_SKIP() << "the engine loaded no MTP layer from " << dir;
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  int64_t drafted = 0;
  for (const std::vector<int32_t>& prompt : {std::vector<int32_t>{1, 17, 33, 2, 90, 4, 250}, repetitive(engine.config().vocab_size, 3)}) {
    const Outcome plain = run(engine, tok, prompt, SpecKind::none, 8, 40);
    for (int64_t k : {int64_t{1}, int64_t{4}, int64_t{8}}) {
      const Outcome spec = run(engine, tok, prompt, SpecKind::mtp, k, 40);
      ASSERT_EQ(spec.result.tokens, plain.result.tokens) << "spec_max " << k;
      EXPECT_EQ(spec.position, plain.position) << "spec_max " << k;
      EXPECT_EQ(spec.next, plain.next) << "spec_max " << k;
      drafted += spec.result.drafted_tokens;
    }
  }
  EXPECT_GT(drafted, 0);
  EXPECT_GT(mtp_step_cost(engine), 0.0);
  EXPECT_LT(mtp_step_cost(engine), 1.0);
}

TEST(Speculation, DraftTokenizerMustGiveEveryIdTheSameToken) {
  const fs::path dir = fs::path(MOERUN_TEST_DATA) / "tokenizers";
  const Tokenizer mistral = Tokenizer::load(dir / "mistral"), deepseek = Tokenizer::load(dir / "deepseek_v3");
  EXPECT_NO_THROW(check_draft_tokenizer(mistral, Tokenizer::load(dir / "mistral")));
  EXPECT_NO_THROW(check_draft_tokenizer(deepseek, deepseek));
  EXPECT_THROW(check_draft_tokenizer(mistral, deepseek), Error);
  EXPECT_THROW(check_draft_tokenizer(deepseek, mistral), Error);
}

TEST(Speculation, DraftStepCostFollowsTheWeightsAStepReads) {
  const Engine llama = Engine::load(golden_dir("llama")), v3 = Engine::load(golden_dir("deepseek_v3"));
  EXPECT_DOUBLE_EQ(draft_step_cost(llama, llama), 1.0);
  const double a = draft_step_cost(llama, v3), b = draft_step_cost(v3, llama);
  EXPECT_GT(a, 0.0);
  EXPECT_NEAR(a * b, 1.0, 1e-12);
  EXPECT_EQ(mtp_step_cost(llama), 0.0);  // no MTP layer
}

// --- Speculative sampling's distribution --------------------------------------------------------
// The first tokens of many seeded generations with speculation against as many without: a
// two-sample chi-square homogeneity test on each position's token. The same test on a wrong scheme
// (every draft accepted) must fail, or the test would have no power.

// Q(a, x), the regularized upper incomplete gamma function (series below a + 1, continued fraction
// above, as in Numerical Recipes' gammq).
double gamma_q(double a, double x) {
  if (x <= 0) return 1.0;
  const double front = std::exp(-x + a * std::log(x) - std::lgamma(a));
  if (x < a + 1) {
    double ap = a, term = 1.0 / a, sum = term;
    for (int n = 0; n < 100000 && std::fabs(term) > std::fabs(sum) * 1e-16; ++n) sum += term *= x / ++ap;
    return std::max(0.0, 1.0 - sum * front);
  }
  constexpr double kTiny = 1e-300;
  double b = x + 1 - a, c = 1 / kTiny, d = 1 / b, h = d;
  for (int i = 1; i < 100000; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    h *= d * c;
    if (std::fabs(d * c - 1) < 1e-16) break;
  }
  return front * h;
}

TEST(ChiSquare, PValuesMatchKnownValues) {
  // P(chi2_k > x) = Q(k/2, x/2): k = 1, x = 3.841 -> 0.05; k = 10, x = 18.307 -> 0.05; k = 2: exp(-x/2).
  EXPECT_NEAR(gamma_q(0.5, 3.841459 / 2), 0.05, 1e-6);
  EXPECT_NEAR(gamma_q(5.0, 18.307038 / 2), 0.05, 1e-6);
  EXPECT_NEAR(gamma_q(1.0, 7.0 / 2), std::exp(-3.5), 1e-12);
  EXPECT_NEAR(gamma_q(50.0, 124.342 / 2), 0.05, 1e-4);    // the tables' chi2_100 5% point
  EXPECT_NEAR(gamma_q(5.0, 29.588 / 2), 0.001, 1e-5);     // chi2_10 0.1% point
}

using Counts = std::map<int32_t, int64_t>;

// Two samples from the same distribution? The p-value of the chi-square homogeneity test; bins whose
// expected count is below 5 in either sample are merged into one (itself merged into the smallest
// bin if still below 5).
double homogeneity_p(const Counts& a, const Counts& b) {
  int64_t na = 0, nb = 0;
  std::map<int32_t, std::pair<int64_t, int64_t>> all;
  for (const auto& [t, c] : a) {
    all[t].first += c;
    na += c;
  }
  for (const auto& [t, c] : b) {
    all[t].second += c;
    nb += c;
  }
  const double fa = double(na) / double(na + nb), fb = double(nb) / double(na + nb);
  auto rare = [&](std::pair<int64_t, int64_t> bin) { return std::min(fa, fb) * double(bin.first + bin.second) < 5.0; };
  std::vector<std::pair<int64_t, int64_t>> bins;
  std::pair<int64_t, int64_t> other{0, 0};
  for (const auto& [t, bin] : all) {
    if (rare(bin)) {
      other.first += bin.first;
      other.second += bin.second;
    } else {
      bins.push_back(bin);
    }
  }
  if (other.first + other.second > 0) {
    if (!rare(other) || bins.empty()) {
      bins.push_back(other);
    } else {
      auto smallest = std::min_element(bins.begin(), bins.end(), [](auto x, auto y) { return x.first + x.second < y.first + y.second; });
      smallest->first += other.first;
      smallest->second += other.second;
    }
  }
  if (bins.size() < 2) return 1.0;
  double stat = 0;
  for (const auto& [ca, cb] : bins) {
    const double ea = fa * double(ca + cb), eb = fb * double(ca + cb);
    stat += (double(ca) - ea) * (double(ca) - ea) / ea + (double(cb) - eb) * (double(cb) - eb) / eb;
  }
  return gamma_q(double(bins.size() - 1) / 2, stat / 2);
}

enum class Scheme { plain, speculative, always_accept };

struct Draws {
  std::vector<Counts> at = std::vector<Counts>(3);  // tokens 1, 2 and 3
  int64_t drafted = 0, accepted = 0;
};

// The first three tokens of `n` generations (seeds seed0, seed0 + 1, ...) of `engine` after `prompt`
// (prefilled once). speculative: generate() with `spec` (spec_max 2: drafts verified at tokens 2
// and 3). always_accept: the wrong scheme, in this loop: token 1 sampled, then the drafts the same
// drafter proposes taken as they are, and what follows them sampled.
Draws draw_tokens(const Engine& engine, const Tokenizer& tok, const std::vector<int32_t>& prompt, SamplerParams sp, Scheme scheme,
                  SpecKind spec, const Engine* draft_engine, int n, uint64_t seed0) {
  Session session(engine);
  session.forward(prompt);
  std::optional<Session> draft;
  if (draft_engine) draft.emplace(*draft_engine);
  GenerateOptions o;
  o.max_tokens = 4;
  o.spec = scheme == Scheme::plain ? SpecKind::none : spec;
  o.spec_max = 2;
  o.draft = draft ? &*draft : nullptr;
  Draws out;
  const auto np = static_cast<int64_t>(prompt.size());
  for (int i = 0; i < n; ++i) {
    sp.seed = seed0 + static_cast<uint64_t>(i);
    Sampler sampler(sp);
    std::vector<int32_t> tokens;
    if (scheme != Scheme::always_accept) {
      session.truncate(np);
      const GenerateResult r = generate(session, tok, sampler, prompt, o, [](std::string_view) { return true; });
      tokens = r.tokens;
      out.drafted += r.drafted_tokens;
      out.accepted += r.accepted_tokens;
    } else {
      session.truncate(np - 1);
      std::vector<float> logits = session.forward(std::span<const int32_t>(prompt).last(1));
      std::vector<int32_t> history = prompt;
      const int32_t t1 = sampler.sample(logits, history);
      history.push_back(t1);
      runtime::Drafter drafter(spec, session, o, sampler, prompt, np - 1, logits.size(), 8);
      const size_t k = drafter.propose(history, 2);
      out.drafted += static_cast<int64_t>(k);
      out.accepted += static_cast<int64_t>(k);
      std::vector<int32_t> step = {t1};
      step.insert(step.end(), drafter.drafts().begin(), drafter.drafts().end());
      tokens = step;
      if (k < 2) {  // sample what follows the drafts
        const std::vector<float> rows = session.forward(step, true);
        const size_t V = logits.size();
        history.insert(history.end(), drafter.drafts().begin(), drafter.drafts().end());
        const int32_t next = sampler.sample(std::span<const float>(rows).subspan(k * V, V), history);
        tokens.push_back(next);
        if (k == 0) {
          history.push_back(next);
          tokens.push_back(sampler.sample(session.forward(std::vector<int32_t>{next}), history));
        }
      }
    }
    for (size_t j = 0; j < 3; ++j) ++out.at[j][tokens.at(j)];
  }
  return out;
}

// A prompt where prompt lookup drafts after most first tokens: "A x D" for many x, ending in A, so a
// first token x is followed by the drafts D, A.
std::vector<int32_t> lookup_prompt(int32_t a, int32_t d) {
  std::vector<int32_t> p;
  for (int32_t x = 20; x < 170; ++x) p.insert(p.end(), {a, x, d});
  p.push_back(a);
  return p;
}

TEST(Speculation, SampledOutputHasTheTargetsDistribution) {
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  // One thread: these tiny models' steps are shorter than a thread pool's hand-off.
  EngineOptions one;
  one.threads = 1;
  const Engine target = Engine::load(golden_dir("llama"), one), drafter = Engine::load(golden_dir("mixtral"), one);
#ifdef MOERUN_SANITIZED
  // Under sanitizers the paths run on a few draws (minutes otherwise); the statistics are the
  // Release suite's.
  constexpr int kN = 300;
  constexpr bool kStatistics = false;
#else
  constexpr int kN = 4000;
  constexpr bool kStatistics = true;
#endif
  struct Case {
    const char* name;
    SpecKind spec;
    SamplerParams params;
    bool power;  // also run the wrong scheme and require the test to reject it
  };
  const Case cases[] = {
      {"ngram, temperature 1", SpecKind::ngram, {.temperature = 1.0f}, true},
      {"ngram, top-k 40, top-p 0.9", SpecKind::ngram, {.temperature = 1.0f, .top_k = 40, .top_p = 0.9f}, false},
      {"draft model, temperature 1", SpecKind::draft, {.temperature = 1.0f}, false},
      {"draft model, top-k 20", SpecKind::draft, {.temperature = 1.0f, .top_k = 20}, true},
  };
  const std::vector<int32_t> prompt = lookup_prompt(7, 11);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Engine* draft = c.spec == SpecKind::draft ? &drafter : nullptr;
    const auto t0 = std::chrono::steady_clock::now();
    const Draws plain = draw_tokens(target, tok, prompt, c.params, Scheme::plain, c.spec, draft, kN, 1);
    const Draws spec = draw_tokens(target, tok, prompt, c.params, Scheme::speculative, c.spec, draft, kN, 1000001);
    // Drafts were verified, some rejected (and with a draft model, some accepted).
    EXPECT_GT(spec.drafted, kN / 10);
    EXPECT_LT(spec.accepted, spec.drafted);
    if (c.spec == SpecKind::draft) {
      EXPECT_GT(spec.accepted, kN / 50);
    }
    std::string ps;
    for (size_t j = 0; j < 3; ++j) {
      const double p = homogeneity_p(plain.at[j], spec.at[j]);
      ps += " " + std::to_string(p);
      if (kStatistics) {
        EXPECT_GT(p, 1e-3) << "token " << j + 1 << ": speculative sampling's distribution differs from plain sampling's";
      }
    }
    if (c.power && kStatistics) {
      const Draws wrong = draw_tokens(target, tok, prompt, c.params, Scheme::always_accept, c.spec, draft, kN, 2000001);
      EXPECT_GT(wrong.drafted, kN / 10);
      const double p = homogeneity_p(plain.at[1], wrong.at[1]);
      EXPECT_LT(p, 1e-6) << "token 2: the test cannot tell a scheme that accepts every draft";
      ps += ", wrong scheme " + std::to_string(p);
    }
    std::printf("[ %s: %.1f s, %lld drafted, %lld accepted, p%s ]\n", c.name,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), static_cast<long long>(spec.drafted),
                static_cast<long long>(spec.accepted), ps.c_str());
  }
}

// --- Rollback ------------------------------------------------------------------------------------
// After a verification step over [t, d1..d4] of which j drafts are kept, the session truncated to
// them gives the next token exactly the logits of a session that decoded the kept tokens one by one:
// nothing of the rejected drafts stays in the cache. GQA (llama) and MLA (deepseek_v3), every KV type.
TEST(Speculation, RejectedDraftsLeaveNothingInTheCache) {
  for (const char* name : {"llama", "deepseek_v3"}) {
    for (KvType kv : {KvType::f32, KvType::f16, KvType::bf16, KvType::q8_0}) {
      SCOPED_TRACE(std::string(name) + " " + std::string(kv_type_name(kv)));
      EngineOptions eo;
      eo.kv_type = kv;
      std::optional<Engine> loaded;
      try {
        loaded.emplace(Engine::load(golden_dir(name), eo));
      } catch (const Error& e) {  // q8_0 needs head dimensions in blocks of 32
        if (kv != KvType::q8_0) throw;
        std::printf("[ %s: no q8_0 cache: %s ]\n", name, e.what());
        continue;
      }
      const Engine& engine = *loaded;
      const std::vector<int32_t> prompt = testing::read_golden(name).ids[1];
      const std::vector<int32_t> step = {5, 9, 13, 17, 19};  // the fed token and four drafts
      for (size_t kept : {size_t{0}, size_t{1}, size_t{3}, size_t{4}}) {
        Session spec(engine);
        spec.forward(prompt);
        spec.forward_view(step, /*all_positions=*/true);
        spec.truncate(static_cast<int64_t>(prompt.size() + 1 + kept));
        const std::vector<float> got = spec.forward(std::vector<int32_t>{42});
        Session plain(engine);
        plain.forward(prompt);
        for (size_t i = 0; i <= kept; ++i) plain.forward(std::span<const int32_t>(step).subspan(i, 1));
        EXPECT_EQ(got, plain.forward(std::vector<int32_t>{42})) << kept << " drafts kept";
        EXPECT_EQ(spec.position(), plain.position());
      }
    }
  }
}

}  // namespace
}  // namespace moerun
