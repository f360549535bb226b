#include "tokenizer/regex.h"

#include <memory>
#include <mutex>

#include <oniguruma.h>

#include "moerun/error.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

namespace {

// Oniguruma keeps its encoding tables in library-global state that must be set up once before the
// first compile; onig_new would do it lazily but not thread-safely.
void ensure_onig_initialized() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

std::string onig_message(int code, OnigErrorInfo* info) {
  OnigUChar buf[ONIG_MAX_ERROR_MESSAGE_LEN];
  const int n = info ? onig_error_code_to_str(buf, code, info) : onig_error_code_to_str(buf, code);
  return std::string(reinterpret_cast<const char*>(buf), n > 0 ? static_cast<size_t>(n) : 0);
}

struct RegionFree {
  void operator()(OnigRegion* r) const noexcept { onig_region_free(r, 1); }
};

}  // namespace

Regex::Regex(std::string_view pattern, const std::string& where) : pattern_(pattern) { compile(where); }

Regex Regex::literal(std::string_view literal, const std::string& where) {
  // Escape every ASCII punctuation character; everything else stands for itself in Oniguruma syntax.
  Regex r;
  for (const char c : literal) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x80 && is_punctuation(u)) r.pattern_ += '\\';
    r.pattern_ += c;
  }
  r.compile(where);
  r.single_char_literal_ = !literal.empty() && utf8_len(static_cast<unsigned char>(literal[0])) == literal.size();
  return r;
}

void Regex::compile(const std::string& where) {
  ensure_onig_initialized();
  if (find_invalid_utf8(pattern_)) throw Error(where, "regex pattern is not valid UTF-8");
  OnigRegex re = nullptr;
  OnigErrorInfo info{};
  const auto* p = reinterpret_cast<const OnigUChar*>(pattern_.data());
  const int rc = onig_new(&re, p, p + pattern_.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT,
                          &info);
  if (rc != ONIG_NORMAL)
    throw Error(where, cat("cannot compile regex ", detail::quote(pattern_), ": ", onig_message(rc, &info)));
  re_ = re;
}

Regex::~Regex() {
  if (re_) onig_free(static_cast<OnigRegex>(re_));
}

Regex::Regex(Regex&& other) noexcept : re_(std::exchange(other.re_, nullptr)), pattern_(std::move(other.pattern_)) {}

Regex& Regex::operator=(Regex&& other) noexcept {
  if (this != &other) {
    if (re_) onig_free(static_cast<OnigRegex>(re_));
    re_ = std::exchange(other.re_, nullptr);
    pattern_ = std::move(other.pattern_);
  }
  return *this;
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  const std::unique_ptr<OnigRegion, RegionFree> region(onig_region_new());
  const auto* base = reinterpret_cast<const OnigUChar*>(text.data());
  const OnigUChar* end = base + text.size();
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= text.size()) {
    onig_region_clear(region.get());
    const int r = onig_search(static_cast<OnigRegex>(re_), base, end, base + last_end, end, region.get(),
                              ONIG_OPTION_NONE);
    if (r == ONIG_MISMATCH) break;
    if (r < 0) throw Error("regex", cat("search with ", detail::quote(pattern_), " failed: ", onig_message(r, nullptr)));
    const size_t s = static_cast<size_t>(region->beg[0]), e = static_cast<size_t>(region->end[0]);
    if (s == e && have_last && last_match_end == e) {
      // An empty match where the previous one ended: step over one character and search again.
      if (last_end >= text.size()) break;
      last_end += utf8_len(static_cast<unsigned char>(text[last_end]));
      continue;
    }
    last_end = e;
    last_match_end = e;
    have_last = true;
    out.emplace_back(s, e);
    if (s == e && e >= text.size()) break;  // the crate stops once last_end passes the end
  }
  return out;
}

std::vector<Regex::Piece> Regex::split_matches(std::string_view text) const {
  std::vector<Piece> out;
  if (text.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  size_t prev = 0;
  for (const auto& [s, e] : find_all(text)) {
    if (prev != s) out.push_back({prev, s, false});
    out.push_back({s, e, true});
    prev = e;
  }
  if (prev != text.size()) out.push_back({prev, text.size(), false});
  return out;
}

}  // namespace moerun::tok

namespace moerun::tok {

std::string Regex::replace_all(std::string_view text, std::string_view content) const {
  std::string out;
  out.reserve(text.size());
  for (const Piece& p : split_matches(text)) {
    if (p.match) {
      out += content;
    } else {
      out.append(text.substr(p.begin, p.end - p.begin));
    }
  }
  return out;
}

}  // namespace moerun::tok
