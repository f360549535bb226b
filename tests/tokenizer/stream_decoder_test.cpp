// StreamDecoder on real tokenizers: characters split across byte-level and byte-fallback tokens come
// out once complete, nothing invalid is ever returned, and the pieces always add up to decode().

#include <gtest/gtest.h>

#include <random>

#include "moerun/tokenizer.h"
#include "tokenizer/unicode.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
const fs::path kData = fs::path(MOERUN_TEST_DATA) / "tokenizers";

const Tokenizer& mistral() {
  static const Tokenizer t = Tokenizer::load(kData / "mistral" / "tokenizer.json");  // test-only memo
  return t;
}
const Tokenizer& deepseek() {
  static const Tokenizer t = Tokenizer::load(kData / "deepseek_v3" / "tokenizer.json");
  return t;
}

std::vector<std::string> pushes(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip = false) {
  StreamDecoder dec(tok, skip);
  std::vector<std::string> out;
  for (const int32_t id : ids) out.push_back(dec.push(id));
  out.push_back(dec.flush());
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& p : v) s += p;
  return s;
}

TEST(StreamDecoder, ByteLevelCharacterSplitAcrossTokens) {
  // DeepSeek-V3 spells this emoji with several byte-level tokens; the character appears once, whole.
  const std::string text = "a\xF0\x9F\xA6\x9C" "b";  // a🦜b
  const std::vector<int32_t> ids = deepseek().encode(text, {.add_special_tokens = false});
  ASSERT_GT(ids.size(), 3u);
  const auto parts = pushes(deepseek(), ids);
  EXPECT_EQ(join(parts), text);
  int with_parrot = 0;
  for (const std::string& p : parts) {
    EXPECT_FALSE(tok::find_invalid_utf8(p).has_value());
    with_parrot += p.find("\xF0\x9F\xA6\x9C") != std::string::npos;
  }
  EXPECT_EQ(with_parrot, 1);
}

TEST(StreamDecoder, ByteFallbackRunsAndLeadingSpace) {
  // Mistral: the emoji becomes <0xF0><0x9F>... byte tokens, the first token's leading space is stripped.
  const std::string text = "Hi \xF0\x9F\xA6\x9C there";
  const std::vector<int32_t> ids = mistral().encode(text);
  const auto parts = pushes(mistral(), ids);
  EXPECT_EQ(join(parts), mistral().decode(ids));
  EXPECT_EQ(join(pushes(mistral(), ids, true)), text);  // <s> skipped
  for (const std::string& p : parts) EXPECT_FALSE(tok::find_invalid_utf8(p).has_value());
}

TEST(StreamDecoder, UnfinishedCharactersBecomeReplacementAtFlush) {
  const int32_t e4 = *mistral().token_to_id("<0xE4>"), bd = *mistral().token_to_id("<0xBD>");
  const std::vector<int32_t> ids = {e4, bd};
  EXPECT_EQ(mistral().decode(ids), "\xEF\xBF\xBD\xEF\xBF\xBD");  // one U+FFFD per byte, as ByteFallback
  EXPECT_EQ(join(pushes(mistral(), ids)), mistral().decode(ids));
  // DeepSeek: a lone lead byte then text; from_utf8_lossy gives one U+FFFD for the ill-formed part.
  const int32_t lead = *deepseek().token_to_id("\xC3\xA4");  // byte 0xE4 in GPT-2's table
  const std::vector<int32_t> ids2 = {lead, *deepseek().token_to_id("a")};
  EXPECT_EQ(deepseek().decode(ids2), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(join(pushes(deepseek(), ids2)), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(join(pushes(deepseek(), {lead})), "\xEF\xBF\xBD");
}

TEST(StreamDecoder, ReusableAfterFlushAndMovable) {
  StreamDecoder dec(mistral());
  const std::vector<int32_t> ids = mistral().encode("one two", {.add_special_tokens = false});
  std::string first, second;
  for (const int32_t id : ids) first += dec.push(id);
  first += dec.flush();
  StreamDecoder moved = std::move(dec);
  for (const int32_t id : ids) second += moved.push(id);
  second += moved.flush();
  EXPECT_EQ(first, "one two");
  EXPECT_EQ(second, "one two");  // the leading-space rule applies afresh after flush
}

TEST(StreamDecoder, RandomIdsMatchDecode) {
  // Random ids, biased towards byte tokens and specials, through both real tokenizer.json files.
  std::mt19937 rng(1234);
  for (const Tokenizer* tok : {&mistral(), &deepseek()}) {
    const auto vocab = static_cast<int32_t>(tok->vocab_size());
    for (int round = 0; round < 200; ++round) {
      std::vector<int32_t> ids(1 + rng() % 24);
      for (int32_t& id : ids) {
        const unsigned r = rng() % 4;
        id = r == 0 ? static_cast<int32_t>(rng() % 300) : static_cast<int32_t>(rng() % (vocab + 10));
      }
      for (const bool skip : {false, true}) {
        const auto parts = pushes(*tok, ids, skip);
        for (const std::string& p : parts) ASSERT_FALSE(tok::find_invalid_utf8(p).has_value());
        ASSERT_EQ(join(parts), tok->decode(ids, skip)) << "round " << round;
      }
    }
  }
}

}  // namespace
}  // namespace moerun
