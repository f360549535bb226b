#pragma once
// Added tokens (tokenizer.json "added_tokens", or tokenizer_config.json "added_tokens_decoder" for a
// SentencePiece model): found in the text before the model runs, as tokenizers' AddedVocabulary does.
// Tokens with normalized=false match the raw text; the rest of the text is normalized and then the
// tokens with normalized=true match the normalized text. Matching is leftmost-longest.
//
// Plain ranges (EncodeOptions::plain_spans) are bytes of the input where no added token may be
// recognised, special or not (DeepSeek-V3's role markers <｜User｜> are non-special added tokens).
// A match that overlaps one is left in the text for the model, except that the longest match ending
// before the plain bytes is taken instead when there is one, so text after a template's own token
// can never stop that token from matching. In the normalized pass the ranges are mapped through
// the normalizer where it keeps them apart (plain_ranges_after_normalizing), else the whole stretch
// counts as plain: never an added token that might come from plain bytes.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "moerun/tokenizer.h"

namespace moerun::tok {

class Normalizer;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;  // only match when not inside a word
  bool lstrip = false;       // also swallow whitespace on the left
  bool rstrip = false;       // and on the right
  bool normalized = true;    // match against the normalized text
  // The token's text when decoding: for a normalized token, its content normalized (tokenizers
  // reports and decodes "Yes" under a Lowercase normalizer as "yes"). Set by AddedVocabulary.
  std::string surface;
};

// A stretch of text after added-token extraction: either one added token or text for the model.
struct Segment {
  std::string text;    // normalized text (when token < 0)
  int32_t token = -1;  // the added token's id, or -1
  bool at_start = false;  // text begins at offset 0 of the input
  size_t offset = 0;      // where it begins in the text searched (the raw input, for the first pass)
};

// Where special tokens must not be recognised in a text: sorted, disjoint byte ranges of it, or all.
struct PlainRanges {
  std::span<const TextSpan> spans;
  bool all = false;
  bool overlaps(size_t b, size_t e) const;
  size_t next_plain(size_t pos) const;  // the first plain byte at or after pos (SIZE_MAX: none)
};

// Sorted, disjoint, non-empty copies of `spans`, checked against a text of `size` bytes (Error past it).
std::vector<TextSpan> sorted_plain_spans(std::span<const TextSpan> spans, size_t size);

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // `normalizer` (may be null) normalizes the contents of normalized tokens, as tokenizers does.
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Splits `text` into added tokens and normalized text. With parse_special=false, special tokens are
  // not recognised (tokenizers' encode_special_tokens) and their text goes to the model; `plain`
  // (from sorted_plain_spans) says the same for every added token that overlaps its ranges.
  std::vector<Segment> split(std::string_view text, const Normalizer* normalizer, bool parse_special,
                             std::span<const TextSpan> plain = {}) const;

  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool empty() const { return tokens_.empty(); }

 private:
  // A byte trie for leftmost-longest search; nodes are indices, edges live in one hash map.
  class Trie {
   public:
    void insert(std::string_view key, int32_t token_index);
    bool empty() const { return nodes_ == 1; }
    // The longest key starting at text[pos]: (token index, length), or nullopt.
    std::optional<std::pair<int32_t, size_t>> longest_at(std::string_view text, size_t pos) const;

   private:
    std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child
    std::vector<int32_t> terminal_{-1};             // node -> token index or -1
    bool first_byte_[256] = {};
    int32_t nodes_ = 1;
  };
  // One pass of tokenizers' find_matches over `text` with `trie`: appends segments to `out`.
  void find_matches(std::string_view text, bool at_start, const Trie& trie, bool parse_special,
                    const PlainRanges& plain, std::vector<Segment>& out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Trie raw_, normalized_;
};

// `plain` (sorted local ranges of `raw`) mapped into normalized(raw) == `normalized`: a range boundary
// x goes to |normalize(raw[0, x))| where that is a prefix of `normalized` and to |normalized| -
// |normalize(raw[x, end))| where that is a suffix, a range taking the widest of its candidates;
// with no candidate, or more than a few ranges, everything is plain.
struct MappedPlain {
  std::vector<TextSpan> spans;
  bool all = false;
};
MappedPlain plain_ranges_after_normalizing(std::string_view raw, const std::string& normalized,
                                           std::span<const TextSpan> plain, const Normalizer& normalizer);

}  // namespace moerun::tok
