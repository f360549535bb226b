#pragma once
// Python str semantics over UTF-8: jinja2 runs on Python strings, so lengths, indices and slices count
// code points, and whitespace, case mapping and printability follow CPython 3.11 (Unicode data from
// utf8proc, plus CPython's full case mappings that expand one character into several).

#include <cstddef>
#include <string>
#include <string_view>

#include "util/utf8.h"

namespace moerun::chat {

using detail::is_valid_utf8;  // src/util/utf8.h
// Code points of valid UTF-8 (checked where strings enter: the template source and the context).
std::u32string decode_utf8(std::string_view s);
using detail::append_utf8;  // src/util/utf8.h
std::string encode_utf8(std::u32string_view cps);
size_t code_point_count(std::string_view s);
// Bytes of the character that starts with `lead` (valid UTF-8); the code point's UTF-8 length.
inline size_t char_bytes(char lead) { return detail::utf8_len(static_cast<unsigned char>(lead)); }
inline size_t utf8_bytes(char32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }
// The code point of valid UTF-8 that starts at byte i.
inline char32_t code_point_at(std::string_view s, size_t i) {
  char32_t cp = 0;
  detail::decode_utf8(s, i, cp);
  return cp;
}
// The start of the code point that ends at byte e (> 0) of valid UTF-8.
inline size_t code_point_before(std::string_view s, size_t e) {
  size_t k = e - 1;
  while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  return k;
}

bool py_isspace(char32_t c);      // str.isspace: the characters str.split() and str.strip() remove
bool py_isprintable(char32_t c);  // str.isprintable: repr() escapes the others
bool py_iscased(char32_t c);
bool py_islower(char32_t c);
bool py_isupper(char32_t c);
bool py_isalpha(char32_t c);
bool py_isdecimal(char32_t c);

std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_title(std::string_view s);       // str.title(), not jinja's |title filter
std::string py_capitalize(std::string_view s);  // str.capitalize(): first character titlecased

}  // namespace moerun::chat
