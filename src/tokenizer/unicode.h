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

// --- UTF-8 (src/util/utf8.h) -----------------------------------------------------------------

using detail::append_utf8;
using detail::decode_utf8;           // the code point at s[i] of valid UTF-8, and its length
using detail::find_invalid_utf8;     // the first byte not in a well-formed sequence
using detail::utf8_incomplete_tail;  // a sequence only cut short by the end of the buffer
using detail::utf8_len;              // bytes of the character with this lead byte
using detail::utf8_lossy;            // Rust's String::from_utf8_lossy

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
