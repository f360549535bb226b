// Python's object semantics as jinja2's sandbox exposes them: attribute and item lookup, slicing,
// the str/dict/list methods templates call, and the arithmetic, comparison and `in` operators.

#include <algorithm>
#include <cmath>
#include <limits>

#include "chat/builtins.h"
#include "chat/interpreter.h"
#include "chat/text.h"
#include "chat/unicode.h"

namespace moerun::chat {

std::vector<std::optional<Value>> bind_args(std::string_view fn, const Args& args,
                                            std::initializer_list<std::string_view> names, bool keywords) {
  std::vector<std::optional<Value>> out(names.size());
  if (args.positional.size() > names.size())
    fail(std::string(fn) + "() takes at most " + std::to_string(names.size()) + " argument(s) (" +
         std::to_string(args.positional.size()) + " given)");
  for (size_t i = 0; i < args.positional.size(); ++i) out[i] = args.positional[i];
  if (!keywords && !args.keyword.empty()) fail(std::string(fn) + "() takes no keyword arguments");
  for (const auto& [k, v] : args.keyword) {
    const auto it = std::find(names.begin(), names.end(), k);
    if (it == names.end()) fail(std::string(fn) + "() got an unexpected keyword argument '" + k + "'");
    auto& slot = out[static_cast<size_t>(it - names.begin())];
    if (slot) fail(std::string(fn) + "() got multiple values for argument '" + k + "'");
    slot = v;
  }
  return out;
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

// --- helpers -----------------------------------------------------------------------------------
[[noreturn]] void overflow() { fail("integer overflow (Python integers are unbounded; unsupported)"); }

int64_t checked_add(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) overflow();
  return r;
}
int64_t checked_sub(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_sub_overflow(a, b, &r)) overflow();
  return r;
}
int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) overflow();
  return r;
}

std::string in_quotes(std::string_view s) { return "'" + std::string(s) + "'"; }

Value undefined_attr(const Value& obj, const std::string& name) {
  const std::string type = obj.is_none() ? "None" : std::string(type_name(obj)) + " object";
  return Value::undefined(in_quotes(type) + " has no attribute " + in_quotes(name));
}
Value undefined_item(const Value& obj, const Value& key) {
  if (key.is_string()) return undefined_attr(obj, key.str());
  const std::string type = obj.is_none() ? "None" : std::string(type_name(obj)) + " object";
  return Value::undefined(type + " has no element " + repr(key));
}
Value unsafe(const Value& obj, const std::string& name) {
  return Value::undefined("access to attribute " + in_quotes(name) + " of " + in_quotes(type_name(obj)) +
                          " object is unsafe.");
}

bool one_of(std::string_view name, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}
template <size_t N>
bool one_of(std::string_view name, const std::string_view (&names)[N]) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

// Python attributes of the builtin types, so obj.name finds the method (not obj["name"]) exactly
// where Python would. Methods that mutate are what ImmutableSandboxedEnvironment blocks.
constexpr std::string_view kStrMethods[] = {
    "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format",
    "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
    "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans",
    "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
    "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill"};
constexpr std::string_view kDictMethods[] = {"copy", "fromkeys", "get", "items", "keys", "values"};
constexpr std::string_view kDictMutators[] = {"clear", "pop", "popitem", "setdefault", "update"};
constexpr std::string_view kListMethods[] = {"copy", "count", "index"};
constexpr std::string_view kListMutators[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};
constexpr std::string_view kNumberAttrs[] = {
    "as_integer_ratio", "bit_count", "bit_length", "conjugate", "denominator", "from_bytes", "imag",
    "numerator", "real", "to_bytes", "fromhex", "hex", "is_integer"};

}  // namespace

std::optional<Value> python_attribute(const Value& obj, const std::string& name) {
  if (name.size() > 1 && name[0] == '_' && name[1] == '_') return unsafe(obj, name);  // dunders
  switch (obj.type()) {
    case Type::string:
      if (one_of(name, kStrMethods)) return make_function(Function::Kind::method, name, obj);
      break;
    case Type::dict:
      if (one_of(name, kDictMutators)) return unsafe(obj, name);
      if (one_of(name, kDictMethods)) return make_function(Function::Kind::method, name, obj);
      break;
    case Type::seq: {
      const SeqKind k = obj.as<Seq>().kind;
      if (k == SeqKind::list && one_of(name, kListMutators)) return unsafe(obj, name);
      if ((k == SeqKind::list && one_of(name, kListMethods)) ||
          (k == SeqKind::tuple && one_of(name, {"count", "index"})))
        return make_function(Function::Kind::method, name, obj);
      if (k == SeqKind::range && one_of(name, {"start", "stop", "step"}))
        return Value::integer(name == "start" ? obj.as<Seq>().start : name == "stop" ? obj.as<Seq>().stop : obj.as<Seq>().step);
      if (k != SeqKind::list && k != SeqKind::tuple &&
          one_of(name, {"mapping", "isdisjoint", "send", "throw", "close", "count", "index"}))
        fail("attribute '" + name + "' of " + type_name(obj) + " is not supported");
      break;
    }
    case Type::ns: {
      if (Value* v = obj.as<Namespace>().find(name)) return *v;
      break;
    }
    case Type::boolean:
    case Type::integer:
    case Type::floating:
      if (one_of(name, kNumberAttrs)) fail("attribute '" + name + "' of numbers is not supported");
      break;
    default: break;
  }
  return std::nullopt;
}

namespace {

// --- indices and slices --------------------------------------------------------------------------
Value element(const Value& obj, const std::vector<Value>& items, int64_t i) {
  const auto n = static_cast<int64_t>(items.size());
  const int64_t k = i < 0 ? i + n : i;
  if (k < 0 || k >= n) return undefined_item(obj, Value::integer(i));
  return items[static_cast<size_t>(k)];
}

// PySlice_AdjustIndices: where a slice of a sequence of `n` starts, stops and steps.
struct SliceSpec {
  int64_t start, stop, step;
};
SliceSpec slice_spec(int64_t n, const Value& start_v, const Value& stop_v, const Value& step_v) {
  const int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) fail("slice step cannot be zero");
  auto adjust = [&](const Value& v, bool is_start) {
    const int64_t lower = step < 0 ? -1 : 0, upper = step < 0 ? n - 1 : n;
    if (v.is_none()) return is_start ? (step < 0 ? upper : lower) : (step < 0 ? lower : upper);
    int64_t x = v.as_int();
    if (x < 0) {
      x = x < -n ? lower : x + n;
      return std::max(x, lower);
    }
    return std::min(x, upper);
  };
  return {adjust(start_v, true), adjust(stop_v, false), step};
}

// The indices a slice visits in a sequence of `n`.
std::vector<int64_t> slice_indices(int64_t n, const Value& start_v, const Value& stop_v, const Value& step_v) {
  const SliceSpec sl = slice_spec(n, start_v, stop_v, step_v);
  std::vector<int64_t> out;
  for (int64_t i = sl.start; sl.step > 0 ? i < sl.stop : i > sl.stop; i += sl.step) out.push_back(i);
  return out;
}

// The byte offset of code point `cp` of valid UTF-8, walking forward from code point `from_cp` at
// byte `from` (no table: a string may be 256 MiB).
size_t byte_of(std::string_view s, size_t from, int64_t from_cp, int64_t cp) {
  for (; from_cp < cp; ++from_cp) from += char_bytes(s[from]);
  return from;
}

// s[start:stop:step] of a string, in code points, character by character with their spans.
Value slice_string(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  const std::string& s = obj.str();
  const SliceSpec sl = slice_spec(static_cast<int64_t>(code_point_count(s)), start, stop, step);
  TextBuilder out;
  if (sl.step == 1) {  // one run of bytes
    if (sl.start < sl.stop) {
      const size_t b = byte_of(s, 0, 0, sl.start);
      out.append_sub(obj, b, byte_of(s, b, sl.start, sl.stop));
    }
  } else if (sl.step > 0) {
    size_t at = 0;
    int64_t cp = 0;
    for (int64_t i = sl.start; i < sl.stop; i += sl.step) {
      at = byte_of(s, at, cp, i);
      cp = i;
      out.append_sub(obj, at, at + char_bytes(s[at]));
    }
  } else {  // backwards from the end
    size_t at = s.size();
    int64_t cp = static_cast<int64_t>(code_point_count(s));
    for (int64_t i = sl.start; i > sl.stop; i += sl.step) {
      for (; cp > i; --cp) at = code_point_before(s, at);
      out.append_sub(obj, at, at + char_bytes(s[at]));
    }
  }
  return out.take(obj.markup());
}

// --- strings ---------------------------------------------------------------------------------------
std::u32string strip_set(const Value& chars, const char* fn) {
  if (chars.is_none()) return {};
  if (!chars.is_string()) fail(std::string(fn) + " arg must be None or str");
  return decode_utf8(chars.str());
}

// Byte ranges of parts of a string: strip, split and splitlines return where their parts are, so
// the parts keep their content spans (chat/text.h).
using Range = std::pair<size_t, size_t>;

Range strip(std::string_view s, const Value& chars, bool left, bool right, const char* fn) {
  // Walks in from both ends one character at a time: only the stripped characters are decoded.
  const std::u32string set = strip_set(chars, fn);
  const bool ws = chars.is_none();
  auto strip_it = [&](char32_t c) { return ws ? py_isspace(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && strip_it(code_point_at(s, b))) b += char_bytes(s[b]);
  if (right)
    while (e > b && strip_it(code_point_at(s, code_point_before(s, e)))) e = code_point_before(s, e);
  return {b, e};
}

// Python's split() builds one string per part; ours would fail at make_list anyway, so fail before
// holding more parts than a list may have (a 200 MB string of commas is 100M parts).
void check_parts(size_t n) {
  if (n > kMaxItems) fail("sequence of more than " + std::to_string(kMaxItems) + " items");
}

std::vector<Range> split(std::string_view s, const Value& sep, int64_t maxsplit, bool from_right) {
  std::vector<Range> out;
  if (maxsplit < 0) maxsplit = std::numeric_limits<int64_t>::max();
  auto space_at = [&](size_t i) { return py_isspace(code_point_at(s, i)); };
  if (sep.is_none()) {  // CPython split_whitespace / rsplit_whitespace, over bytes
    if (!from_right) {
      size_t i = 0, n = s.size();
      while (maxsplit-- > 0) {
        while (i < n && space_at(i)) i += char_bytes(s[i]);
        if (i == n) break;
        const size_t j = i;
        while (i < n && !space_at(i)) i += char_bytes(s[i]);
        out.emplace_back(j, i);
        check_parts(out.size());
      }
      while (i < n && space_at(i)) i += char_bytes(s[i]);
      if (i < n) out.emplace_back(i, n);
    } else {
      size_t i = s.size();
      while (maxsplit-- > 0) {
        while (i > 0 && space_at(code_point_before(s, i))) i = code_point_before(s, i);
        if (i == 0) break;
        const size_t j = i;
        while (i > 0 && !space_at(code_point_before(s, i))) i = code_point_before(s, i);
        out.emplace_back(i, j);
        check_parts(out.size());
      }
      while (i > 0 && space_at(code_point_before(s, i))) i = code_point_before(s, i);
      if (i > 0) out.emplace_back(0, i);
      std::reverse(out.begin(), out.end());
    }
    return out;
  }
  if (!sep.is_string()) fail(std::string("must be str or None, not ") + type_name(sep));
  const std::string& d = sep.str();
  if (d.empty()) fail("empty separator");
  if (!from_right) {
    size_t start = 0;
    for (size_t p; maxsplit > 0 && (p = s.find(d, start)) != std::string_view::npos; --maxsplit) {
      out.emplace_back(start, p);
      check_parts(out.size());
      start = p + d.size();
    }
    out.emplace_back(start, s.size());
  } else {
    size_t end = s.size();
    for (; maxsplit > 0 && end >= d.size(); --maxsplit) {
      const size_t p = s.rfind(d, end - d.size());
      if (p == std::string_view::npos) break;
      out.emplace_back(p + d.size(), end);
      check_parts(out.size());
      end = p;
    }
    out.emplace_back(0, end);
    std::reverse(out.begin(), out.end());
  }
  return out;
}

std::vector<Range> splitlines(std::string_view s, bool keepends) {
  auto line_break = [](char32_t x) {
    return x == '\n' || x == '\r' || x == 0x0B || x == 0x0C || x == 0x1C || x == 0x1D || x == 0x1E || x == 0x85 ||
           x == 0x2028 || x == 0x2029;
  };
  std::vector<Range> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size() && !line_break(code_point_at(s, j))) j += char_bytes(s[j]);
    size_t eol = j;
    if (j < s.size()) eol = s[j] == '\r' && j + 1 < s.size() && s[j + 1] == '\n' ? j + 2 : j + char_bytes(s[j]);
    out.emplace_back(i, keepends ? eol : j);
    check_parts(out.size());
    i = eol;
  }
  return out;
}

// str.replace: the kept parts of `s` and each inserted `with` keep their spans.
Value replace(const Value& s, std::string_view old, const Value& with, int64_t count, bool markup) {
  const std::string& text = s.str();
  if (count < 0) count = std::numeric_limits<int64_t>::max();
  TextBuilder out;
  if (old.empty()) {  // Python inserts `with` before every character and at the end
    for (size_t i = 0;; i += char_bytes(text[i])) {
      if (count > 0) {
        out.append(with);
        --count;
      }
      if (i >= text.size()) break;
      out.append_sub(s, i, i + char_bytes(text[i]));
    }
    return out.take(markup);
  }
  size_t start = 0;
  for (size_t p; count > 0 && (p = text.find(old, start)) != std::string::npos; --count) {
    out.append_sub(s, start, p);
    out.append(with);
    start = p + old.size();
  }
  out.append_sub(s, start, text.size());
  return out.take(markup);
}

// CPython's ADJUST_INDICES for str.find(sub, start, end) and friends, in code points: negative
// values count from the end; start is not clamped to the length (so find("", 9) fails).
std::pair<int64_t, int64_t> adjust_indices(const std::optional<Value>& start_v, const std::optional<Value>& end_v,
                                           int64_t n) {
  auto arg = [](const std::optional<Value>& v, int64_t dflt) {
    if (!v || v->is_none()) return dflt;
    if (!v->is_int_like()) fail("slice indices must be integers or None or have an __index__ method");
    return v->as_int();
  };
  int64_t b = arg(start_v, 0), e = arg(end_v, n);
  if (e > n) {
    e = n;
  } else if (e < 0) {
    e = std::max<int64_t>(0, e + n);
  }
  if (b < 0) b = std::max<int64_t>(0, b + n);
  return {b, e};
}

// No start or end given: the whole string, where a match of valid UTF-8 in valid UTF-8 can only begin
// at a character, so searching bytes gives Python's answers.
bool whole_string(const std::optional<Value>& start, const std::optional<Value>& end) {
  return (!start || start->is_none()) && (!end || end->is_none());
}

// The first (or last) match of needle in hay[b:e], or -1.
int64_t find(const std::u32string& hay, const std::u32string& needle, int64_t b, int64_t e, bool from_right) {
  if (e - b < static_cast<int64_t>(needle.size())) return -1;
  const std::u32string_view window = std::u32string_view(hay).substr(static_cast<size_t>(b), static_cast<size_t>(e - b));
  const size_t p = from_right ? window.rfind(needle) : window.find(needle);
  return p == std::u32string_view::npos ? -1 : b + static_cast<int64_t>(p);
}

std::string pad(std::string_view s, int64_t width, const Value& fill, int where /* -1 ljust, 0 center, 1 rjust */) {
  char32_t f = ' ';
  if (!fill.is_undefined()) {
    if (!fill.is_string() || code_point_count(fill.str()) != 1)
      fail("The fill character must be exactly one character long");
    f = decode_utf8(fill.str())[0];
  }
  const auto len = static_cast<int64_t>(code_point_count(s));
  if (width <= len) return std::string(s);
  if (width > static_cast<int64_t>(kMaxStringBytes)) check_size(static_cast<size_t>(width));
  const int64_t marg = width - len;
  const size_t bytes = s.size() + static_cast<size_t>(marg) * utf8_bytes(f);  // a fill may be 4 bytes
  check_size(bytes);
  check_budget(bytes);
  // CPython str.center: left = marg / 2 + (marg & width & 1)
  const int64_t left = where < 0 ? 0 : where > 0 ? marg : marg / 2 + (marg & width & 1);
  std::string out;
  for (int64_t i = 0; i < left; ++i) append_utf8(out, f);
  out += s;
  for (int64_t i = left; i < marg; ++i) append_utf8(out, f);
  return out;
}

Value str_list(const Value& self, const std::vector<Range>& parts, bool markup) {
  std::vector<Value> items;
  for (const auto& [b, e] : parts) items.push_back(substring(self, b, e, markup));
  return make_list(std::move(items));
}

int64_t int_arg(const std::optional<Value>& v, int64_t dflt, const char* what) {
  if (!v || v->is_none()) return dflt;
  if (!v->is_int_like()) fail(std::string(what) + ": '" + type_name(*v) + "' object cannot be interpreted as an integer");
  return v->as_int();
}

const std::string& str_arg(const std::optional<Value>& v, const char* fn) {
  if (!v || !v->is_string())
    fail(std::string(fn) + "() argument must be str, not " + (v ? type_name(*v) : "nothing"));
  return v->str();
}

// isdigit/isnumeric need Unicode numeric types that utf8proc does not expose: exact for ASCII and
// decimal digits (category Nd); other non-ASCII characters that might be numeric are an error
// (for isnumeric even letters: CJK numerals are Lo and numeric).
bool numeric_char(char32_t c, bool letters_may_be_numeric, bool& unknown) {
  if (c < 0x80) return c >= '0' && c <= '9';
  if (py_isdecimal(c)) return true;
  if (!py_isspace(c) && (letters_may_be_numeric || !py_isalpha(c))) unknown = true;
  return false;
}

Value str_method(const Value& self, std::string_view name, const Args& args) {
  const std::string& s = self.str();
  const bool markup = self.markup();
  // On Markup (markupsafe 3) the results stay Markup and some arguments are escaped: replace's
  // `new`, the fill character of center/ljust/rjust and the items of join.
  // An escaped argument's text changes, so all of it is content when any of it was.
  auto escaped = [&](const Value& arg) {
    return markup && !arg.markup() ? derived(html_escape(arg.str()), false, has_content(arg)) : arg;
  };
  const std::string fn(name);
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    bind_args(fn, args, {}, false);
    const std::string r = name == "upper"   ? py_upper(s)
                          : name == "lower" ? py_lower(s)
                          : name == "title" ? py_title(s)
                                            : py_capitalize(s);
    return derived(r, markup, has_content(self));
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    auto a = bind_args(fn, args, {"chars"}, false);
    const auto [b, e] = strip(s, a[0].value_or(Value::none()), name != "rstrip", name != "lstrip", fn.c_str());
    return substring(self, b, e, markup);
  }
  if (name == "split" || name == "rsplit") {
    auto a = bind_args(fn, args, {"sep", "maxsplit"});
    return str_list(self, split(s, a[0].value_or(Value::none()), int_arg(a[1], -1, fn.c_str()), name == "rsplit"),
                    markup);
  }
  if (name == "splitlines") {
    auto a = bind_args(fn, args, {"keepends"});
    return str_list(self, splitlines(s, a[0] && truthy(*a[0])), markup);
  }
  if (name == "replace") {
    auto a = bind_args(fn, args, {"old", "new", "count"}, false);
    const std::string& old = str_arg(a[0], "replace");
    str_arg(a[1], "replace");
    const int64_t count = int_arg(a[2], -1, "replace");
    return replace(self, old, escaped(*a[1]), count, markup);
  }
  if (name == "startswith" || name == "endswith") {
    auto a = bind_args(fn, args, {"prefix", "start", "end"}, false);
    if (!a[0]) fail(fn + "() takes at least 1 argument (0 given)");
    std::vector<Value> options = a[0]->is(Type::seq) && a[0]->as<Seq>().kind == SeqKind::tuple ? a[0]->as<Seq>().items
                                                                                                 : std::vector<Value>{*a[0]};
    if (whole_string(a[1], a[2])) {  // the usual call: bytes, without decoding a long content
      for (const Value& o : options) {
        if (!o.is_string()) fail(fn + " first arg must be str or a tuple of str, not " + type_name(o));
        const std::string& x = o.str();
        if (x.size() <= s.size() && s.compare(name == "startswith" ? 0 : s.size() - x.size(), x.size(), x) == 0)
          return Value::boolean(true);
      }
      return Value::boolean(false);
    }
    const std::u32string hay = decode_utf8(s);
    const auto [b, e] = adjust_indices(a[1], a[2], static_cast<int64_t>(hay.size()));
    for (const Value& o : options) {
      if (!o.is_string())
        fail(fn + " first arg must be str or a tuple of str, not " + type_name(o));
      const std::u32string needle = decode_utf8(o.str());
      if (e - b < static_cast<int64_t>(needle.size())) continue;
      const size_t at = name == "startswith" ? static_cast<size_t>(b) : static_cast<size_t>(e) - needle.size();
      if (hay.compare(at, needle.size(), needle) == 0) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    auto a = bind_args(fn, args, {"sub", "start", "end"}, false);
    if (whole_string(a[1], a[2])) {  // bytes; an index is the number of code points before the match
      const std::string& x = str_arg(a[0], fn.c_str());
      if (name == "count") {
        if (x.empty()) return Value::integer(static_cast<int64_t>(code_point_count(s)) + 1);
        int64_t n = 0;
        for (size_t p = s.find(x); p != std::string::npos; p = s.find(x, p + x.size())) ++n;
        return Value::integer(n);
      }
      const size_t p = name[0] == 'r' ? s.rfind(x) : s.find(x);
      if (p == std::string::npos && (name == "index" || name == "rindex")) fail("substring not found");
      return Value::integer(p == std::string::npos ? -1 : static_cast<int64_t>(code_point_count(std::string_view(s).substr(0, p))));
    }
    const std::u32string hay = decode_utf8(s), needle = decode_utf8(str_arg(a[0], fn.c_str()));
    const auto [b, e] = adjust_indices(a[1], a[2], static_cast<int64_t>(hay.size()));
    if (name == "count") {  // non-overlapping matches; an empty needle matches between every character
      if (e - b < static_cast<int64_t>(needle.size())) return Value::integer(0);
      if (needle.empty()) return Value::integer(e - b + 1);
      int64_t n = 0;
      for (int64_t p = find(hay, needle, b, e, false); p >= 0;
           p = find(hay, needle, p + static_cast<int64_t>(needle.size()), e, false))
        ++n;
      return Value::integer(n);
    }
    const int64_t p = find(hay, needle, b, e, name[0] == 'r');
    if (p < 0 && (name == "index" || name == "rindex")) fail("substring not found");
    return Value::integer(p);
  }
  if (name == "join") {
    auto a = bind_args(fn, args, {"iterable"}, false);
    if (!a[0]) fail("join() takes exactly one argument (0 given)");
    TextBuilder out;
    size_t i = 0;
    for (const Value& item : iterate(*a[0])) {
      if (!item.is_string())
        fail("sequence item " + std::to_string(i) + ": expected str instance, " + type_name(item) + " found");
      if (i++) out.append(self);
      out.append(escaped(item));
    }
    return out.take(markup);
  }
  if (name == "removeprefix" || name == "removesuffix") {
    auto a = bind_args(fn, args, {"affix"}, false);
    const std::string& x = str_arg(a[0], fn.c_str());
    if (name == "removeprefix" && s.compare(0, x.size(), x) == 0) return substring(self, x.size(), s.size(), markup);
    if (name == "removesuffix" && !x.empty() && s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0)
      return substring(self, 0, s.size() - x.size(), markup);
    return self;
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    auto a = bind_args(fn, args, {"width", "fillchar"}, false);
    if (!a[0]) fail(fn + "() takes at least 1 argument (0 given)");
    const int where = name == "center" ? 0 : name == "ljust" ? -1 : 1;
    Value fill = a[1].value_or(Value());
    if (fill.is_string() && markup) fill = escaped(fill);
    return derived(pad(s, int_arg(a[0], 0, fn.c_str()), fill, where), markup, has_content(self) || has_content(fill));
  }
  if (name == "zfill") {
    auto a = bind_args(fn, args, {"width"}, false);
    const int64_t width = int_arg(a[0], 0, "zfill");
    const auto len = static_cast<int64_t>(code_point_count(s));
    if (width <= len) return self;
    check_size(static_cast<size_t>(width));
    const bool sign = !s.empty() && (s[0] == '+' || s[0] == '-');
    std::string out = sign ? s.substr(0, 1) : std::string();
    out += std::string(static_cast<size_t>(width - len), '0') + s.substr(sign ? 1 : 0);
    return derived(std::move(out), markup, has_content(self));
  }
  if (name == "partition" || name == "rpartition") {
    auto a = bind_args(fn, args, {"sep"}, false);
    const std::string& sep = str_arg(a[0], fn.c_str());
    if (sep.empty()) fail("empty separator");
    const size_t p = name == "partition" ? s.find(sep) : s.rfind(sep);
    const Value empty = Value::string("", markup);
    std::vector<Value> parts;
    if (p == std::string::npos) {
      parts = name == "partition" ? std::vector<Value>{self, empty, empty} : std::vector<Value>{empty, empty, self};
    } else {
      parts = {substring(self, 0, p, markup), a[0]->with_markup(markup), substring(self, p + sep.size(), s.size(), markup)};
    }
    return make_tuple(std::move(parts));
  }
  if (name.substr(0, 2) == "is") {
    bind_args(fn, args, {}, false);
    const std::u32string c = decode_utf8(s);
    if (name == "isspace") return Value::boolean(!c.empty() && std::all_of(c.begin(), c.end(), py_isspace));
    if (name == "isalpha") return Value::boolean(!c.empty() && std::all_of(c.begin(), c.end(), py_isalpha));
    if (name == "isdecimal") return Value::boolean(!c.empty() && std::all_of(c.begin(), c.end(), py_isdecimal));
    if (name == "isascii") return Value::boolean(std::all_of(c.begin(), c.end(), [](char32_t x) { return x < 0x80; }));
    if (name == "islower" || name == "isupper") {
      bool cased = false;
      for (char32_t x : c) {
        const bool lower = py_islower(x), upper = py_isupper(x), title = py_iscased(x) && !lower && !upper;
        if (title || (name == "islower" ? upper : lower)) return Value::boolean(false);
        cased |= name == "islower" ? lower : upper;
      }
      return Value::boolean(cased);
    }
    if (name == "isdigit" || name == "isnumeric" || name == "isalnum") {
      bool unknown = false, all = !c.empty();
      for (char32_t x : c) {
        const bool alpha = name == "isalnum" && py_isalpha(x);
        if (!alpha && !numeric_char(x, name == "isnumeric", unknown)) all = false;
      }
      if (unknown) fail("str." + fn + "() on this text needs Unicode numeric data (unsupported)");
      return Value::boolean(all);
    }
  }
  fail("str." + fn + "() is not supported");
}

Value dict_method(const Value& self, std::string_view name, const Args& args) {
  const Dict& d = self.as<Dict>();
  const std::string fn(name);
  if (name == "get") {
    auto a = bind_args(fn, args, {"key", "default"}, false);
    if (!a[0]) fail("get expected at least 1 argument, got 0");
    if (!hashable(*a[0])) fail(std::string("unhashable type: '") + type_name(*a[0]) + "'");
    const Value* v = d.find(*a[0]);
    return v ? *v : a[1].value_or(Value::none());
  }
  bind_args(fn, args, {}, false);
  if (name == "copy") return make_dict(d.items);
  std::vector<Value> out;
  for (const auto& [k, v] : d.items) {
    if (name == "keys") out.push_back(k);
    else if (name == "values") out.push_back(v);
    else out.push_back(make_tuple({k, v}));
  }
  if (name == "keys") return make_seq(SeqKind::dict_keys, std::move(out));
  if (name == "values") return make_seq(SeqKind::dict_values, std::move(out));
  if (name == "items") return make_seq(SeqKind::dict_items, std::move(out));
  fail("dict." + fn + "() is not supported");
}

Value seq_method(const Value& self, std::string_view name, const Args& args) {
  const Seq& s = self.as<Seq>();
  const std::string fn(name);
  if (name == "copy") {
    bind_args(fn, args, {}, false);
    return make_list(s.items);
  }
  auto a = bind_args(fn, args, {"value", "start", "stop"}, false);
  if (!a[0]) fail(fn + "() takes at least 1 argument (0 given)");
  if (name == "count") {
    bind_args(fn, args, {"value"}, false);
    return Value::integer(std::count_if(s.items.begin(), s.items.end(), [&](const Value& v) { return equal(v, *a[0]); }));
  }
  const auto n = static_cast<int64_t>(s.items.size());
  auto clamp = [n](const std::optional<Value>& v, int64_t dflt) {
    int64_t x = int_arg(v, dflt, "index");
    if (x < 0) x = std::max<int64_t>(0, x + n);
    return std::min(x, n);
  };
  for (int64_t i = clamp(a[1], 0), e = clamp(a[2], n); i < e; ++i)
    if (equal(s.items[static_cast<size_t>(i)], *a[0])) return Value::integer(i);
  fail(repr(*a[0]) + " is not in " + s.type_name);
}

// --- arithmetic ------------------------------------------------------------------------------------
double float_floordiv(double vx, double wx) {  // CPython float_floor_div
  if (wx == 0) fail("float floor division by zero");
  double mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod != 0) {
    if ((wx < 0) != (mod < 0)) div -= 1.0;
  }
  if (div != 0) {
    double floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
    return floordiv;
  }
  return std::copysign(0.0, vx / wx);
}

double float_mod(double vx, double wx) {  // CPython float_rem
  if (wx == 0) fail("float modulo");
  double mod = std::fmod(vx, wx);
  if (mod != 0) {
    if ((wx < 0) != (mod < 0)) mod += wx;
  } else {
    mod = std::copysign(0.0, wx);
  }
  return mod;
}

Value repeat(const Value& seq, int64_t times) {
  if (seq.is_string()) {
    const std::string& s = seq.str();
    if (times <= 0 || s.empty()) return Value::string("", seq.markup());
    if (static_cast<uint64_t>(times) > kMaxStringBytes / s.size()) check_size(kMaxStringBytes + 1);
    const size_t n = s.size() * static_cast<size_t>(times);
    check_budget(n);  // before allocating it
    std::string out;
    out.reserve(n);
    out += s;
    while (out.size() < n) out.append(out, 0, std::min(out.size(), n - out.size()));  // doubling copies
    return derived(std::move(out), seq.markup(), has_content(seq));
  }
  const Seq& s = seq.as<Seq>();
  std::vector<Value> out;
  if (times > 0 && !s.items.empty()) {
    if (static_cast<uint64_t>(times) > kMaxItems / s.items.size()) fail("sequence too long");
    check_budget(static_cast<size_t>(times) * s.items.size() * sizeof(Value));
    for (int64_t i = 0; i < times; ++i) out.insert(out.end(), s.items.begin(), s.items.end());
  }
  return make_seq(s.kind, std::move(out));
}

bool is_list_or_tuple(const Value& v) {
  return v.is(Type::seq) && (v.as<Seq>().kind == SeqKind::list || v.as<Seq>().kind == SeqKind::tuple);
}

[[noreturn]] void unsupported_operands(std::string_view op, const Value& a, const Value& b) {
  fail("unsupported operand type(s) for " + std::string(op) + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

}  // namespace

// --- lookups ---------------------------------------------------------------------------------------
Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (std::optional<Value> attr = python_attribute(obj, name)) return *attr;
  if (obj.is(Type::dict))
    if (const Value* v = obj.as<Dict>().find(name)) return *v;
  return undefined_attr(obj, name);
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) fail_undefined(obj);
  switch (obj.type()) {
    case Type::dict:
      if (hashable(key))
        if (const Value* v = obj.as<Dict>().find(key)) return *v;
      break;
    case Type::seq: {
      const Seq& s = obj.as<Seq>();
      if (key.is_int_like() && s.kind != SeqKind::iterator && s.kind != SeqKind::dict_keys &&
          s.kind != SeqKind::dict_values && s.kind != SeqKind::dict_items)
        return element(obj, s.items, key.as_int());
      break;
    }
    case Type::string:
      if (key.is_int_like()) {
        const std::string& s = obj.str();
        const auto n = static_cast<int64_t>(code_point_count(s));
        const int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
        if (i < 0 || i >= n) return undefined_item(obj, key);
        const size_t at = byte_of(s, 0, 0, i);
        return substring(obj, at, at + char_bytes(s[at]), obj.markup());
      }
      break;
    default: break;
  }
  if (key.is_string())  // obj["name"] falls back to the attribute, as jinja2's getitem
    if (std::optional<Value> attr = python_attribute(obj, key.str())) return *attr;
  return undefined_item(obj, key);
}

Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  // jinja2 compiles x[a:b] to a plain Python subscript (not environment.getitem), so errors propagate.
  if (obj.is_undefined()) fail_undefined(obj);
  for (const Value* v : {&start, &stop, &step})
    if (!v->is_none() && !v->is_int_like()) fail("slice indices must be integers or None or have an __index__ method");
  if (obj.is_string()) return slice_string(obj, start, stop, step);
  if (obj.is(Type::seq)) {
    const Seq& s = obj.as<Seq>();
    if (s.kind == SeqKind::list || s.kind == SeqKind::tuple || s.kind == SeqKind::range) {
      std::vector<Value> out;
      const std::vector<int64_t> idx = slice_indices(static_cast<int64_t>(s.items.size()), start, stop, step);
      for (int64_t i : idx) out.push_back(s.items[static_cast<size_t>(i)]);
      Value r = make_seq(s.kind, std::move(out));
      if (s.kind == SeqKind::range) {  // range(...)[a:b:c] is a range again
        Seq& rs = r.as<Seq>();
        const int64_t k = step.is_none() ? 1 : step.as_int();
        rs.step = s.step * k;
        rs.start = idx.empty() ? s.start : s.start + idx.front() * s.step;
        rs.stop = rs.start + static_cast<int64_t>(idx.size()) * rs.step;
      }
      return r;
    }
  }
  if (obj.is(Type::dict)) fail("unhashable type: 'slice'");
  fail(std::string("'") + type_name(obj) + "' object is not subscriptable");
}

Value call_method(const Value& self, std::string_view name, const Args& args) {
  switch (self.type()) {
    case Type::string: return str_method(self, name, args);
    case Type::dict: return dict_method(self, name, args);
    case Type::seq: return seq_method(self, name, args);
    default: fail(std::string(type_name(self)) + "." + std::string(name) + "() is not supported");
  }
}

// --- operators -------------------------------------------------------------------------------------
Value binary_op(std::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  const bool ints = a.is_int_like() && b.is_int_like();
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) return Value::integer(checked_add(a.as_int(), b.as_int()));
    if (nums) return Value::floating(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      // Markup + str escapes the str (markupsafe's __add__/__radd__); str + str is plain.
      const bool markup = a.markup() || b.markup();
      auto side = [markup](const Value& v) {  // escaped text changes: all content if any of it was
        return markup && !v.markup() ? derived(html_escape(v.str()), false, has_content(v)) : v;
      };
      const Value left = side(a), right = side(b);
      check_size(left.str().size() + right.str().size());
      TextBuilder out;
      out.append(left);
      out.append(right);
      return out.take(markup);
    }
    if (is_list_or_tuple(a) && is_list_or_tuple(b) && a.as<Seq>().kind == b.as<Seq>().kind) {
      std::vector<Value> items = a.as<Seq>().items;
      items.insert(items.end(), b.as<Seq>().items.begin(), b.as<Seq>().items.end());
      return make_seq(a.as<Seq>().kind, std::move(items));
    }
    if (a.is_string()) fail(std::string("can only concatenate str (not \"") + type_name(b) + "\") to str");
    unsupported_operands(op, a, b);
  }
  if (op == "-") {
    if (ints) return Value::integer(checked_sub(a.as_int(), b.as_int()));
    if (nums) return Value::floating(a.as_double() - b.as_double());
    unsupported_operands(op, a, b);
  }
  if (op == "*") {
    if (ints) return Value::integer(checked_mul(a.as_int(), b.as_int()));
    if (nums) return Value::floating(a.as_double() * b.as_double());
    if ((a.is_string() || is_list_or_tuple(a)) && b.is_int_like()) return repeat(a, b.as_int());
    if (a.is_int_like() && (b.is_string() || is_list_or_tuple(b))) return repeat(b, a.as_int());
    unsupported_operands(op, a, b);
  }
  if (op == "/") {
    if (!nums) unsupported_operands(op, a, b);
    if (b.as_double() == 0) fail("division by zero");
    return Value::floating(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (a.is_string() && op == "%") fail("printf-style string formatting with % is not supported");
    if (!nums) unsupported_operands(op, a, b);
    if (ints) {
      const int64_t x = a.as_int(), y = b.as_int();
      if (y == 0) fail("integer division or modulo by zero");
      if (x == std::numeric_limits<int64_t>::min() && y == -1) overflow();
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors toward negative infinity
        --q;
        m += y;
      }
      return Value::integer(op == "//" ? q : m);
    }
    return Value::floating(op == "//" ? float_floordiv(a.as_double(), b.as_double()) : float_mod(a.as_double(), b.as_double()));
  }
  if (op == "**") {
    if (!nums) unsupported_operands(op, a, b);
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), e = b.as_int(), result = 1;
      while (e > 0) {
        if (e & 1) result = checked_mul(result, base);
        e >>= 1;
        if (e > 0) base = checked_mul(base, base);
      }
      return Value::integer(result);
    }
    const double x = a.as_double(), y = b.as_double();
    if (x == 0 && y < 0) fail("0.0 cannot be raised to a negative power");
    if (x < 0 && y != std::floor(y)) fail("a negative number to a fractional power is complex (unsupported)");
    const double p = std::pow(x, y);
    if (std::isinf(p) && std::isfinite(x) && std::isfinite(y)) fail("(34, 'Numerical result out of range')");
    return Value::floating(p);
  }
  fail("unknown operator " + std::string(op));
}

Value unary_op(std::string_view op, const Value& a) {
  if (a.is_undefined()) fail_undefined(a);
  if (a.is_int_like()) {
    if (op == "+") return Value::integer(a.as_int());
    if (a.as_int() == std::numeric_limits<int64_t>::min()) overflow();
    return Value::integer(-a.as_int());
  }
  if (a.is(Type::floating)) return Value::floating(op == "-" ? -a.as_double() : a.as_double());
  fail("bad operand type for unary " + std::string(op) + ": '" + type_name(a) + "'");
}

bool contains(const Value& container, const Value& item) {
  switch (container.type()) {
    case Type::undefined: return false;  // iterating an Undefined yields nothing
    case Type::string:
      if (!item.is_string())
        fail(std::string("'in <string>' requires string as left operand, not ") + type_name(item));
      return container.str().find(item.str()) != std::string::npos;
    case Type::dict:
      if (!hashable(item)) fail(std::string("unhashable type: '") + type_name(item) + "'");
      return container.as<Dict>().find(item) != nullptr;
    case Type::seq: {
      Seq& s = container.as<Seq>();
      const size_t from = s.kind == SeqKind::iterator ? s.pos : 0;
      for (size_t i = from; i < s.items.size(); ++i) {
        if (equal(s.items[i], item)) {
          if (s.kind == SeqKind::iterator) s.pos = i + 1;  // `in` consumes a generator up to the match
          return true;
        }
      }
      if (s.kind == SeqKind::iterator) {
        s.pos = s.items.size();
        if (s.deferred) raise_deferred(s);
      }
      return false;
    }
    default: fail(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

}  // namespace moerun::chat
