#pragma once
// The values a template computes with. jinja2 evaluates templates over Python objects, so a Value is
// one of Python's None, bool, int, float, str, list, tuple, dict (plus the dict views, range and the
// one-shot iterators that filters like selectattr return), or one of jinja's own: Undefined,
// namespace(), a macro or builtin function, and the for-loop's `loop`. The operations here follow
// Python exactly (truthiness, ==, <, str(), repr()); a case we cannot reproduce throws Fault.
//
// Strings are immutable and shared, as in Python: copying a Value never copies its text. A string
// may carry content spans, the byte ranges of it that came from the conversation (chat/text.h).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moerun/tokenizer.h"

namespace moerun::chat {

// An evaluation error; the interpreter adds the template name and line. `raised` marks the
// template's own raise_exception(), whose message must reach the user verbatim.
struct Fault {
  std::string message;
  int line = 0;
  bool raised = false;
};
[[noreturn]] void fail(std::string message);

// Nesting bound for containers and for every recursive walk over them (repr, tojson, ==): deeper
// values are rejected instead of overflowing the stack.
constexpr int kMaxValueDepth = 200;
// Largest string or list a template may build: hostile templates must fail, not exhaust memory.
constexpr size_t kMaxStringBytes = size_t{256} << 20;
constexpr size_t kMaxItems = size_t{1} << 22;
// Bytes one rendering may create in total: every string it makes, sizeof(Value) per list item or
// dict entry, and its output, counted as they are made (copies of a value share its text and are
// free). Real templates copy the conversation a few times (a 10 MB conversation costs 25-41 MB through
// those in tests/data); hostile ones that allocate in a loop stop here, in well under a second and a GB.
constexpr size_t kMaxRenderBytes = size_t{512} << 20;

// The byte count of one rendering. While one is alive it is the current budget of its thread, so
// Value::string and make_seq can charge it without an Env argument in every Python operation;
// outside a rendering (parsing, converting the context) nothing is counted.
class RenderBudget {
 public:
  explicit RenderBudget(size_t limit = kMaxRenderBytes);
  ~RenderBudget();
  RenderBudget(const RenderBudget&) = delete;
  RenderBudget& operator=(const RenderBudget&) = delete;

 private:
  friend void charge(size_t bytes);
  friend void check_budget(size_t bytes);
  size_t used_ = 0, limit_;
  RenderBudget* previous_;
};
void charge(size_t bytes);        // counts `bytes` against the current rendering; a Fault past its limit
void check_budget(size_t bytes);  // a Fault if `bytes` more would pass the limit (before allocating them)

// Content spans of a string: sorted, disjoint, non-empty byte ranges, touching ones merged.
using Spans = std::vector<TextSpan>;

struct Object {
  virtual ~Object() = default;
};

class Value {
 public:
  enum class Type : uint8_t { undefined, none, boolean, integer, floating, string, seq, dict, ns, function, loop };

  Value() = default;  // undefined, "is undefined" hint empty
  static Value undefined(std::string message);  // what jinja2 raises when this undefined is used
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value floating(double f);
  static Value string(std::string s, bool markup = false);
  // A string whose bytes in `spans` came from the conversation (see Spans).
  static Value string(std::string s, bool markup, Spans spans);
  static Value object(Type type, std::shared_ptr<Object> obj);

  Type type() const { return type_; }
  bool is(Type t) const { return type_ == t; }
  bool is_undefined() const { return type_ == Type::undefined; }
  bool is_none() const { return type_ == Type::none; }
  bool is_string() const { return type_ == Type::string; }
  bool is_number() const { return type_ == Type::boolean || type_ == Type::integer || type_ == Type::floating; }
  bool is_int_like() const { return type_ == Type::boolean || type_ == Type::integer; }  // Python bool is an int

  bool as_bool() const { return b_; }
  int64_t as_int() const { return type_ == Type::boolean ? int64_t{b_} : i_; }  // bool or int
  double as_double() const { return type_ == Type::floating ? f_ : static_cast<double>(as_int()); }
  const std::string& str() const { return str_ ? str_->text : empty_; }  // string, or the undefined's message
  bool markup() const { return markup_; }  // a string marked safe (jinja's Markup)
  // The content spans of a string; nullptr when none of its bytes came from the conversation.
  const Spans* spans() const { return str_ && !str_->spans.empty() ? &str_->spans : nullptr; }
  Value with_markup(bool markup) const {  // the same string (shared), marked safe or not
    Value v = *this;
    v.markup_ = markup;
    return v;
  }
  template <class T>
  T& as() const { return static_cast<T&>(*obj_); }
  const Object* object_ptr() const { return obj_.get(); }

 private:
  friend class TextBuilder;  // makes strings whose bytes it has already charged
  struct Str {
    std::string text;
    Spans spans;
  };
  static Value make_string(std::string s, bool markup, Spans spans);
  static const std::string empty_;

  Type type_ = Type::undefined;
  bool b_ = false;
  bool markup_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const Str> str_;  // string or undefined: immutable, shared by copies
  std::shared_ptr<Object> obj_;
};

using Type = Value::Type;

// list, tuple and the other Python iterables a template can hold. Iterators (generators from
// select/map/..., reversed()) are one-shot: iterating consumes them, as in Python.
enum class SeqKind : uint8_t { list, tuple, iterator, dict_keys, dict_values, dict_items, range };
struct Seq : Object {
  SeqKind kind = SeqKind::list;
  std::vector<Value> items;
  size_t pos = 0;                       // iterator: items before pos are consumed
  const char* type_name = "list";       // Python's type name, for messages
  int64_t start = 0, stop = 0, step = 1;  // range: its arguments, for repr
  int depth = 1;
  bool content = false;  // some item holds text from the conversation (has_content)
  // iterator: the error computing item `items.size()` raised. Generators are lazy in jinja2, so only
  // a consumer that gets that far sees it (`users|selectattr(...)|first` may stop before it).
  std::shared_ptr<const Fault> deferred;
};
struct Dict : Object {
  std::vector<std::pair<Value, Value>> items;  // insertion order, as Python dicts
  int depth = 1;
  bool content = false;  // some key or value holds text from the conversation
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
};
struct Namespace : Object {
  std::vector<std::pair<std::string, Value>> attrs;
  bool content_names = false;  // attribute names came from the conversation (namespace(**message))
  Value* find(std::string_view name);
};

Value make_seq(SeqKind kind, std::vector<Value> items, const char* type_name = nullptr);
Value make_list(std::vector<Value> items);
Value make_tuple(std::vector<Value> items);
Value make_dict(std::vector<std::pair<Value, Value>> items);  // later duplicates of a key win, in place
Value make_iterator(std::vector<Value> items, const char* type_name, std::shared_ptr<const Fault> deferred = nullptr);

const char* type_name(const Value& v);  // Python's: "str", "dict", "NoneType", "Undefined", ...
[[noreturn]] void fail_undefined(const Value& v);  // raise jinja's UndefinedError for v

bool truthy(const Value& v);
bool equal(const Value& a, const Value& b, int depth = 0);  // Python ==
// Python a < b; a Fault (Python's TypeError) when the two are not ordered.
bool less(const Value& a, const Value& b, int depth = 0);
bool hashable(const Value& v);
int64_t length(const Value& v);            // Python len(); Undefined has length 0
std::vector<Value> iterate(const Value& v);  // Python iter() drained; consumes iterators
// The items a consumer may take one by one, then the error it meets after them (iterators only);
// consumes iterators.
struct LazyItems {
  std::vector<Value> items;
  std::shared_ptr<const Fault> error;
};
LazyItems iterate_lazy(const Value& v);
[[noreturn]] void raise_deferred(const Seq& s);  // throws s.deferred and clears it (the generator is closed)

std::string to_str(const Value& v);  // Python str(), jinja's for Undefined ("")
std::string repr(const Value& v, int depth = 0);
std::string repr_string(std::string_view s);
std::string float_repr(double f);
void check_size(size_t bytes);

// Implemented by the interpreter, which owns loops and macros.
std::string function_repr(const Value& v);
std::string loop_repr(const Value& v);

}  // namespace moerun::chat
