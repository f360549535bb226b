#include "tokenizer/byte_level.h"

namespace moerun::tok {

namespace {

constexpr bool kept_as_is(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

ByteLevelTable build() {
  ByteLevelTable t;
  t.char_to_byte.fill(-1);
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const int cp = kept_as_is(b) ? b : 0x100 + next++;
    std::string& s = t.byte_to_utf8[b];
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    t.char_to_byte[cp] = static_cast<int16_t>(b);
  }
  return t;
}

}  // namespace

const ByteLevelTable& ByteLevelTable::get() {
  static const ByteLevelTable table = build();  // immutable after its thread-safe initialisation
  return table;
}

std::string bytes_to_byte_level(std::string_view s) {
  const ByteLevelTable& t = ByteLevelTable::get();
  std::string out;
  out.reserve(s.size() * 2);
  for (const char c : s) out += t.byte_to_utf8[static_cast<unsigned char>(c)];
  return out;
}

}  // namespace moerun::tok
