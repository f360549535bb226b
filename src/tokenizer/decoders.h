#pragma once
// Decoders: token strings back to text. tokenizer.json decoders (ByteLevel, Metaspace, ByteFallback,
// Fuse, Strip, Replace, Sequence; none = join with spaces) and SentencePiece's own decoding rules,
// all as one flat list of steps.
//
// The chain can run over a whole id sequence at once (decode) or over consecutive slices of it
// (StreamDecoder): whatever depends on the neighbours of a token -- the first token's leading space,
// an unfinished run of byte tokens, a trailing strip -- is carried in a DecodeState, so the slices
// concatenate to exactly the text of the whole. The one exception is a Replace whose pattern can span
// tokens after they were fused; streaming_exact() is false then and StreamDecoder waits for flush().
//
// Output is always valid UTF-8. ByteLevel turns its bytes into text as tokenizers does (every
// ill-formed subpart becomes U+FFFD) but, inside a stream, holds back a character that is cut short
// by the end of the slice until the next slice completes it.

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "io/json_util.h"
#include "tokenizer/regex.h"

namespace moerun::tok {

// What SentencePiece's decoder needs to know about its model (see sentencepiece.cpp).
struct SentencePieceDecodeSpec {
  std::string unk_piece;    // the piece of the unk id ("<unk>")
  std::string unk_surface;  // its rendering (" \u2047 " by default)
  bool strip_leading_space = true;  // add_dummy_prefix || remove_extra_whitespaces
  bool remove_extra_whitespaces = true;
  bool byte_pieces = false;  // "<0xNN>" pieces are bytes (byte_fallback models)
};

// Per-step streaming state of one decode.
struct DecodeState {
  struct Step {
    size_t seen = 0;                 // elements this step has already produced (for "first token" rules)
    std::string held;                // ByteFallback / SentencePiece: an unfinished run of byte tokens;
                                     // ByteLevel: the bytes of an unfinished character
    size_t strip_left = 0;           // Strip after fusing: leading characters still to strip
    bool strip_started = false;      // strip_left has been initialised
    std::string tail;                // Strip after fusing: trailing characters held until the end is known
    bool started = false;            // join-with-spaces: something was emitted already
    bool sp_bos_ws = true;           // SentencePiece: still at the beginning (strip a leading space)
    bool sp_bos_ws_seen = false;     // SentencePiece: the previous piece consumed the leading space
    bool sp_text_nonempty = false;   // SentencePiece: something was emitted already
  };
  std::vector<Step> steps;
};

class Decoder {
 public:
  // `j` may be null (tokenizer.json "decoder": null): tokens are joined with spaces.
  static Decoder from_json(const io::Json* j, const std::string& file, const std::string& field);
  static Decoder sentencepiece(SentencePieceDecodeSpec spec);

  DecodeState new_state() const;
  // Decodes the next slice of tokens. `at_end` marks the last slice: held state is released.
  std::string run(std::vector<std::string> tokens, DecodeState& state, bool at_end) const;
  bool streaming_exact() const { return streaming_exact_; }

 private:
  enum class Kind { replace, byte_fallback, fuse, strip, metaspace, byte_level, sentencepiece, join_spaces };
  struct Step {
    Kind kind;
    std::shared_ptr<const Regex> pattern;  // Replace
    std::string text;    // Replace: content; Strip: content char; Metaspace: replacement
    size_t start = 0, stop = 0;  // Strip
    bool strip_first = true;     // Metaspace: prepend_scheme != never
    std::shared_ptr<const SentencePieceDecodeSpec> sp;
  };
  void add(const io::Json& j, const std::string& file, const std::string& field, int depth);
  void finish();  // computes streaming_exact_

  std::vector<Step> steps_;
  bool streaming_exact_ = true;
};

}  // namespace moerun::tok
