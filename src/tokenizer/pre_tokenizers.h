#pragma once
// Pre-tokenizers of tokenizer.json ("pre_tokenizer": {...}): ByteLevel, Split, Digits, Metaspace,
// Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer, CharDelimiterSplit and Sequence
// (flattened). Each step turns every piece into zero or more smaller pieces, as tokenizers'
// PreTokenizedString::split does; empty pieces are dropped.

#include <memory>
#include <string>
#include <vector>

#include "io/json_util.h"
#include "tokenizer/regex.h"

namespace moerun::tok {

// A piece of text on its way to the model.
struct Piece {
  std::string text;
  // Whether the piece begins at offset 0 of the encoded text (tokenizers' offsets_original().0 == 0);
  // Metaspace's prepend_scheme "first" prepends only there.
  bool at_start = false;
};

// How a Split-like step treats the delimiters it finds (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

class PreTokenizer {
 public:
  static PreTokenizer from_json(const io::Json& j, const std::string& file, const std::string& field);

  // Replaces `pieces` by their pre-tokenized splits, in order.
  void pre_tokenize(std::vector<Piece>& pieces) const;

 private:
  enum class Kind { byte_level, split, digits, metaspace, whitespace, whitespace_split, punctuation, bert, char_delimiter };
  enum class Prepend { always, first, never };
  struct Step {
    Kind kind;
    SplitBehavior behavior = SplitBehavior::isolated;
    bool invert = false;             // Split
    bool flag = false;               // ByteLevel: add_prefix_space; Digits: individual_digits; Metaspace: split
    bool use_regex = true;           // ByteLevel
    Prepend prepend = Prepend::always;  // Metaspace
    std::string text;                // Metaspace: replacement; CharDelimiterSplit: delimiter
    std::shared_ptr<const Regex> regex;  // Split pattern, ByteLevel's GPT-2 regex
  };
  void add(const io::Json& j, const std::string& file, const std::string& field, int depth);
  void apply(const Step& step, const Piece& in, std::vector<Piece>& out) const;
  std::vector<Step> steps_;
};

}  // namespace moerun::tok
