// Each component on a tiny hand-written tokenizer.json, with expectations taken from tokenizers'
// documentation and source (the generated goldens in component_goldens_test.cpp cover the same ground
// against the library itself; these show the behaviour at a glance).

#include <gtest/gtest.h>

#include <cctype>
#include <set>

#include <nlohmann/json.hpp>

#include "moerun/error.h"
#include "moerun/tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace moerun {
namespace {

using Json = nlohmann::json;
using Strings = std::vector<std::string>;

// A BPE whose vocabulary holds every character of `texts` plus `words`, with ignore_merges so that a
// piece found in the vocabulary becomes one token: the token strings then show the pre-tokenizer's
// pieces directly.
Tokenizer piece_tokenizer(const Json& pre_tokenizer, const Strings& texts, const Strings& words,
                          const Json& normalizer = nullptr, const Json& added = Json::array()) {
  std::set<std::string> vocab(words.begin(), words.end());
  for (const std::string& t : texts)
    for (size_t i = 0; i < t.size();) {
      const size_t n = tok::utf8_len(static_cast<unsigned char>(t[i]));
      vocab.insert(t.substr(i, n));
      i += n;
    }
  vocab.insert("\xE2\x96\x81");
  Json v = Json::object();
  for (const std::string& w : vocab) v[w] = v.size();
  const Json j = {{"version", "1.0"},
                  {"added_tokens", added},
                  {"normalizer", normalizer},
                  {"pre_tokenizer", pre_tokenizer},
                  {"post_processor", nullptr},
                  {"decoder", nullptr},
                  {"model", {{"type", "BPE"}, {"vocab", v}, {"merges", Json::array()}, {"ignore_merges", true}}}};
  return Tokenizer::from_json(j.dump(), "inline.json");
}

Strings tokens(const Tokenizer& tok, const std::string& text, EncodeOptions opt = {}) {
  Strings out;
  for (const int32_t id : tok.encode(text, opt)) out.push_back(tok.id_to_token(id));
  return out;
}

Strings split_pieces(const std::string& behavior, bool invert, const std::string& text, const Strings& words) {
  const Json pre = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
  return tokens(piece_tokenizer(pre, {text}, words), text);
}

// --- patterns -------------------------------------------------------------------------------

TEST(Patterns, StringPatternsAreLiteral) {
  // {"String": ...} patterns are escaped into Oniguruma syntax; every ASCII punctuation character
  // (and backslash sequences that would mean something in a regex) must match only itself.
  std::vector<std::string> literals = {"<s>", "\\d", "(?i:x)", "[a-z]", "a.b", "\xE2\x96\x81", " ", "{1,3}", "\\<w\\>"};
  for (char c = 0x21; c < 0x7F; ++c)
    if (!std::isalnum(static_cast<unsigned char>(c))) literals.emplace_back(1, c);
  for (const std::string& lit : literals) {
    const tok::Regex re = tok::Regex::literal(lit, "test");
    const std::string text = "x" + lit + "y" + lit + lit;
    const auto m = re.find_all(text);
    ASSERT_EQ(m.size(), 3u) << lit;
    EXPECT_EQ(m[0], std::make_pair(size_t{1}, 1 + lit.size())) << lit;
    EXPECT_TRUE(re.find_all("xyz" + lit.substr(0, lit.size() - 1)).empty()) << lit;
  }
}

TEST(Patterns, EmptyMatchesAdvanceLikeTheOnigCrate) {
  // An empty match right after a match is skipped by one character (Rust onig's find_iter).
  const tok::Regex re("a*", "test");
  const auto m = re.find_all("baac");
  const std::vector<std::pair<size_t, size_t>> want = {{0, 0}, {1, 3}, {4, 4}};
  EXPECT_EQ(m, want);
}

// --- pre-tokenizers -------------------------------------------------------------------------

TEST(PreTokenizers, SplitBehaviours) {
  // The examples of tokenizers' NormalizedString::split documentation ("the-final--countdown").
  const std::string t = "the-final--countdown";
  const Strings w = {"the", "final", "countdown", "the-", "final-", "-final", "-countdown", "--"};
  EXPECT_EQ(split_pieces("Removed", false, t, w), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(split_pieces("Isolated", false, t, w), (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split_pieces("MergedWithPrevious", false, t, w), (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split_pieces("MergedWithNext", false, t, w), (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split_pieces("Contiguous", false, t, w), (Strings{"the", "-", "final", "--", "countdown"}));
  // invert: the words are the matches and the dashes (each its own piece) lie between them.
  EXPECT_EQ(split_pieces("Removed", true, t, w), (Strings{"-", "-", "-"}));
  EXPECT_EQ(split_pieces("MergedWithPrevious", true, t, w), (Strings{"the", "-final", "-", "-countdown"}));
}

TEST(PreTokenizers, SplitRegexUsesOnigurumaDialect) {
  // \p{N}{1,3} and a lookahead (?!\S), as DeepSeek-V3's and GPT-2's patterns use them.
  const Json pre = {{"type", "Sequence"},
                    {"pretokenizers",
                     {{{"type", "Split"}, {"pattern", {{"Regex", "\\p{N}{1,3}"}}}, {"behavior", "Isolated"}},
                      {{"type", "Split"}, {"pattern", {{"Regex", "\\s+(?!\\S)|\\s+"}}}, {"behavior", "Isolated"}}}}};
  const std::string text = "x1234567  y \xD9\xA3\xD9\xA4";  // Arabic-Indic digits are \p{N} too
  const Tokenizer tok = piece_tokenizer(pre, {text}, {"123", "456", " ", "  ", "\xD9\xA3\xD9\xA4"});
  EXPECT_EQ(tokens(tok, text), (Strings{"x", "123", "456", "7", " ", " ", "y", " ", "\xD9\xA3\xD9\xA4"}));
  const Json ci = {{"type", "Split"}, {"pattern", {{"Regex", "(?i:'s|'ll)"}}}, {"behavior", "Isolated"}};
  EXPECT_EQ(tokens(piece_tokenizer(ci, {"IT'S YOU'LL"}, {"'S", "'LL", "IT", " YOU"}), "IT'S YOU'LL"),
            (Strings{"IT", "'S", " YOU", "'LL"}));
}

TEST(PreTokenizers, Digits) {
  const std::string text = "ab123c4";
  EXPECT_EQ(tokens(piece_tokenizer({{"type", "Digits"}, {"individual_digits", true}}, {text}, {"ab", "123"}), text),
            (Strings{"ab", "1", "2", "3", "c", "4"}));
  EXPECT_EQ(tokens(piece_tokenizer({{"type", "Digits"}, {"individual_digits", false}}, {text}, {"ab", "123"}), text),
            (Strings{"ab", "123", "c", "4"}));
}

TEST(PreTokenizers, MetaspaceSchemes) {
  const std::string text = "<s>hello world";
  const Strings w = {"\xE2\x96\x81hello", "hello", "\xE2\x96\x81world", "\xE2\x96\x81hello\xE2\x96\x81world",
                     "hello\xE2\x96\x81world"};
  const Json added = {{{"id", 1000}, {"content", "<s>"}, {"special", true}, {"normalized", false}}};
  const auto meta = [&](const std::string& scheme, bool split) {
    return piece_tokenizer({{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", scheme}, {"split", split}},
                           {text}, w, nullptr, added);
  };
  // "first" prepends only at the start of the text: not after an added token.
  EXPECT_EQ(tokens(meta("always", true), text), (Strings{"<s>", "\xE2\x96\x81hello", "\xE2\x96\x81world"}));
  EXPECT_EQ(tokens(meta("first", true), text), (Strings{"<s>", "hello", "\xE2\x96\x81world"}));
  EXPECT_EQ(tokens(meta("first", true), "hello world"), (Strings{"\xE2\x96\x81hello", "\xE2\x96\x81world"}));
  EXPECT_EQ(tokens(meta("never", true), "hello world"), (Strings{"hello", "\xE2\x96\x81world"}));
  EXPECT_EQ(tokens(meta("always", false), "hello world"), (Strings{"\xE2\x96\x81hello\xE2\x96\x81world"}));
  EXPECT_EQ(tokens(meta("never", false), "hello world"), (Strings{"hello\xE2\x96\x81world"}));
}

TEST(PreTokenizers, WhitespaceAndPunctuation) {
  const std::string text = "Hi, you!? ok";
  EXPECT_EQ(tokens(piece_tokenizer({{"type", "Whitespace"}}, {text}, {"Hi", "you", "!?", "ok"}), text),
            (Strings{"Hi", ",", "you", "!?", "ok"}));
  EXPECT_EQ(tokens(piece_tokenizer({{"type", "WhitespaceSplit"}}, {text}, {"Hi,", "you!?", "ok"}), text),
            (Strings{"Hi,", "you!?", "ok"}));
  EXPECT_EQ(tokens(piece_tokenizer({{"type", "Punctuation"}, {"behavior", "Contiguous"}}, {text}, {"Hi", " you", "!?", " ok"}), text),
            (Strings{"Hi", ",", " you", "!?", " ok"}));
}

TEST(PreTokenizers, ByteLevelMapsBytesToCharacters) {
  // GPT-2's table: space -> U+0120 'Ġ', newline -> U+010A 'Ċ'; add_prefix_space adds the leading 'Ġ'.
  const Json pre = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  const std::string text = "hi there\n";
  const Tokenizer tok = piece_tokenizer(pre, {"\xC4\xA0hi\xC4\xA0there\xC4\x8A"}, {"\xC4\xA0hi", "\xC4\xA0there", "\xC4\x8A"});
  EXPECT_EQ(tokens(tok, text), (Strings{"\xC4\xA0hi", "\xC4\xA0there", "\xC4\x8A"}));
}

// --- normalizers ----------------------------------------------------------------------------

TEST(Normalizers, UnicodeFormsLowercaseStripReplacePrepend) {
  const auto norm = [](const Json& n, const std::string& text, const std::string& want) {
    const Tokenizer tok = piece_tokenizer(nullptr, {want}, {want}, n);
    EXPECT_EQ(tokens(tok, text), (Strings{want})) << n.dump();
  };
  norm({{"type", "NFKC"}}, "\xEF\xAC\x81x", "fix");                     // U+FB01 ligature
  norm({{"type", "NFC"}}, "e\xCC\x81", "\xC3\xA9");                     // e + combining acute
  norm({{"type", "NFD"}}, "\xC3\xA9", "e\xCC\x81");
  norm({{"type", "Lowercase"}}, "\xC4\xB0X", "i\xCC\x87x");             // U+0130 lowercases to two chars
  norm({{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}}, " \xE3\x80\x80x ", "x ");
  norm({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "_"}}, "a b", "a_b");
  norm({{"type", "Replace"}, {"pattern", {{"Regex", "\\d+"}}}, {"content", "#"}}, "a12b3", "a#b#");
  norm({{"type", "Sequence"},
        {"normalizers", {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}}, {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}},
       "a b", "\xE2\x96\x81" "a\xE2\x96\x81" "b");
}

// --- the BPE model --------------------------------------------------------------------------

Json bpe_model(const Json& vocab, const Json& merges, const Json& extra = Json::object()) {
  Json m = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  m.update(extra);
  return m;
}

Tokenizer model_tokenizer(const Json& model, const Json& decoder = nullptr) {
  const Json j = {{"added_tokens", Json::array()}, {"normalizer", nullptr}, {"pre_tokenizer", nullptr},
                  {"post_processor", nullptr},     {"decoder", decoder},    {"model", model}};
  return Tokenizer::from_json(j.dump(), "inline.json");
}

TEST(Bpe, MergeRanksAndBothMergeFormats) {
  const Json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}};
  // "b c" outranks "a b": abc -> a + bc, and no "a bc" merge exists.
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, {"b c", "a b"})), "abc"), (Strings{"a", "bc"}));
  const auto pair = [](const char* a, const char* b) { return Json::array({a, b}); };
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, Json::array({pair("a", "b"), pair("ab", "c")}))), "abc"), (Strings{"abc"}));
  // Equal ranks cannot happen; among candidates the lowest rank wins wherever it is.
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, Json::array({pair("a", "b"), pair("b", "c")}))), "abcabc"),
            (Strings{"ab", "c", "ab", "c"}));
}

TEST(Bpe, IgnoreMerges) {
  const Json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"abc", 4}};
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, {"a b"})), "abc"), (Strings{"ab", "c"}));
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, {"a b"}, {{"ignore_merges", true}})), "abc"), (Strings{"abc"}));
}

TEST(Bpe, UnknownCharactersFuseUnkAndByteFallback) {
  const Json vocab = {{"<unk>", 0}, {"x", 1}, {"y", 2}, {"<0xE2>", 3}, {"<0x98>", 4}, {"<0x83>", 5}};
  const std::string text = "x\xE2\x98\x83\xE2\x98\x83y";  // two snowmen
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, Json::array(), {{"unk_token", "<unk>"}, {"fuse_unk", true}})), text),
            (Strings{"x", "<unk>", "y"}));
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, Json::array(), {{"unk_token", "<unk>"}, {"fuse_unk", false}})), text),
            (Strings{"x", "<unk>", "<unk>", "y"}));
  EXPECT_EQ(tokens(model_tokenizer(bpe_model(vocab, Json::array())), text), (Strings{"x", "y"}));  // no unk: dropped
  const Tokenizer fb = model_tokenizer(bpe_model(vocab, Json::array(), {{"unk_token", "<unk>"}, {"byte_fallback", true}}),
                                       {{"type", "ByteFallback"}});
  EXPECT_EQ(tokens(fb, text), (Strings{"x", "<0xE2>", "<0x98>", "<0x83>", "<0xE2>", "<0x98>", "<0x83>", "y"}));
  EXPECT_EQ(fb.decode(fb.encode(text)), text);
}

TEST(Bpe, ContinuingSubwordPrefixAndEndOfWordSuffix) {
  const Json pre = {{"type", "WhitespaceSplit"}};
  const Json vocab = {{"u", 0}, {"##n", 1}, {"##b", 2}, {"un", 3}, {"##b</w>", 4}, {"unb</w>", 5}, {"b</w>", 6}};
  const Json merges = {"u ##n", "un ##b</w>"};
  const Json j = {{"added_tokens", Json::array()}, {"normalizer", nullptr}, {"pre_tokenizer", pre},
                  {"post_processor", nullptr}, {"decoder", nullptr},
                  {"model", bpe_model(vocab, merges, {{"continuing_subword_prefix", "##"}, {"end_of_word_suffix", "</w>"}})}};
  const Tokenizer tok = Tokenizer::from_json(j.dump());
  EXPECT_EQ(tokens(tok, "unb b"), (Strings{"unb</w>", "b</w>"}));
}

// --- added tokens ---------------------------------------------------------------------------

TEST(AddedTokens, SingleWordLstripRstrip) {
  const Json added = {{{"id", 100}, {"content", "<mask>"}, {"single_word", true}, {"lstrip", true}, {"rstrip", true}, {"normalized", false}},
                      {{"id", 101}, {"content", "<eot>"}, {"special", true}, {"normalized", false}}};
  const std::string a = "<mask> My <mask> A<mask> <mask>b <eot>";
  const Tokenizer tok = piece_tokenizer({{"type", "WhitespaceSplit"}}, {a}, {"My", "A"}, nullptr, added);
  // single_word: "A<mask>" and "<mask>b" are inside words and stay text; lstrip/rstrip swallow spaces.
  EXPECT_EQ(tok.encode(a, {.add_special_tokens = false}).front(), 100);
  EXPECT_EQ(tokens(tok, a), (Strings{"<mask>", "My", "<mask>", "A", "<", "m", "a", "s", "k", ">", "<", "m", "a", "s", "k", ">", "b", "<eot>"}));
  // parse_special=false leaves the special token's text to the model; the non-special <mask> still matches.
  EXPECT_EQ(tokens(tok, "<mask> <eot>", {.parse_special = false}), (Strings{"<mask>", "<", "e", "o", "t", ">"}));
}

// --- decoders and streaming ------------------------------------------------------------------

TEST(Decoders, StripAfterFuseStreamsExactly) {
  // Strip with stop > 0 is applied to the end of the whole text; a stream holds trailing spaces back
  // until it knows they end the text. (tokenizers panics when a token is shorter than `stop`; we clamp.)
  const Json vocab = {{"\xE2\x96\x81", 0}, {"a", 1}, {"\xE2\x96\x81" "a", 2}};
  const Json dec = {{"type", "Sequence"},
                    {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                  {{"type", "Fuse"}},
                                  {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 2}}}}};
  const Tokenizer tok = model_tokenizer(bpe_model(vocab, Json::array()), dec);
  for (const std::vector<int32_t>& ids : std::vector<std::vector<int32_t>>{{2, 0, 0, 0}, {0, 0, 1, 0, 2, 0}, {0}, {0, 0, 0}}) {
    StreamDecoder s(tok);
    std::string streamed;
    for (const int32_t id : ids) streamed += s.push(id);
    streamed += s.flush();
    EXPECT_EQ(streamed, tok.decode(ids));
  }
  EXPECT_EQ(tok.decode(std::vector<int32_t>{2, 0, 0, 0}), "a ");
}

TEST(Decoders, NoDecoderJoinsWithSpaces) {
  const Tokenizer tok = model_tokenizer(bpe_model({{"a", 0}, {"b", 1}}, Json::array()));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 1, 0}), "a b a");
}

}  // namespace
}  // namespace moerun
