#pragma once
// Flag checks with one-line messages that say what is allowed ("-n: must be a whole number from 1
// to 1000000, found 0") instead of CLI11's generic ranges (which print 300-digit doubles), and that
// refuse values CLI11 would otherwise saturate or wrap (a 30-digit seed, a negative seed).

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

namespace moerun::cli {

// A whole decimal number in [lo, hi], or nullopt (not a number, trailing text, out of range).
inline std::optional<int64_t> parse_integer(const std::string& text, int64_t lo, int64_t hi) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno || end != text.c_str() + text.size() || v < lo || v > hi) return std::nullopt;
  return v;
}

// An unsigned 64-bit seed: digits only, no sign, no wrap-around.
inline std::optional<uint64_t> parse_seed(const std::string& text) {
  if (text.empty() || text.size() > 20 || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno) return std::nullopt;
  return v;
}

inline CLI::Validator integer_in(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        if (parse_integer(s, lo, hi)) return {};
        return "must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi) + ", found '" + s + "'";
      },
      "INT in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

// A finite real number in [lo, hi] (NaN and infinities refused).
inline CLI::Validator number_in(double lo, double hi) {
  auto show = [](double v) {
    std::string t = std::to_string(v);
    while (t.size() > 1 && t.back() == '0') t.pop_back();
    if (!t.empty() && t.back() == '.') t.pop_back();
    return t;
  };
  return CLI::Validator(
      [lo, hi, show](std::string& s) -> std::string {
        errno = 0;
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (!s.empty() && !errno && end == s.c_str() + s.size() && v >= lo && v <= hi) return {};
        return "must be a number from " + show(lo) + " to " + show(hi) + ", found '" + s + "'";
      },
      "FLOAT in [" + show(lo) + ", " + show(hi) + "]");
}

inline CLI::Validator seed_value() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (parse_seed(s)) return {};
        return "must be a whole number from 0 to 18446744073709551615, found '" + s + "'";
      },
      "UINT64");
}

// Most threads a command may ask for: four per hardware thread (oversubscription beyond that only
// costs), and never more than 1024.
inline int max_threads() {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<int>(std::min<unsigned>(1024, 4 * hw));
}

inline CLI::Validator thread_count() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (parse_integer(s, 1, max_threads())) return {};
        return "must be a whole number from 1 to " + std::to_string(max_threads()) + " (4 per hardware thread), found '" + s + "'";
      },
      "INT");
}

}  // namespace moerun::cli
