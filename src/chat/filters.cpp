// jinja2's builtin filters, tests and globals (jinja2/filters.py, tests.py, defaults.py), with the
// overrides transformers installs: tojson = json.dumps(ensure_ascii=False), raise_exception,
// strftime_now, dict and a namespace that refuses underscore names.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>

#include "chat/builtins.h"
#include "chat/interpreter.h"
#include "chat/json.h"
#include "chat/text.h"
#include "chat/unicode.h"

namespace moerun::chat {

namespace {

constexpr std::string_view kJinjaFilters[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
    "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "join", "last",
    "length", "list", "lower", "items", "map", "min", "max", "pprint", "random", "reject", "rejectattr", "replace",
    "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum", "title",
    "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr", "tojson"};
constexpr std::string_view kUnsupportedFilters[] = {"batch", "filesizeformat", "format", "groupby", "pprint",
                                                    "random", "slice", "striptags", "truncate", "urlencode",
                                                    "urlize", "wordwrap", "xmlattr"};
constexpr std::string_view kJinjaTests[] = {
    "odd", "even", "divisibleby", "defined", "undefined", "filter", "test", "none", "boolean", "false", "true",
    "integer", "float", "lower", "upper", "string", "mapping", "number", "sequence", "iterable", "callable",
    "sameas", "escaped", "in", "==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", "ge", ">=", "<", "lt",
    "lessthan", "<=", "le"};

template <size_t N>
bool listed(const std::string_view (&names)[N], std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

// --- conversions as the filters do them ----------------------------------------------------------
// jinja2's soft_str: strings (Markup included) stay as they are, anything else is str(value).
Value soft_str(const Value& v) { return v.is_string() ? v : str_value(v); }

bool has_content(const Args& args) {
  if (args.keyword_content) return true;
  for (const Value& v : args.positional)
    if (has_content(v)) return true;
  for (const auto& kv : args.keyword)
    if (has_content(kv.second)) return true;
  return false;
}

std::string number_text(std::string s) {  // int()/float() accept surrounding whitespace and '_'
  const std::u32string c = decode_utf8(s);
  size_t b = 0, e = c.size();
  while (b < e && py_isspace(c[b])) ++b;
  while (e > b && py_isspace(c[e - 1])) --e;
  std::string out = encode_utf8(std::u32string_view(c).substr(b, e - b));
  for (size_t i = 0; i < out.size(); ++i) {  // underscores only between digits
    if (out[i] != '_') continue;
    if (i == 0 || i + 1 == out.size() || !std::isxdigit(static_cast<unsigned char>(out[i - 1])) ||
        !std::isxdigit(static_cast<unsigned char>(out[i + 1])))
      return "!";
  }
  out.erase(std::remove(out.begin(), out.end(), '_'), out.end());
  return out;
}

std::optional<int64_t> parse_int(const std::string& text, int base) {
  std::string s = number_text(text);
  if (s.empty() || s == "!") return std::nullopt;
  bool neg = false;
  size_t i = 0;
  if (s[0] == '+' || s[0] == '-') neg = s[i++] == '-';
  if (base == 0 || base == 16 || base == 8 || base == 2) {  // optional 0x / 0o / 0b prefix
    if (s.size() > i + 1 && s[i] == '0') {
      const char p = static_cast<char>(s[i + 1] | 0x20);
      const int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
      if (pb && (base == 0 || base == pb)) {
        base = pb;
        i += 2;
      }
    }
    if (base == 0) base = 10;
  }
  if (i >= s.size() || base < 2 || base > 36) return std::nullopt;
  uint64_t v = 0;
  for (; i < s.size(); ++i) {
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
    if (d >= base) return std::nullopt;
    if (v > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + 1 - d) / base)
      fail("integer overflow (Python integers are unbounded; unsupported)");
    v = v * base + static_cast<uint64_t>(d);
  }
  if (!neg && v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    fail("integer overflow (Python integers are unbounded; unsupported)");
  return neg ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
}

std::optional<double> parse_float(const std::string& text) {
  std::string s = number_text(text);
  if (s.empty() || s == "!") return std::nullopt;
  std::string lower;
  for (char c : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const bool neg = lower[0] == '-';
  const std::string body = lower[0] == '-' || lower[0] == '+' ? lower.substr(1) : lower;
  if (body == "inf" || body == "infinity") return neg ? -HUGE_VAL : HUGE_VAL;
  if (body == "nan") return std::nan("");
  for (char c : body)
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.' && c != 'e' && c != '+' && c != '-')
      return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return v;
}

// Python round(x, ndigits): correctly rounded, ties to even (glibc printf rounds the same way).
double round_float(double x, int64_t ndigits) {
  if (!std::isfinite(x) || ndigits > 300) return x;
  if (ndigits < 0) fail("round() with negative precision of a float is not supported");
  if (ndigits == 0) return std::nearbyint(x);
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(ndigits), x);
  return std::strtod(buf, nullptr);
}

// make_attrgetter: "a.b.0" looks up a, then b, then item 0, each with jinja2's getitem rules.
std::function<Value(const Value&)> attrgetter(const Value& attribute, const std::optional<Value>& dflt = std::nullopt,
                                              bool ignore_case = false) {
  std::vector<Value> parts;
  if (attribute.is_string()) {
    for (const Value& p : iterate(call_method(attribute, "split", Args{{Value::string(".")}, {}}))) {
      const std::string& s = p.str();
      const bool digits = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (digits && s.size() > 18) fail("attribute index " + s + " is too large");
      parts.push_back(digits ? Value::integer(std::stoll(s)) : p);
    }
  } else if (!attribute.is_none()) {
    parts.push_back(attribute);
  }
  return [parts, dflt, ignore_case](const Value& item) {
    Value v = item;
    for (const Value& p : parts) {
      v = get_item(v, p);
      if (dflt && !dflt->is_none() && v.is_undefined()) v = *dflt;
    }
    if (ignore_case && v.is_string()) v = Value::string(py_lower(v.str()));
    return v;
  };
}

// do_sort / do_min / do_max key: a list of attributes when `attribute` is "a,b".
std::function<Value(const Value&)> multi_attrgetter(const Value& attribute, bool ignore_case) {
  if (!attribute.is_string()) {
    auto one = attrgetter(attribute, std::nullopt, ignore_case);
    return [one](const Value& item) { return make_list({one(item)}); };
  }
  std::vector<std::function<Value(const Value&)>> getters;
  for (const Value& part : iterate(call_method(attribute, "split", Args{{Value::string(",")}, {}})))
    getters.push_back(attrgetter(part, std::nullopt, ignore_case));
  return [getters](const Value& item) {
    std::vector<Value> keys;
    for (const auto& g : getters) keys.push_back(g(item));
    return make_list(std::move(keys));
  };
}

std::vector<Value> sorted(std::vector<Value> items, const std::function<Value(const Value&)>& key, bool reverse) {
  std::vector<std::pair<Value, Value>> keyed;
  for (Value& v : items) keyed.emplace_back(key(v), std::move(v));
  // Python's sort is stable, and reverse=True keeps equal items in their original order.
  std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& a, const auto& b) {
    return reverse ? less(b.first, a.first) : less(a.first, b.first);
  });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return out;
}

Value select_or_reject(const Value& value, const Args& args, bool select, bool by_attr) {
  if (!truthy(value)) return make_iterator({}, "generator");
  size_t off = 0;
  std::function<Value(const Value&)> trans = [](const Value& v) { return v; };
  if (by_attr) {
    if (args.positional.empty()) fail("missing parameter for attribute name");
    trans = attrgetter(args.positional[0]);
    off = 1;
  }
  std::optional<std::string> test;
  Args test_args;
  if (args.positional.size() > off) {
    if (!args.positional[off].is_string()) fail("test name must be a string");
    test = args.positional[off].str();
    test_args.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(off + 1), args.positional.end());
  }
  test_args.keyword = args.keyword;
  std::vector<Value> out;
  LazyItems src = iterate_lazy(value);
  for (const Value& item : src.items) {
    try {
      const Value v = trans(item);
      const bool ok = test ? apply_test(*test, v, test_args) : truthy(v);
      if (ok == select) out.push_back(item);
    } catch (const Fault& f) {  // raised only if a consumer gets this far
      return make_iterator(std::move(out), "generator", std::make_shared<const Fault>(f));
    }
  }
  return make_iterator(std::move(out), "generator", std::move(src.error));
}

Value do_map(const Value& value, const Args& args, const Env& env) {
  if (!truthy(value)) return make_iterator({}, "generator");
  std::function<Value(const Value&)> func;
  if (args.positional.empty()) {
    std::optional<Value> attribute, dflt;
    for (const auto& [k, v] : args.keyword) {
      if (k == "attribute") attribute = v;
      else if (k == "default") dflt = v;
      else fail("unexpected keyword argument '" + k + "'");
    }
    if (!attribute) fail("map requires a filter argument");
    func = attrgetter(*attribute, dflt);
  } else {
    if (!args.positional[0].is_string()) fail("map: the filter name must be a string");
    const std::string name = args.positional[0].str();
    Args rest{{args.positional.begin() + 1, args.positional.end()}, args.keyword, args.keyword_content};
    func = [name, rest, &env](const Value& item) { return apply_filter(name, item, rest, env); };
  }
  std::vector<Value> out;
  LazyItems src = iterate_lazy(value);
  for (const Value& item : src.items) {
    try {
      out.push_back(func(item));
    } catch (const Fault& f) {  // raised only if a consumer gets this far
      return make_iterator(std::move(out), "generator", std::make_shared<const Fault>(f));
    }
  }
  return make_iterator(std::move(out), "generator", std::move(src.error));
}

Value do_tojson(const Value& v, const Args& args) {
  // transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  auto a = bind_args("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  DumpOptions opt;
  opt.ensure_ascii = a[0] && truthy(*a[0]);
  if (a[1] && !a[1]->is_none()) {
    if (a[1]->is_string()) {
      opt.indent = a[1]->str();
    } else if (a[1]->is_int_like()) {
      const int64_t n = std::max<int64_t>(0, a[1]->as_int());
      check_size(static_cast<size_t>(n));
      opt.indent = std::string(static_cast<size_t>(n), ' ');
    } else {
      fail(std::string("can't multiply sequence by non-int of type '") + type_name(*a[1]) + "'");
    }
    opt.item_separator = ",";
  }
  if (a[2] && !a[2]->is_none()) {
    const std::vector<Value> seps = iterate(*a[2]);
    if (seps.size() != 2 || !seps[0].is_string() || !seps[1].is_string())
      fail("tojson separators must be a pair of strings");
    opt.item_separator = seps[0].str();
    opt.key_separator = seps[1].str();
  }
  opt.sort_keys = a[3] && truthy(*a[3]);
  return derived(dump_json(v, opt), false, has_content(v) || has_content(args));
}

Value do_indent(const Value& s, const Args& args) {
  auto a = bind_args("indent", args, {"width", "first", "blank"});
  const Value width = a[0].value_or(Value::integer(4));
  Value indention;  // lines keep their spans, and so does a string indention
  if (width.is_string()) {
    indention = width;
  } else if (width.is_int_like()) {
    const int64_t n = std::max<int64_t>(0, width.as_int());
    check_size(static_cast<size_t>(n));
    indention = Value::string(std::string(static_cast<size_t>(n), ' '));
  } else {
    fail(std::string("can't multiply sequence by non-int of type '") + type_name(width) + "'");
  }
  if (!s.is_string()) fail(std::string("unsupported operand type(s) for +=: '") + type_name(s) + "' and 'str'");
  TextBuilder text;
  text.append(s);
  text.append("\n");
  std::vector<Value> lines = iterate(call_method(text.take(s.markup()), "splitlines", {}));
  TextBuilder rv;
  if (a[1] && truthy(*a[1])) rv.append(indention);
  if (a[2] && truthy(*a[2])) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) {
        rv.append("\n");
        rv.append(indention);
      }
      rv.append(lines[i]);
    }
  } else {
    if (!lines.empty()) rv.append(lines[0]);
    for (size_t i = 1; i < lines.size(); ++i) {
      rv.append("\n");
      if (!lines[i].str().empty()) rv.append(indention);
      rv.append(lines[i]);
    }
  }
  return rv.take(s.markup());
}

Value do_round(const Value& v, const Args& args) {
  auto a = bind_args("round", args, {"precision", "method"});
  const int64_t precision = a[0] ? a[0]->as_int() : 0;
  if (a[0] && !a[0]->is_int_like()) fail("round: precision must be an integer");
  const std::string method = a[1] && a[1]->is_string() ? a[1]->str() : a[1] ? "?" : "common";
  if (method != "common" && method != "ceil" && method != "floor") fail("method must be common, ceil or floor");
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_number()) fail(std::string("type ") + type_name(v) + " doesn't define __round__ method");
  if (method == "common") {
    if (v.is_int_like()) {
      if (precision >= 0) return Value::integer(v.as_int());
      if (precision < -18) return Value::integer(0);
      int64_t p = 1;
      for (int64_t i = 0; i < -precision; ++i) p *= 10;
      const int64_t x = v.as_int();
      int64_t q = x / p, r = x % p;
      if (r < 0) {
        r += p;
        --q;
      }
      if (2 * r > p || (2 * r == p && (q & 1))) ++q;  // ties to even, as int.__round__
      int64_t out = 0;
      if (__builtin_mul_overflow(q, p, &out)) fail("integer overflow (unsupported)");
      return Value::integer(out);
    }
    return Value::floating(round_float(v.as_double(), precision));
  }
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_double() * scale;
  return Value::floating((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Value do_title(const Value& v) {
  // "".join(w[0].upper() + w[1:].lower() for w in re.split(r"([-\s({\[<]+)", s) if w)
  const std::u32string c = decode_utf8(to_str(v));
  auto is_sep = [](char32_t x) { return x == '-' || x == '(' || x == '{' || x == '[' || x == '<' || py_isspace(x); };
  std::string out;
  size_t i = 0;
  while (i < c.size()) {
    size_t j = i;
    const bool sep = is_sep(c[i]);
    while (j < c.size() && is_sep(c[j]) == sep) ++j;
    const std::string first = encode_utf8(std::u32string_view(c).substr(i, 1));
    out += py_upper(first) + py_lower(encode_utf8(std::u32string_view(c).substr(i + 1, j - i - 1)));
    i = j;
  }
  return derived(std::move(out), false, has_content(v));
}

int64_t word_count(const std::string& s) {  // len(re.findall(r"\w+", s))
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : decode_utf8(s)) {
    const bool w = c == '_' || py_isalpha(c) || py_isdecimal(c) || (c < 0x80 && std::isalnum(static_cast<int>(c)));
    if (w && !in_word) ++n;
    in_word = w;
  }
  return n;
}

Value do_int(const Value& v, const Args& args) {
  auto a = bind_args("int", args, {"default", "base"});
  const Value dflt = a[0].value_or(Value::integer(0));
  const int64_t base = a[1] ? a[1]->as_int() : 10;
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_int_like()) return Value::integer(v.as_int());
  if (v.is(Type::floating)) {
    const double f = v.as_double();
    if (!std::isfinite(f)) return dflt;
    if (std::fabs(f) >= 9.2e18) fail("integer overflow (unsupported)");
    return Value::integer(static_cast<int64_t>(std::trunc(f)));
  }
  if (v.is_string()) {
    if (std::optional<int64_t> i = parse_int(v.str(), static_cast<int>(base))) return Value::integer(*i);
    if (std::optional<double> f = parse_float(v.str()))  // "42.23"|int is 42
      if (std::isfinite(*f) && std::fabs(*f) < 9.2e18) return Value::integer(static_cast<int64_t>(std::trunc(*f)));
  }
  return dflt;
}

Value do_float(const Value& v, const Args& args) {
  auto a = bind_args("float", args, {"default"});
  const Value dflt = a[0].value_or(Value::floating(0.0));
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_number()) return Value::floating(v.as_double());
  if (v.is_string())
    if (std::optional<double> f = parse_float(v.str())) return Value::floating(*f);
  return dflt;
}

Value aggregate(const Value& value, const Args& args, bool want_max) {
  auto a = bind_args(want_max ? "max" : "min", args, {"case_sensitive", "attribute"});
  std::vector<Value> items = iterate(value);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  const auto key = attrgetter(a[1].value_or(Value::none()), std::nullopt, !(a[0] && truthy(*a[0])));
  size_t best = 0;
  Value best_key = key(items[0]);
  for (size_t i = 1; i < items.size(); ++i) {  // Python keeps the first of equal extremes
    Value k = key(items[i]);
    if (want_max ? less(best_key, k) : less(k, best_key)) {
      best = i;
      best_key = std::move(k);
    }
  }
  return items[best];
}

Value do_last(const Value& v) {
  if (v.is(Type::seq) && v.as<Seq>().kind == SeqKind::iterator)
    fail(std::string("'") + type_name(v) + "' object is not reversible");
  if (v.is_number() || v.is_none() || v.is(Type::ns) || v.is(Type::function))
    fail(std::string("'") + type_name(v) + "' object is not reversible");
  if (v.is_string() && !v.str().empty()) {  // one character, without a list of all of them
    const std::string& s = v.str();
    return substring(v, code_point_before(s, s.size()), s.size(), false);
  }
  std::vector<Value> items = iterate(v);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

Value do_reverse(const Value& v) {
  if (v.is_string()) {
    std::u32string c = decode_utf8(v.str());
    std::reverse(c.begin(), c.end());
    return derived(encode_utf8(c), v.markup(), has_content(v));
  }
  std::vector<Value> items = iterate(v);  // iterators are drained into a list, as jinja2 does
  std::reverse(items.begin(), items.end());
  if (v.is(Type::seq) && v.as<Seq>().kind == SeqKind::iterator) return make_list(std::move(items));
  const char* name = v.is(Type::dict) ? "dict_reversekeyiterator"
                     : v.is(Type::seq) && v.as<Seq>().kind == SeqKind::list ? "list_reverseiterator"
                                                                             : "reversed";
  return make_iterator(std::move(items), name);
}

}  // namespace

Support filter_support(std::string_view name) {
  if (!listed(kJinjaFilters, name)) return Support::unknown;
  return listed(kUnsupportedFilters, name) ? Support::jinja_only : Support::ours;
}

Support test_support(std::string_view name) { return listed(kJinjaTests, name) ? Support::ours : Support::unknown; }

Value apply_filter(std::string_view name, const Value& v, const Args& args, const Env& env) {
  const std::string fn(name);
  if (filter_support(name) == Support::unknown) fail("no filter named '" + fn + "'");
  if (filter_support(name) == Support::jinja_only) fail("the jinja2 filter '" + fn + "' is not supported");
  auto no_args = [&] { bind_args(fn, args, {}); };
  if (name == "tojson") return do_tojson(v, args);
  if (name == "trim") {
    auto a = bind_args(fn, args, {"chars"});
    return call_method(soft_str(v), "strip", Args{{a[0].value_or(Value::none())}, {}});
  }
  if (name == "length" || name == "count") {
    no_args();
    return Value::integer(length(v));
  }
  if (name == "safe") {
    no_args();
    return str_value(v).with_markup(true);
  }
  if (name == "string") {
    no_args();
    return soft_str(v);
  }
  if (name == "upper" || name == "lower" || name == "capitalize") {
    no_args();
    return call_method(soft_str(v), name, {});
  }
  if (name == "title") {
    no_args();
    return do_title(v);
  }
  if (name == "default" || name == "d") {
    auto a = bind_args(fn, args, {"default_value", "boolean"});
    const bool boolean = a[1] && truthy(*a[1]);
    if (v.is_undefined() || (boolean && !truthy(v))) return a[0].value_or(Value::string(""));
    return v;
  }
  if (name == "join") {
    auto a = bind_args(fn, args, {"d", "attribute"});
    std::vector<Value> items = iterate(v);
    if (a[1] && !a[1]->is_none()) {
      const auto get = attrgetter(*a[1]);
      for (Value& item : items) item = get(item);
    }
    const Value sep = a[0] ? str_value(*a[0]) : Value::string("");
    TextBuilder out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out.append(sep);
      out.append(items[i]);
    }
    return out.take();
  }
  if (name == "items") {
    no_args();
    if (v.is_undefined()) return make_iterator({}, "generator");
    if (!v.is(Type::dict)) fail("Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& [k, val] : v.as<Dict>().items) out.push_back(make_tuple({k, val}));
    return make_iterator(std::move(out), "generator");
  }
  if (name == "list") {
    no_args();
    return make_list(iterate(v));
  }
  if (name == "first") {
    no_args();
    if (v.is(Type::seq) && v.as<Seq>().kind == SeqKind::iterator) {
      Seq& s = v.as<Seq>();
      if (s.pos < s.items.size()) return s.items[s.pos++];
      if (s.deferred) raise_deferred(s);
      return Value::undefined("No first item, sequence was empty.");
    }
    if (v.is_string() && !v.str().empty()) return substring(v, 0, char_bytes(v.str()[0]), false);
    std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined("No first item, sequence was empty.");
    return items.front();
  }
  if (name == "last") {
    no_args();
    return do_last(v);
  }
  if (name == "select" || name == "reject") return select_or_reject(v, args, name == "select", false);
  if (name == "selectattr" || name == "rejectattr") return select_or_reject(v, args, name == "selectattr", true);
  if (name == "map") return do_map(v, args, env);
  if (name == "replace") {
    auto a = bind_args(fn, args, {"old", "new", "count"});
    if (!a[0] || !a[1]) fail("replace() missing required arguments");
    const Value count = a[2] && !a[2]->is_none() ? *a[2] : Value::integer(-1);
    // With autoescape off jinja2 calls str(s).replace(str(old), str(new), count): plain text.
    return call_method(str_value(v), "replace", Args{{str_value(*a[0]), str_value(*a[1]), count}, {}});
  }
  if (name == "abs") {
    no_args();
    if (v.is_undefined()) fail_undefined(v);
    if (v.is_int_like()) {
      if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow (unsupported)");
      return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
    }
    if (v.is(Type::floating)) return Value::floating(std::fabs(v.as_double()));
    fail(std::string("bad operand type for abs(): '") + type_name(v) + "'");
  }
  if (name == "attr") {  // only a real attribute (for a dict, a method), never obj["name"]
    auto a = bind_args(fn, args, {"name"});
    if (!a[0] || !a[0]->is_string()) fail("attr() needs an attribute name");
    if (v.is_undefined()) fail_undefined(v);
    if (std::optional<Value> r = python_attribute(v, a[0]->str())) return *r;
    return Value::undefined(std::string("'") + type_name(v) + " object' has no attribute '" + a[0]->str() + "'");
  }
  if (name == "center") {
    auto a = bind_args(fn, args, {"width"});
    return call_method(soft_str(v), "center", Args{{a[0].value_or(Value::integer(80))}, {}});
  }
  if (name == "escape" || name == "e" || name == "forceescape") {
    no_args();
    if (name != "forceescape" && v.is_string() && v.markup()) return v;
    return derived(html_escape(to_str(v)), true, has_content(v));
  }
  if (name == "indent") return do_indent(v, args);
  if (name == "int") return do_int(v, args);
  if (name == "float") return do_float(v, args);
  if (name == "round") return do_round(v, args);
  if (name == "max" || name == "min") return aggregate(v, args, name == "max");
  if (name == "reverse") {
    no_args();
    return do_reverse(v);
  }
  if (name == "sort") {
    auto a = bind_args(fn, args, {"reverse", "case_sensitive", "attribute"});
    const auto key = multi_attrgetter(a[2].value_or(Value::none()), !(a[1] && truthy(*a[1])));
    return make_list(sorted(iterate(v), key, a[0] && truthy(*a[0])));
  }
  if (name == "dictsort") {
    auto a = bind_args(fn, args, {"case_sensitive", "by", "reverse"});
    const std::string by = a[1] ? to_str(*a[1]) : "key";
    if (by != "key" && by != "value") fail("You can only sort by either \"key\" or \"value\"");
    if (!v.is(Type::dict)) fail(std::string("'") + type_name(v) + "' object has no attribute 'items'");
    std::vector<Value> pairs;
    for (const auto& [k, val] : v.as<Dict>().items) pairs.push_back(make_tuple({k, val}));
    const bool ignore_case = !(a[0] && truthy(*a[0]));
    const size_t pos = by == "key" ? 0 : 1;
    return make_list(sorted(std::move(pairs),
                            [pos, ignore_case](const Value& p) {
                              Value x = p.as<Seq>().items[pos];
                              return ignore_case && x.is_string() ? Value::string(py_lower(x.str())) : x;
                            },
                            a[2] && truthy(*a[2])));
  }
  if (name == "unique") {
    auto a = bind_args(fn, args, {"case_sensitive", "attribute"});
    const auto key = attrgetter(a[1].value_or(Value::none()), std::nullopt, !(a[0] && truthy(*a[0])));
    std::vector<Value> seen, out;
    LazyItems src = iterate_lazy(v);
    for (const Value& item : src.items) {
      try {
        Value k = key(item);
        if (!hashable(k)) fail(std::string("unhashable type: '") + type_name(k) + "'");
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& x) { return equal(x, k); })) {
          seen.push_back(std::move(k));
          out.push_back(item);
        }
      } catch (const Fault& f) {
        return make_iterator(std::move(out), "generator", std::make_shared<const Fault>(f));
      }
    }
    return make_iterator(std::move(out), "generator", std::move(src.error));
  }
  if (name == "sum") {
    auto a = bind_args(fn, args, {"attribute", "start"});
    Value total = a[1].value_or(Value::integer(0));
    const auto get = attrgetter(a[0].value_or(Value::none()));
    for (const Value& item : iterate(v)) total = binary_op("+", total, get(item));
    return total;
  }
  if (name == "wordcount") {
    no_args();
    return Value::integer(word_count(to_str(v)));
  }
  fail("filter '" + fn + "' is not implemented");
}

bool apply_test(std::string_view name, const Value& v, const Args& args) {
  const std::string fn(name);
  if (test_support(name) == Support::unknown) fail("no test named '" + fn + "'");
  auto one = [&]() -> Value {
    auto a = bind_args(fn, args, {"other"});
    if (!a[0]) fail(fn + "() missing 1 required positional argument");
    return *a[0];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is(Type::boolean);
  if (name == "true") return v.is(Type::boolean) && v.as_bool();
  if (name == "false") return v.is(Type::boolean) && !v.as_bool();
  if (name == "integer") return v.is(Type::integer);
  if (name == "float") return v.is(Type::floating);
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is(Type::dict);
  if (name == "escaped") return v.is_string() && v.markup();
  if (name == "callable") return v.is(Type::function) || v.is(Type::loop);
  if (name == "iterable")
    return v.is_undefined() || v.is_string() || v.is(Type::seq) || v.is(Type::dict) || v.is(Type::loop);
  if (name == "sequence")  // len() and __getitem__: not iterators or dict views
    return v.is_undefined() || v.is_string() || v.is(Type::dict) ||
           (v.is(Type::seq) && (v.as<Seq>().kind == SeqKind::list || v.as<Seq>().kind == SeqKind::tuple ||
                                v.as<Seq>().kind == SeqKind::range));
  if (name == "lower" || name == "upper")
    return truthy(call_method(Value::string(to_str(v)), name == "lower" ? "islower" : "isupper", {}));
  if (name == "odd" || name == "even") {
    const Value r = binary_op("%", v, Value::integer(2));
    return equal(r, Value::integer(name == "odd" ? 1 : 0));
  }
  if (name == "divisibleby") return equal(binary_op("%", v, one()), Value::integer(0));
  if (name == "filter") return v.is_string() && filter_support(v.str()) != Support::unknown;
  if (name == "test") return v.is_string() && test_support(v.str()) != Support::unknown;
  if (name == "in") return contains(one(), v);
  if (name == "sameas") {
    const Value other = one();
    // Python identity: None, True/False and small ints are singletons; objects compare by address.
    if (v.is_none() || other.is_none() || v.is(Type::boolean) || other.is(Type::boolean))
      return v.type() == other.type() && equal(v, other);
    if (v.is(Type::integer) && other.is(Type::integer) && v.as_int() >= -5 && v.as_int() <= 256)
      return v.as_int() == other.as_int();
    if (v.object_ptr() && other.object_ptr()) return v.object_ptr() == other.object_ptr();
    if (v.type() != other.type()) return false;
    fail("'sameas' on " + std::string(type_name(v)) + " values depends on Python's object identity (unsupported)");
  }
  if (name == "==" || name == "eq" || name == "equalto") return equal(v, one());
  if (name == "!=" || name == "ne") return !equal(v, one());
  if (name == ">" || name == "gt" || name == "greaterthan") return less(one(), v);
  if (name == ">=" || name == "ge") {
    const Value o = one();
    return less(o, v) || equal(v, o);
  }
  if (name == "<" || name == "lt" || name == "lessthan") return less(v, one());
  if (name == "<=" || name == "le") {
    const Value o = one();
    return less(v, o) || equal(v, o);
  }
  fail("test '" + fn + "' is not implemented");
}

const std::vector<std::string>& global_names() {
  static const std::vector<std::string> kNames = {"range",        "dict",  "namespace", "raise_exception",
                                                  "strftime_now", "lipsum", "cycler",    "joiner"};
  return kNames;
}

namespace {

// dict(*args, **kwargs) as Python builds it: a mapping or an iterable of pairs, then keywords.
std::vector<std::pair<Value, Value>> dict_items(const char* fn, const Args& args) {
  if (args.positional.size() > 1) fail(std::string(fn) + " expected at most 1 argument, got " +
                                       std::to_string(args.positional.size()));
  std::vector<std::pair<Value, Value>> items;
  if (!args.positional.empty()) {
    const Value& src = args.positional[0];
    if (src.is(Type::dict)) {
      items = src.as<Dict>().items;
    } else {
      for (const Value& pair : iterate(src)) {
        std::vector<Value> kv = iterate(pair);
        if (kv.size() != 2) fail("dictionary update sequence element has length " + std::to_string(kv.size()) + "; 2 is required");
        items.emplace_back(std::move(kv[0]), std::move(kv[1]));
      }
    }
  }
  for (const auto& [k, v] : args.keyword) items.emplace_back(derived(k, false, args.keyword_content), v);
  return items;
}

std::string strftime_now(const std::string& format, const Env& env) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = env.now ? *env.now : std::chrono::system_clock::to_time_t(now);
  const long micros = env.now ? 0 : static_cast<long>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                          now.time_since_epoch()).count() % 1000000);
  std::tm tm{};
  localtime_r(&t, &tm);
  // datetime.strftime handles %f itself (microseconds), then calls the C library for the rest.
  std::string fmt;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] == '%' && i + 1 < format.size()) {
      if (format[i + 1] == 'f') {
        char us[8];
        std::snprintf(us, sizeof us, "%06ld", micros);
        fmt += us;
        ++i;
        continue;
      }
      fmt += format[i];
      fmt += format[++i];
      continue;
    }
    fmt += format[i];
  }
  check_size(256 + fmt.size() * 8);  // the buffer below, for a format string from the template
  std::string out(256 + fmt.size() * 8, '\0');
  const size_t n = std::strftime(out.data(), out.size(), fmt.c_str(), &tm);
  out.resize(n);
  return out;
}

}  // namespace

Value call_global(std::string_view name, const Args& args, const Env& env) {
  if (name == "raise_exception") {
    auto a = bind_args("raise_exception", args, {"message"});
    if (!a[0]) fail("raise_exception() missing 1 required positional argument: 'message'");
    throw Fault{to_str(*a[0]), 0, true};
  }
  if (name == "strftime_now") {
    auto a = bind_args("strftime_now", args, {"format"});
    if (!a[0] || !a[0]->is_string()) fail("strftime_now() argument must be str");
    return derived(strftime_now(a[0]->str(), env), false, has_content(*a[0]));
  }
  if (name == "namespace") {
    auto ns = std::make_shared<Namespace>();
    for (auto& [k, v] : dict_items("namespace", args)) {
      if (!k.is_string()) fail("namespace attribute names must be strings");
      ns->content_names = ns->content_names || has_content(k);
      if (!k.str().empty() && k.str()[0] == '_')
        fail("chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + k.str() + "'");
      if (Value* slot = ns->find(k.str())) {
        *slot = std::move(v);
      } else {
        ns->attrs.emplace_back(k.str(), std::move(v));
      }
    }
    if (env.namespaces) env.namespaces->push_back(ns);
    return Value::object(Type::ns, std::move(ns));
  }
  if (name == "dict") return make_dict(dict_items("dict", args));
  if (name == "range") {
    if (!args.keyword.empty()) fail("range() takes no keyword arguments");
    const auto& p = args.positional;
    if (p.empty() || p.size() > 3) fail("range expected 1 to 3 arguments, got " + std::to_string(p.size()));
    for (const Value& x : p)
      if (!x.is_int_like()) fail(std::string("'") + type_name(x) + "' object cannot be interpreted as an integer");
    const int64_t start = p.size() > 1 ? p[0].as_int() : 0, stop = p.size() > 1 ? p[1].as_int() : p[0].as_int();
    const int64_t step = p.size() > 2 ? p[2].as_int() : 1;
    if (step == 0) fail("range() arg 3 must not be zero");
    const long double count = step > 0 ? std::ceil((static_cast<long double>(stop) - start) / step)
                                       : std::ceil((static_cast<long double>(start) - stop) / -static_cast<long double>(step));
    if (count > 100000)  // jinja2's sandbox MAX_RANGE
      fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    std::vector<Value> items;
    for (int64_t i = 0; i < static_cast<int64_t>(count); ++i) items.push_back(Value::integer(start + i * step));
    Value r = make_seq(SeqKind::range, std::move(items));
    r.as<Seq>().start = start;
    r.as<Seq>().stop = stop;
    r.as<Seq>().step = step;
    return r;
  }
  fail("the jinja2 global '" + std::string(name) + "' is not supported");
}

}  // namespace moerun::chat
