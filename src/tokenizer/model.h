#pragma once
// The model stage of a tokenizer: one pre-tokenized piece of text in, token ids out. Implemented by
// BpeModel (tokenizer.json "model": {"type": "BPE"}) and SentencePieceModel (tokenizer.model).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moerun::tok {

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of `piece` to `ids`. Thread-safe.
  virtual void tokenize(std::string_view piece, std::vector<int32_t>& ids) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual const std::string* id_to_token(int32_t id) const = 0;  // nullptr when the id has no token
  virtual int64_t vocab_size() const = 0;                          // one past the largest id
};

}  // namespace moerun::tok
