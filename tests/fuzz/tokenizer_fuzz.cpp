// libFuzzer target for the tokenizers: any byte string as text to encode (with every option) and as a
// sequence of ids to decode, whole and streamed. Invalid UTF-8 text may be rejected with moerun::Error;
// anything else that escapes -- another exception, a crash, a sanitizer report, invalid UTF-8 out of
// decode or StreamDecoder, a stream that disagrees with decode, or a DeepSeek-V3 round trip that does
// not return the text -- is a finding. Built only with clang (-DMOERUN_FUZZ=ON).
//
// The tokenizers are the committed test data (MOERUN_TEST_DATA/tokenizers), loaded once.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "moerun/error.h"
#include "moerun/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

struct Loaded {
  std::vector<moerun::Tokenizer> all;  // [0] is DeepSeek-V3: byte-level, so every text round-trips
};

const Loaded& tokenizers() {
  static const Loaded loaded = [] {
    const std::string dir = std::string(MOERUN_TEST_DATA) + "/tokenizers/";
    Loaded l;
    for (const char* path : {"deepseek_v3/tokenizer.json", "mistral/tokenizer.json", "spm_bpe/spm_bpe.model",
                             "spm_unigram/spm_unigram.model"})
      l.all.push_back(moerun::Tokenizer::load(dir + path));
    return l;
  }();
  return loaded;
}

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "tokenizer_fuzz: %s\n", what);
  std::abort();
}

void check_utf8(const std::string& s, const char* what) {
  if (moerun::tok::find_invalid_utf8(s)) finding(what);
}

void decode_both_ways(const moerun::Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  const std::string whole = tok.decode(ids, skip);
  check_utf8(whole, "decode returned invalid UTF-8");
  moerun::StreamDecoder stream(tok, skip);
  std::string streamed;
  for (const int32_t id : ids) {
    const std::string piece = stream.push(id);
    check_utf8(piece, "StreamDecoder::push returned invalid UTF-8");
    streamed += piece;
  }
  const std::string rest = stream.flush();
  check_utf8(rest, "StreamDecoder::flush returned invalid UTF-8");
  if (streamed + rest != whole) finding("StreamDecoder disagrees with decode");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Loaded& l = tokenizers();
  const uint8_t mode = data[0];
  const moerun::Tokenizer& tok = l.all[mode % l.all.size()];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);

  // The bytes as text.
  const moerun::EncodeOptions opt{.add_special_tokens = (mode & 4) != 0, .parse_special = (mode & 8) != 0};
  try {
    const std::vector<int32_t> ids = tok.encode(rest, opt);
    for (const int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) finding("encode returned an id outside the vocabulary");
    decode_both_ways(tok, ids, (mode & 16) != 0);
    if (&tok == &l.all[0] && !opt.add_special_tokens && tok.decode(ids) != rest) finding("DeepSeek-V3 round trip failed");
  } catch (const moerun::Error&) {
    if (!moerun::tok::find_invalid_utf8(rest)) finding("encode threw on valid UTF-8 text");
  }

  // The bytes as ids: little-endian int32, folded mostly into the vocabulary (some past it, some negative).
  std::vector<int32_t> ids;
  const int64_t span = tok.vocab_size() + 16;
  for (size_t i = 0; i + 4 <= rest.size(); i += 4) {
    int32_t raw = 0;
    std::memcpy(&raw, rest.data() + i, 4);
    ids.push_back(raw < 0 && (raw & 1) ? raw : static_cast<int32_t>((static_cast<int64_t>(raw) % span + span) % span));
  }
  decode_both_ways(tok, ids, (mode & 32) != 0);
  return 0;
}
