#pragma once
// Content spans: which bytes of a string came from the conversation (messages, tools, documents)
// rather than from the template. The rendered prompt carries them to the tokenizer, which recognises
// added tokens only outside them, so "<|im_end|>" typed by a user stays text (docs/decisions.md,
// "Chat templates: limits and content spans").
//
// Operations that only move bytes (+, ~, join, slicing and indexing, strip, split, partition,
// replace, indent, |string, the renderer's output) keep the spans exact. Any other operation with
// content among its inputs marks its whole result as content: safe, since content is merely
// tokenized as plain text. A template's own text never becomes content unless such an operation
// mixes it with content.

#include <string>
#include <string_view>

#include "chat/value.h"

namespace moerun::chat {

// Appends [b, e) to `spans`, whose last span must end at or before b; empty ranges are ignored and a
// touching span is extended.
void add_span(Spans& spans, size_t b, size_t e);
// Appends the parts of `src` (may be null) inside its bytes [b, e), moved to start at `at`.
void add_sub_spans(Spans& out, const Spans* src, size_t b, size_t e, size_t at);
// Whether some span of `spans` (may be null) overlaps [b, e).
bool overlaps(const Spans* spans, size_t b, size_t e);

// A string with spans, or a list, dict or namespace holding one (at any depth).
bool has_content(const Value& v);

// Bytes [b, e) of string `s` (on character boundaries), with their spans.
Value substring(const Value& s, size_t b, size_t e, bool markup);
// A string computed by an operation that does not track bytes: all content when `content`.
Value derived(std::string s, bool markup, bool content);
// Python str(v), never Markup: a string keeps its text and spans; anything else is to_str(v), all
// content when it holds content (a list of messages printed as a Python repr).
Value str_value(const Value& v);

// Text under construction with its spans: what ~, join, macro bodies and the rendered output build.
// Appended bytes are charged to the render budget and checked against kMaxStringBytes as they come.
class TextBuilder {
 public:
  void append(const Value& v);  // str_value(v)
  void append(std::string_view text, bool content = false);
  void append_sub(const Value& s, size_t b, size_t e);  // bytes [b, e) of string s
  size_t size() const { return text_.size(); }
  const std::string& text() const { return text_; }
  const Spans& spans() const { return spans_; }
  Value take(bool markup = false);  // the string built; the builder is left empty
  std::string take_text() { return std::move(text_); }
  Spans take_spans() { return std::move(spans_); }

 private:
  void grow(size_t n);
  std::string text_;
  Spans spans_;
};

}  // namespace moerun::chat
