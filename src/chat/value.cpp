#include "chat/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "chat/text.h"
#include "chat/unicode.h"

namespace moerun::chat {

void fail(std::string message) { throw Fault{std::move(message)}; }

// --- the render budget -------------------------------------------------------------------------
namespace {
thread_local RenderBudget* current_budget = nullptr;
}

RenderBudget::RenderBudget(size_t limit) : limit_(limit), previous_(current_budget) { current_budget = this; }
RenderBudget::~RenderBudget() { current_budget = previous_; }

void check_budget(size_t bytes) {
  const RenderBudget* b = current_budget;
  if (b && bytes > b->limit_ - b->used_)
    fail("rendering allocated more than " + std::to_string(b->limit_ >> 20) +
         " MiB (strings, lists and output together)");
}

void charge(size_t bytes) {
  check_budget(bytes);
  if (current_budget) current_budget->used_ += bytes;
}

// --- values ------------------------------------------------------------------------------------
const std::string Value::empty_;

Value Value::undefined(std::string message) {
  Value v;
  if (!message.empty()) v.str_ = std::make_shared<const Str>(Str{std::move(message), {}});
  return v;
}
Value Value::none() {
  Value v;
  v.type_ = Type::none;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.type_ = Type::boolean;
  v.b_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.type_ = Type::integer;
  v.i_ = i;
  return v;
}
Value Value::floating(double f) {
  Value v;
  v.type_ = Type::floating;
  v.f_ = f;
  return v;
}
Value Value::make_string(std::string s, bool markup, Spans spans) {
  Value v;
  v.type_ = Type::string;
  v.str_ = std::make_shared<const Str>(Str{std::move(s), std::move(spans)});
  v.markup_ = markup;
  return v;
}
Value Value::string(std::string s, bool markup) {
  check_size(s.size());
  charge(s.size());
  return make_string(std::move(s), markup, {});
}
Value Value::string(std::string s, bool markup, Spans spans) {
  check_size(s.size());
  charge(s.size());
  return make_string(std::move(s), markup, std::move(spans));
}
Value Value::object(Type type, std::shared_ptr<Object> obj) {
  Value v;
  v.type_ = type;
  v.obj_ = std::move(obj);
  return v;
}

namespace {

int depth_of(const Value& v) {
  if (v.is(Type::seq)) return v.as<Seq>().depth;
  if (v.is(Type::dict)) return v.as<Dict>().depth;
  return 0;
}

void check_depth(int depth) {
  if (depth > kMaxValueDepth) fail("value nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
}

}  // namespace

void check_size(size_t bytes) {
  if (bytes > kMaxStringBytes) fail("string longer than " + std::to_string(kMaxStringBytes >> 20) + " MiB");
}

const Value* Dict::find(const Value& key) const {
  for (const auto& [k, v] : items)
    if (equal(k, key)) return &v;
  return nullptr;
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k.is_string() && k.str() == key) return &v;
  return nullptr;
}

Value* Namespace::find(std::string_view name) {
  for (auto& [k, v] : attrs)
    if (k == name) return &v;
  return nullptr;
}

Value make_seq(SeqKind kind, std::vector<Value> items, const char* name) {
  if (items.size() > kMaxItems) fail("sequence of more than " + std::to_string(kMaxItems) + " items");
  charge(items.size() * sizeof(Value));
  auto seq = std::make_shared<Seq>();
  seq->kind = kind;
  int depth = 0;
  for (const Value& v : items) {
    depth = std::max(depth, depth_of(v));
    seq->content = seq->content || has_content(v);
  }
  seq->depth = depth + 1;
  check_depth(seq->depth);
  seq->items = std::move(items);
  static constexpr const char* kNames[] = {"list", "tuple", "iterator", "dict_keys", "dict_values", "dict_items", "range"};
  seq->type_name = name ? name : kNames[static_cast<int>(kind)];
  return Value::object(Type::seq, std::move(seq));
}

Value make_list(std::vector<Value> items) { return make_seq(SeqKind::list, std::move(items)); }
Value make_tuple(std::vector<Value> items) { return make_seq(SeqKind::tuple, std::move(items)); }
Value make_iterator(std::vector<Value> items, const char* name, std::shared_ptr<const Fault> deferred) {
  Value v = make_seq(SeqKind::iterator, std::move(items), name);
  v.as<Seq>().deferred = std::move(deferred);
  return v;
}

void raise_deferred(const Seq& s) {
  const Fault f = *s.deferred;
  const_cast<Seq&>(s).deferred.reset();
  throw f;
}

LazyItems iterate_lazy(const Value& v) {
  if (!v.is(Type::seq) || v.as<Seq>().kind != SeqKind::iterator) return {iterate(v), nullptr};
  Seq& s = v.as<Seq>();
  LazyItems out{{s.items.begin() + static_cast<std::ptrdiff_t>(s.pos), s.items.end()}, std::move(s.deferred)};
  s.pos = s.items.size();
  s.deferred.reset();
  return out;
}

Value make_dict(std::vector<std::pair<Value, Value>> items) {
  charge(items.size() * 2 * sizeof(Value));
  auto dict = std::make_shared<Dict>();
  int depth = 0;
  for (auto& [k, v] : items) {
    if (!hashable(k)) fail(std::string("unhashable type: '") + type_name(k) + "'");
    depth = std::max({depth, depth_of(k), depth_of(v)});
    dict->content = dict->content || has_content(k) || has_content(v);
    bool replaced = false;
    for (auto& [k2, v2] : dict->items) {
      if (equal(k2, k)) {
        v2 = std::move(v);
        replaced = true;
        break;
      }
    }
    if (!replaced) dict->items.emplace_back(std::move(k), std::move(v));
  }
  dict->depth = depth + 1;
  check_depth(dict->depth);
  return Value::object(Type::dict, std::move(dict));
}

const char* type_name(const Value& v) {
  switch (v.type()) {
    case Type::undefined: return "Undefined";
    case Type::none: return "NoneType";
    case Type::boolean: return "bool";
    case Type::integer: return "int";
    case Type::floating: return "float";
    case Type::string: return v.markup() ? "Markup" : "str";
    case Type::seq: return v.as<Seq>().type_name;
    case Type::dict: return "dict";
    case Type::ns: return "Namespace";
    case Type::function: return "function";
    case Type::loop: return "LoopContext";
  }
  return "object";
}

void fail_undefined(const Value& v) {
  fail(v.str().empty() ? std::string("undefined value used") : v.str());
}

bool truthy(const Value& v) {
  switch (v.type()) {
    case Type::undefined:
    case Type::none: return false;
    case Type::boolean: return v.as_bool();
    case Type::integer: return v.as_int() != 0;
    case Type::floating: return v.as_double() != 0.0;
    case Type::string: return !v.str().empty();
    case Type::seq: {
      const Seq& s = v.as<Seq>();
      return s.kind == SeqKind::iterator || !s.items.empty();  // a generator is always true
    }
    case Type::dict: return !v.as<Dict>().items.empty();
    default: return true;
  }
}

namespace {

// int and float compare exactly in Python; long double holds every int64 exactly.
long double number(const Value& v) {
  return v.is(Type::floating) ? static_cast<long double>(v.as_double()) : static_cast<long double>(v.as_int());
}

bool same_key_set(const std::vector<Value>& a, const std::vector<Value>& b, int depth) {
  if (a.size() != b.size()) return false;
  for (const Value& x : a)
    if (std::none_of(b.begin(), b.end(), [&](const Value& y) { return equal(x, y, depth + 1); })) return false;
  return true;
}

}  // namespace

bool equal(const Value& a, const Value& b, int depth) {
  check_depth(depth);
  if (a.is_number() && b.is_number()) return number(a) == number(b);
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Type::undefined:
    case Type::none: return true;
    case Type::string: return a.str() == b.str();
    case Type::seq: {
      const Seq& x = a.as<Seq>();
      const Seq& y = b.as<Seq>();
      if (&x == &y) return true;
      if (x.kind != y.kind || x.kind == SeqKind::iterator || x.kind == SeqKind::dict_values) return false;
      if (x.kind == SeqKind::dict_keys || x.kind == SeqKind::dict_items) return same_key_set(x.items, y.items, depth);
      if (x.items.size() != y.items.size()) return false;
      for (size_t i = 0; i < x.items.size(); ++i)
        if (!equal(x.items[i], y.items[i], depth + 1)) return false;
      return true;
    }
    case Type::dict: {
      const Dict& x = a.as<Dict>();
      const Dict& y = b.as<Dict>();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* other = y.find(k);
        if (!other || !equal(v, *other, depth + 1)) return false;
      }
      return true;
    }
    default: return a.object_ptr() == b.object_ptr();
  }
}

bool less(const Value& a, const Value& b, int depth) {
  check_depth(depth);
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if (a.is_number() && b.is_number()) return number(a) < number(b);
  if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 bytes sort as code points
  if (a.is(Type::seq) && b.is(Type::seq)) {
    const Seq& x = a.as<Seq>();
    const Seq& y = b.as<Seq>();
    if (x.kind == y.kind && (x.kind == SeqKind::list || x.kind == SeqKind::tuple)) {
      for (size_t i = 0; i < x.items.size() && i < y.items.size(); ++i)
        if (!equal(x.items[i], y.items[i], depth + 1)) return less(x.items[i], y.items[i], depth + 1);
      return x.items.size() < y.items.size();
    }
  }
  fail(std::string("'<' not supported between instances of '") + type_name(a) + "' and '" + type_name(b) + "'");
}

bool hashable(const Value& v) {
  if (v.is(Type::dict)) return false;
  if (!v.is(Type::seq)) return true;
  const Seq& s = v.as<Seq>();
  if (s.kind == SeqKind::tuple) return std::all_of(s.items.begin(), s.items.end(), hashable);
  return s.kind == SeqKind::iterator || s.kind == SeqKind::range;
}

int64_t length(const Value& v) {
  switch (v.type()) {
    case Type::undefined: return 0;
    case Type::string: return static_cast<int64_t>(code_point_count(v.str()));
    case Type::dict: return static_cast<int64_t>(v.as<Dict>().items.size());
    case Type::seq:
      if (v.as<Seq>().kind != SeqKind::iterator) return static_cast<int64_t>(v.as<Seq>().items.size());
      break;
    default: break;
  }
  fail(std::string("object of type '") + type_name(v) + "' has no len()");
}

std::vector<Value> iterate(const Value& v) {
  switch (v.type()) {
    case Type::undefined: return {};
    case Type::seq: {
      Seq& s = v.as<Seq>();
      if (s.kind != SeqKind::iterator) return s.items;
      std::vector<Value> rest(s.items.begin() + static_cast<std::ptrdiff_t>(s.pos), s.items.end());
      s.pos = s.items.size();
      if (s.deferred) raise_deferred(s);
      return rest;
    }
    case Type::dict: {
      std::vector<Value> keys;
      for (const auto& kv : v.as<Dict>().items) keys.push_back(kv.first);
      return keys;
    }
    case Type::string: {  // one string per character, each with its content span
      const std::string& s = v.str();
      const size_t count = code_point_count(s);
      if (count > kMaxItems) fail("sequence of more than " + std::to_string(kMaxItems) + " items");
      charge(count * sizeof(Value));
      std::vector<Value> chars;
      chars.reserve(count);
      for (size_t i = 0; i < s.size(); i += char_bytes(s[i])) chars.push_back(substring(v, i, i + char_bytes(s[i]), false));
      return chars;
    }
    default: fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

std::string float_repr(double f) {
  // Python repr: the shortest digits that round-trip; exponent form when the decimal point would sit
  // more than 16 places right or 4 places left of the first digit (CPython format_float_short).
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string out;
  if (sci[0] == '-') {
    out = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp10 = std::stoi(sci.substr(e + 1));
  const int decpt = exp10 + 1;  // value = 0.digits * 10^decpt
  if (decpt <= -4 || decpt > 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    return out + exp;
  }
  if (decpt <= 0) return out + "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  if (static_cast<size_t>(decpt) >= digits.size())
    return out + digits + std::string(static_cast<size_t>(decpt) - digits.size(), '0') + ".0";
  return out + digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
}

std::string repr_string(std::string_view s) {
  // CPython unicode_repr: single quotes unless the text has ' and no ".
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < s.size(); i += char_bytes(s[i])) {  // no copy as code points: s may be 256 MiB
    const char32_t c = code_point_at(s, i);
    if (out.size() > kMaxStringBytes) check_size(out.size());  // escapes grow the text up to 10x
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F || (c >= 0x80 && !py_isprintable(c))) {
      const int digits = c <= 0xFF ? 2 : c <= 0xFFFF ? 4 : 8;
      out += digits == 2 ? "\\x" : digits == 4 ? "\\u" : "\\U";
      for (int k = digits - 1; k >= 0; --k) out += kHex[(c >> (4 * k)) & 15];
    } else {
      append_utf8(out, c);
    }
  }
  return out + quote;
}

std::string repr(const Value& v, int depth) {
  check_depth(depth);
  switch (v.type()) {
    case Type::undefined: return "Undefined";
    case Type::string: return v.markup() ? "Markup(" + repr_string(v.str()) + ")" : repr_string(v.str());
    case Type::seq: {
      const Seq& s = v.as<Seq>();
      auto items = [&](const char* open, const char* close) {
        std::string out = open;
        for (size_t i = 0; i < s.items.size(); ++i) {
          if (i) out += ", ";
          out += repr(s.items[i], depth + 1);
          check_size(out.size());
        }
        if (s.kind == SeqKind::tuple && s.items.size() == 1) out += ",";
        return out + close;
      };
      switch (s.kind) {
        case SeqKind::list: return items("[", "]");
        case SeqKind::tuple: return items("(", ")");
        case SeqKind::dict_keys: return items("dict_keys([", "])");
        case SeqKind::dict_values: return items("dict_values([", "])");
        case SeqKind::dict_items: return items("dict_items([", "])");
        case SeqKind::range:
          return "range(" + std::to_string(s.start) + ", " + std::to_string(s.stop) +
                 (s.step != 1 ? ", " + std::to_string(s.step) : std::string()) + ")";
        case SeqKind::iterator:
          fail(std::string("cannot print a ") + s.type_name + " object (Python prints its memory address)");
      }
      break;
    }
    case Type::dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, val] : v.as<Dict>().items) {
        if (!first) out += ", ";
        first = false;
        out += repr(k, depth + 1) + ": " + repr(val, depth + 1);
        check_size(out.size());
      }
      return out + "}";
    }
    case Type::ns: {
      std::string out = "<Namespace {";
      bool first = true;
      for (const auto& [k, val] : v.as<Namespace>().attrs) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(k) + ": " + repr(val, depth + 1);
      }
      return out + "}>";
    }
    case Type::function: return function_repr(v);
    case Type::loop: return loop_repr(v);
    default: break;
  }
  return to_str(v);
}

std::string to_str(const Value& v) {
  switch (v.type()) {
    case Type::undefined: return "";
    case Type::none: return "None";
    case Type::boolean: return v.as_bool() ? "True" : "False";
    case Type::integer: return std::to_string(v.as_int());
    case Type::floating: return float_repr(v.as_double());
    case Type::string: return v.str();
    default: return repr(v);
  }
}

}  // namespace moerun::chat
