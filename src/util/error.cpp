#include "moerun/error.h"

#include <cstdio>

#include "util/strings.h"

namespace moerun {

Error::Error(std::string where, std::string what)
    : std::runtime_error(where.empty() ? what : where + ": " + what),
      where_(std::move(where)),
      detail_(std::move(what)) {}

Error::Error(std::string what) : Error(std::string(), std::move(what)) {}

Error Error::cuda(const char* expr, const char* message, const char* file, int line) {
  return Error(detail::cat("CUDA ", file, ":", line), detail::cat(expr, " failed: ", message));
}

namespace detail {

std::string join_problems(const std::vector<std::string>& items, size_t max_items) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < max_items; ++i) {
    if (i) out += "; ";
    out += items[i];
  }
  if (items.size() > max_items) out += cat(" (and ", items.size() - max_items, " more)");
  return out;
}

std::string quote(std::string_view s, size_t max_len) {
  std::string out = "'";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == max_len) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

std::string format_bytes(uint64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (bytes >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  else if (bytes >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1ull << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  return buf;
}

}  // namespace detail
}  // namespace moerun
