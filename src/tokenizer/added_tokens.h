#pragma once
// Added tokens (tokenizer.json "added_tokens", or tokenizer_config.json "added_tokens_decoder" for a
// SentencePiece model): found in the text before the model runs, as tokenizers' AddedVocabulary does.
// Tokens with normalized=false match the raw text; the rest of the text is normalized and then the
// tokens with normalized=true match the normalized text. Matching is leftmost-longest.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

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
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // `normalizer` (may be null) normalizes the contents of normalized tokens, as tokenizers does.
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Splits `text` into added tokens and normalized text. With parse_special=false, special tokens are
  // not recognised (tokenizers' encode_special_tokens) and their text goes to the model.
  std::vector<Segment> split(std::string_view text, const Normalizer* normalizer, bool parse_special) const;

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
                    std::vector<Segment>& out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Trie raw_, normalized_;
};

}  // namespace moerun::tok
