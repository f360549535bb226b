#pragma once
// Speculative decoding's draft sources and the drafting policy (generate() verifies the drafts:
// one forward over the fed token and its k drafts gives k + 1 positions' logits, the drafts the
// sampler accepts are kept, the rest dropped from the cache).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "moerun/engine.h"
#include "moerun/generate.h"
#include "moerun/sampler.h"

namespace moerun::runtime {

// Prompt lookup: the longest suffix of `history` (from max_n tokens down to min_n) that occurred
// earlier in it, most recent occurrence first, proposes the tokens that followed it there: up to
// `max_draft` of them into `out` (cleared first). Returns how many (0: no match).
size_t ngram_draft(std::span<const int32_t> history, size_t max_draft, std::vector<int32_t>& out, size_t max_n = 4,
                   size_t min_n = 2);

// How many tokens to draft next (speculation must never cost much when the drafts are wrong).
//  - Length: starts at `first` (kFirst for free drafts, 1 for a drafter that runs a model: each of
//    its tokens costs a forward), grows k -> 2k + 1 after a fully accepted draft, shrinks to
//    (k - 1) / 2 after a rejected first token, and after a pause resumes at its least (a cheap
//    probe); always within [1, max]. With a `quantum` q > 1 the lengths are q m - 1 (k + 1 rows a
//    whole number of q-row groups): free drafts cost only their verification, whose rows the CPU
//    decode kernels take in groups of kVerifyQuantum (kernels/cpu: up to 16 tokens in passes of 4),
//    so 7 drafts verify in 2 passes and 8 in 3 (measured: 8 drafts decode a copy prompt 1.41x
//    faster than plain, 7 drafts 1.63x, 3 drafts 1.71x).
//  - Cold rule: after kColdLimit verifications in a row that accepted nothing, drafting pauses.
//  - Cost rule: each verification reports what it cost beyond the plain decode step it replaces,
//    in target decode steps: measured (greedy: the drafting time plus the verification forward's,
//    over a plain step's, minus one), or estimated from the weight bytes (sampling: k draft tokens
//    of a drafter whose step costs c target steps: about k * c). A verification saves `accepted`
//    target steps, so drafting pays while the mean accepted tokens per verification stays above the
//    mean cost; once kWindow verifications (since the start or the last pause) say it does not,
//    drafting pauses.
//  - Budget: the steps lost so far (each verification's cost minus its accepted tokens, summed:
//    negative while drafting pays), plus what the next verification would cost (the last one's cost
//    per draft token times the length), may not pass kAllowance + kBudget * the tokens generated;
//    past it no drafts are proposed until enough tokens were decoded plainly. This bounds what wrong drafts
//    cost a whole generation to about kBudget (2.5%) of its plain decode time, whatever the text.
//  - Pauses: kPause tokens, doubling each time drafting is found not to pay again right after a
//    pause (up to kMaxPause), back to kPause once a whole window paid. After a pause drafting
//    resumes as a probe: a fresh window of kWindow verifications judges it.
class DraftPolicy {
 public:
  explicit DraftPolicy(size_t max_draft, size_t first = kFirst, size_t quantum = 1)
      : max_(std::max<size_t>(max_draft, 1)), quantum_(std::max<size_t>(quantum, 1)), next_(fit(first)) {}
  // The draft length for the next token, `generated` tokens into the generation (0: do not draft now).
  size_t next(int64_t generated = 0) {
    if (pause_ > 0) {
      --pause_;
      return 0;
    }
    if (loss_ + last_cost_ * static_cast<double>(next_) > kAllowance + kBudget * static_cast<double>(generated)) return 0;
    return next_;
  }
  double loss() const noexcept { return loss_; }
  // A verification of `drafted` tokens accepted `accepted`; drafting them cost `cost` target steps.
  void record(size_t drafted, size_t accepted, double cost = 0.0);
  bool paused() const noexcept { return pause_ > 0; }

  static constexpr size_t kFirst = 3;
  static constexpr size_t kVerifyQuantum = 4;
  static constexpr int kColdLimit = 4;
  static constexpr int kPause = 16;
  static constexpr int kMaxPause = 512;
  static constexpr int kWindow = 4;
  static constexpr double kAllowance = 0.25, kBudget = 0.025;

  // The length k snapped to the quantum's lengths (the largest q m - 1 <= k, at least q - 1) and to [1, max].
  size_t fit(size_t k) const noexcept {
    k = std::min(k, max_);
    if (quantum_ > 1 && max_ + 1 >= quantum_) k = std::max<size_t>((k + 1) / quantum_, 1) * quantum_ - 1;
    return std::clamp<size_t>(k, 1, max_);
  }

 private:
  size_t max_, quantum_, next_;
  int cold_ = 0, pause_ = 0, backoff_ = kPause, seen_ = 0;
  double gain_ = 0.0, cost_ = 0.0;  // mean accepted tokens and drafting cost per verification (EMA after 8)
  double loss_ = 0.0;               // target steps lost to speculation so far (negative: gained)
  double last_cost_ = 0.0;          // the last verification's cost per draft token
};

// Where drafts come from, one case per SpecKind, and the policy deciding how many. generate() asks
// for drafts after each token it feeds alone (propose), verifies them row by row (q gives each
// draft's distribution for Sampler::verify) and reports the outcome (record).
//  - ngram: prompt lookup over the history; one-hot.
//  - draft: a smaller model's session (GenerateOptions::draft). It holds a prefix of the history
//    (tracked here): before drafting it is truncated to the longest common prefix (a rejected draft
//    leaves) and fed the missing tokens in one forward, then drafts autoregressively with its own
//    Sampler (the target's parameters, a seed derived from the target's). Greedy target: greedy
//    drafts, one-hot. Sampling: each draft's full distribution q is kept (ids [0, min(V_draft,
//    V_target)), renormalized there) for the verification; a draft token >= V_target ends the
//    draft. Drafting stops at the draft session's context (no error).
//  - mtp: Session::mtp_draft of the target session; one-hot.
// Cost (DraftPolicy's cost rule): GenerateOptions::draft_cost per draft-model forward or MTP draft
// token when given; otherwise, for greedy decoding only, measured with steady_clock (the drafting
// and verification time over the target's mean plain step, minus one: timing may decide when to
// draft, which cannot change greedy tokens; the first tokens after the prompt decode plainly, to
// measure that step, the first of them a warm-up left out); sampling without draft_cost has no cost rule, so that a seed keeps deciding
// every token.
class Drafter {
 public:
  // `cached`: the tokens of `history` the target session held on entry (a draft session keeps at
  // most that many of its own; see GenerateOptions::draft). `target_vocab`: the target's logits width.
  Drafter(SpecKind kind, Session& target, const GenerateOptions& options, const Sampler& sampler, std::span<const int32_t> prompt,
          int64_t cached, size_t target_vocab, size_t room);

  // A draft model reads the prompt now, with the target's prefill, rather than at the first draft
  // (where its time would count against drafting). No-op for the other sources.
  void prefill(std::span<const int32_t> prompt);
  // Drafts up to min(policy, fits) tokens to follow `history` (its last token sampled and not yet
  // fed to the target). Returns how many (0: none now); they are drafts().
  size_t propose(std::span<const int32_t> history, size_t fits);
  const std::vector<int32_t>& drafts() const noexcept { return drafts_; }
  // Draft i's distribution over the target's ids (empty: one-hot, the draft was certain).
  std::span<const float> q(size_t i) const noexcept;
  // The verification of the last proposal is over: `accepted` of its drafts were taken.
  void record(size_t drafted, size_t accepted);
  // Measuring: whether generate() should time the target's forwards, and one forward's time.
  bool timed() const noexcept { return timed_; }
  double draft_seconds() const noexcept { return total_draft_seconds_; }  // every proposal's, summed
  void target_step(double seconds) noexcept;   // a plain decode step's forward
  void verify_step(double seconds) noexcept { verify_seconds_ = seconds; }  // the last verification's
  // Generation is over: the draft session keeps only what agrees with `history`.
  void finish(std::span<const int32_t> history);

 private:
  size_t from_draft_model(std::span<const int32_t> history, size_t want);

  SpecKind kind_;
  Session& target_;
  Session* draft_ = nullptr;
  DraftPolicy policy_;
  double fixed_cost_ = 0.0;  // options.draft_cost
  bool timed_ = false;
  double draft_seconds_ = 0.0, verify_seconds_ = 0.0, target_step_ = 0.0;  // the last proposal's; EMA of plain steps
  double total_draft_seconds_ = 0.0;
  int plain_steps_ = 0;
  size_t forwards_ = 0;                              // draft-model forwards of the last proposal
  std::vector<int32_t> drafts_;
  // Draft model.
  Sampler draft_sampler_;
  bool one_hot_ = true;
  size_t target_vocab_ = 0, qwidth_ = 0;
  size_t prompt_ = 0;  // the prompt's tokens (the history past them: generated)
  std::vector<int32_t> held_;  // what the draft session's cache holds
  size_t synced_ = 0;          // held_[0, synced_) is known to agree with the history
  std::vector<float> q_;       // [kMaxDraft, qwidth_]
};

}  // namespace moerun::runtime
