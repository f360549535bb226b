#pragma once
// Stop strings over streamed text: holds back text that might be the start of a stop string, so a
// stop string split across tokens is found and never emitted. generate() and the server's
// scheduler both stream through it.

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moerun::runtime {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops = {}) : stops_(std::move(stops)) {}

  // Appends `piece`; returns the text now safe to emit. Sets `stopped` when a stop string appears
  // (the text before it is returned, the stop string and anything after are dropped).
  std::string push(std::string_view piece, bool& stopped) {
    pending_ += piece;
    size_t first = std::string::npos;
    for (const std::string& s : stops_)
      if (!s.empty()) first = std::min(first, pending_.find(s));
    if (first != std::string::npos) {
      stopped = true;
      std::string out = pending_.substr(0, first);
      pending_.clear();
      return out;
    }
    // Keep the longest tail that is a proper prefix of some stop string.
    size_t keep = 0;
    for (const std::string& s : stops_)
      for (size_t len = std::min(s.empty() ? 0 : s.size() - 1, pending_.size()); len > keep; --len)
        if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
          keep = len;
          break;
        }
    std::string out = pending_.substr(0, pending_.size() - keep);
    pending_.erase(0, pending_.size() - keep);
    return out;
  }

  std::string flush() { return std::exchange(pending_, std::string()); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace moerun::runtime
