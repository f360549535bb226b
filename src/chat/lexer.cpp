#include "chat/lexer.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>

#include "chat/unicode.h"
#include "moerun/error.h"

namespace moerun::chat {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

// jinja2's operators, longest first so "//" wins over "/".
constexpr const char* kOperators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                      "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};

class Lexer {
 public:
  Lexer(const std::string& source, const std::string& name) : name_(name) {
    // As jinja2: \r\n and \r become \n, and one trailing newline is dropped (keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') newlines_.push_back(i);
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) root();
    push(Tok::eof, src_.size());
    return std::move(tokens_);
  }

 private:
  const std::string& name_;
  std::string src_;
  std::vector<size_t> newlines_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  bool line_starting_ = true;  // the last match ended a line (lstrip_blocks may strip the next indent)

  int line_at(size_t p) const {
    return 1 + static_cast<int>(std::lower_bound(newlines_.begin(), newlines_.end(), p) - newlines_.begin());
  }
  [[noreturn]] void error(size_t p, const std::string& what) const {
    throw Error(name_ + ":" + std::to_string(line_at(p)), what);
  }
  Token& push(Tok type, size_t at, std::string text = {}) {
    Token t;
    t.type = type;
    t.line = line_at(at);
    t.text = std::move(text);
    tokens_.push_back(std::move(t));
    return tokens_.back();
  }
  bool starts(size_t p, std::string_view s) const { return src_.compare(p, s.size(), s) == 0; }

  // Length of the Python whitespace character at p (0 if none): \s in jinja's regexes is Unicode.
  size_t space_at(size_t p) const {
    if (p >= src_.size()) return 0;
    const auto c = static_cast<unsigned char>(src_[p]);
    if (c < 0x80) return py_isspace(c) ? 1 : 0;
    size_t n = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (p + n > src_.size()) return 0;
    const std::u32string cp = decode_utf8(std::string_view(src_).substr(p, n));
    return cp.size() == 1 && py_isspace(cp[0]) ? n : 0;
  }
  size_t skip_spaces(size_t p) const {
    while (size_t n = space_at(p)) p += n;
    return p;
  }

  static std::string rstrip(std::string text) {
    while (!text.empty()) {
      size_t start = text.size() - 1;
      while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
      const std::u32string cp = decode_utf8(std::string_view(text).substr(start));
      if (cp.size() != 1 || !py_isspace(cp[0])) break;
      text.resize(start);
    }
    return text;
  }

  // The text before a tag: `-` strips all whitespace before it; otherwise lstrip_blocks removes the
  // indentation of a block or comment tag that starts its line (jinja2 OptionalLStrip).
  void emit_text(size_t begin, size_t end, char sign, bool is_variable) {
    std::string text = src_.substr(begin, end - begin);
    if (sign == '-') {
      text = rstrip(std::move(text));
    } else if (sign != '+' && !is_variable) {
      const size_t l_pos = text.rfind('\n') + 1;  // npos + 1 == 0
      if ((l_pos > 0 || line_starting_) && l_pos < text.size()) {
        size_t p = begin + l_pos;
        while (p < end && space_at(p)) p += space_at(p);
        if (p == end) text.resize(l_pos);
      }
    }
    if (!text.empty()) push(Tok::data, begin, std::move(text));
  }

  // {% raw %} with optional markers: the end of the match, or 0.
  size_t match_raw_begin(size_t p) const {
    p += 2;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    p = skip_spaces(p);
    if (!starts(p, "raw")) return 0;
    p = skip_spaces(p + 3);
    if (starts(p, "-%}")) return skip_spaces(p + 3);
    if (starts(p, "%}")) return p + 2;
    return 0;
  }

  void root() {
    size_t i = pos_;
    while (true) {
      i = src_.find('{', i);
      if (i == std::string::npos || i + 1 >= src_.size()) {  // the rest is text
        push(Tok::data, pos_, src_.substr(pos_));
        pos_ = src_.size();
        return;
      }
      const char k = src_[i + 1];
      if (k == '{' || k == '%' || k == '#') break;
      ++i;
    }
    const char kind = src_[i + 1];
    size_t p = i + 2;
    const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
    if (sign) ++p;
    const size_t raw_end = kind == '%' ? match_raw_begin(i) : 0;
    emit_text(pos_, i, sign, kind == '{');
    line_starting_ = false;
    if (raw_end) {
      line_starting_ = src_[raw_end - 1] == '\n';
      raw(i, raw_end);
    } else if (kind == '#') {
      comment(i, p);
    } else {
      tag(i, p, kind == '%');
    }
  }

  void comment(size_t open, size_t p) {
    for (size_t k = p; k + 1 < src_.size(); ++k) {
      size_t end = 0;
      if ((src_[k] == '+' || src_[k] == '-') && starts(k + 1, "#}")) {
        end = src_[k] == '-' ? skip_spaces(k + 3) : k + 3;
      } else if (starts(k, "#}")) {
        end = k + 2 < src_.size() && src_[k + 2] == '\n' ? k + 3 : k + 2;  // trim_blocks
      }
      if (end) {
        line_starting_ = src_[end - 1] == '\n';
        pos_ = end;
        return;
      }
    }
    error(open, "missing end of comment tag");
  }

  void raw(size_t open, size_t body) {
    for (size_t k = src_.find("{%", body); k != std::string::npos; k = src_.find("{%", k + 1)) {
      size_t p = k + 2;
      const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      p = skip_spaces(p);
      if (!starts(p, "endraw")) continue;
      p = skip_spaces(p + 6);
      size_t end = 0;
      if (starts(p, "+%}")) {
        end = p + 3;
      } else if (starts(p, "-%}")) {
        end = skip_spaces(p + 3);
      } else if (starts(p, "%}")) {
        end = p + 2 < src_.size() && src_[p + 2] == '\n' ? p + 3 : p + 2;
      } else {
        continue;
      }
      emit_text(body, k, sign, false);
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return;
    }
    error(open, "missing end of raw directive");
  }

  // The end of the tag at p, or 0: only when brackets balance, as jinja2 (so "}}" can close a dict).
  size_t tag_end(size_t p, bool block) const {
    if (block) {
      if (starts(p, "+%}")) return p + 3;
      if (starts(p, "-%}")) return skip_spaces(p + 3);
      if (starts(p, "%}")) return p + 2 < src_.size() && src_[p + 2] == '\n' ? p + 3 : p + 2;
      return 0;
    }
    if (starts(p, "-}}")) return skip_spaces(p + 3);
    if (starts(p, "}}")) return p + 2;
    return 0;
  }

  void tag(size_t open, size_t p, bool block) {
    push(block ? Tok::block_begin : Tok::var_begin, open);
    std::string balance;
    while (true) {
      if (p >= src_.size()) error(open, std::string("unexpected end of template inside ") + (block ? "{% %}" : "{{ }}"));
      if (balance.empty()) {
        if (const size_t end = tag_end(p, block)) {
          push(block ? Tok::block_end : Tok::var_end, p);
          line_starting_ = src_[end - 1] == '\n';
          pos_ = end;
          return;
        }
      }
      if (const size_t n = space_at(p)) {
        p += n;
      } else if (size_t end = number(p)) {
        p = end;
      } else if (is_name_start(src_[p])) {
        size_t e = p;
        while (e < src_.size() && is_name_char(src_[e])) ++e;
        push(Tok::name, p, src_.substr(p, e - p));
        p = e;
      } else if (src_[p] == '\'' || src_[p] == '"') {
        p = string(p);
      } else {
        p = op(p, balance);
      }
    }
  }

  size_t op(size_t p, std::string& balance) {
    for (const char* o : kOperators) {
      if (!starts(p, o)) continue;
      const char c = o[0];
      if (o[1] == 0 && (c == '(' || c == '[' || c == '{')) {
        balance += c == '(' ? ')' : c == '[' ? ']' : '}';
      } else if (o[1] == 0 && (c == ')' || c == ']' || c == '}')) {
        if (balance.empty()) error(p, std::string("unexpected '") + c + "'");
        if (balance.back() != c) error(p, std::string("unexpected '") + c + "', expected '" + balance.back() + "'");
        balance.pop_back();
      }
      push(Tok::op, p, o);
      return p + std::char_traits<char>::length(o);
    }
    error(p, "unexpected char " + repr_char(p));
  }

  std::string repr_char(size_t p) const {
    const auto c = static_cast<unsigned char>(src_[p]);
    size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return "'" + src_.substr(p, n) + "'";
  }

  // `(\d+_)*\d+`: digits with single underscores between them; the end, or p when none.
  size_t digits(size_t p) const {
    if (p >= src_.size() || !is_digit(src_[p])) return p;
    while (true) {
      while (p < src_.size() && is_digit(src_[p])) ++p;
      if (p + 1 < src_.size() && src_[p] == '_' && is_digit(src_[p + 1])) {
        ++p;
        continue;
      }
      return p;
    }
  }
  size_t exponent(size_t p) const {
    if (p >= src_.size() || (src_[p] != 'e' && src_[p] != 'E')) return 0;
    size_t q = p + 1;
    if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
    const size_t e = digits(q);
    return e == q ? 0 : e;
  }

  static std::string without_underscores(std::string s) {
    s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
    return s;
  }

  // jinja2's float_re, then integer_re; the end of the literal, or 0 when there is none at p.
  size_t number(size_t p) {
    if (!is_digit(src_[p])) return 0;
    if (p == 0 || src_[p - 1] != '.') {  // float_re's (?<!\.)
      const size_t int_end = digits(p);
      size_t end = 0;
      const size_t frac_end = int_end < src_.size() && src_[int_end] == '.' ? digits(int_end + 1) : int_end;
      const bool has_frac = frac_end > int_end + 1;
      if (has_frac && exponent(frac_end)) {
        end = exponent(frac_end);
      } else if (has_frac) {
        end = frac_end;
      } else if (exponent(int_end)) {
        end = exponent(int_end);
      }
      if (end) {
        Token& t = push(Tok::floating, p, src_.substr(p, end - p));
        t.floating = std::strtod(without_underscores(t.text).c_str(), nullptr);
        return end;
      }
    }
    size_t end = p + 1;
    int base = 10;
    const char x = p + 1 < src_.size() ? static_cast<char>(src_[p + 1] | 0x20) : 0;
    auto prefixed = [&](auto valid) {  // 0b/0o/0x then (_?digit)+
      size_t q = p + 2;
      while (true) {
        const size_t d = q < src_.size() && src_[q] == '_' ? q + 1 : q;
        if (d < src_.size() && valid(static_cast<char>(src_[d] | 0x20))) {
          q = d + 1;
        } else {
          return q;
        }
      }
    };
    if (src_[p] == '0' && (x == 'b' || x == 'o' || x == 'x')) {
      base = x == 'b' ? 2 : x == 'o' ? 8 : 16;
      const size_t q = prefixed([base](char c) {
        return base == 2 ? (c == '0' || c == '1') : base == 8 ? (c >= '0' && c <= '7') : (is_digit(c) || (c >= 'a' && c <= 'f'));
      });
      if (q > p + 2) end = q;
      else base = 10;
    }
    if (base == 10) {
      const bool zero = src_[p] == '0';
      while (true) {  // [1-9](_?\d)* or 0(_?0)*
        const size_t d = end < src_.size() && src_[end] == '_' ? end + 1 : end;
        if (d < src_.size() && (zero ? src_[d] == '0' : is_digit(src_[d]))) {
          end = d + 1;
        } else {
          break;
        }
      }
    }
    Token& t = push(Tok::integer, p, src_.substr(p, end - p));
    std::string digits_only = without_underscores(t.text);
    if (base != 10) digits_only = digits_only.substr(2);
    errno = 0;
    char* stop = nullptr;
    const unsigned long long v = std::strtoull(digits_only.c_str(), &stop, base);
    if (errno == ERANGE || v > static_cast<unsigned long long>(std::numeric_limits<int64_t>::max()))
      error(p, "integer literal " + t.text + " is beyond int64 (unsupported)");
    t.integer = static_cast<int64_t>(v);
    return end;
  }

  // A quoted literal, unescaped as Python's "unicode-escape" codec does after jinja2 encodes the
  // text with backslashreplace.
  size_t string(size_t p) {
    const char quote = src_[p];
    size_t e = p + 1;
    while (e < src_.size() && src_[e] != quote) e += src_[e] == '\\' ? 2 : 1;
    if (e >= src_.size()) error(p, "unexpected char " + repr_char(p) + " (unterminated string)");
    const std::u32string body = decode_utf8(std::string_view(src_).substr(p + 1, e - p - 1));
    std::string out;
    auto hex = [&](size_t at, size_t n, const char* what) {
      if (at + n > body.size()) error(p, std::string("truncated ") + what + " escape");
      char32_t v = 0;
      for (size_t k = at; k < at + n; ++k) {
        const char32_t c = body[k] | 0x20;
        if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'f')) error(p, std::string("truncated ") + what + " escape");
        v = v * 16 + (c <= '9' ? c - '0' : c - 'a' + 10);
      }
      return v;
    };
    auto put = [&](char32_t c) {
      if (c > 0x10FFFF) error(p, "illegal Unicode character in string literal");
      if (c >= 0xD800 && c <= 0xDFFF) error(p, "lone surrogate in string literal (unsupported)");
      append_utf8(out, c);
    };
    for (size_t i = 0; i < body.size(); ++i) {
      const char32_t c = body[i];
      if (c != '\\' || i + 1 >= body.size()) {
        append_utf8(out, c);
        continue;
      }
      const char32_t n = body[++i];
      switch (n) {
        case '\n': break;  // line continuation
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': put(hex(i + 1, 2, "\\xXX")); i += 2; break;
        case 'u': put(hex(i + 1, 4, "\\uXXXX")); i += 4; break;
        case 'U': put(hex(i + 1, 8, "\\UXXXXXXXX")); i += 8; break;
        case 'N': error(p, "\\N{...} escapes are unsupported");
        default:
          if (n >= '0' && n <= '7') {
            char32_t v = n - '0';
            for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
              v = v * 8 + (body[++i] - '0');
            put(v);
          } else if (n >= 0x80) {
            // backslashreplace turned the character into \xNN, \uNNNN or \UNNNNNNNN, so the
            // backslash escapes the next backslash and the hex digits stay as text.
            static constexpr char kHex[] = "0123456789abcdef";
            const int digits = n <= 0xFF ? 2 : n <= 0xFFFF ? 4 : 8;
            out += '\\';
            out += digits == 2 ? 'x' : digits == 4 ? 'u' : 'U';
            for (int k = digits - 1; k >= 0; --k) out += kHex[(n >> (4 * k)) & 15];
          } else {  // unknown escapes keep their backslash
            out += '\\';
            append_utf8(out, n);
          }
      }
    }
    push(Tok::string, p, std::move(out));
    return e + 1;
  }
};

}  // namespace

std::vector<Token> tokenize(const std::string& source, const std::string& template_name) {
  if (!is_valid_utf8(source)) throw Error(template_name, "template is not valid UTF-8");
  return Lexer(source, template_name).run();
}

}  // namespace moerun::chat
