// score_tokens and perplexity (include/moerun/score.h) against -log softmax computed by hand from
// Session::forward's all-position logits, on the tiny golden llama model.

#include <gtest/gtest.h>

#include <cmath>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/sampler.h"
#include "moerun/score.h"
#include "support/expect.h"
#include "support/golden.h"

namespace moerun {
namespace {

using testing::error_of;
using testing::golden_dir;

std::vector<int32_t> random_ids(size_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(vocab));
  return ids;
}

// -log p(ids[t + 1] | ids[..t]) summed over t in [first, n - 1), from one all-position forward.
ScoreResult by_hand(const Engine& engine, int64_t context, const std::vector<int32_t>& ids, int64_t first) {
  Session s(engine, context);
  const std::vector<float> logits = s.forward(ids, /*all_positions=*/true);
  const auto V = static_cast<size_t>(engine.config().vocab_size);
  ScoreResult r;
  for (size_t t = static_cast<size_t>(first); t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + t * V;
    double sum = 0;
    for (size_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]));
    r.nll -= std::log(std::exp(static_cast<double>(row[ids[t + 1]])) / sum);
    ++r.tokens;
  }
  return r;
}

TEST(Score, NllIsMinusLogSoftmaxOfTheNextToken) {
  const Engine engine = Engine::load(golden_dir("llama"));
  const std::vector<int32_t> ids = random_ids(40, engine.config().vocab_size, 5);
  for (const int64_t first : {0, 1, 17, 38, 39, 60}) {
    Session s(engine);
    const ScoreResult got = score_tokens(s, ids, first);
    const ScoreResult want = by_hand(engine, engine.default_context(), ids, first);
    EXPECT_EQ(got.tokens, want.tokens) << "first " << first;
    EXPECT_EQ(got.tokens, std::max<int64_t>(0, 39 - first));
    EXPECT_NEAR(got.nll, want.nll, 1e-9 * std::max(1.0, want.nll)) << "first " << first;
    EXPECT_EQ(s.position(), 40);  // every token ran through the session
  }
  // A random model on random tokens: close to chance (log 512 = 6.24 nats a token).
  Session s(engine);
  const ScoreResult all = score_tokens(s, ids);
  EXPECT_GT(all.mean_nll(), 4.0);
  EXPECT_LT(all.mean_nll(), 9.0);
  EXPECT_NEAR(all.perplexity(), std::exp(all.nll / 39.0), 1e-9);
}

TEST(Score, LongInputsRunInPiecesWithTheSameResult) {
  // Longer than one 512-token piece, scored from inside the second one and from the start.
  const Engine engine = Engine::load(golden_dir("llama"), {.context_override = true});
  const std::vector<int32_t> ids = random_ids(1100, engine.config().vocab_size, 9);
  for (const int64_t first : {0, 600}) {
    Session s(engine, 1100);
    const ScoreResult got = score_tokens(s, ids, first);
    const ScoreResult want = by_hand(engine, 1100, ids, first);
    EXPECT_EQ(got.tokens, 1099 - first);
    EXPECT_NEAR(got.nll, want.nll, 1e-9 * want.nll) << "first " << first;
  }
}

TEST(Score, ScoresAddUpAsOneRunningSum) {
  const Engine engine = Engine::load(golden_dir("llama"));
  const std::vector<int32_t> a = random_ids(20, engine.config().vocab_size, 1), b = random_ids(30, engine.config().vocab_size, 2);
  Session s(engine);
  const ScoreResult first = score_tokens(s, a, 5);
  s.reset();
  const ScoreResult both = score_tokens(s, b, 10, first);
  EXPECT_EQ(both.tokens, 14 + 19);
  EXPECT_NEAR(both.nll, by_hand(engine, 512, a, 5).nll + by_hand(engine, 512, b, 10).nll, 1e-9 * both.nll);
  Session e(engine);
  EXPECT_EQ(score_tokens(e, std::vector<int32_t>{}).tokens, 0);
  EXPECT_EQ(score_tokens(e, std::vector<int32_t>{7}).tokens, 0);  // nothing predicts the first token
  EXPECT_THROW(score_tokens(e, a, -1), Error);
}

TEST(Score, PerplexityScoresTheSecondHalfOfEveryChunk) {
  const Engine engine = Engine::load(golden_dir("llama"));
  const std::vector<int32_t> ids = random_ids(3 * 64 + 10, engine.config().vocab_size, 3);  // a partial 4th chunk
  std::vector<int64_t> seen;
  PerplexityOptions o;
  o.context = 64;
  o.on_chunk = [&](int64_t chunk, int64_t chunks, const ScoreResult& so_far) {
    EXPECT_EQ(chunks, 3);
    EXPECT_EQ(so_far.tokens, chunk * 31);  // positions 32..62 of each chunk predict 33..63
    seen.push_back(chunk);
  };
  const PerplexityResult r = perplexity(engine, ids, o);
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(r.chunks, 3);
  EXPECT_EQ(r.context, 64);
  EXPECT_EQ(r.score.tokens, 3 * 31);
  double nll = 0;
  for (size_t k = 0; k < 3; ++k)
    nll += by_hand(engine, 64, std::vector<int32_t>(ids.begin() + static_cast<long>(k * 64), ids.begin() + static_cast<long>(k * 64 + 64)), 32).nll;
  EXPECT_NEAR(r.score.nll, nll, 1e-9 * nll);
  EXPECT_NEAR(r.perplexity(), std::exp(nll / 93.0), 1e-6 * r.perplexity());
  o.max_chunks = 2;
  o.on_chunk = nullptr;
  EXPECT_EQ(perplexity(engine, ids, o).score.tokens, 2 * 31);
  o.context = 300;
  EXPECT_NE(error_of([&] { perplexity(engine, ids, o); }).find("shorter than one chunk of 300"), std::string::npos);
}

}  // namespace
}  // namespace moerun
