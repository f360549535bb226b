#pragma once
// GPT-2's reversible byte <-> character table: every byte maps to a printable code point (printable
// Latin-1 bytes to themselves, the rest to U+0100 upwards), so that byte-level BPE vocabularies are
// plain text. Shared by the ByteLevel pre-tokenizer, normalizer and decoder.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace moerun::tok {

struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;  // byte -> UTF-8 of its character
  std::array<int16_t, 0x144> char_to_byte;    // code point -> byte, -1 when not in the table

  static const ByteLevelTable& get();  // built once at compile time; immutable
};

// Maps every byte of `s` to its character.
std::string bytes_to_byte_level(std::string_view s);

}  // namespace moerun::tok
