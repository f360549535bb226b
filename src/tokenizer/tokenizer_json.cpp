// tokenizer.json -> TokenizerImpl: each section is handed to its component's parser, which names the
// file and field in any error; unknown component types are errors, never silently skipped.

#include "moerun/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/json_read.h"
#include "tokenizer/tokenizer_impl.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

AddedToken read_added_token(const io::Json& t, int32_t id, const std::string& file, const std::string& f) {
  AddedToken a;
  a.id = id;
  a.content = json::string_at(t, "content", file, f);
  a.special = json::bool_or(t, "special", false, file, f);
  a.single_word = json::bool_or(t, "single_word", false, file, f);
  a.lstrip = json::bool_or(t, "lstrip", false, file, f);
  a.rstrip = json::bool_or(t, "rstrip", false, file, f);
  a.normalized = json::bool_or(t, "normalized", !a.special, file, f);  // tokenizers' default
  return a;
}

namespace {

std::vector<AddedToken> parse_added_tokens(const io::Json& root, const std::string& file) {
  std::vector<AddedToken> out;
  const io::Json* list = json::find(root, "added_tokens");
  if (!list) return out;
  if (!list->is_array()) json::fail(file, "added_tokens", cat("expected a list, found ", io::brief(*list)));
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string f = json::index("added_tokens", i);
    const io::Json& t = json::object((*list)[i], file, f);
    const int64_t id = json::int_at(t, "id", file, f);
    if (id < 0 || id > INT32_MAX) json::fail(file, json::sub(f, "id"), cat("expected a non-negative id, found ", id));
    out.push_back(read_added_token(t, static_cast<int32_t>(id), file, f));
  }
  return out;
}

std::unique_ptr<Model> parse_model(const io::Json& root, const std::string& file) {
  const io::Json& m = json::object(json::require(root, "model", file, ""), file, "model");
  // tokenizers' model enum is untagged in old files: a model without "type" but with merges is BPE.
  std::string type = json::string_or(m, "type", "", file, "model");
  if (type.empty() && json::find(m, "merges")) type = "BPE";
  if (type == "BPE") return BpeModel::from_json(m, file, "model");
  if (type.empty()) json::fail(file, "model.type", "missing (and the model has no merges to identify it as BPE)");
  json::fail(file, "model.type", cat("unsupported model type '", type, "' (supported: BPE)"));
}

}  // namespace

std::unique_ptr<TokenizerImpl> tokenizer_from_json_text(const std::string& text, const std::string& file) {
  const io::Json root = io::parse_json_text(text, file);
  json::object(root, file, "");
  auto impl = std::make_unique<TokenizerImpl>();
  impl->source = file;
  impl->model = parse_model(root, file);
  if (const io::Json* n = json::find(root, "normalizer")) {
    Normalizer norm = Normalizer::from_json(*n, file, "normalizer");
    if (!norm.empty()) impl->normalizer = std::move(norm);
  }
  if (const io::Json* p = json::find(root, "pre_tokenizer")) impl->pre_tokenizer = PreTokenizer::from_json(*p, file, "pre_tokenizer");
  impl->post_processor = PostProcessor::from_json(json::find(root, "post_processor"), file, "post_processor");
  impl->decoder = Decoder::from_json(json::find(root, "decoder"), file, "decoder");
  impl->added = AddedVocabulary(parse_added_tokens(root, file), impl->normalizer ? &*impl->normalizer : nullptr);
  // Without a tokenizer_config.json, the template's first and last special tokens are BOS and EOS.
  if (const auto b = impl->post_processor.leading_special()) {
    impl->bos_id = b->first;
    impl->bos_token = b->second;
  }
  if (const auto e = impl->post_processor.trailing_special()) {
    impl->eos_ids.push_back(e->first);
    impl->eos_token = e->second;
  }
  return impl;
}

}  // namespace moerun::tok
