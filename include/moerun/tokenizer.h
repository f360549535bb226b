#pragma once
// moerun::Tokenizer: text to token ids and back, exact to the last id.
//
// Two kinds of file:
//  - tokenizer.json (Hugging Face `tokenizers` format): added tokens, normalizer, pre-tokenizer, BPE
//    model, post-processor and decoder, each reproducing tokenizers' behaviour (regexes run on
//    Oniguruma, the engine tokenizers uses);
//  - tokenizer.model (SentencePiece, BPE or unigram): encoded by libsentencepiece.
//
// Special tokens (BOS/EOS policy). encode(add_special_tokens=true) applies the tokenizer.json
// post-processor template (e.g. Mistral's "<s> $A"). When the post-processor adds nothing (DeepSeek-V3's
// is ByteLevel) or the file is a tokenizer.model, add_bos_token / add_eos_token from
// tokenizer_config.json decide, as transformers 4.x's LlamaTokenizerFast does: for DeepSeek-V3 that
// prepends <｜begin▁of▁sentence｜> (id 0). (transformers 5 loads that directory as a plain
// TokenizersBackend and adds no BOS; DeepSeek's chat template writes the BOS itself, so chat prompts
// are encoded with add_special_tokens=false either way.) Loading a tokenizer.json or tokenizer.model
// file directly reads no tokenizer_config.json: the file alone decides, as tokenizers'
// Tokenizer.from_file does.
//
// Invalid UTF-8 in encode()'s text is an Error naming the offset of the first bad byte; nothing is
// replaced silently. decode() and StreamDecoder always return valid UTF-8: bytes that do not form
// characters become U+FFFD exactly where tokenizers puts them.
//
// A Tokenizer is cheap to copy (copies share the loaded tables) and every const member is safe to call
// from several threads at once. The BPE word cache inside is shared and guarded by try-locks, so
// threads never wait on it (a busy cache is simply skipped; results do not depend on it).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moerun {

namespace tok {
struct TokenizerImpl;
struct DecodeState;
}  // namespace tok

// Bytes [begin, end) of a text.
struct TextSpan {
  size_t begin = 0, end = 0;
  bool operator==(const TextSpan&) const = default;
};

struct EncodeOptions {
  // Apply the post-processor template (BOS/EOS), or tokenizer_config.json's add_bos_token /
  // add_eos_token where the post-processor adds nothing.
  bool add_special_tokens = true;
  // Recognise special tokens written in the text ("<|im_start|>" -> its id). False encodes their
  // text like any other text (tokenizers' encode_special_tokens); non-special added tokens still match.
  bool parse_special = true;
  // Parts of the text that must not produce added tokens, such as a chat prompt's message content
  // (ChatTemplate::apply_tracked): an added token, special or not (DeepSeek-V3's role markers
  // <｜User｜> are non-special), whose text overlaps one of these byte ranges is encoded as plain text
  // by the model (though a shorter token that ends before the range still matches), and everything
  // else exactly as without them, so a prompt whose content holds no added-token text gets the very
  // same ids. (The text is not cut at the ranges: that would change the merges.) Ranges may come in
  // any order and overlap; one reaching past the end of the text is an Error.
  std::span<const TextSpan> plain_spans = {};
};

class Tokenizer {
 public:
  // `path` is a model directory (tokenizer.json preferred, else tokenizer.model; plus
  // tokenizer_config.json for bos/eos/pad tokens and add_bos_token/add_eos_token, and
  // generation_config.json, whose eos_token_id may be an int or a list), or a tokenizer.json or
  // tokenizer.model file.
  static Tokenizer load(const std::filesystem::path& path);
  // A tokenizer.json given as text; `name` stands for the file in error messages.
  static Tokenizer from_json(const std::string& json_text, const std::string& name = "tokenizer.json");

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Ids without a token (e.g. past the tokenizer's vocabulary, in a model's padded embedding) are
  // skipped, as tokenizers does.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::string id_to_token(int32_t id) const;  // Error when the id has no token
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int64_t vocab_size() const;  // one past the largest id, added tokens included
  bool is_special(int32_t id) const;

  std::optional<int32_t> bos_id() const;
  const std::vector<int32_t>& eos_ids() const;  // every id that ends generation
  std::optional<int32_t> pad_id() const;
  const std::string& bos_token() const;  // "" when there is none
  const std::string& eos_token() const;
  const std::string& source() const;  // the file the tokenizer was read from

 private:
  friend class StreamDecoder;
  explicit Tokenizer(std::shared_ptr<const tok::TokenizerImpl> impl);
  std::shared_ptr<const tok::TokenizerImpl> impl_;
};

// Turns ids into text one id at a time, for generation. push() returns only complete UTF-8 (a
// character whose bytes come in several tokens is returned once its last byte arrives; a run of
// byte-fallback tokens once the run ends, since a later byte can turn it into U+FFFDs) and never
// invalid UTF-8; the pieces returned by push() and flush() concatenate to decode(ids) exactly.
// (A decoder whose Replace pattern could span tokens after they are fused -- no released tokenizer
// has one -- cannot be streamed exactly: push() then returns nothing and flush() everything.)
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  ~StreamDecoder();
  StreamDecoder(StreamDecoder&&) noexcept;
  StreamDecoder& operator=(StreamDecoder&&) noexcept;

  std::string push(int32_t id);
  // Ends the sequence: returns what was held back (an unfinished character becomes U+FFFD, as in
  // decode) and starts a new, empty sequence.
  std::string flush();

 private:
  std::shared_ptr<const tok::TokenizerImpl> impl_;
  bool skip_special_tokens_;
  std::unique_ptr<tok::DecodeState> state_;
  std::vector<int32_t> pending_;  // ids held until flush() when the decoder cannot stream exactly
};

}  // namespace moerun
