#pragma once
// Splits a template into text and tag tokens exactly as jinja2's lexer does in the environment
// transformers builds (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False): newlines
// normalised to \n, one trailing newline dropped, `{%-`/`-%}` strip whitespace, `+` disables
// trimming, {% raw %} blocks pass through. Errors name the template and line.

#include <cstdint>
#include <string>
#include <vector>

namespace moerun::chat {

enum class Tok : uint8_t { data, var_begin, var_end, block_begin, block_end, name, string, integer, floating, op, eof };

struct Token {
  Tok type = Tok::eof;
  int line = 1;
  std::string text;  // data, name, operator, or the unescaped string literal
  int64_t integer = 0;
  double floating = 0;
};

std::vector<Token> tokenize(const std::string& source, const std::string& template_name);

}  // namespace moerun::chat
