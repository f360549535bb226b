// Our SentencePiece decoding (needed so that streaming and whole decodes agree) against
// libsentencepiece's own DecodeIds on random id sequences: bytes, unknowns, leading spaces.

#include <gtest/gtest.h>

#include <random>

#include <sentencepiece_processor.h>

#include "moerun/tokenizer.h"
#include "tokenizer/unicode.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
const fs::path kData = fs::path(MOERUN_TEST_DATA) / "tokenizers";

void check_against_library(const std::string& name) {
  const fs::path path = kData / name / (name + ".model");
  const Tokenizer tok = Tokenizer::load(path);
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(path.string()).ok());
  std::vector<int> interesting;  // byte pieces, pieces starting with U+2581, unk
  for (int id = 0; id < sp.GetPieceSize(); ++id)
    if (sp.IsByte(id) || sp.IsUnknown(id) || sp.IdToPiece(id).rfind("\xE2\x96\x81", 0) == 0) interesting.push_back(id);
  std::mt19937 rng(42);
  for (int round = 0; round < 2000; ++round) {
    std::vector<int> ids(1 + rng() % 12);
    for (int& id : ids) {
      do {
        id = rng() % 2 ? interesting[rng() % interesting.size()] : static_cast<int>(rng() % sp.GetPieceSize());
      } while (sp.IsControl(id));  // control ids: SentencePiece hides them, we print them unless skipped
    }
    std::string want;
    ASSERT_TRUE(sp.Decode(ids, &want).ok());
    const std::vector<int32_t> ours(ids.begin(), ids.end());
    ASSERT_EQ(tok.decode(ours), want) << name << " round " << round;
    StreamDecoder dec(tok);
    std::string streamed;
    for (const int32_t id : ours) {
      const std::string piece = dec.push(id);
      ASSERT_FALSE(tok::find_invalid_utf8(piece).has_value());
      streamed += piece;
    }
    ASSERT_EQ(streamed + dec.flush(), want) << name << " round " << round << " (stream)";
  }
}

TEST(SentencePiece, DecodeMatchesLibraryBpe) { check_against_library("spm_bpe"); }
TEST(SentencePiece, DecodeMatchesLibraryUnigram) { check_against_library("spm_unigram"); }

TEST(SentencePiece, ControlTokensShownUnlessSkipped) {
  const Tokenizer tok = Tokenizer::load(kData / "spm_bpe" / "spm_bpe.model");
  std::vector<int32_t> ids = tok.encode("Hello world");
  ids.insert(ids.begin(), 1);
  ids.push_back(2);
  EXPECT_EQ(tok.decode(ids), "<s> Hello world</s>");
  EXPECT_EQ(tok.decode(ids, true), "Hello world");
}

}  // namespace
}  // namespace moerun
