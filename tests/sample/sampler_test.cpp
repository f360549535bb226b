// The sampler chain, step by step, on distributions whose answer is known.

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "moerun/error.h"
#include "moerun/sampler.h"

namespace moerun {
namespace {

std::vector<float> log_probs(std::initializer_list<double> p) {
  std::vector<float> out;
  for (double x : p) out.push_back(static_cast<float>(std::log(x)));
  return out;
}

void expect_probs(const std::vector<float>& got, std::initializer_list<double> want, double tol = 1e-6) {
  ASSERT_EQ(got.size(), want.size());
  size_t i = 0;
  for (double w : want) EXPECT_NEAR(got[i++], w, tol) << "token " << i - 1;
}

TEST(Sampler, GreedyAtTemperatureZero) {
  Sampler s({.temperature = 0.0f});
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 2.0f, -1.0f, 1.9f}), 1);
  expect_probs(s.distribution(std::vector<float>{0.1f, 2.0f, -1.0f, 1.9f}), {0, 1, 0, 0});
}

TEST(Sampler, TinyTemperaturesAreGreedyNotInfinite) {
  // 1e-40 turned every logit into inf (and the draw into garbage text) before.
  for (float t : {1e-40f, 1e-30f, 1e-7f}) {
    Sampler s({.temperature = t, .seed = 7});
    const std::vector<float> logits{0.1f, 2.0f, -1.0f, 1.9f};
    expect_probs(s.distribution(logits), {0, 1, 0, 0});
    for (int i = 0; i < 10; ++i) EXPECT_EQ(s.sample(logits), 1) << "temperature " << t;
  }
  EXPECT_TRUE(SamplerParams{.temperature = 1e-6f}.greedy());
  EXPECT_FALSE(SamplerParams{.temperature = 1e-3f}.greedy());
}

TEST(Sampler, TemperatureOneIsTheSoftmax) {
  Sampler s({.temperature = 1.0f});
  expect_probs(s.distribution(log_probs({0.5, 0.3, 0.2})), {0.5, 0.3, 0.2});
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  // p^(1/T) renormalised: T = 0.5 squares the probabilities.
  Sampler sharp({.temperature = 0.5f});
  expect_probs(sharp.distribution(log_probs({0.5, 0.3, 0.2})), {0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38}, 1e-5);
  Sampler flat({.temperature = 1e6f});
  expect_probs(flat.distribution(log_probs({0.5, 0.3, 0.2})), {1.0 / 3, 1.0 / 3, 1.0 / 3}, 1e-5);
}

TEST(Sampler, TopK) {
  Sampler s({.top_k = 2});
  expect_probs(s.distribution(log_probs({0.1, 0.5, 0.3, 0.1})), {0, 0.625, 0.375, 0});
  Sampler one({.top_k = 1, .seed = 7});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(one.sample(log_probs({0.1, 0.2, 0.6, 0.1})), 2);
  // Ties at the k-th value are kept, as HF's TopKLogitsWarper does.
  Sampler tie({.top_k = 2});
  expect_probs(tie.distribution(log_probs({0.4, 0.2, 0.2, 0.2})), {0.4, 0.2, 0.2, 0.2});
}

TEST(Sampler, TopP) {
  // The smallest most-likely set whose mass reaches p.
  Sampler half({.top_p = 0.5f});
  expect_probs(half.distribution(log_probs({0.3, 0.6, 0.1})), {0, 1, 0});
  Sampler most({.top_p = 0.85f});
  expect_probs(most.distribution(log_probs({0.3, 0.6, 0.1})), {1.0 / 3, 2.0 / 3, 0});
  Sampler tiny({.top_p = 1e-6f});  // always at least one token
  expect_probs(tiny.distribution(log_probs({0.3, 0.6, 0.1})), {0, 1, 0});
}

TEST(Sampler, MinP) {
  // Threshold min_p * p(best) = 0.25 * 0.5 = 0.125: drops 0.1, keeps 0.15.
  Sampler s({.min_p = 0.25f});
  expect_probs(s.distribution(log_probs({0.5, 0.25, 0.15, 0.1})), {0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0}, 1e-5);
}

TEST(Sampler, ChainOrderTemperatureBeforeTopP) {
  // top_p = 0.75 on 0.5, 0.3, 0.2 keeps two tokens at T = 1. Temperature acts first: at T = 0.5
  // (0.658, 0.237, 0.105) one token reaches 0.75 with the second; at T = 4 (0.374, 0.329, 0.297)
  // two tokens hold only 0.703, so all three stay.
  Sampler cold({.temperature = 0.5f, .top_p = 0.75f});
  expect_probs(cold.distribution(log_probs({0.5, 0.3, 0.2})), {0.25 / 0.34, 0.09 / 0.34, 0}, 1e-5);
  Sampler hot({.temperature = 4.0f, .top_p = 0.75f});
  EXPECT_GT(hot.distribution(log_probs({0.5, 0.3, 0.2}))[2], 0.29f);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  Sampler s({.temperature = 0.0f, .repeat_penalty = 2.0f});
  // Token 0 (logit 3) was seen: 3 / 2 = 1.5 < 2 (token 1) -> greedy picks 1.
  const std::vector<float> logits = {3.0f, 2.0f, -1.0f};
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{0}), 1);
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{}), 0);
  // Negative logits get more negative: -1 * 2 = -2; compare through the distribution at T = 1.
  Sampler t({.repeat_penalty = 2.0f});
  const auto p = t.distribution(std::vector<float>{0.0f, -1.0f}, std::vector<int32_t>{1});
  EXPECT_NEAR(p[1] / p[0], std::exp(-2.0), 1e-5);
}

TEST(Sampler, GreedyRepeatPenaltyOverturnsTheArgmaxThatWouldRepeat) {
  // Temperature 0, repeat penalty 1.3: token 0 leads (2.0 vs 1.8) but was just said; 2.0 / 1.3 =
  // 1.54 < 1.8, so greedy picks token 1 where the plain argmax would repeat token 0.
  const std::vector<float> logits = {2.0f, 1.8f, 0.5f};
  const std::vector<int32_t> history = {4, 0};
  Sampler plain({.temperature = 0.0f});
  EXPECT_EQ(plain.sample(logits, history), 0);
  Sampler penalised({.temperature = 0.0f, .repeat_penalty = 1.3f});
  EXPECT_EQ(penalised.sample(logits, history), 1);
  expect_probs(penalised.distribution(logits, history), {0, 1, 0});
  // A leader that is only slightly ahead survives a token that was not said...
  EXPECT_EQ(penalised.sample(logits, std::vector<int32_t>{2, 2}), 0);
  // ...and negative logits are multiplied: -1.0 * 1.3 = -1.3 < -1.2.
  EXPECT_EQ(penalised.sample(std::vector<float>{-1.0f, -1.2f}, std::vector<int32_t>{0}), 1);
  // Outside the window (the last 1 token) the penalty does not apply.
  Sampler window({.temperature = 0.0f, .repeat_penalty = 1.3f, .penalty_last_n = 1});
  EXPECT_EQ(window.sample(logits, std::vector<int32_t>{0, 2}), 0);
  EXPECT_EQ(window.sample(logits, std::vector<int32_t>{2, 0}), 1);
}

TEST(Sampler, GreedyTiesGoToTheFirstToken) {
  Sampler s({.temperature = 0.0f});
  EXPECT_EQ(s.sample(std::vector<float>{1.0f, 3.0f, 3.0f, -2.0f}), 1);
  Sampler penalised({.temperature = 0.0f, .repeat_penalty = 2.0f});
  // 4 / 2 = 2 ties token 2: the first of equals wins, as the argmax of the distribution.
  EXPECT_EQ(penalised.sample(std::vector<float>{4.0f, 1.0f, 2.0f}, std::vector<int32_t>{0}), 0);
  expect_probs(penalised.distribution(std::vector<float>{4.0f, 1.0f, 2.0f}, std::vector<int32_t>{0}), {1, 0, 0});
}

TEST(Sampler, PenaltiesOfOneCallDoNotLeakIntoTheNext) {
  // The window counts are kept between calls (no allocation); each call must start from zero.
  Sampler s({.temperature = 0.0f, .frequency_penalty = 1.0f});
  const std::vector<float> logits = {2.0f, 1.5f, 0.0f};
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{0, 0, 0}), 1);  // 2 - 3 < 1.5
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{}), 0);
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{0}), 1);  // 2 - 1 < 1.5
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{1}), 0);
  // Ids outside the vocabulary in the history are ignored; a larger vocabulary later still works.
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{-1, 7, 1}), 0);
  EXPECT_EQ(s.sample(std::vector<float>{0.0f, 0.0f, 0.0f, 0.0f, 5.0f}, std::vector<int32_t>{4, 4, 4, 4, 4, 4}), 0);
}

TEST(Sampler, NanLogitsAreAnError) {
  const std::vector<float> logits = {0.0f, std::nanf(""), 1.0f};
  for (const SamplerParams& p : {SamplerParams{.temperature = 0.0f}, SamplerParams{.temperature = 0.0f, .repeat_penalty = 1.5f},
                                 SamplerParams{.temperature = 1.0f}}) {
    Sampler s(p);
    EXPECT_THROW(s.sample(logits, std::vector<int32_t>{0}), Error);
  }
}

TEST(Sampler, PresenceAndFrequencyPenaltiesCountTheWindow) {
  Sampler s({.presence_penalty = 0.5f, .frequency_penalty = 0.25f, .penalty_last_n = 3});
  // History 9 9 1 1 1: the window (last 3) holds token 1 three times, token 9 not at all.
  const auto p = s.distribution(std::vector<float>(10, 0.0f), std::vector<int32_t>{9, 9, 1, 1, 1});
  EXPECT_NEAR(p[1] / p[0], std::exp(-(0.5 + 0.25 * 3)), 1e-5);
  EXPECT_NEAR(p[9] / p[0], 1.0, 1e-6);
  Sampler all({.presence_penalty = 1.0f, .penalty_last_n = -1});
  const auto q = all.distribution(std::vector<float>(10, 0.0f), std::vector<int32_t>{9, 9, 1, 1, 1});
  EXPECT_NEAR(q[9] / q[0], std::exp(-1.0), 1e-5);
}

TEST(Sampler, DrawsFollowTheDistribution) {
  Sampler s({.seed = 1234});
  const std::vector<float> logits = log_probs({0.5, 0.3, 0.2});
  int counts[3] = {0, 0, 0};
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++counts[s.sample(logits)];
  // Binomial standard deviation at n = 20000 is at most 0.0035; allow 4 sigma.
  EXPECT_NEAR(counts[0] / double(n), 0.5, 0.014);
  EXPECT_NEAR(counts[1] / double(n), 0.3, 0.014);
  EXPECT_NEAR(counts[2] / double(n), 0.2, 0.014);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const std::vector<float> logits = log_probs({0.2, 0.2, 0.2, 0.2, 0.2});
  auto draw = [&](uint64_t seed) {
    Sampler s({.seed = seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, RngStreamIsFixed) {
  // xoshiro256** seeded by SplitMix64(0): a golden so the stream never changes silently (it is
  // what makes --seed reproducible across builds).
  Rng r(0);
  const uint64_t first = r.next();
  Rng again(0);
  EXPECT_EQ(again.next(), first);
  EXPECT_EQ(first, 0x99ec5f36cb75f2b4ull);
}

// Sampler::verify (speculative sampling): accepting a draft d drawn from q with probability
// min(1, p(d) / q(d)) and drawing from norm(max(0, p - q)) otherwise gives tokens distributed as p.
// Each check draws n = 40000 tokens; a frequency's binomial sd is at most 0.0025, allowed 5 sd.
constexpr int kVerifyDraws = 40000;
constexpr double kVerifyTol = 0.0125;

TEST(SamplerVerify, GreedyIsTheArgmaxWhateverTheDraft) {
  Sampler s({.temperature = 0.0f});
  const std::vector<float> logits = log_probs({0.1, 0.6, 0.3});
  for (int32_t d : {0, 1, 2, 7}) EXPECT_EQ(s.verify(logits, {}, d), 1) << d;
  EXPECT_EQ(s.verify(logits, {}, 2, std::vector<float>{0.0f, 0.0f, 1.0f}), 1);
  // With penalties: what sample() picks (the repeated token 1 loses to 2).
  Sampler pen({.temperature = 0.0f, .repeat_penalty = 4.0f});
  const std::vector<int32_t> history = {1};
  EXPECT_EQ(pen.verify(std::vector<float>{0.0f, 2.0f, 1.0f}, history, 1), pen.sample(std::vector<float>{0.0f, 2.0f, 1.0f}, history));
}

TEST(SamplerVerify, CertainDraftIsAcceptedWithItsProbabilityAndTheRestFollowsP) {
  const std::vector<double> p = {0.5, 0.3, 0.15, 0.05};
  const std::vector<float> logits = log_probs({0.5, 0.3, 0.15, 0.05});
  for (int32_t d : {0, 1, 3}) {
    SCOPED_TRACE(d);
    Sampler s({.seed = 7u + static_cast<uint64_t>(d)});
    std::vector<int> counts(4, 0);
    for (int i = 0; i < kVerifyDraws; ++i) ++counts[static_cast<size_t>(s.verify(logits, {}, d))];
    // The draft comes back exactly when accepted: its frequency is the accept probability p(d); a
    // rejection draws from p without d, so every token keeps its probability under p.
    for (size_t t = 0; t < 4; ++t) EXPECT_NEAR(counts[t] / double(kVerifyDraws), p[t], kVerifyTol) << "token " << t;
  }
}

TEST(SamplerVerify, ResidualNeverReturnsARejectedDraft) {
  // top-k 2 removes token 2: a draft of it has p = 0 and is always rejected, for the kept tokens.
  Sampler s({.top_k = 2, .seed = 3});
  const std::vector<float> logits = log_probs({0.5, 0.3, 0.2});
  std::vector<int> counts(3, 0);
  for (int i = 0; i < 10000; ++i) ++counts[static_cast<size_t>(s.verify(logits, {}, 2))];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 10000.0, 0.625, 0.025);
  // A draft outside the vocabulary has p = 0 too.
  for (int i = 0; i < 100; ++i) EXPECT_LT(s.verify(logits, {}, 9), 2);
  // A certain draft with p = 1 is always accepted, and the RNG draws once for it.
  Sampler one({.top_k = 1, .seed = 5});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(one.verify(logits, {}, 0), 0);
}

TEST(SamplerVerify, DraftsFromAnotherDistributionGiveP) {
  // q differs from p everywhere (and gives mass to a token p removes): drafts are drawn from q with
  // a separate RNG, verified against p; the tokens must follow p.
  const std::vector<float> logits = log_probs({0.1, 0.2, 0.3, 0.4, 1e-9});
  const std::vector<float> q = {0.4f, 0.3f, 0.1f, 0.05f, 0.15f};
  Sampler s({.min_p = 0.01f, .seed = 11});  // min-p removes token 4: p = {0.1, 0.2, 0.3, 0.4, 0}
  Rng draft_rng(99);
  std::vector<int> counts(5, 0);
  int accepted = 0;
  for (int i = 0; i < kVerifyDraws; ++i) {
    double u = draft_rng.uniform(), cum = 0;
    int32_t d = 4;
    for (int32_t t = 0; t < 5; ++t)
      if (u < (cum += q[static_cast<size_t>(t)])) {
        d = t;
        break;
      }
    const int32_t got = s.verify(logits, {}, d, q);
    accepted += got == d;
    ++counts[static_cast<size_t>(got)];
  }
  const double want[] = {0.1, 0.2, 0.3, 0.4, 0.0};
  for (size_t t = 0; t < 5; ++t) EXPECT_NEAR(counts[t] / double(kVerifyDraws), want[t], kVerifyTol) << "token " << t;
  // Acceptance rate is sum_t min(p, q) = 0.1 + 0.2 + 0.1 + 0.05 + 0 = 0.45.
  EXPECT_NEAR(accepted / double(kVerifyDraws), 0.45, kVerifyTol);
  // A q shorter than the vocabulary is zero past its end (token 3 drafted with q = 0: accepted).
  EXPECT_EQ(s.verify(logits, {}, 3, std::vector<float>{0.5f, 0.5f}), 3);
}

TEST(SamplerVerify, LastDistributionIsWhatSampleDrewFrom) {
  Sampler s({.temperature = 0.7f, .top_k = 2, .seed = 1});
  const std::vector<float> logits = log_probs({0.2, 0.5, 0.3});
  s.sample(logits);
  const std::vector<float> want = Sampler({.temperature = 0.7f, .top_k = 2}).distribution(logits);
  ASSERT_EQ(s.last_distribution().size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(s.last_distribution()[i], want[i]);
  Sampler g({.temperature = 0.0f});
  g.sample(logits);
  EXPECT_TRUE(g.last_distribution().empty());
}

TEST(Sampler, BadParametersAreErrors) {
  EXPECT_THROW(Sampler({.temperature = -1.0f}), Error);
  EXPECT_THROW(Sampler({.top_k = -2}), Error);
  EXPECT_THROW(Sampler({.top_p = 0.0f}), Error);
  EXPECT_THROW(Sampler({.top_p = 1.5f}), Error);
  EXPECT_THROW(Sampler({.min_p = 2.0f}), Error);
  EXPECT_THROW(Sampler({.repeat_penalty = 0.0f}), Error);
  Sampler s({});
  EXPECT_THROW(s.sample(std::vector<float>{}), Error);
}

}  // namespace
}  // namespace moerun
