#pragma once
// Small string helpers for messages (detail::cat itself lives in moerun/error.h, where kernels can
// reach it too).

#include <string>
#include <string_view>
#include <vector>

#include "moerun/error.h"

namespace moerun::detail {

// "a; b; c (and 7 more)": at most `max_items` problems in one message line.
std::string join_problems(const std::vector<std::string>& items, size_t max_items = 12);

// A string quoted for an error message, shortened and with control bytes escaped.
std::string quote(std::string_view s, size_t max_len = 80);

}  // namespace moerun::detail
