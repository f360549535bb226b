#pragma once
// A compiled Oniguruma regex: the engine (and dialect: \p{L}, (?!\S), (?i:...)) that Hugging Face
// `tokenizers` uses for every pattern in tokenizer.json, so matches agree with it byte for byte.

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moerun::tok {

class Regex {
 public:
  // Compiles `pattern`; a bad pattern throws Error naming `where` (file and field) and Oniguruma's reason.
  Regex(std::string_view pattern, const std::string& where);
  // A pattern that matches `literal` exactly (what tokenizers builds from a {"String": ...} pattern).
  static Regex literal(std::string_view literal, const std::string& where);
  ~Regex();
  Regex(Regex&& other) noexcept;
  Regex& operator=(Regex&& other) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches [start, end) in byte offsets, iterated like the Rust `onig` crate's
  // find_iter (which tokenizers uses): an empty match right after the previous match is skipped by
  // advancing one character. Searching is thread-safe on a shared Regex.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  // find_all as the covering list tokenizers' Pattern::find_matches returns: every byte of `text` in
  // exactly one piece, each flagged match or not. An empty text gives one empty non-match.
  struct Piece {
    size_t begin, end;
    bool match;
  };
  std::vector<Piece> split_matches(std::string_view text) const;

  // Every match replaced by `content` (NormalizedString::replace and the Replace decoder).
  std::string replace_all(std::string_view text, std::string_view content) const;
  // Whether the pattern is one literal character, so it cannot match across a join of two strings.
  bool is_single_char_literal() const { return single_char_literal_; }

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  void compile(const std::string& where);
  void* re_ = nullptr;  // OnigRegex; kept opaque so users of this header need not include oniguruma.h
  std::string pattern_;
  bool single_char_literal_ = false;
};

}  // namespace moerun::tok
