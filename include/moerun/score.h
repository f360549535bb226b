#pragma once
// Scoring: how well a model predicts a given token sequence (negative log-likelihood, perplexity),
// through a Session. What `moerun perplexity` prints, and what an evaluation harness or a server's
// prompt log-probabilities would call.

#include <cmath>
#include <cstdint>
#include <functional>
#include <span>

#include "moerun/engine.h"

namespace moerun {

struct ScoreResult {
  double nll = 0;      // sum over the scored tokens of -log p(token | the tokens before it), in nats
  int64_t tokens = 0;  // tokens scored
  double mean_nll() const { return tokens > 0 ? nll / static_cast<double>(tokens) : 0.0; }
  double perplexity() const { return std::exp(mean_nll()); }
};

// Runs `ids` through `session` (appending them to what it holds) and scores ids[t + 1] by the
// logits at ids[t] for every t in [first, ids.size() - 1): -log softmax(logits_t)[ids[t + 1]],
// computed in double. ids[0] is never scored (nothing here predicts it). The input runs in pieces
// of at most 512 tokens, so the logits held at once are at most 512 x vocabulary whatever its
// length; pieces before `first` skip the all-position logits. The terms are added one by one to
// `total` and the sum returned, so scores of many sequences add up as one running sum.
// Errors as Session::forward (an id outside the vocabulary, more tokens than the context).
ScoreResult score_tokens(Session& session, std::span<const int32_t> ids, int64_t first = 0, ScoreResult total = {});

struct PerplexityOptions {
  int64_t context = 512;   // tokens per chunk
  int64_t max_chunks = 0;  // 0: every whole chunk of the text
  // Called after each chunk with its number (from 1), the chunk count and the score so far.
  std::function<void(int64_t chunk, int64_t chunks, const ScoreResult& so_far)> on_chunk;
};

struct PerplexityResult {
  ScoreResult score;
  int64_t chunks = 0;
  int64_t context = 0;
  double perplexity() const { return score.perplexity(); }
};

// llama-perplexity's measure: `ids` split into chunks of options.context tokens (a partial last
// chunk is dropped); each runs from an empty cache in one session of `engine`, and every token of
// its second half is scored (score_tokens with first = context / 2: each sees at least half a chunk
// of context). Error when the text is shorter than one chunk, or options.context < 2.
PerplexityResult perplexity(const Engine& engine, std::span<const int32_t> ids, const PerplexityOptions& options);

}  // namespace moerun
