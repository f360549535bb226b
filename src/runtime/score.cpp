#include "moerun/score.h"

#include <algorithm>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun {

using detail::cat;

ScoreResult score_tokens(Session& session, std::span<const int32_t> ids, int64_t first, ScoreResult total) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (first < 0) throw Error("score", cat("the first scored position must be 0 or more, found ", first));
  if (n == 0) return total;
  // A piece of at most kPiece tokens at a time: the logits held at once are kPiece x V.
  constexpr int64_t kPiece = 512;
  for (int64_t begin = 0; begin < n; begin += kPiece) {
    const int64_t len = std::min(kPiece, n - begin);
    const bool scores = begin + len > first;  // a piece holding scored positions
    const std::span<const float> logits =
        session.forward_view(ids.subspan(static_cast<size_t>(begin), static_cast<size_t>(len)), scores);
    if (!scores) continue;
    const int64_t V = static_cast<int64_t>(logits.size()) / len;
    for (int64_t t = std::max(begin, first); t < begin + len && t + 1 < n; ++t) {  // logits at t predict t + 1
      const float* row = logits.data() + (t - begin) * V;
      const float mx = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v] - mx));
      total.nll += std::log(sum) + mx - row[ids[static_cast<size_t>(t + 1)]];
      ++total.tokens;
    }
  }
  return total;
}

PerplexityResult perplexity(const Engine& engine, std::span<const int32_t> ids, const PerplexityOptions& options) {
  const int64_t n_ctx = options.context;
  if (n_ctx < 2) throw Error("perplexity", cat("a chunk must hold at least 2 tokens, found ", n_ctx));
  PerplexityResult r;
  r.context = n_ctx;
  r.chunks = static_cast<int64_t>(ids.size()) / n_ctx;
  if (options.max_chunks > 0) r.chunks = std::min(r.chunks, options.max_chunks);
  if (r.chunks == 0)
    throw Error("perplexity", cat("the text is ", ids.size(), " tokens, shorter than one chunk of ", n_ctx));
  Session s(engine, n_ctx);
  for (int64_t k = 0; k < r.chunks; ++k) {
    s.reset();
    r.score = score_tokens(s, ids.subspan(static_cast<size_t>(k * n_ctx), static_cast<size_t>(n_ctx)), n_ctx / 2, r.score);
    if (options.on_chunk) options.on_chunk(k + 1, r.chunks, r.score);
  }
  return r;
}

}  // namespace moerun
