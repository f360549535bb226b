#pragma once
// Post-processors of tokenizer.json ("post_processor"): TemplateProcessing, RobertaProcessing,
// BertProcessing, ByteLevel (offsets only: nothing to do for ids) and Sequence. Only the single-sequence
// template matters for encode(text).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/json_util.h"

namespace moerun::tok {

class PostProcessor {
 public:
  static PostProcessor from_json(const io::Json* j, const std::string& file, const std::string& field);

  // Whether a template adds tokens: when it does not, tokenizer_config.json's add_bos_token /
  // add_eos_token decide (see Tokenizer::load).
  bool adds_tokens() const { return !items_.empty(); }
  // Wraps `ids` in the template (add_special_tokens=true).
  std::vector<int32_t> apply(const std::vector<int32_t>& ids) const;
  // The special token the template puts first / last, if it starts / ends with one (BOS / EOS).
  std::optional<std::pair<int32_t, std::string>> leading_special() const;
  std::optional<std::pair<int32_t, std::string>> trailing_special() const;

 private:
  // One template: the sequence (is_sequence) or a special token's ids.
  struct Item {
    bool is_sequence = false;
    std::vector<int32_t> ids;
    std::string token;  // the special token's text (for the first/last queries)
  };
  void add(const io::Json& j, const std::string& file, const std::string& field, int depth);
  std::vector<std::vector<Item>> items_;  // applied in order (Sequence of processors)
};

}  // namespace moerun::tok
