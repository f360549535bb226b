#pragma once
// UTF-8, written once for the tokenizer and the chat-template interpreter: encoding a code point,
// decoding valid UTF-8, and validation with Rust's rules (core::str::from_utf8: no overlong forms,
// no surrogates, nothing above U+10FFFF), which are also Python's and the Unicode standard's.
// tokenizers is Rust, so its lossy conversion (one U+FFFD per maximal ill-formed subpart) is the
// one here too.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace moerun::detail {

// Appends the UTF-8 bytes of code point `cp` (1 to 4 bytes; no validity check on `cp`).
void append_utf8(std::string& out, char32_t cp);

// Length in bytes of the character starting at lead byte `c` of valid UTF-8.
inline size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

// Decodes the code point at s[i] of valid UTF-8 (i < s.size()); returns its length in bytes. (On
// invalid input it reads no byte past the end and returns garbage, never crashes.)
inline size_t decode_utf8(std::string_view s, size_t i, char32_t& cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  const size_t n = utf8_len(c);
  if (n == 1) {
    cp = c;
    return 1;
  }
  char32_t v = c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n && i + k < s.size(); ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  cp = v;
  return n;
}

// One step of validation at s[i]: true and the length of a well-formed character, or false and the
// length of the maximal ill-formed subpart there (at least 1; Rust's Utf8Chunks). `truncated` says
// the subpart ends only because the input does.
bool scan_utf8(std::string_view s, size_t i, size_t& len, bool& truncated);

// Offset of the first byte that does not belong to a well-formed sequence, or nullopt when the
// whole string is valid.
std::optional<size_t> find_invalid_utf8(std::string_view s);
inline bool is_valid_utf8(std::string_view s) { return !find_invalid_utf8(s).has_value(); }

// String::from_utf8_lossy as Rust defines it: every maximal ill-formed subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// The length of the suffix of `bytes` that starts a well-formed sequence and is only cut short by the
// end of the buffer (0 to 3 bytes). Holding it back and converting the rest with utf8_lossy gives the
// same text as converting the whole once the sequence is complete.
size_t utf8_incomplete_tail(std::string_view bytes);

}  // namespace moerun::detail
