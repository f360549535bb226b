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

  const SamplerParams& params() const noexcept { return params_; }
  void set_params(const SamplerParams& p);  // reseeds when the seed changes

 private:
  void load(std::span<const float> logits, std::span<const int32_t> history);  // work_ = logits after penalties
  void apply_penalties(std::span<const int32_t> history);
  void warp();           // temperature, top-k, top-p, min-p on work_: removed tokens become -inf
  void probabilities();  // probs_ = softmax of work_ after warp() (greedy: one-hot at the argmax)

  SamplerParams params_;
  Rng rng_;
  // Working buffers, sized to the vocabulary on first use and reused (their capacity is kept).
  std::vector<float> work_;      // the logits being processed
  std::vector<int32_t> order_;   // token ids sorted by logit, descending
  std::vector<int32_t> counts_;  // occurrences in the penalty window (all zero between calls)
  std::vector<double> kept_;     // probabilities of the tokens top-k kept, for top-p and min-p
  std::vector<float> probs_;     // what sample() draws from
};

}  // namespace moerun
