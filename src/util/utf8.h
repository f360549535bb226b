#pragma once
// UTF-8 encoding shared by the tokenizer and the chat-template interpreter.

#include <string>

namespace moerun::detail {

// Appends the UTF-8 bytes of code point `cp` (1 to 4 bytes; no validity check on `cp`).
void append_utf8(std::string& out, char32_t cp);

}  // namespace moerun::detail
