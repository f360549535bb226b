#include "util/utf8.h"

namespace moerun::detail {

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// One step of Rust's UTF-8 validation (core::str::Utf8Chunks) at s[i]: returns true and the length of a
// well-formed character, or false and the length of the maximal ill-formed subpart (at least 1).
// `truncated` is set when the subpart ends only because the input ended.
bool scan_utf8(std::string_view s, size_t i, size_t& len, bool& truncated) {
  truncated = false;
  const auto at = [&](size_t k) -> unsigned { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u; };
  const auto is_cont = [](unsigned b) { return b >= 0x80 && b <= 0xBF; };
  const unsigned b0 = at(i);
  if (b0 < 0x80) {
    len = 1;
    return true;
  }
  size_t need;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    len = 1;
    return false;
  }
  size_t k = 1;
  for (; k < need; ++k) {
    if (i + k >= s.size()) {
      truncated = true;
      break;
    }
    const unsigned b = at(i + k);
    if (k == 1 ? (b < lo || b > hi) : !is_cont(b)) break;
  }
  len = k;
  return k == need;
}

std::optional<size_t> find_invalid_utf8(std::string_view s) {
  size_t i = 0, len = 0;
  bool truncated = false;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {  // ASCII fast path
      ++i;
      continue;
    }
    if (!scan_utf8(s, i, len, truncated)) return i;
    i += len;
  }
  return std::nullopt;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0, len = 0;
  bool truncated = false;
  while (i < bytes.size()) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    if (scan_utf8(bytes, i, len, truncated)) {
      out.append(bytes.substr(i, len));
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += len;
  }
  return out;
}

size_t utf8_incomplete_tail(std::string_view bytes) {
  // A lead byte sits at most 3 bytes before the end; scan from the earliest candidate.
  const size_t from = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t i = from; i < bytes.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c < 0xC2 || c > 0xF4) continue;  // not a lead byte
    size_t len = 0;
    bool truncated = false;
    if (!scan_utf8(bytes, i, len, truncated) && truncated && i + len == bytes.size()) return bytes.size() - i;
  }
  return 0;
}

}  // namespace moerun::detail
