#include "runtime/speculate.h"

#include <algorithm>
#include <chrono>

namespace moerun::runtime {

size_t ngram_draft(std::span<const int32_t> history, size_t max_draft, std::vector<int32_t>& out, size_t max_n, size_t min_n) {
  out.clear();
  const size_t len = history.size();
  if (max_draft == 0 || min_n == 0) return 0;
  for (size_t n = std::min(max_n, len > 0 ? len - 1 : 0); n >= min_n; --n) {
    const auto tail = history.subspan(len - n);
    // The most recent earlier occurrence that has at least one token after it.
    for (size_t start = len - n; start-- > 0;) {
      if (!std::equal(tail.begin(), tail.end(), history.begin() + static_cast<std::ptrdiff_t>(start))) continue;
      const size_t from = start + n, count = std::min(max_draft, len - from);
      out.assign(history.begin() + static_cast<std::ptrdiff_t>(from), history.begin() + static_cast<std::ptrdiff_t>(from + count));
      return out.size();
    }
    if (n == min_n) break;
  }
  return 0;
}

void DraftPolicy::record(size_t drafted, size_t accepted, double cost) {
  if (drafted == 0) return;
  loss_ += cost - static_cast<double>(accepted);
  last_cost_ = cost / static_cast<double>(drafted);
  if (accepted == drafted) next_ = fit(2 * next_ + 1);
  else if (accepted == 0) next_ = fit((next_ - 1) / 2);
  // Means of the window so far, then an exponential average over about the last 8.
  ++seen_;
  const double a = 1.0 / std::min(seen_, 8);
  gain_ += (static_cast<double>(accepted) - gain_) * a;
  cost_ += (cost - cost_) * a;
  cold_ = accepted > 0 ? 0 : cold_ + 1;
  const bool judged = seen_ >= kWindow;
  if (cold_ >= kColdLimit || (judged && gain_ < cost_)) {
    pause_ = backoff_;
    next_ = fit(1);  // the probe after the pause
    backoff_ = std::min(2 * backoff_, kMaxPause);
    cold_ = seen_ = 0;
    gain_ = cost_ = 0.0;
  } else if (judged) {
    backoff_ = kPause;
  }
}

namespace {

double ema(double old, double x) { return old > 0 ? old + (x - old) * 0.125 : x; }

uint64_t draft_seed(uint64_t seed) { return seed ^ 0x5851f42d4c957f2dull; }

SamplerParams draft_params(const Sampler& sampler) {
  SamplerParams p = sampler.params();
  p.seed = draft_seed(p.seed);
  return p;
}

}  // namespace

Drafter::Drafter(SpecKind kind, Session& target, const GenerateOptions& options, const Sampler& sampler,
                 std::span<const int32_t> prompt, int64_t cached, size_t target_vocab, size_t room)
    : kind_(kind),
      target_(target),
      draft_(options.draft),
      policy_(static_cast<size_t>(std::clamp<int64_t>(options.spec_max, 1, kMaxDraft)), kind == SpecKind::ngram ? DraftPolicy::kFirst : 1,
              kind == SpecKind::ngram ? DraftPolicy::kVerifyQuantum : 1),
      fixed_cost_(options.draft_cost),
      draft_sampler_(draft_params(sampler)),
      one_hot_(sampler.params().greedy()),
      target_vocab_(target_vocab),
      prompt_(prompt.size()) {
  drafts_.reserve(static_cast<size_t>(kMaxDraft));
  timed_ = fixed_cost_ <= 0 && sampler.params().greedy();
  if (kind != SpecKind::draft) return;
  // The draft session holds the prompt's start (at most what the target reused): the rest goes.
  const auto keep = static_cast<size_t>(std::clamp<int64_t>(std::min(draft_->position(), cached), 0,
                                                            static_cast<int64_t>(prompt.size())));
  if (draft_->position() > static_cast<int64_t>(keep)) draft_->truncate(static_cast<int64_t>(keep));
  held_.reserve(prompt.size() + room + static_cast<size_t>(kMaxDraft) + 1);
  held_.assign(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(keep));
  synced_ = keep;
}

std::span<const float> Drafter::q(size_t i) const noexcept {
  if (kind_ != SpecKind::draft || one_hot_ || i >= drafts_.size()) return {};
  return std::span<const float>(q_).subspan(i * qwidth_, qwidth_);
}

size_t Drafter::propose(std::span<const int32_t> history, size_t fits) {
  drafts_.clear();
  if (timed_ && target_step_ <= 0) return 0;  // a plain step first, to measure what drafting must beat
  const size_t want = std::min(policy_.next(static_cast<int64_t>(history.size() - std::min(history.size(), prompt_))), fits);
  if (want == 0) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  forwards_ = 0;
  switch (kind_) {
    case SpecKind::ngram: ngram_draft(history, want, drafts_); break;
    case SpecKind::draft: from_draft_model(history, want); break;
    case SpecKind::mtp: target_.mtp_draft(history.back(), want, drafts_); break;
    case SpecKind::none: break;
  }
  draft_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  total_draft_seconds_ += draft_seconds_;
  if (drafts_.size() > want) drafts_.resize(want);
  return drafts_.size();
}

void Drafter::prefill(std::span<const int32_t> prompt) {
  if (kind_ == SpecKind::mtp) target_.mtp_prefill();
  if (kind_ != SpecKind::draft || prompt.size() <= synced_ || static_cast<int64_t>(prompt.size()) > draft_->context()) return;
  draft_->forward_view(prompt.subspan(synced_));  // (in micro-batches; its logits are not needed)
  held_.assign(prompt.begin(), prompt.end());
  synced_ = prompt.size();
}

size_t Drafter::from_draft_model(std::span<const int32_t> history, size_t want) {
  Session& d = *draft_;
  const size_t n = history.size();
  if (n == 0 || static_cast<int64_t>(n) > d.context()) return 0;  // the draft's context is full: no drafts
  want = std::min(want, static_cast<size_t>(d.context()) - n + 1);
  // The longest common prefix of what the draft holds and the history; the last history token runs
  // again if the draft holds it all (its logits are needed).
  size_t c = synced_;
  const size_t lim = std::min(held_.size(), n);
  while (c < lim && held_[c] == history[c]) ++c;
  c = std::min(c, n - 1);
  if (d.position() > static_cast<int64_t>(c)) d.truncate(static_cast<int64_t>(c));
  held_.resize(c);
  std::span<const float> logits = d.forward_view(history.subspan(c));
  ++forwards_;
  held_.insert(held_.end(), history.begin() + static_cast<std::ptrdiff_t>(c), history.end());
  synced_ = n;
  if (!one_hot_) {
    qwidth_ = std::min(logits.size(), target_vocab_);
    if (q_.size() < static_cast<size_t>(kMaxDraft) * qwidth_) q_.resize(static_cast<size_t>(kMaxDraft) * qwidth_);
  }
  for (size_t i = 0; i < want; ++i) {
    const int32_t t = draft_sampler_.sample(logits, held_);
    if (t < 0 || static_cast<size_t>(t) >= target_vocab_) break;  // not a target token: the draft ends
    if (!one_hot_) {
      // q over the target's ids, renormalized there (the draft is drawn from q conditioned on being
      // a target id, so that is the distribution verify must see).
      const std::span<const float> dist = draft_sampler_.last_distribution().first(qwidth_);
      float* out = q_.data() + i * qwidth_;
      double sum = 0;
      for (float v : dist) sum += v;
      const double scale = sum > 0 ? 1.0 / sum : 1.0;
      for (size_t j = 0; j < qwidth_; ++j) out[j] = static_cast<float>(dist[j] * scale);
    }
    drafts_.push_back(t);
    if (i + 1 == want) break;
    logits = d.forward_view(std::span<const int32_t>(&t, 1));
    ++forwards_;
    held_.push_back(t);
  }
  return drafts_.size();
}

void Drafter::record(size_t drafted, size_t accepted) {
  double cost = 0.0;
  if (timed_) {
    cost = target_step_ > 0 ? std::max(0.0, (draft_seconds_ + verify_seconds_) / target_step_ - 1.0) : 0.0;
  } else if (fixed_cost_ > 0) {
    cost = fixed_cost_ * static_cast<double>(kind_ == SpecKind::draft ? forwards_ : drafted);
  }
  policy_.record(drafted, accepted, cost);
}

void Drafter::target_step(double seconds) noexcept {
  // The first plain step after the prompt is a warm-up (caches and threads cold after the prefill):
  // left out, it would make drafting look cheaper than it is.
  if (++plain_steps_ > 1) target_step_ = ema(target_step_, seconds);
}

void Drafter::finish(std::span<const int32_t> history) {
  if (kind_ != SpecKind::draft) return;
  size_t c = std::min(synced_, held_.size());
  const size_t lim = std::min(held_.size(), history.size());
  while (c < lim && held_[c] == history[c]) ++c;
  if (draft_->position() > static_cast<int64_t>(c)) draft_->truncate(static_cast<int64_t>(c));
  held_.resize(c);
  synced_ = c;
}

}  // namespace moerun::runtime
