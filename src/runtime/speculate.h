#pragma once
// Speculative decoding's draft sources and the drafting policy (generate() verifies the drafts:
// one forward over the fed token and its k drafts gives k + 1 positions' logits, the drafts the
// sampler would have picked are kept, the rest dropped from the cache).

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace moerun::runtime {

// Prompt lookup: the longest suffix of `history` (from max_n tokens down to min_n) that occurred
// earlier in it, most recent occurrence first, proposes the tokens that followed it there: up to
// `max_draft` of them into `out` (cleared first). Returns how many (0: no match).
size_t ngram_draft(std::span<const int32_t> history, size_t max_draft, std::vector<int32_t>& out, size_t max_n = 4,
                   size_t min_n = 2);

// How many tokens to draft next. Drafting costs little when the step is memory-bound, but rejected
// drafts cost their attention and their rows: the length follows what was accepted (doubling after
// a fully accepted draft, halving after a rejected first token), and after kColdLimit verifications
// in a row that accepted nothing, drafting pauses for kPause tokens.
class DraftPolicy {
 public:
  explicit DraftPolicy(size_t max_draft) : max_(max_draft), next_(max_draft) {}
  // The draft length for the next token (0: do not draft now).
  size_t next() {
    if (pause_ > 0) {
      --pause_;
      return 0;
    }
    return next_;
  }
  void record(size_t drafted, size_t accepted);

  static constexpr int kColdLimit = 4;
  static constexpr int kPause = 16;

 private:
  size_t max_, next_;
  int cold_ = 0, pause_ = 0;
};

}  // namespace moerun::runtime
