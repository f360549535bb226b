// StreamDecoder: the decoder chain run one id at a time, its DecodeState carrying whatever a later
// token can still change (see decoders.h), so the pieces add up to decode(ids).

#include "moerun/error.h"
#include "moerun/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"

namespace moerun {

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : impl_(tokenizer.impl_),
      skip_special_tokens_(skip_special_tokens),
      state_(std::make_unique<tok::DecodeState>(impl_->decoder.new_state())) {}

StreamDecoder::~StreamDecoder() = default;
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;
StreamDecoder& StreamDecoder::operator=(StreamDecoder&&) noexcept = default;

std::string StreamDecoder::push(int32_t id) {
  if (!impl_->decoder.streaming_exact()) {  // a Replace that may span tokens: wait for the whole text
    pending_.push_back(id);
    return {};
  }
  std::vector<std::string> tokens = impl_->decode_tokens(std::span<const int32_t>(&id, 1), skip_special_tokens_);
  if (tokens.empty()) return {};  // unknown or skipped id: decode() leaves it out before the decoder too
  std::string text = impl_->decoder.run(std::move(tokens), *state_, false);
  if (tok::find_invalid_utf8(text)) text = tok::utf8_lossy(text);  // only a malformed .model gets here
  return text;
}

std::string StreamDecoder::flush() {
  std::string text = impl_->decoder.run(impl_->decode_tokens(pending_, skip_special_tokens_), *state_, true);
  pending_.clear();
  *state_ = impl_->decoder.new_state();
  if (tok::find_invalid_utf8(text)) text = tok::utf8_lossy(text);
  return text;
}

}  // namespace moerun
