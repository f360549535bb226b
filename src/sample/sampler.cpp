#include "moerun/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void check(const SamplerParams& p) {
  using detail::cat;
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature))
    throw Error("sampler", cat("temperature must be 0 or more, found ", p.temperature));
  if (p.top_k < 0) throw Error("sampler", cat("top-k must be 0 (off) or more, found ", p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1)) throw Error("sampler", cat("top-p must be in (0, 1], found ", p.top_p));
  if (!(p.min_p >= 0 && p.min_p <= 1)) throw Error("sampler", cat("min-p must be in [0, 1], found ", p.min_p));
  if (!(p.repeat_penalty > 0) || !std::isfinite(p.repeat_penalty))
    throw Error("sampler", cat("repeat penalty must be positive, found ", p.repeat_penalty));
  if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty))
    throw Error("sampler", "presence and frequency penalties must be finite");
  if (p.penalty_last_n < -1) throw Error("sampler", cat("penalty window must be -1 (all) or more, found ", p.penalty_last_n));
}

}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) { check(params); }

void Sampler::set_params(const SamplerParams& p) {
  check(p);
  if (p.seed != params_.seed) rng_ = Rng(p.seed);
  params_ = p;
}

namespace {

// The first index of the largest value (a NaN is an Error: it has no place in the order).
size_t argmax(std::span<const float> v) {
  size_t best = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isnan(v[i])) throw Error("sampler", detail::cat("logit ", i, " is NaN"));
    if (v[i] > v[best]) best = i;
  }
  return best;
}

}  // namespace

void Sampler::load(std::span<const float> logits, std::span<const int32_t> history) {
  if (logits.empty()) throw Error("sampler", "no logits");
  work_.assign(logits.begin(), logits.end());  // keeps its capacity: no allocation once sized
  for (size_t i = 0; i < work_.size(); ++i)
    if (std::isnan(work_[i])) throw Error("sampler", detail::cat("logit ", i, " is NaN"));
  apply_penalties(history);
}

void Sampler::apply_penalties(std::span<const int32_t> history) {
  const SamplerParams& p = params_;
  if (!p.penalties()) return;
  const size_t window = p.penalty_last_n < 0 ? history.size() : std::min(history.size(), static_cast<size_t>(p.penalty_last_n));
  const auto recent = history.subspan(history.size() - window);
  // counts_ is all zero between calls, so only the window's tokens are touched (not the vocabulary).
  if (counts_.size() < work_.size()) counts_.resize(work_.size(), 0);
  auto valid = [&](int32_t id) { return id >= 0 && static_cast<size_t>(id) < work_.size(); };
  for (int32_t id : recent)
    if (valid(id)) ++counts_[static_cast<size_t>(id)];
  for (int32_t id : recent) {
    if (!valid(id)) continue;
    int32_t& n = counts_[static_cast<size_t>(id)];
    if (n == 0) continue;  // a repeat of a token already penalised
    float& l = work_[static_cast<size_t>(id)];
    l = l > 0 ? l / p.repeat_penalty : l * p.repeat_penalty;  // HF RepetitionPenaltyLogitsProcessor
    l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
    n = 0;
  }
}

void Sampler::warp() {
  const SamplerParams& p = params_;
  const size_t n = work_.size();
  for (float& l : work_) l /= p.temperature;
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0);
  // Descending by logit, ties by id, so every step is deterministic (a total order: std::sort needs
  // no scratch buffer, unlike std::stable_sort).
  std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
    const float la = work_[static_cast<size_t>(a)], lb = work_[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  });
  size_t keep = n;
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) {
    // HF TopKLogitsWarper: drop everything strictly below the k-th value (ties at the edge stay).
    const float kth = work_[static_cast<size_t>(order_[static_cast<size_t>(p.top_k - 1)])];
    while (keep > 0 && work_[static_cast<size_t>(order_[keep - 1])] < kth) --keep;
  }
  // Probabilities of the kept tokens, for top-p and min-p.
  const float top = work_[static_cast<size_t>(order_[0])];
  kept_.resize(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += kept_[i] = std::exp(static_cast<double>(work_[static_cast<size_t>(order_[i])] - top));
  for (double& q : kept_) q /= sum;
  if (p.top_p < 1.0f) {
    // The smallest most-likely prefix whose mass reaches top_p (at least one token).
    double cum = 0;
    size_t i = 0;
    while (i < keep) {
      cum += kept_[i++];
      if (cum >= p.top_p) break;
    }
    keep = std::max<size_t>(i, 1);
  }
  if (p.min_p > 0.0f) {
    const double threshold = p.min_p * kept_[0];
    size_t i = 1;
    while (i < keep && kept_[i] >= threshold) ++i;
    keep = i;
  }
  for (size_t i = keep; i < n; ++i) work_[static_cast<size_t>(order_[i])] = -INFINITY;
}

void Sampler::probabilities() {
  probs_.assign(work_.size(), 0.0f);
  if (params_.greedy()) {
    probs_[argmax(work_)] = 1.0f;
    return;
  }
  warp();
  const float top = *std::max_element(work_.begin(), work_.end());
  double sum = 0;
  for (float l : work_) sum += std::exp(static_cast<double>(l - top));
  for (size_t i = 0; i < work_.size(); ++i) probs_[i] = static_cast<float>(std::exp(static_cast<double>(work_[i] - top)) / sum);
}

std::vector<float> Sampler::distribution(std::span<const float> logits, std::span<const int32_t> history) {
  load(logits, history);
  probabilities();
  return probs_;
}

int32_t Sampler::draw(double u) const {
  double cum = 0;
  int32_t last = 0;
  for (size_t i = 0; i < probs_.size(); ++i) {
    if (probs_[i] <= 0.0f) continue;
    last = static_cast<int32_t>(i);
    cum += probs_[i];
    if (u < cum) return last;
  }
  return last;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  probs_valid_ = false;
  if (params_.greedy()) {
    if (logits.empty()) throw Error("sampler", "no logits");
    if (!params_.penalties()) return static_cast<int32_t>(argmax(logits));  // nothing to change: no copy
    load(logits, history);
    return static_cast<int32_t>(argmax(work_));
  }
  load(logits, history);
  probabilities();
  probs_valid_ = true;
  // Inverse CDF over token ids in order; the last kept token takes any rounding remainder.
  return draw(rng_.uniform());
}

std::span<const float> Sampler::last_distribution() const noexcept {
  return probs_valid_ ? std::span<const float>(probs_) : std::span<const float>();
}

int32_t Sampler::verify(std::span<const float> logits, std::span<const int32_t> history, int32_t draft,
                        std::span<const float> draft_probs) {
  if (params_.greedy()) return sample(logits, history);  // the argmax: accepted when it is the draft
  probs_valid_ = false;
  load(logits, history);
  probabilities();
  const bool inside = draft >= 0 && static_cast<size_t>(draft) < probs_.size();
  const double p = inside ? probs_[static_cast<size_t>(draft)] : 0.0;
  const bool one_hot = draft_probs.empty();
  const double q = one_hot ? 1.0 : (draft >= 0 && static_cast<size_t>(draft) < draft_probs.size() ? draft_probs[static_cast<size_t>(draft)] : 0.0);
  // Accept with probability min(1, p / q): u < p / q, written without the division (q = 0 with
  // p > 0 accepts; p = 0 never does).
  if (rng_.uniform() * q < p) return draft;
  // The residual max(0, p - q), in place: its mass is positive whenever a rejection can happen
  // (p(d) < q(d) means p exceeds q elsewhere). Rounding may leave it empty: p itself then.
  double sum = 0;
  if (one_hot) {
    if (inside) probs_[static_cast<size_t>(draft)] = 0.0f;
    for (float v : probs_) sum += v;
  } else {
    const size_t nq = std::min(draft_probs.size(), probs_.size());
    for (size_t i = 0; i < probs_.size(); ++i) {
      const float r = i < nq ? std::max(0.0f, probs_[i] - draft_probs[i]) : probs_[i];
      probs_[i] = r;
      sum += r;
    }
  }
  if (!(sum > 0)) {  // p again (probabilities() warps work_ in place: load it anew)
    load(logits, history);
    probabilities();
    sum = 1.0;
  }
  return draw(rng_.uniform() * sum);
}

}  // namespace moerun
