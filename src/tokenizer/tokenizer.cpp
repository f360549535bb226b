// moerun::Tokenizer: loading (model directory, tokenizer.json, tokenizer.model) and the encode/decode
// pipeline around the components.

#include "moerun/tokenizer.h"

#include <algorithm>

#include "io/json_util.h"
#include "moerun/error.h"
#include "tokenizer/json_read.h"
#include "tokenizer/sentencepiece.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun {

using detail::cat;
namespace fs = std::filesystem;

namespace tok {

// --- the pipeline -------------------------------------------------------------------------------

std::vector<int32_t> TokenizerImpl::encode(std::string_view text, bool add_special_tokens, bool parse_special,
                                           std::span<const TextSpan> plain_spans) const {
  if (const auto bad = find_invalid_utf8(text)) {
    static constexpr char kHex[] = "0123456789abcdef";
    const unsigned char b = static_cast<unsigned char>(text[*bad]);
    throw Error("tokenizer input", cat("text is not valid UTF-8: byte 0x", kHex[b >> 4], kHex[b & 15], " at offset ",
                                       *bad, " does not start a well-formed character"));
  }
  const std::vector<TextSpan> plain = sorted_plain_spans(plain_spans, text.size());
  std::vector<int32_t> ids;
  std::vector<Piece> pieces;
  for (Segment& seg : added.split(text, normalizer ? &*normalizer : nullptr, parse_special, plain)) {
    if (seg.token >= 0) {
      ids.push_back(seg.token);
    } else if (!pre_tokenizer) {
      model->tokenize(seg.text, ids);
    } else {
      pieces.clear();
      pieces.push_back({std::move(seg.text), seg.at_start});
      pre_tokenizer->pre_tokenize(pieces);
      for (const Piece& p : pieces) model->tokenize(p.text, ids);
    }
  }
  if (!add_special_tokens) return ids;
  if (post_processor.adds_tokens()) return post_processor.apply(ids);
  if (add_bos && bos_id) ids.insert(ids.begin(), *bos_id);
  if (add_eos && !eos_ids.empty()) ids.push_back(eos_ids.front());
  return ids;
}

const std::string* TokenizerImpl::token_of(int32_t id) const {
  if (const AddedToken* a = added.by_id(id)) return &a->surface;
  return model->id_to_token(id);
}

bool TokenizerImpl::is_special(int32_t id) const {
  if (const AddedToken* a = added.by_id(id)) return a->special;
  return sentencepiece && sentencepiece->is_control_or_unknown(id);
}

std::vector<std::string> TokenizerImpl::decode_tokens(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string* t = token_of(id);
    if (!t || (skip_special_tokens && is_special(id))) continue;
    tokens.push_back(*t);
  }
  return tokens;
}

std::optional<int32_t> TokenizerImpl::token_to_id(std::string_view token) const {
  if (const AddedToken* a = added.by_content(token)) return a->id;
  return model->token_to_id(token);
}

int64_t TokenizerImpl::vocab_size() const {
  int64_t n = model->vocab_size();
  for (const AddedToken& a : added.tokens()) n = std::max<int64_t>(n, int64_t{a.id} + 1);
  return n;
}

std::unique_ptr<TokenizerImpl> tokenizer_from_sentencepiece(const std::string& path) {
  auto impl = std::make_unique<TokenizerImpl>();
  impl->source = path;
  auto sp = SentencePieceModel::load(path);
  impl->sentencepiece = sp.get();
  impl->decoder = Decoder::sentencepiece(sp->decode_spec());
  impl->bos_id = sp->bos_id();
  impl->pad_id = sp->pad_id();
  if (impl->bos_id) impl->bos_token = *sp->id_to_token(*impl->bos_id);
  if (const auto e = sp->eos_id()) {
    impl->eos_ids.push_back(*e);
    impl->eos_token = *sp->id_to_token(*e);
  }
  impl->model = std::move(sp);
  return impl;
}

// --- tokenizer_config.json and generation_config.json ------------------------------------------

namespace {

// A special-token field: "text", {"content": "text", ...} (AddedToken form) or null.
std::optional<std::string> token_field(const io::Json& cfg, const char* key, const std::string& file) {
  const io::Json* v = json::find(cfg, key);
  if (!v) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object()) return json::string_at(*v, "content", file, key);
  json::fail(file, key, cat("expected a token string or {\"content\": ...}, found ", io::brief(*v)));
}

std::vector<AddedToken> config_added_tokens(const io::Json& cfg, const std::string& file) {
  std::vector<AddedToken> out;
  const io::Json* dec = json::find(cfg, "added_tokens_decoder");
  if (!dec) return out;
  json::object(*dec, file, "added_tokens_decoder");
  for (const auto& [key, t] : dec->items()) {
    const std::string f = cat("added_tokens_decoder.", key);
    int64_t id = -1;
    try {
      size_t used = 0;
      id = std::stoll(key, &used);
      if (used != key.size()) id = -1;
    } catch (const std::exception&) {
      id = -1;
    }
    if (id < 0 || id > INT32_MAX) json::fail(file, f, "expected a non-negative integer id as the key");
    json::object(t, file, f);
    out.push_back(read_added_token(t, static_cast<int32_t>(id), file, f));
  }
  std::sort(out.begin(), out.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  return out;
}

void apply_tokenizer_config(TokenizerImpl& impl, const fs::path& path) {
  const std::string file = path.string();
  const io::Json cfg = io::parse_json_text(io::read_text_file(path), file);
  const io::JsonFields f(cfg, file);

  // A tokenizer.model knows nothing of added tokens; transformers splits them out of the text
  // before SentencePiece runs. A tokenizer.json carries its own list.
  if (impl.sentencepiece) {
    impl.added = AddedVocabulary(config_added_tokens(cfg, file), nullptr);
  }

  if (const auto bos = token_field(cfg, "bos_token", file)) {
    impl.bos_token = *bos;
    impl.bos_id = impl.token_to_id(*bos);
  }
  if (const auto eos = token_field(cfg, "eos_token", file)) {
    impl.eos_token = *eos;
    impl.eos_ids.clear();
    if (const auto id = impl.token_to_id(*eos)) impl.eos_ids.push_back(*id);
  }
  if (const auto pad = token_field(cfg, "pad_token", file)) impl.pad_id = impl.token_to_id(*pad);

  impl.add_bos = f.boolean_or("add_bos_token", false);
  impl.add_eos = f.boolean_or("add_eos_token", false);
  if (!impl.post_processor.adds_tokens()) {
    if (impl.add_bos && !impl.bos_id)
      f.fail("add_bos_token", cat("is true but bos_token ", detail::quote(impl.bos_token), " is not in the vocabulary"));
    if (impl.add_eos && impl.eos_ids.empty())
      f.fail("add_eos_token", cat("is true but eos_token ", detail::quote(impl.eos_token), " is not in the vocabulary"));
  }
}

void apply_generation_config(TokenizerImpl& impl, const fs::path& path) {
  const std::string file = path.string();
  const io::Json cfg = io::parse_json_text(io::read_text_file(path), file);
  const io::JsonFields f(cfg, file);
  for (const int64_t id : f.i64_or_list("eos_token_id")) {
    if (id < 0 || id >= impl.vocab_size()) f.fail("eos_token_id", cat("id ", id, " is outside the vocabulary"));
    if (std::find(impl.eos_ids.begin(), impl.eos_ids.end(), id) == impl.eos_ids.end())
      impl.eos_ids.push_back(static_cast<int32_t>(id));
  }
  if (!impl.bos_id) {
    if (const auto id = f.opt_i64("bos_token_id"); id && *id >= 0 && *id < impl.vocab_size()) {
      impl.bos_id = static_cast<int32_t>(*id);
      if (const std::string* t = impl.token_of(impl.bos_id.value())) impl.bos_token = *t;
    }
  }
  if (impl.eos_token.empty() && !impl.eos_ids.empty())
    if (const std::string* t = impl.token_of(impl.eos_ids.front())) impl.eos_token = *t;
}

std::unique_ptr<TokenizerImpl> load_file(const fs::path& path) {
  if (path.extension() == ".model") return tokenizer_from_sentencepiece(path.string());
  return tokenizer_from_json_text(io::read_text_file(path), path.string());
}

}  // namespace
}  // namespace tok

// --- the public classes -------------------------------------------------------------------------

Tokenizer::Tokenizer(std::shared_ptr<const tok::TokenizerImpl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::load(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path json = path / "tokenizer.json", model = path / "tokenizer.model";
    std::unique_ptr<tok::TokenizerImpl> impl;
    if (!io::find_regular_file(json).empty()) {  // an Error when tokenizer.json is a FIFO or directory
      impl = tok::load_file(json);
    } else if (!io::find_regular_file(model).empty()) {
      impl = tok::load_file(model);
    } else {
      throw Error(path.string(), "no tokenizer.json or tokenizer.model in this directory");
    }
    if (const fs::path cfg = io::find_regular_file(path / "tokenizer_config.json"); !cfg.empty())
      tok::apply_tokenizer_config(*impl, cfg);
    if (const fs::path gen = io::find_regular_file(path / "generation_config.json"); !gen.empty())
      tok::apply_generation_config(*impl, gen);
    return Tokenizer(std::move(impl));
  }
  if (io::find_regular_file(path).empty()) throw Error(path.string(), "no such tokenizer file or model directory");
  return Tokenizer(tok::load_file(path));
}

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& name) {
  return Tokenizer(tok::tokenizer_from_json_text(json_text, name));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  return impl_->encode(text, options.add_special_tokens, options.parse_special, options.plain_spans);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  tok::DecodeState state = impl_->decoder.new_state();
  std::string text = impl_->decoder.run(impl_->decode_tokens(ids, skip_special_tokens), state, true);
  // Pieces of a malformed .model could hold invalid UTF-8; the promise of valid output holds anyway.
  if (tok::find_invalid_utf8(text)) text = tok::utf8_lossy(text);
  return text;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (const std::string* t = impl_->token_of(id)) return *t;
  throw Error(impl_->source, cat("id ", id, " has no token (vocabulary size ", impl_->vocab_size(), ")"));
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const { return impl_->token_to_id(token); }
int64_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }
bool Tokenizer::is_special(int32_t id) const { return impl_->is_special(id); }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos_id; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->eos_ids; }
std::optional<int32_t> Tokenizer::pad_id() const { return impl_->pad_id; }
const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }
const std::string& Tokenizer::source() const { return impl_->source; }

}  // namespace moerun
