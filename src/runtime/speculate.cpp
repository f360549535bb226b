#include "runtime/speculate.h"

#include <algorithm>

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

void DraftPolicy::record(size_t drafted, size_t accepted) {
  if (drafted == 0) return;
  if (accepted == drafted) next_ = std::min(max_, std::max<size_t>(1, next_ * 2));
  else if (accepted == 0) next_ = std::max<size_t>(1, next_ / 2);
  if (accepted > 0) {
    cold_ = 0;
  } else if (++cold_ >= kColdLimit) {
    cold_ = 0;
    pause_ = kPause;
  }
}

}  // namespace moerun::runtime
