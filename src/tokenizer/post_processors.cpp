#include "tokenizer/post_processors.h"

#include "moerun/error.h"
#include "tokenizer/json_read.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

PostProcessor PostProcessor::from_json(const io::Json* j, const std::string& file, const std::string& field) {
  PostProcessor p;
  if (j) p.add(*j, file, field, 0);
  return p;
}

namespace {

// A ["token", id] pair of RobertaProcessing / BertProcessing.
std::pair<std::string, int32_t> token_pair(const io::Json& j, const char* key, const std::string& file,
                                           const std::string& field) {
  const io::Json& v = json::require(j, key, file, field);
  if (!v.is_array() || v.size() != 2 || !v[0].is_string() || !io::as_integer(v[1]))
    json::fail(file, json::sub(field, key), cat("expected [\"token\", id], found ", io::brief(v)));
  return {v[0].get<std::string>(), static_cast<int32_t>(*io::as_integer(v[1]))};
}

}  // namespace

void PostProcessor::add(const io::Json& j, const std::string& file, const std::string& field, int depth) {
  json::object(j, file, field);
  if (depth > json::kMaxNesting) json::fail(file, field, "Sequence nested too deeply");
  const std::string type = json::string_at(j, "type", file, field);
  if (type == "Sequence") {
    const io::Json& list = json::require(j, "processors", file, field);
    const std::string f = json::sub(field, "processors");
    if (!list.is_array()) json::fail(file, f, cat("expected a list, found ", io::brief(list)));
    for (size_t i = 0; i < list.size(); ++i) add(list[i], file, json::index(f, i), depth + 1);
  } else if (type == "ByteLevel") {
    // Adjusts offsets only.
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    const auto [cls, cls_id] = token_pair(j, "cls", file, field);
    const auto [sep, sep_id] = token_pair(j, "sep", file, field);
    items_.push_back({Item{false, {cls_id}, cls}, Item{true, {}, {}}, Item{false, {sep_id}, sep}});
  } else if (type == "TemplateProcessing") {
    const io::Json& specials = json::require(j, "special_tokens", file, field);
    const std::string sf = json::sub(field, "special_tokens");
    json::object(specials, file, sf);
    const io::Json& single = json::require(j, "single", file, field);
    const std::string tf = json::sub(field, "single");
    if (!single.is_array()) json::fail(file, tf, cat("expected a list of template pieces, found ", io::brief(single)));
    std::vector<Item> items;
    for (size_t i = 0; i < single.size(); ++i) {
      const std::string pf = json::index(tf, i);
      const io::Json& piece = json::object(single[i], file, pf);
      if (const io::Json* seq = json::find(piece, "Sequence")) {
        json::object(*seq, file, json::sub(pf, "Sequence"));
        const std::string id = json::string_at(*seq, "id", file, json::sub(pf, "Sequence"));
        if (id != "A") json::fail(file, json::sub(pf, "Sequence.id"), cat("a single template can only hold sequence A, found '", id, "'"));
        items.push_back(Item{true, {}, {}});
      } else if (const io::Json* sp = json::find(piece, "SpecialToken")) {
        json::object(*sp, file, json::sub(pf, "SpecialToken"));
        const std::string name = json::string_at(*sp, "id", file, json::sub(pf, "SpecialToken"));
        const io::Json* def = json::find(specials, name.c_str());
        if (!def) json::fail(file, sf, cat("special token ", detail::quote(name), " used by the template is not defined"));
        const std::string df = json::sub(sf, name.c_str());
        const io::Json& ids = json::require(json::object(*def, file, df), "ids", file, df);
        if (!ids.is_array()) json::fail(file, json::sub(df, "ids"), cat("expected a list of ids, found ", io::brief(ids)));
        Item item{false, {}, name};
        for (const io::Json& id : ids) {
          const std::optional<int64_t> v = io::as_integer(id);
          if (!v || *v < 0 || *v > INT32_MAX) json::fail(file, json::sub(df, "ids"), cat("expected ids, found ", io::brief(id)));
          item.ids.push_back(static_cast<int32_t>(*v));
        }
        items.push_back(std::move(item));
      } else {
        json::fail(file, pf, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    items_.push_back(std::move(items));
  } else {
    json::fail(file, json::sub(field, "type"),
               cat("unsupported post-processor type '", type,
                   "' (supported: TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence)"));
  }
}

std::vector<int32_t> PostProcessor::apply(const std::vector<int32_t>& ids) const {
  std::vector<int32_t> cur = ids;
  for (const std::vector<Item>& tmpl : items_) {
    std::vector<int32_t> out;
    out.reserve(cur.size() + 4);
    for (const Item& item : tmpl) {
      if (item.is_sequence) {
        out.insert(out.end(), cur.begin(), cur.end());
      } else {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
    }
    cur.swap(out);
  }
  return cur;
}

std::optional<std::pair<int32_t, std::string>> PostProcessor::leading_special() const {
  if (items_.empty() || items_.front().empty()) return std::nullopt;
  const Item& first = items_.front().front();
  if (first.is_sequence || first.ids.size() != 1) return std::nullopt;
  return std::make_pair(first.ids[0], first.token);
}

std::optional<std::pair<int32_t, std::string>> PostProcessor::trailing_special() const {
  if (items_.empty() || items_.front().empty()) return std::nullopt;
  const Item& last = items_.front().back();
  if (last.is_sequence || last.ids.size() != 1) return std::nullopt;
  return std::make_pair(last.ids[0], last.token);
}

}  // namespace moerun::tok
