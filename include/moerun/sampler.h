#pragma once
// Sampler: turns next-token logits into a token. The chain, in HF's order: repetition, presence and
// frequency penalties over the last N tokens, temperature, top-k, top-p, min-p, then a draw from a
// seeded RNG (greedy at temperature 0). The RNG lives in the Sampler, so a seed fully determines the
// tokens (docs/DESIGN.md rule 6).

#include <cstdint>
#include <span>
#include <vector>

namespace moerun {

struct SamplerParams {
  // Temperatures below this are greedy: dividing logits by a tiny temperature overflows to
  // infinity (1e-40 would turn every logit into inf and the draw into garbage).
  static constexpr float kGreedyBelow = 1e-5f;

  float temperature = 1.0f;       // 0 (or below kGreedyBelow): greedy (argmax after penalties)
  int32_t top_k = 0;              // keep the k most likely; 0: off
  float top_p = 1.0f;             // keep the smallest most-likely set with probability >= top_p; 1: off
  float min_p = 0.0f;             // drop tokens below min_p * p(best); 0: off
  float repeat_penalty = 1.0f;    // HF repetition_penalty: positive logits / r, negative * r; 1: off
  float presence_penalty = 0.0f;  // subtracted once from every token seen in the window
  float frequency_penalty = 0.0f; // subtracted per occurrence in the window
  int32_t penalty_last_n = 64;    // the window: the last N tokens of the history; -1: all of it
  uint64_t seed = 0;

  bool greedy() const { return temperature < kGreedyBelow; }
  bool penalties() const { return repeat_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f; }
};

// xoshiro256** seeded through SplitMix64: the same stream on every platform and standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1) with 53 random bits

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);

  // `history`: the tokens so far (prompt and generated), for the penalties. Same seed, same logits
  // and history: same token. Greedy (temperature 0) is the argmax after the penalties, the first
  // of equal logits. Once the working buffers are sized for the vocabulary, a call allocates
  // nothing. A NaN logit is an Error.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history = {});

  // The probability of every token after the whole chain (zero for removed ones): what sample()
  // draws from. For tests and for `--json` diagnostics (the returned copy is its one allocation).
  std::vector<float> distribution(std::span<const float> logits, std::span<const int32_t> history = {});

  // After a sample() at temperature > 0: the distribution it drew from (what distribution() would
  // return), a view of the sampler's buffer valid until its next call. Empty after a greedy
  // sample() (greedy does not compute it). For speculative sampling's draft model (its q).
  std::span<const float> last_distribution() const noexcept;

  // Speculative sampling (Leviathan et al. 2023, Chen et al. 2023): the token at this position when
  // a drafter proposed `draft`, drawn from `draft_probs` (q: a distribution over ids
  // [0, draft_probs.size()), zero past its end; empty: the draft was certain, a one-hot q, as for
  // prompt lookup and greedy drafters). p is the whole chain's distribution for `logits` and
  // `history` (what sample() draws from). The draft is accepted (returned) with probability
  // min(1, p(draft) / q(draft)), drawn from this sampler's RNG; otherwise the token is drawn from
  // the residual norm(max(0, p - q)) (one-hot q: p without the draft), which never returns the
  // draft. The returned token is distributed exactly as p whatever q is, as long as the draft was
  // drawn from q. Greedy: the argmax, as sample() gives it, with no RNG draw. Allocates nothing
  // once the buffers are sized. A draft outside the logits has p = 0 (always rejected).
  int32_t verify(std::span<const float> logits, std::span<const int32_t> history, int32_t draft,
                 std::span<const float> draft_probs = {});

  const SamplerParams& params() const noexcept { return params_; }
  void set_params(const SamplerParams& p);  // reseeds when the seed changes

 private:
  void load(std::span<const float> logits, std::span<const int32_t> history);  // work_ = logits after penalties
  void apply_penalties(std::span<const int32_t> history);
  void warp();           // temperature, top-k, top-p, min-p on work_: removed tokens become -inf
  void probabilities();  // probs_ = softmax of work_ after warp() (greedy: one-hot at the argmax)
  int32_t draw(double u) const;  // inverse CDF of probs_ over ids in order (the last kept token takes the remainder)

  SamplerParams params_;
  Rng rng_;
  // Working buffers, sized to the vocabulary on first use and reused (their capacity is kept).
  std::vector<float> work_;      // the logits being processed
  std::vector<int32_t> order_;   // token ids sorted by logit, descending
  std::vector<int32_t> counts_;  // occurrences in the penalty window (all zero between calls)
  std::vector<double> kept_;     // probabilities of the tokens top-k kept, for top-p and min-p
  std::vector<float> probs_;     // what sample() draws from
  bool probs_valid_ = false;     // probs_ is the last sample()'s distribution (last_distribution)
};

}  // namespace moerun
