// Bad tokenizer files and bad input: each is an Error whose message names the file (and field) and says
// what is wrong; nothing crashes and nothing is silently accepted.

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "moerun/error.h"
#include "moerun/tokenizer.h"
#include "support/expect.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const fs::path kData = fs::path(MOERUN_TEST_DATA) / "tokenizers";

using testing::error_of;

void expect_contains(const std::string& s, std::initializer_list<std::string> parts) {
  for (const std::string& p : parts) EXPECT_NE(s.find(p), std::string::npos) << "missing '" << p << "' in: " << s;
}

Json minimal() {
  return {{"added_tokens", Json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder", nullptr},
          {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}}}};
}

std::string load_json_error(const Json& j) {
  return error_of([&] { Tokenizer::from_json(j.dump(), "bad.json"); });
}

TEST(TokenizerErrors, MinimalFileLoads) { EXPECT_EQ(Tokenizer::from_json(minimal().dump()).encode("ab"), std::vector<int32_t>{2}); }

TEST(TokenizerErrors, BadJson) {
  expect_contains(error_of([] { Tokenizer::from_json("{\"model\": {", "broken.json"); }), {"broken.json", "invalid JSON", "line 1"});
  expect_contains(error_of([] { Tokenizer::from_json("[1, 2]", "list.json"); }), {"list.json", "expected an object"});
  const fs::path dir = testing::fresh_dir("tokenizer_bad_json");
  testing::write_file(dir / "tokenizer.json", "{\n  \"model\": {\n    \"type\": \"BPE\",,\n");
  expect_contains(error_of([&] { Tokenizer::load(dir); }), {(dir / "tokenizer.json").string(), "line 3"});
}

TEST(TokenizerErrors, UnknownComponentTypesNameFileAndType) {
  Json j = minimal();
  j["model"]["type"] = "WordPiece";
  expect_contains(load_json_error(j), {"bad.json", "model.type", "unsupported model type 'WordPiece'"});
  j = minimal();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Precompiled"}}}}};
  expect_contains(load_json_error(j), {"bad.json", "normalizer.normalizers[1].type", "unsupported normalizer type 'Precompiled'"});
  j = minimal();
  j["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
  expect_contains(load_json_error(j), {"bad.json", "pre_tokenizer.type", "unsupported pre-tokenizer type 'UnicodeScripts'"});
  j = minimal();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_contains(load_json_error(j), {"bad.json", "decoder.type", "unsupported decoder type 'WordPiece'"});
  j = minimal();
  j["post_processor"] = {{"type", "Gpt2Processing"}};
  expect_contains(load_json_error(j), {"bad.json", "post_processor.type", "unsupported post-processor type 'Gpt2Processing'"});
  j = minimal();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  expect_contains(load_json_error(j), {"pre_tokenizer.behavior", "unknown split behavior 'Sideways'"});
}

TEST(TokenizerErrors, DeeplyNestedSequences) {
  Json n = {{"type", "NFC"}};
  for (int i = 0; i < 40; ++i) n = {{"type", "Sequence"}, {"normalizers", {n}}};
  Json j = minimal();
  j["normalizer"] = n;
  expect_contains(load_json_error(j), {"bad.json", "normalizer.normalizers[0]", "nested too deeply"});
}

TEST(TokenizerErrors, BadModelFields) {
  Json j = minimal();
  j["model"].erase("vocab");
  expect_contains(load_json_error(j), {"bad.json", "model.vocab", "missing"});
  j = minimal();
  j.erase("model");
  expect_contains(load_json_error(j), {"bad.json", "model", "missing"});
  j = minimal();
  j["model"]["vocab"]["c"] = -4;
  expect_contains(load_json_error(j), {"model.vocab", "'c'"});
  j = minimal();
  j["model"]["merges"] = {"a c"};
  expect_contains(load_json_error(j), {"model.merges[0]", "'c' is not in the vocabulary"});
  j = minimal();
  j["model"]["merges"] = {"ab"};
  expect_contains(load_json_error(j), {"model.merges[0]", "expected \"left right\""});
  j = minimal();
  j["model"]["merges"] = {42};
  expect_contains(load_json_error(j), {"model.merges[0]"});
  j = minimal();
  j["model"]["byte_fallback"] = "yes";
  expect_contains(load_json_error(j), {"model.byte_fallback", "expected true or false"});
}

TEST(TokenizerErrors, BadRegexAndPatterns) {
  Json j = minimal();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_contains(load_json_error(j), {"bad.json", "pre_tokenizer.pattern.Regex", "cannot compile regex"});
  j["pre_tokenizer"]["pattern"] = {{"Glob", "*"}};
  expect_contains(load_json_error(j), {"pre_tokenizer.pattern", "{\"String\": ...} or {\"Regex\": ...}"});
  j = minimal();
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                         {"special_tokens", Json::object()}};
  expect_contains(load_json_error(j), {"post_processor.special_tokens", "'<s>'", "not defined"});
}

TEST(TokenizerErrors, UnkTokenMissingFromVocabularyWhenNeeded) {
  Json j = minimal();
  j["model"]["unk_token"] = "<unk>";
  const Tokenizer tok = Tokenizer::from_json(j.dump(), "bad.json");
  EXPECT_EQ(tok.encode("ab"), std::vector<int32_t>{2});
  expect_contains(error_of([&] { tok.encode("abz"); }), {"bad.json", "unk_token", "'<unk>'"});
}

TEST(TokenizerErrors, InvalidUtf8InputIsAnErrorWithOffset) {
  const Tokenizer tok = Tokenizer::from_json(minimal().dump());
  for (const std::string& bad : {std::string("ab\xFF"), std::string("a\xC3"), std::string("\xED\xA0\x80"),  // surrogate
                                 std::string("\xC0\xAF"), std::string("\xF4\x90\x80\x80"), std::string("a\x80")}) {
    const std::string msg = error_of([&] { tok.encode(bad); });
    expect_contains(msg, {"not valid UTF-8", "offset"});
  }
  expect_contains(error_of([&] { tok.encode("ab\xFF"); }), {"0xff", "offset 2"});
  // The SentencePiece path checks first as well.
  const Tokenizer sp = Tokenizer::load(kData / "spm_bpe" / "spm_bpe.model");
  expect_contains(error_of([&] { sp.encode("x\xE2\x82"); }), {"not valid UTF-8", "offset 1"});
  // NUL and other control characters are valid UTF-8.
  EXPECT_NO_THROW(tok.encode(std::string("a\0b", 3)));
}

TEST(TokenizerErrors, IdsWithoutTokens) {
  const Tokenizer tok = Tokenizer::from_json(minimal().dump(), "t.json");
  expect_contains(error_of([&] { tok.id_to_token(3); }), {"t.json", "id 3 has no token"});
  expect_contains(error_of([&] { tok.id_to_token(-1); }), {"id -1"});
  // decode skips them, as tokenizers does (a model's embedding may be padded past the vocabulary).
  EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 99, -5, 1}), "a b");
}

TEST(TokenizerErrors, MissingFilesAndDirectories) {
  expect_contains(error_of([] { Tokenizer::load("/nonexistent/tokenizer.json"); }), {"/nonexistent/tokenizer.json", "no such"});
  const fs::path empty = testing::fresh_dir("tokenizer_empty_dir");
  expect_contains(error_of([&] { Tokenizer::load(empty); }), {empty.string(), "no tokenizer.json or tokenizer.model"});
  const fs::path dir = testing::fresh_dir("tokenizer_bad_model");
  testing::write_file(dir / "tokenizer.model", "this is not a protobuf");
  expect_contains(error_of([&] { Tokenizer::load(dir); }), {(dir / "tokenizer.model").string(), "SentencePiece"});
}

TEST(TokenizerErrors, BadConfigFiles) {
  const fs::path dir = testing::fresh_dir("tokenizer_bad_config");
  testing::write_file(dir / "tokenizer.json", minimal().dump());
  testing::write_file(dir / "tokenizer_config.json", R"({"add_bos_token": "yes"})");
  expect_contains(error_of([&] { Tokenizer::load(dir); }), {"tokenizer_config.json", "add_bos_token"});
  testing::write_file(dir / "tokenizer_config.json", R"({"bos_token": 7})");
  expect_contains(error_of([&] { Tokenizer::load(dir); }), {"tokenizer_config.json", "bos_token"});
  testing::write_file(dir / "tokenizer_config.json", R"({"bos_token": "<s>", "add_bos_token": true})");
  expect_contains(error_of([&] { Tokenizer::load(dir); }), {"tokenizer_config.json", "add_bos_token", "'<s>'", "not in the vocabulary"});
  testing::write_file(dir / "tokenizer_config.json", R"({"eos_token": "b"})");
  testing::write_file(dir / "generation_config.json", R"({"eos_token_id": [1, 70000]})");
  expect_contains(error_of([&] { Tokenizer::load(dir); }), {"generation_config.json", "eos_token_id", "70000"});
  testing::write_file(dir / "generation_config.json", R"({"eos_token_id": "x"})");
  expect_contains(error_of([&] { Tokenizer::load(dir); }), {"generation_config.json", "eos_token_id"});
}

}  // namespace
}  // namespace moerun
