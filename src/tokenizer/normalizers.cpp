#include "tokenizer/normalizers.h"

#include "moerun/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_read.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

Normalizer Normalizer::from_json(const io::Json& j, const std::string& file, const std::string& field) {
  Normalizer n;
  n.add(j, file, field, 0);
  return n;
}

void Normalizer::add(const io::Json& j, const std::string& file, const std::string& field, int depth) {
  json::object(j, file, field);
  if (depth > json::kMaxNesting) json::fail(file, field, "Sequence nested too deeply");
  const std::string type = json::string_at(j, "type", file, field);
  Step step{};
  if (type == "Sequence") {
    const io::Json& list = json::require(j, "normalizers", file, field);
    const std::string f = json::sub(field, "normalizers");
    if (!list.is_array()) json::fail(file, f, cat("expected a list, found ", io::brief(list)));
    for (size_t i = 0; i < list.size(); ++i) add(list[i], file, json::index(f, i), depth + 1);
    return;
  } else if (type == "NFC") {
    step.kind = Kind::nfc;
  } else if (type == "NFD") {
    step.kind = Kind::nfd;
  } else if (type == "NFKC") {
    step.kind = Kind::nfkc;
  } else if (type == "NFKD") {
    step.kind = Kind::nfkd;
  } else if (type == "Lowercase") {
    step.kind = Kind::lowercase;
  } else if (type == "StripAccents") {
    step.kind = Kind::strip_accents;
  } else if (type == "ByteLevel") {
    step.kind = Kind::byte_level;
  } else if (type == "Strip") {
    step.kind = Kind::strip;
    step.left = json::bool_or(j, "strip_left", true, file, field);
    step.right = json::bool_or(j, "strip_right", true, file, field);
  } else if (type == "Prepend") {
    step.kind = Kind::prepend;
    step.text = json::string_at(j, "prepend", file, field);
  } else if (type == "Replace") {
    step.kind = Kind::replace;
    step.pattern = std::make_shared<const Regex>(json::pattern_at(j, "pattern", file, field));
    step.text = json::string_at(j, "content", file, field);
  } else {
    json::fail(file, json::sub(field, "type"),
               cat("unsupported normalizer type '", type,
                   "' (supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, ByteLevel, Prepend, Replace, "
                   "Sequence)"));
  }
  steps_.push_back(std::move(step));
}

namespace {

void strip_whitespace(std::string& s, bool left, bool right) {
  size_t begin = 0, end = s.size();
  if (left) {
    while (begin < end) {
      char32_t c = 0;
      const size_t n = decode_utf8(s, begin, c);
      if (!is_whitespace(c)) break;
      begin += n;
    }
  }
  if (right) {
    while (end > begin) {
      size_t k = end - 1;
      while (k > begin && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
      char32_t c = 0;
      decode_utf8(s, k, c);
      if (!is_whitespace(c)) break;
      end = k;
    }
  }
  s = s.substr(begin, end - begin);
}

std::string strip_accents(const std::string& s) {
  // tokenizers' StripAccents drops every combining mark (is_combining_mark: Mn, Mc, Me); it is meant
  // to follow NFD, which splits accents off their letters.
  std::string out;
  for (size_t i = 0; i < s.size();) {
    char32_t c = 0;
    const size_t n = decode_utf8(s, i, c);
    if (!is_mark(c)) out.append(s, i, n);
    i += n;
  }
  return out;
}

}  // namespace

void Normalizer::normalize(std::string& s) const {
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::nfc: s = normalize_unicode(s, NormalForm::nfc); break;
      case Kind::nfd: s = normalize_unicode(s, NormalForm::nfd); break;
      case Kind::nfkc: s = normalize_unicode(s, NormalForm::nfkc); break;
      case Kind::nfkd: s = normalize_unicode(s, NormalForm::nfkd); break;
      case Kind::lowercase: s = to_lowercase(s); break;
      case Kind::strip_accents: s = strip_accents(s); break;
      case Kind::byte_level: s = bytes_to_byte_level(s); break;
      case Kind::strip: strip_whitespace(s, step.left, step.right); break;
      case Kind::prepend:
        if (!s.empty()) s.insert(0, step.text);  // as tokenizers: nothing to prepend to an empty string
        break;
      case Kind::replace: s = step.pattern->replace_all(s, step.text); break;
    }
  }
}

}  // namespace moerun::tok
