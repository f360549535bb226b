#pragma once
// What a loaded moerun::Tokenizer holds: the tokenizer.json pipeline (added tokens -> normalizer ->
// pre-tokenizer -> model -> post-processor; decoder) or a SentencePiece model in the same frame,
// plus the special-token facts from tokenizer_config.json / generation_config.json.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/json_util.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/decoders.h"
#include "tokenizer/model.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/post_processors.h"
#include "tokenizer/pre_tokenizers.h"

namespace moerun::tok {

class SentencePieceModel;

struct TokenizerImpl {
  std::string source;  // the file it was loaded from, for messages

  AddedVocabulary added;
  std::optional<Normalizer> normalizer;
  std::optional<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  const SentencePieceModel* sentencepiece = nullptr;  // = model when it is one
  PostProcessor post_processor;
  Decoder decoder = Decoder::from_json(nullptr, "", "");

  // Used when the post-processor adds nothing (tokenizer_config.json add_bos_token / add_eos_token).
  bool add_bos = false;
  bool add_eos = false;

  std::optional<int32_t> bos_id, pad_id;
  std::vector<int32_t> eos_ids;
  std::string bos_token, eos_token;

  // `plain_spans`: EncodeOptions::plain_spans.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens, bool parse_special,
                              std::span<const TextSpan> plain_spans = {}) const;
  // The token strings of `ids` that decode() feeds to the decoder: unknown ids and, when skipping,
  // special ids are left out.
  std::vector<std::string> decode_tokens(std::span<const int32_t> ids, bool skip_special_tokens) const;
  // nullptr when the id has no token.
  const std::string* token_of(int32_t id) const;
  bool is_special(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int64_t vocab_size() const;
};

// Builders (tokenizer_json.cpp, tokenizer.cpp).
std::unique_ptr<TokenizerImpl> tokenizer_from_json_text(const std::string& text, const std::string& file);
std::unique_ptr<TokenizerImpl> tokenizer_from_sentencepiece(const std::string& path);
// One added token's fields ({content, special, single_word, lstrip, rstrip, normalized}) as both
// tokenizer.json's added_tokens and tokenizer_config.json's added_tokens_decoder write them; `f`
// names the entry in errors.
AddedToken read_added_token(const io::Json& t, int32_t id, const std::string& file, const std::string& f);

}  // namespace moerun::tok
