#pragma once
// A SentencePiece tokenizer.model (BPE or unigram) through libsentencepiece: encoding is the
// library's; decoding follows its rules in our Decoder so that streaming and whole decodes agree
// (see decoders.h).

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/decoders.h"
#include "tokenizer/model.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moerun::tok {

class SentencePieceModel final : public Model {
 public:
  static std::unique_ptr<SentencePieceModel> load(const std::filesystem::path& path);
  ~SentencePieceModel() override;

  void tokenize(std::string_view piece, std::vector<int32_t>& ids) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  const std::string* id_to_token(int32_t id) const override;
  int64_t vocab_size() const override;

  const SentencePieceDecodeSpec& decode_spec() const { return spec_; }
  // Control symbols (<s>, </s>, ...) and the unk id: the special tokens of a bare .model file.
  bool is_control_or_unknown(int32_t id) const;
  std::optional<int32_t> bos_id() const { return bos_; }
  std::optional<int32_t> eos_id() const { return eos_; }
  std::optional<int32_t> pad_id() const { return pad_; }

 private:
  SentencePieceModel();
  std::string file_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  SentencePieceDecodeSpec spec_;
  std::optional<int32_t> bos_, eos_, pad_;
};

}  // namespace moerun::tok
