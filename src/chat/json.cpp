#include "chat/json.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "chat/unicode.h"
#include "moerun/error.h"

namespace moerun::chat {

namespace {

Value text(const std::string& s, bool content, const std::string& where) {
  // Value::string's own check would throw a Fault, which has no place to name here.
  if (s.size() > kMaxStringBytes)
    throw Error(where, "string longer than " + std::to_string(kMaxStringBytes >> 20) + " MiB");
  Spans spans;
  if (content && !s.empty()) spans.push_back({0, s.size()});
  return Value::string(s, false, std::move(spans));
}

Value from_json_at(const nlohmann::ordered_json& j, const std::string& where, bool content, int depth) {
  if (depth > kMaxValueDepth)
    throw Error(where, "nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Error(where, "integer " + std::to_string(u) + " is beyond int64 (unsupported)");
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::floating(j.get<double>());
    case nlohmann::ordered_json::value_t::string: {
      const auto& s = j.get_ref<const std::string&>();
      if (!is_valid_utf8(s)) throw Error(where, "string is not valid UTF-8");
      return text(s, content, where);
    }
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (size_t i = 0; i < j.size(); ++i)
        items.push_back(from_json_at(j[i], where + "[" + std::to_string(i) + "]", content, depth + 1));
      return make_list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      std::vector<std::pair<Value, Value>> items;
      items.reserve(j.size());
      for (const auto& [k, v] : j.items()) {
        if (!is_valid_utf8(k)) throw Error(where, "key is not valid UTF-8");
        items.emplace_back(text(k, content, where), from_json_at(v, where + "." + k, content, depth + 1));
      }
      return make_dict(std::move(items));
    }
    default: throw Error(where, std::string("unsupported JSON value of type ") + j.type_name());
  }
}

void dump_string(std::string& out, std::string_view s, bool ensure_ascii) {
  static constexpr char kHex[] = "0123456789abcdef";
  auto u_escape = [&](char32_t c) {
    out += "\\u";
    for (int k = 3; k >= 0; --k) out += kHex[(c >> (4 * k)) & 15];
  };
  out += '"';
  for (size_t i = 0; i < s.size(); i += char_bytes(s[i])) {  // no copy as code points: s may be 256 MiB
    const char32_t c = code_point_at(s, i);
    if (out.size() > kMaxStringBytes) check_size(out.size());  // escapes grow the text up to 12x
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      default: break;
    }
    if (c < 0x20) {
      u_escape(c);
    } else if (ensure_ascii && c > 0x7E) {
      if (c >= 0x10000) {  // a surrogate pair, as Python writes astral characters
        const char32_t v = c - 0x10000;
        u_escape(0xD800 | (v >> 10));
        u_escape(0xDC00 | (v & 0x3FF));
      } else {
        u_escape(c);
      }
    } else {
      append_utf8(out, c);
    }
  }
  out += '"';
}

std::string float_json(double f) {
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
  return float_repr(f);
}

[[noreturn]] void not_serializable(const Value& v) {
  fail(std::string("Object of type ") + type_name(v) + " is not JSON serializable");
}

struct Dumper {
  const DumpOptions& opt;
  std::string out;

  void newline(int level) {
    out += '\n';
    for (int i = 0; i < level; ++i) {
      out += *opt.indent;
      check_size(out.size());
    }
  }

  std::string key_text(const Value& k) {
    switch (k.type()) {
      case Type::string: return k.str();
      case Type::floating: return float_json(k.as_double());
      case Type::boolean: return k.as_bool() ? "true" : "false";
      case Type::none: return "null";
      case Type::integer: return std::to_string(k.as_int());
      default: fail(std::string("keys must be str, int, float, bool or None, not ") + type_name(k));
    }
  }

  void dump(const Value& v, int level) {
    if (level > kMaxValueDepth) fail("value nested too deeply for tojson");
    check_size(out.size());
    switch (v.type()) {
      case Type::none: out += "null"; return;
      case Type::boolean: out += v.as_bool() ? "true" : "false"; return;
      case Type::integer: out += std::to_string(v.as_int()); return;
      case Type::floating: out += float_json(v.as_double()); return;
      case Type::string: dump_string(out, v.str(), opt.ensure_ascii); return;
      case Type::seq: {
        const Seq& s = v.as<Seq>();
        if (s.kind != SeqKind::list && s.kind != SeqKind::tuple) not_serializable(v);
        if (s.items.empty()) {
          out += "[]";
          return;
        }
        out += '[';
        for (size_t i = 0; i < s.items.size(); ++i) {
          if (i) out += opt.item_separator;
          if (opt.indent) newline(level + 1);
          dump(s.items[i], level + 1);
        }
        if (opt.indent) newline(level);
        out += ']';
        return;
      }
      case Type::dict: {
        std::vector<const std::pair<Value, Value>*> items;
        for (const auto& kv : v.as<Dict>().items) items.push_back(&kv);
        if (items.empty()) {
          out += "{}";
          return;
        }
        if (opt.sort_keys)  // Python sorts the (key, value) pairs; keys are unique, so by key
          std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return less(a->first, b->first); });
        out += '{';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += opt.item_separator;
          if (opt.indent) newline(level + 1);
          dump_string(out, key_text(items[i]->first), opt.ensure_ascii);
          out += opt.key_separator;
          dump(items[i]->second, level + 1);
        }
        if (opt.indent) newline(level);
        out += '}';
        return;
      }
      default: not_serializable(v);
    }
  }
};

}  // namespace

Value from_json(const nlohmann::ordered_json& j, const std::string& where, bool content) {
  return from_json_at(j, where, content, 0);
}

std::string dump_json(const Value& v, const DumpOptions& opt) {
  Dumper d{opt, {}};
  d.dump(v, 0);
  return std::move(d.out);
}

}  // namespace moerun::chat
