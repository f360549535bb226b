#pragma once
// Sizes computed from user or file input (a context length, a config's dimensions) are multiplied
// with these: an overflow is an Error naming what was being sized, never a wrapped-around small
// buffer that a kernel then writes past.

#include <cstddef>
#include <cstdint>
#include <string>

#include "moerun/error.h"

namespace moerun::detail {

// a * b for non-negative sizes; Error("`what`", ...) when negative or when it does not fit.
inline size_t checked_mul(size_t a, size_t b, const std::string& what) {
  size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) throw Error(what, cat("size overflows: ", a, " x ", b));
  return r;
}
inline size_t checked_add(size_t a, size_t b, const std::string& what) {
  size_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) throw Error(what, cat("size overflows: ", a, " + ", b));
  return r;
}
inline size_t to_size(int64_t v, const std::string& what) {
  if (v < 0) throw Error(what, cat("negative size ", v));
  return static_cast<size_t>(v);
}
// The product of non-negative int64 factors as a byte count of `elem` bytes each.
template <class... I>
size_t checked_bytes(const std::string& what, size_t elem, I... factors) {
  size_t r = elem;
  ((r = checked_mul(r, to_size(static_cast<int64_t>(factors), what), what)), ...);
  return r;
}

}  // namespace moerun::detail
