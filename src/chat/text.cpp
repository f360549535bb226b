#include "chat/text.h"

#include <algorithm>

namespace moerun::chat {

void add_span(Spans& spans, size_t b, size_t e) {
  if (e <= b) return;
  if (!spans.empty() && spans.back().end >= b) {
    spans.back().end = std::max(spans.back().end, e);
    return;
  }
  spans.push_back({b, e});
}

namespace {

// The first span of `spans` that ends after `b`.
Spans::const_iterator first_after(const Spans& spans, size_t b) {
  return std::upper_bound(spans.begin(), spans.end(), b, [](size_t x, const TextSpan& s) { return x < s.end; });
}

}  // namespace

void add_sub_spans(Spans& out, const Spans* src, size_t b, size_t e, size_t at) {
  if (!src) return;
  for (auto it = first_after(*src, b); it != src->end() && it->begin < e; ++it)
    add_span(out, std::max(it->begin, b) - b + at, std::min(it->end, e) - b + at);
}

bool overlaps(const Spans* spans, size_t b, size_t e) {
  if (!spans || e <= b) return false;
  const auto it = first_after(*spans, b);
  return it != spans->end() && it->begin < e;
}

namespace {

bool has_content_at(const Value& v, int depth) {
  switch (v.type()) {
    case Type::string: return v.spans() != nullptr;
    case Type::seq: return v.as<Seq>().content;
    case Type::dict: return v.as<Dict>().content;
    case Type::ns: {
      // Namespaces are mutable, so they carry no flag; a cycle (ns.me = ns) or a deep chain of them
      // counts as content, which is the safe answer.
      if (depth > kMaxValueDepth) return true;
      const Namespace& n = v.as<Namespace>();
      if (n.content_names) return true;
      return std::any_of(n.attrs.begin(), n.attrs.end(),
                         [depth](const auto& kv) { return has_content_at(kv.second, depth + 1); });
    }
    default: return false;
  }
}

}  // namespace

bool has_content(const Value& v) { return has_content_at(v, 0); }

Value substring(const Value& s, size_t b, size_t e, bool markup) {
  if (b == 0 && e == s.str().size()) return s.with_markup(markup);  // all of it: shared, not copied
  Spans spans;
  add_sub_spans(spans, s.spans(), b, e, 0);
  return Value::string(s.str().substr(b, e - b), markup, std::move(spans));
}

Value derived(std::string s, bool markup, bool content) {
  Spans spans;
  if (content) add_span(spans, 0, s.size());
  return Value::string(std::move(s), markup, std::move(spans));
}

Value str_value(const Value& v) {
  if (v.is_string()) return v.markup() ? v.with_markup(false) : v;
  return derived(to_str(v), false, has_content(v));
}

void TextBuilder::grow(size_t n) {
  check_size(text_.size() + n);
  charge(n);
}

void TextBuilder::append(const Value& v) {
  if (!v.is_string()) {
    const std::string s = to_str(v);
    append(s, has_content(v));
    return;
  }
  const std::string& s = v.str();
  grow(s.size());
  add_sub_spans(spans_, v.spans(), 0, s.size(), text_.size());
  text_ += s;
}

void TextBuilder::append(std::string_view text, bool content) {
  grow(text.size());
  if (content) add_span(spans_, text_.size(), text_.size() + text.size());
  text_ += text;
}

void TextBuilder::append_sub(const Value& s, size_t b, size_t e) {
  grow(e - b);
  add_sub_spans(spans_, s.spans(), b, e, text_.size());
  text_.append(s.str(), b, e - b);
}

Value TextBuilder::take(bool markup) {
  // The bytes were charged as they were appended; moving them into a value allocates nothing new.
  Value v = Value::make_string(std::move(text_), markup, std::move(spans_));
  text_.clear();
  spans_.clear();
  return v;
}

}  // namespace moerun::chat
