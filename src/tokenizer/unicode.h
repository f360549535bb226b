#pragma once
// UTF-8 and Unicode helpers shared by the tokenizer components. Character classes follow the Rust
// definitions that Hugging Face `tokenizers` uses (char::is_whitespace, regex `\w`, ...), so that
// our splits land where theirs do.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "util/utf8.h"

namespace moerun::tok {

// --- UTF-8 ----------------------------------------------------------------------------------

// Offset of the first byte that does not belong to a well-formed UTF-8 sequence (no overlongs, no
// surrogates, nothing above U+10FFFF), or nullopt when the whole string is valid.
std::optional<size_t> find_invalid_utf8(std::string_view s);

// Decodes the code point at s[i]; `s` must be valid UTF-8 and i < s.size(). Returns its length.
size_t decode_utf8(std::string_view s, size_t i, char32_t& cp);
// Length in bytes of the character starting at lead byte `c` of valid UTF-8.
inline size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }
using detail::append_utf8;  // src/util/utf8.h

// String::from_utf8_lossy as Rust defines it: every maximal ill-formed subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// The length of the suffix of `bytes` that starts a well-formed sequence and is only cut short by the
// end of the buffer (0 to 3 bytes). Holding it back and converting the rest with utf8_lossy gives the
// same text as converting the whole once the sequence is complete.
size_t utf8_incomplete_tail(std::string_view bytes);

// --- character classes (Rust semantics) ------------------------------------------------------

bool is_whitespace(char32_t c);   // char::is_whitespace: the White_Space property
bool is_word_char(char32_t c);    // regex `\w`: Alphabetic, M, Nd, Pc, Join_Control
bool is_numeric(char32_t c);      // char::is_numeric: Nd, Nl, No
bool is_punctuation(char32_t c);  // ASCII punctuation or a P* category (tokenizers' is_punc)
bool is_mark(char32_t c);         // General_Category Mark: Mn, Mc, Me

// --- transformations --------------------------------------------------------------------------

enum class NormalForm { nfc, nfd, nfkc, nfkd };
std::string normalize_unicode(std::string_view s, NormalForm form);  // `s` must be valid UTF-8
// char::to_lowercase applied per character (full mapping: U+0130 becomes "i\u0307"; no final-sigma rule).
std::string to_lowercase(std::string_view s);

}  // namespace moerun::tok
