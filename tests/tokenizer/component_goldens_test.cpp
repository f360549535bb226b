// Small tokenizer.json files, one per component and option (tools/golden/make_tokenizer_goldens.py),
// each checked against the ids and decodings Hugging Face tokenizers gave: every normalizer,
// pre-tokenizer, Split behaviour, Metaspace scheme, BPE option, added-token option, post-processor and
// decoder, plus random id sequences through every decoder, whole and streamed.

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "moerun/error.h"
#include "moerun/tokenizer.h"
#include "tokenizer/unicode.h"

namespace moerun {
namespace {

using Json = nlohmann::json;

const Json& cases() {
  static const Json all = [] {  // test-only memo of the parsed file
    std::ifstream in(std::filesystem::path(MOERUN_TEST_DATA) / "tokenizers" / "components" / "cases.json");
    EXPECT_TRUE(in) << "cannot open components/cases.json";
    return Json::parse(in);
  }();
  return all["cases"];
}

std::vector<int32_t> ids_of(const Json& j) { return j.get<std::vector<int32_t>>(); }

std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  StreamDecoder dec(tok, skip);
  std::string out;
  for (const int32_t id : ids) {
    const std::string piece = dec.push(id);
    EXPECT_FALSE(moerun::tok::find_invalid_utf8(piece).has_value()) << "push returned invalid UTF-8";
    out += piece;
  }
  return out + dec.flush();
}

class ComponentGoldens : public ::testing::TestWithParam<size_t> {};

TEST_P(ComponentGoldens, MatchesTokenizers) {
  const Json& c = cases()[GetParam()];
  const std::string name = c["name"];
  const Tokenizer tok = Tokenizer::from_json(c["tokenizer"].dump(), name + ".json");
  for (const Json& t : c["texts"]) {
    const std::string text = t["text"];
    SCOPED_TRACE(name + ": text " + Json(text).dump());
    EXPECT_EQ(tok.encode(text), ids_of(t["ids"]));
    EXPECT_EQ(tok.encode(text, {.add_special_tokens = false}), ids_of(t["ids_no_special"]));
    EXPECT_EQ(tok.encode(text, {.add_special_tokens = false, .parse_special = false}), ids_of(t["ids_plain"]));
    EXPECT_EQ(tok.decode(ids_of(t["ids"])), t["decoded"].get<std::string>());
    EXPECT_EQ(tok.decode(ids_of(t["ids"]), true), t["decoded_skip"].get<std::string>());
    EXPECT_EQ(stream_decode(tok, ids_of(t["ids"]), false), t["decoded"].get<std::string>()) << "stream";
    EXPECT_EQ(stream_decode(tok, ids_of(t["ids"]), true), t["decoded_skip"].get<std::string>()) << "stream";
  }
  for (const Json& d : c["decodes"]) {
    const std::vector<int32_t> ids = ids_of(d["ids"]);
    SCOPED_TRACE(name + ": ids " + d["ids"].dump());
    EXPECT_EQ(tok.decode(ids), d["decoded"].get<std::string>());
    EXPECT_EQ(tok.decode(ids, true), d["decoded_skip"].get<std::string>());
    EXPECT_EQ(stream_decode(tok, ids, false), d["decoded"].get<std::string>()) << "stream";
    EXPECT_EQ(stream_decode(tok, ids, true), d["decoded_skip"].get<std::string>()) << "stream";
  }
}

INSTANTIATE_TEST_SUITE_P(All, ComponentGoldens, ::testing::Range<size_t>(0, cases().size()),
                         [](const ::testing::TestParamInfo<size_t>& p) {
                           return cases()[p.param]["name"].get<std::string>();
                         });

}  // namespace
}  // namespace moerun
