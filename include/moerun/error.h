#pragma once
// moerun::Error: the one error type of the library. It names where the problem is (a file, a tensor,
// a config key) and what is wrong (expected vs found); what() reads "where: what".

#include <sstream>
#include <stdexcept>
#include <string>

namespace moerun {

class Error : public std::runtime_error {
 public:
  Error(std::string where, std::string what);
  explicit Error(std::string what);

  const std::string& where() const noexcept { return where_; }
  const std::string& detail() const noexcept { return detail_; }

  // For MOERUN_CUDA_CHECK: the failing call, CUDA's message and our source location.
  static Error cuda(const char* expr, const char* message, const char* file, int line);

 private:
  std::string where_;
  std::string detail_;
};

namespace detail {

// The pieces of a message streamed together: Error("x", cat("needs ", n, " bytes")). (GCC 12 has no
// <format>.)
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace detail
}  // namespace moerun
