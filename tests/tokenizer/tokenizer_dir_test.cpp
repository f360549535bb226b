// Model directories: which file is picked, and what tokenizer_config.json and generation_config.json
// add (BOS/EOS/pad ids and strings, add_bos_token, eos lists, added tokens for a .model); plus
// parse_special and concurrent use of one Tokenizer.

#include <gtest/gtest.h>

#include <thread>

#include <nlohmann/json.hpp>

#include "moerun/tokenizer.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
const fs::path kData = fs::path(MOERUN_TEST_DATA) / "tokenizers";

TEST(TokenizerDir, PrefersTokenizerJsonOverModel) {
  const fs::path dir = testing::fresh_dir("tokenizer_both_files");
  fs::copy_file(kData / "mistral" / "tokenizer.json", dir / "tokenizer.json");
  fs::copy_file(kData / "spm_bpe" / "spm_bpe.model", dir / "tokenizer.model");
  const Tokenizer tok = Tokenizer::load(dir);
  EXPECT_EQ(tok.source(), (dir / "tokenizer.json").string());
  EXPECT_EQ(tok.vocab_size(), 32000);
  fs::remove(dir / "tokenizer.json");
  EXPECT_EQ(Tokenizer::load(dir).vocab_size(), 2000);
}

TEST(TokenizerDir, GenerationConfigEosListAndConfigTokenObjects) {
  const fs::path dir = testing::fresh_dir("tokenizer_eos_list");
  fs::copy_file(kData / "mistral" / "tokenizer.json", dir / "tokenizer.json");
  testing::write_file(dir / "tokenizer_config.json",
                      R"({"bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>",
                          "pad_token": "<unk>", "add_bos_token": false})");
  testing::write_file(dir / "generation_config.json", R"({"bos_token_id": 1, "eos_token_id": [2, 0, 2]})");
  const Tokenizer tok = Tokenizer::load(dir);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.bos_token(), "<s>");
  EXPECT_EQ(tok.eos_ids(), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(tok.eos_token(), "</s>");
  EXPECT_EQ(tok.pad_id(), 0);
  // The post-processor template says BOS; add_bos_token only fills in where it is silent.
  EXPECT_EQ(tok.encode("Hi").front(), 1);

  testing::write_file(dir / "generation_config.json", R"({"eos_token_id": 2})");
  EXPECT_EQ(Tokenizer::load(dir).eos_ids(), (std::vector<int32_t>{2}));
}

TEST(TokenizerDir, SentencePieceModelWithConfig) {
  // transformers' slow tokenizer: BOS from add_bos_token, added tokens split out before SentencePiece.
  const fs::path dir = testing::fresh_dir("tokenizer_spm_config");
  fs::copy_file(kData / "spm_bpe" / "spm_bpe.model", dir / "tokenizer.model");
  testing::write_file(dir / "tokenizer_config.json", R"({
      "add_bos_token": true, "add_eos_token": true, "bos_token": "<s>", "eos_token": "</s>",
      "added_tokens_decoder": {
        "1": {"content": "<s>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
        "2": {"content": "</s>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
        "2000": {"content": "<|im_start|>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false}}})");
  const Tokenizer tok = Tokenizer::load(dir);
  const Tokenizer bare = Tokenizer::load(kData / "spm_bpe" / "spm_bpe.model");
  const std::vector<int32_t> hello = bare.encode("Hello");
  std::vector<int32_t> want = {1};
  want.insert(want.end(), hello.begin(), hello.end());
  want.push_back(2);
  EXPECT_EQ(tok.encode("Hello"), want);
  EXPECT_EQ(tok.encode("Hello", {.add_special_tokens = false}), hello);
  EXPECT_EQ(tok.vocab_size(), 2001);
  EXPECT_EQ(tok.encode("<|im_start|>Hello", {.add_special_tokens = false}).front(), 2000);
  EXPECT_EQ(tok.id_to_token(2000), "<|im_start|>");
  EXPECT_TRUE(tok.is_special(2000));
  EXPECT_NE(tok.encode("<|im_start|>Hello", {.add_special_tokens = false, .parse_special = false}).front(), 2000);
  // As Mistral's tokenizer.json: the space of "▁Hello" is kept after a visible "<s>".
  EXPECT_EQ(tok.decode(tok.encode("Hello")), "<s> Hello</s>");
  EXPECT_EQ(tok.decode(tok.encode("Hello"), true), "Hello");
}

TEST(TokenizerDir, ParseSpecialOff) {
  const Tokenizer tok = Tokenizer::load(kData / "deepseek_v3" / "tokenizer.json");
  const std::string text = "<｜begin▁of▁sentence｜>Hi<｜User｜>";
  const std::vector<int32_t> parsed = tok.encode(text);
  ASSERT_EQ(parsed.front(), 0);
  const std::vector<int32_t> plain = tok.encode(text, {.parse_special = false});
  EXPECT_GT(plain.size(), parsed.size());
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 0), 0);
  // <｜User｜> is a non-special added token: it is still recognised.
  EXPECT_EQ(plain.back(), parsed.back());
  EXPECT_FALSE(tok.is_special(parsed.back()));
  EXPECT_EQ(tok.decode(plain), text);
}

TEST(TokenizerDir, ConcurrentEncodeMatchesSequential) {
  const Tokenizer tok = Tokenizer::load(kData / "deepseek_v3" / "tokenizer.json");
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back("sample " + std::to_string(i * 7919) + " with words w" + std::to_string(i % 13) + " and ünïcödé");
  std::vector<std::vector<int32_t>> want;
  const Tokenizer fresh = Tokenizer::load(kData / "deepseek_v3" / "tokenizer.json");
  for (const std::string& t : texts) want.push_back(fresh.encode(t));
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&, w] {
      for (int rep = 0; rep < 5; ++rep)
        for (size_t i = 0; i < texts.size(); ++i) bad[w] += tok.encode(texts[(i * (w + 1)) % texts.size()]) != want[(i * (w + 1)) % texts.size()];
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad, std::vector<int>(4, 0));
}

}  // namespace
}  // namespace moerun
