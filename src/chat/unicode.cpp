#include "chat/unicode.h"

#include <algorithm>
#include <utility>

#include <utf8proc.h>

namespace moerun::chat {

namespace {

struct Expansion {
  char32_t cp;
  const char* utf8;
};

// CPython's full case mappings where one character maps to several (SpecialCasing.txt, unconditional);
// utf8proc only has the one-to-one mappings. Generated with Python 3.11:
// [c for c in map(chr, range(0x110000)) if len(c.upper()) > 1], and likewise for title().
constexpr Expansion kUpperExpansions[] = {
    {0x00DF, "\x53\x53"}, {0x0149, "\xCA\xBC\x4E"}, {0x01F0, "\x4A\xCC\x8C"},
    {0x0390, "\xCE\x99\xCC\x88\xCC\x81"}, {0x03B0, "\xCE\xA5\xCC\x88\xCC\x81"}, {0x0587, "\xD4\xB5\xD5\x92"},
    {0x1E96, "\x48\xCC\xB1"}, {0x1E97, "\x54\xCC\x88"}, {0x1E98, "\x57\xCC\x8A"}, {0x1E99, "\x59\xCC\x8A"},
    {0x1E9A, "\x41\xCA\xBE"}, {0x1F50, "\xCE\xA5\xCC\x93"}, {0x1F52, "\xCE\xA5\xCC\x93\xCC\x80"},
    {0x1F54, "\xCE\xA5\xCC\x93\xCC\x81"}, {0x1F56, "\xCE\xA5\xCC\x93\xCD\x82"},
    {0x1F80, "\xE1\xBC\x88\xCE\x99"}, {0x1F81, "\xE1\xBC\x89\xCE\x99"}, {0x1F82, "\xE1\xBC\x8A\xCE\x99"},
    {0x1F83, "\xE1\xBC\x8B\xCE\x99"}, {0x1F84, "\xE1\xBC\x8C\xCE\x99"}, {0x1F85, "\xE1\xBC\x8D\xCE\x99"},
    {0x1F86, "\xE1\xBC\x8E\xCE\x99"}, {0x1F87, "\xE1\xBC\x8F\xCE\x99"}, {0x1F88, "\xE1\xBC\x88\xCE\x99"},
    {0x1F89, "\xE1\xBC\x89\xCE\x99"}, {0x1F8A, "\xE1\xBC\x8A\xCE\x99"}, {0x1F8B, "\xE1\xBC\x8B\xCE\x99"},
    {0x1F8C, "\xE1\xBC\x8C\xCE\x99"}, {0x1F8D, "\xE1\xBC\x8D\xCE\x99"}, {0x1F8E, "\xE1\xBC\x8E\xCE\x99"},
    {0x1F8F, "\xE1\xBC\x8F\xCE\x99"}, {0x1F90, "\xE1\xBC\xA8\xCE\x99"}, {0x1F91, "\xE1\xBC\xA9\xCE\x99"},
    {0x1F92, "\xE1\xBC\xAA\xCE\x99"}, {0x1F93, "\xE1\xBC\xAB\xCE\x99"}, {0x1F94, "\xE1\xBC\xAC\xCE\x99"},
    {0x1F95, "\xE1\xBC\xAD\xCE\x99"}, {0x1F96, "\xE1\xBC\xAE\xCE\x99"}, {0x1F97, "\xE1\xBC\xAF\xCE\x99"},
    {0x1F98, "\xE1\xBC\xA8\xCE\x99"}, {0x1F99, "\xE1\xBC\xA9\xCE\x99"}, {0x1F9A, "\xE1\xBC\xAA\xCE\x99"},
    {0x1F9B, "\xE1\xBC\xAB\xCE\x99"}, {0x1F9C, "\xE1\xBC\xAC\xCE\x99"}, {0x1F9D, "\xE1\xBC\xAD\xCE\x99"},
    {0x1F9E, "\xE1\xBC\xAE\xCE\x99"}, {0x1F9F, "\xE1\xBC\xAF\xCE\x99"}, {0x1FA0, "\xE1\xBD\xA8\xCE\x99"},
    {0x1FA1, "\xE1\xBD\xA9\xCE\x99"}, {0x1FA2, "\xE1\xBD\xAA\xCE\x99"}, {0x1FA3, "\xE1\xBD\xAB\xCE\x99"},
    {0x1FA4, "\xE1\xBD\xAC\xCE\x99"}, {0x1FA5, "\xE1\xBD\xAD\xCE\x99"}, {0x1FA6, "\xE1\xBD\xAE\xCE\x99"},
    {0x1FA7, "\xE1\xBD\xAF\xCE\x99"}, {0x1FA8, "\xE1\xBD\xA8\xCE\x99"}, {0x1FA9, "\xE1\xBD\xA9\xCE\x99"},
    {0x1FAA, "\xE1\xBD\xAA\xCE\x99"}, {0x1FAB, "\xE1\xBD\xAB\xCE\x99"}, {0x1FAC, "\xE1\xBD\xAC\xCE\x99"},
    {0x1FAD, "\xE1\xBD\xAD\xCE\x99"}, {0x1FAE, "\xE1\xBD\xAE\xCE\x99"}, {0x1FAF, "\xE1\xBD\xAF\xCE\x99"},
    {0x1FB2, "\xE1\xBE\xBA\xCE\x99"}, {0x1FB3, "\xCE\x91\xCE\x99"}, {0x1FB4, "\xCE\x86\xCE\x99"},
    {0x1FB6, "\xCE\x91\xCD\x82"}, {0x1FB7, "\xCE\x91\xCD\x82\xCE\x99"}, {0x1FBC, "\xCE\x91\xCE\x99"},
    {0x1FC2, "\xE1\xBF\x8A\xCE\x99"}, {0x1FC3, "\xCE\x97\xCE\x99"}, {0x1FC4, "\xCE\x89\xCE\x99"},
    {0x1FC6, "\xCE\x97\xCD\x82"}, {0x1FC7, "\xCE\x97\xCD\x82\xCE\x99"}, {0x1FCC, "\xCE\x97\xCE\x99"},
    {0x1FD2, "\xCE\x99\xCC\x88\xCC\x80"}, {0x1FD3, "\xCE\x99\xCC\x88\xCC\x81"}, {0x1FD6, "\xCE\x99\xCD\x82"},
    {0x1FD7, "\xCE\x99\xCC\x88\xCD\x82"}, {0x1FE2, "\xCE\xA5\xCC\x88\xCC\x80"},
    {0x1FE3, "\xCE\xA5\xCC\x88\xCC\x81"}, {0x1FE4, "\xCE\xA1\xCC\x93"}, {0x1FE6, "\xCE\xA5\xCD\x82"},
    {0x1FE7, "\xCE\xA5\xCC\x88\xCD\x82"}, {0x1FF2, "\xE1\xBF\xBA\xCE\x99"}, {0x1FF3, "\xCE\xA9\xCE\x99"},
    {0x1FF4, "\xCE\x8F\xCE\x99"}, {0x1FF6, "\xCE\xA9\xCD\x82"}, {0x1FF7, "\xCE\xA9\xCD\x82\xCE\x99"},
    {0x1FFC, "\xCE\xA9\xCE\x99"}, {0xFB00, "\x46\x46"}, {0xFB01, "\x46\x49"}, {0xFB02, "\x46\x4C"},
    {0xFB03, "\x46\x46\x49"}, {0xFB04, "\x46\x46\x4C"}, {0xFB05, "\x53\x54"}, {0xFB06, "\x53\x54"},
    {0xFB13, "\xD5\x84\xD5\x86"}, {0xFB14, "\xD5\x84\xD4\xB5"}, {0xFB15, "\xD5\x84\xD4\xBB"},
    {0xFB16, "\xD5\x8E\xD5\x86"}, {0xFB17, "\xD5\x84\xD4\xBD"},
};
constexpr Expansion kTitleExpansions[] = {
    {0x00DF, "\x53\x73"}, {0x0149, "\xCA\xBC\x4E"}, {0x01F0, "\x4A\xCC\x8C"},
    {0x0390, "\xCE\x99\xCC\x88\xCC\x81"}, {0x03B0, "\xCE\xA5\xCC\x88\xCC\x81"}, {0x0587, "\xD4\xB5\xD6\x82"},
    {0x1E96, "\x48\xCC\xB1"}, {0x1E97, "\x54\xCC\x88"}, {0x1E98, "\x57\xCC\x8A"}, {0x1E99, "\x59\xCC\x8A"},
    {0x1E9A, "\x41\xCA\xBE"}, {0x1F50, "\xCE\xA5\xCC\x93"}, {0x1F52, "\xCE\xA5\xCC\x93\xCC\x80"},
    {0x1F54, "\xCE\xA5\xCC\x93\xCC\x81"}, {0x1F56, "\xCE\xA5\xCC\x93\xCD\x82"},
    {0x1FB2, "\xE1\xBE\xBA\xCD\x85"}, {0x1FB4, "\xCE\x86\xCD\x85"}, {0x1FB6, "\xCE\x91\xCD\x82"},
    {0x1FB7, "\xCE\x91\xCD\x82\xCD\x85"}, {0x1FC2, "\xE1\xBF\x8A\xCD\x85"}, {0x1FC4, "\xCE\x89\xCD\x85"},
    {0x1FC6, "\xCE\x97\xCD\x82"}, {0x1FC7, "\xCE\x97\xCD\x82\xCD\x85"}, {0x1FD2, "\xCE\x99\xCC\x88\xCC\x80"},
    {0x1FD3, "\xCE\x99\xCC\x88\xCC\x81"}, {0x1FD6, "\xCE\x99\xCD\x82"}, {0x1FD7, "\xCE\x99\xCC\x88\xCD\x82"},
    {0x1FE2, "\xCE\xA5\xCC\x88\xCC\x80"}, {0x1FE3, "\xCE\xA5\xCC\x88\xCC\x81"}, {0x1FE4, "\xCE\xA1\xCC\x93"},
    {0x1FE6, "\xCE\xA5\xCD\x82"}, {0x1FE7, "\xCE\xA5\xCC\x88\xCD\x82"}, {0x1FF2, "\xE1\xBF\xBA\xCD\x85"},
    {0x1FF4, "\xCE\x8F\xCD\x85"}, {0x1FF6, "\xCE\xA9\xCD\x82"}, {0x1FF7, "\xCE\xA9\xCD\x82\xCD\x85"},
    {0xFB00, "\x46\x66"}, {0xFB01, "\x46\x69"}, {0xFB02, "\x46\x6C"}, {0xFB03, "\x46\x66\x69"},
    {0xFB04, "\x46\x66\x6C"}, {0xFB05, "\x53\x74"}, {0xFB06, "\x53\x74"}, {0xFB13, "\xD5\x84\xD5\xB6"},
    {0xFB14, "\xD5\x84\xD5\xA5"}, {0xFB15, "\xD5\x84\xD5\xAB"}, {0xFB16, "\xD5\x8E\xD5\xB6"},
    {0xFB17, "\xD5\x84\xD5\xAD"},
};

// Other_Lowercase / Other_Uppercase: lowercase and uppercase characters outside categories Ll and Lu
// (Python's islower()/isupper() and the Cased property include them).
constexpr std::pair<char32_t, char32_t> kOtherLower[] = {
    {0xAA, 0xAA}, {0xBA, 0xBA}, {0x2B0, 0x2B8}, {0x2C0, 0x2C1}, {0x2E0, 0x2E4}, {0x345, 0x345},
    {0x37A, 0x37A}, {0x1D2C, 0x1D6A}, {0x1D78, 0x1D78}, {0x1D9B, 0x1DBF}, {0x2071, 0x2071},
    {0x207F, 0x207F}, {0x2090, 0x209C}, {0x2170, 0x217F}, {0x24D0, 0x24E9}, {0x2C7C, 0x2C7D},
    {0xA69C, 0xA69D}, {0xA770, 0xA770}, {0xA7F8, 0xA7F9}, {0xAB5C, 0xAB5F}, {0x10780, 0x10780},
    {0x10783, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA}};
constexpr std::pair<char32_t, char32_t> kOtherUpper[] = {
    {0x2160, 0x216F}, {0x24B6, 0x24CF}, {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189}};

template <size_t N>
bool in_ranges(const std::pair<char32_t, char32_t> (&ranges)[N], char32_t c) {
  return std::any_of(std::begin(ranges), std::end(ranges), [c](const auto& r) { return c >= r.first && c <= r.second; });
}

template <size_t N>
const char* find_expansion(const Expansion (&table)[N], char32_t c) {
  const auto* it = std::lower_bound(std::begin(table), std::end(table), c,
                                    [](const Expansion& e, char32_t v) { return e.cp < v; });
  return it != std::end(table) && it->cp == c ? it->utf8 : nullptr;
}

utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

// Case_Ignorable (DerivedCoreProperties): Mn, Me, Cf, Lm, Sk, plus Word_Break MidLetter, MidNumLet
// and Single_Quote characters. Only the final-sigma rule of lower() needs it.
bool case_ignorable(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x5F4: case 0x2018: case 0x2019:
    case 0x2024: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
}

void append_lower(std::string& out, const std::u32string& s, size_t i) {
  const char32_t c = s[i];
  if (c == 0x130) {  // İ lowercases to i + combining dot above
    out += "i\xCC\x87";
    return;
  }
  if (c == 0x3A3) {
    // As CPython's handle_capital_sigma: Σ becomes final ς after a cased letter (skipping
    // case-ignorables) when no cased letter follows.
    size_t j = i;
    while (j > 0 && case_ignorable(s[j - 1])) --j;
    bool final_sigma = j > 0 && py_iscased(s[j - 1]);
    if (final_sigma) {
      size_t k = i + 1;
      while (k < s.size() && case_ignorable(s[k])) ++k;
      final_sigma = k == s.size() || !py_iscased(s[k]);
    }
    append_utf8(out, final_sigma ? 0x3C2 : 0x3C3);
    return;
  }
  append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
}

void append_upper(std::string& out, char32_t c) {
  if (const char* e = find_expansion(kUpperExpansions, c)) {
    out += e;
  } else {
    append_utf8(out, static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))));
  }
}

void append_title(std::string& out, char32_t c) {
  if (const char* e = find_expansion(kTitleExpansions, c)) {
    out += e;
  } else {
    append_utf8(out, static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c))));
  }
}

}  // namespace

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    i += detail::decode_utf8(s, i, cp);
    out += cp;
  }
  return out;
}

std::string encode_utf8(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) append_utf8(out, c);
  return out;
}

size_t code_point_count(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

bool py_isspace(char32_t c) {
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x1C: case 0x1D: case 0x1E: case 0x1F:
    case 0x20: case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool py_isprintable(char32_t c) {
  if (c == 0x20) return true;
  switch (category(c)) {
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
      return false;
    default:
      return true;
  }
}

bool py_islower(char32_t c) { return category(c) == UTF8PROC_CATEGORY_LL || in_ranges(kOtherLower, c); }
bool py_isupper(char32_t c) { return category(c) == UTF8PROC_CATEGORY_LU || in_ranges(kOtherUpper, c); }
bool py_iscased(char32_t c) { return py_islower(c) || py_isupper(c) || category(c) == UTF8PROC_CATEGORY_LT; }

bool py_isalpha(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool py_isdecimal(char32_t c) { return category(c) == UTF8PROC_CATEGORY_ND; }

std::string py_upper(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : decode_utf8(s)) append_upper(out, c);
  return out;
}

std::string py_lower(std::string_view s) {
  const std::u32string cps = decode_utf8(s);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < cps.size(); ++i) append_lower(out, cps, i);
  return out;
}

std::string py_title(std::string_view s) {
  // CPython do_title: a character after a cased one is lowercased, any other is titlecased.
  const std::u32string cps = decode_utf8(s);
  std::string out;
  out.reserve(s.size());
  bool previous_is_cased = false;
  for (size_t i = 0; i < cps.size(); ++i) {
    if (previous_is_cased) {
      append_lower(out, cps, i);
    } else {
      append_title(out, cps[i]);
    }
    previous_is_cased = py_iscased(cps[i]);
  }
  return out;
}

std::string py_capitalize(std::string_view s) {
  const std::u32string cps = decode_utf8(s);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < cps.size(); ++i) {
    if (i == 0) {
      append_title(out, cps[0]);
    } else {
      append_lower(out, cps, i);
    }
  }
  return out;
}

}  // namespace moerun::chat
