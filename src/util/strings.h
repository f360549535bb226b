#pragma once
// Small string helpers for messages (detail::cat itself lives in moerun/error.h, where kernels can
// reach it too).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "moerun/error.h"

namespace moerun::detail {

// "a; b; c (and 7 more)": at most `max_items` problems in one message line.
std::string join_problems(const std::vector<std::string>& items, size_t max_items = 12);

// A string quoted for an error message, shortened and with control bytes escaped.
std::string quote(std::string_view s, size_t max_len = 80);

// "1.50 GiB", "12.0 MiB", "3.0 KiB": sizes in messages and plans.
std::string format_bytes(uint64_t bytes);

}  // namespace moerun::detail
