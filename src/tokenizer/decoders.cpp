#include "tokenizer/decoders.h"

#include "moerun/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_read.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";
constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581, SentencePiece's space

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A "<0xNN>" byte token (ByteFallback accepts either case of hex digit): the byte, or -1.
int byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// SentencePiece's byte pieces are exactly "<0x%02X>".
int sp_byte_piece(std::string_view t) {
  const int b = byte_token(t);
  if (b < 0) return -1;
  const auto upper = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return upper(t[3]) && upper(t[4]) ? b : -1;
}

std::string replace_substr(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0;;) {
    const size_t k = s.find(from, i);
    if (k == std::string_view::npos) {
      out.append(s.substr(i));
      return out;
    }
    out.append(s.substr(i, k - i));
    out.append(to);
    i = k + from.size();
  }
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) { return s.size() >= p.size() && s.substr(s.size() - p.size()) == p; }

// Strip per token, as tokenizers' Strip decoder (with overlapping cuts clamped instead of panicking).
std::string strip_token(std::string_view t, std::string_view content, size_t start, size_t stop) {
  size_t b = 0, e = t.size();
  for (size_t k = 0; k < start && starts_with(t.substr(b), content); ++k) b += content.size();
  for (size_t k = 0; k < stop && e > b && ends_with(t.substr(b, e - b), content); ++k) e -= content.size();
  return std::string(t.substr(b, e - b));
}

}  // namespace

Decoder Decoder::from_json(const io::Json* j, const std::string& file, const std::string& field) {
  Decoder d;
  if (!j) {
    d.steps_.push_back(Step{Kind::join_spaces, {}, {}, 0, 0, true, {}});
  } else {
    d.add(*j, file, field, 0);
  }
  d.finish();
  return d;
}

Decoder Decoder::sentencepiece(SentencePieceDecodeSpec spec) {
  Decoder d;
  Step s{Kind::sentencepiece, {}, {}, 0, 0, true, {}};
  s.sp = std::make_shared<const SentencePieceDecodeSpec>(std::move(spec));
  d.steps_.push_back(std::move(s));
  d.finish();
  return d;
}

void Decoder::add(const io::Json& j, const std::string& file, const std::string& field, int depth) {
  json::object(j, file, field);
  if (depth > json::kMaxNesting) json::fail(file, field, "Sequence nested too deeply");
  const std::string type = json::string_at(j, "type", file, field);
  Step s{Kind::fuse, {}, {}, 0, 0, true, {}};
  if (type == "Sequence") {
    const io::Json& list = json::require(j, "decoders", file, field);
    const std::string f = json::sub(field, "decoders");
    if (!list.is_array()) json::fail(file, f, cat("expected a list, found ", io::brief(list)));
    for (size_t i = 0; i < list.size(); ++i) add(list[i], file, json::index(f, i), depth + 1);
    return;
  } else if (type == "ByteLevel") {
    s.kind = Kind::byte_level;
  } else if (type == "ByteFallback") {
    s.kind = Kind::byte_fallback;
  } else if (type == "Fuse") {
    s.kind = Kind::fuse;
  } else if (type == "Strip") {
    s.kind = Kind::strip;
    s.text = json::one_char(j, "content", " ", file, field);
    const int64_t start = json::int_or(j, "start", 0, file, field), stop = json::int_or(j, "stop", 0, file, field);
    if (start < 0 || stop < 0) json::fail(file, field, "Strip start and stop must not be negative");
    s.start = static_cast<size_t>(start);
    s.stop = static_cast<size_t>(stop);
  } else if (type == "Replace") {
    s.kind = Kind::replace;
    s.pattern = std::make_shared<const Regex>(json::pattern_at(j, "pattern", file, field));
    s.text = json::string_at(j, "content", file, field);
  } else if (type == "Metaspace") {
    s.kind = Kind::metaspace;
    s.text = json::one_char(j, "replacement", std::string(kSpaceSymbol), file, field);
    const bool add_prefix_space = json::bool_or(j, "add_prefix_space", true, file, field);
    const std::string scheme = json::string_or(j, "prepend_scheme", add_prefix_space ? "always" : "never", file, field);
    if (scheme != "always" && scheme != "first" && scheme != "never")
      json::fail(file, json::sub(field, "prepend_scheme"),
                 cat("unknown prepend_scheme '", scheme, "' (expected first, always or never)"));
    s.strip_first = add_prefix_space && scheme != "never";
  } else {
    json::fail(file, json::sub(field, "type"),
               cat("unsupported decoder type '", type,
                   "' (supported: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence)"));
  }
  steps_.push_back(std::move(s));
}

void Decoder::finish() {
  // After a fusing step a stream slice is a fragment of one long string; only a single-character
  // literal Replace is then guaranteed to see the same matches in fragments as in the whole.
  bool fused = false;
  for (const Step& s : steps_) {
    if (s.kind == Kind::replace && fused && !s.pattern->is_single_char_literal()) streaming_exact_ = false;
    if (s.kind == Kind::fuse || s.kind == Kind::byte_level || s.kind == Kind::sentencepiece || s.kind == Kind::join_spaces)
      fused = true;
  }
}

DecodeState Decoder::new_state() const {
  DecodeState st;
  st.steps.resize(steps_.size());
  return st;
}

std::string Decoder::run(std::vector<std::string> tokens, DecodeState& state, bool at_end) const {
  if (state.steps.size() != steps_.size()) state = new_state();
  bool fused = false;
  std::vector<std::string> next;
  for (size_t si = 0; si < steps_.size(); ++si) {
    const Step& step = steps_[si];
    DecodeState::Step& st = state.steps[si];
    next.clear();
    switch (step.kind) {
      case Kind::replace:
        for (const std::string& t : tokens) next.push_back(step.pattern->replace_all(t, step.text));
        break;

      case Kind::byte_fallback: {
        // A run of <0xNN> tokens becomes its text when it is valid UTF-8 as a whole, else one U+FFFD
        // per byte (tokenizers' ByteFallback). A run at the end of a slice may continue in the next.
        const auto flush = [&]() {
          if (st.held.empty()) return;
          if (!find_invalid_utf8(st.held)) {
            next.push_back(st.held);
          } else {
            for (size_t k = 0; k < st.held.size(); ++k) next.emplace_back(kReplacementChar);
          }
          st.held.clear();
        };
        for (std::string& t : tokens) {
          if (const int b = byte_token(t); b >= 0) {
            st.held += static_cast<char>(b);
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        if (at_end) flush();
        break;
      }

      case Kind::fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        next.push_back(std::move(all));
        fused = true;
        break;
      }

      case Kind::strip: {
        if (!fused) {
          for (const std::string& t : tokens) next.push_back(strip_token(t, step.text, step.start, step.stop));
          break;
        }
        // One string that continues across slices: strip its overall start and end.
        std::string s = std::move(st.tail);
        st.tail.clear();
        for (const std::string& t : tokens) s += t;
        if (!st.strip_started) {
          st.strip_left = step.start;
          st.strip_started = true;
        }
        while (st.strip_left > 0 && starts_with(s, step.text)) {
          s.erase(0, step.text.size());
          --st.strip_left;
        }
        if (!s.empty()) st.strip_left = 0;
        size_t e = s.size();
        for (size_t k = 0; k < step.stop && e > 0 && ends_with(std::string_view(s).substr(0, e), step.text); ++k)
          e -= step.text.size();
        if (!at_end) st.tail = s.substr(e);  // may still be the end: decide when more text comes
        s.resize(e);
        next.push_back(std::move(s));
        break;
      }

      case Kind::metaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          const bool first = fused || st.seen + i == 0;
          // tokenizers drops every replacement character of the first token, not only a leading one.
          next.push_back(replace_substr(tokens[i], step.text, first && step.strip_first ? "" : " "));
        }
        st.seen += tokens.size();
        break;

      case Kind::byte_level: {
        const ByteLevelTable& table = ByteLevelTable::get();
        std::string bytes = std::move(st.held);
        st.held.clear();
        for (const std::string& t : tokens) {
          // A token whose characters are all in the table stands for bytes; any other is taken as text.
          std::string mapped;
          bool all = true;
          for (size_t i = 0; i < t.size() && all;) {
            char32_t c = 0;
            const size_t n = decode_utf8(t, i, c);
            if (c < table.char_to_byte.size() && table.char_to_byte[c] >= 0) {
              mapped += static_cast<char>(table.char_to_byte[c]);
            } else {
              all = false;
            }
            i += n;
          }
          bytes += all ? mapped : t;
        }
        if (!at_end) {
          const size_t keep = utf8_incomplete_tail(bytes);
          st.held = bytes.substr(bytes.size() - keep);
          bytes.resize(bytes.size() - keep);
        }
        next.push_back(utf8_lossy(bytes));
        fused = true;
        break;
      }

      case Kind::sentencepiece: {
        const SentencePieceDecodeSpec& sp = *step.sp;
        std::string out;
        // SentencePiece turns a byte run into text one character at a time: a well-formed character
        // stays, every other byte becomes U+FFFD.
        const auto flush = [&]() {
          const std::string& b = st.held;
          for (size_t i = 0; i < b.size();) {
            const size_t bad = find_invalid_utf8(std::string_view(b).substr(i, std::min<size_t>(4, b.size() - i)))
                                   .value_or(std::string::npos);
            if (bad == 0) {
              out += kReplacementChar;
              ++i;
            } else {
              char32_t c = 0;
              const size_t n = decode_utf8(b, i, c);
              out.append(b, i, n);
              i += n;
            }
          }
          if (!out.empty()) st.sp_text_nonempty = true;
          st.held.clear();
        };
        for (const std::string& t : tokens) {
          if (sp.byte_pieces) {
            if (const int b = sp_byte_piece(t); b >= 0) {
              st.held += static_cast<char>(b);
              continue;
            }
          }
          flush();
          if (st.sp_bos_ws_seen || st.sp_text_nonempty) st.sp_bos_ws = false;
          std::string surface;
          bool consumed = false;
          if (t == sp.unk_piece) {
            surface = sp.unk_surface;
          } else {
            std::string_view p = t;
            if (st.sp_bos_ws && sp.strip_leading_space && starts_with(p, kSpaceSymbol)) {
              p.remove_prefix(kSpaceSymbol.size());
              consumed = !sp.remove_extra_whitespaces;  // then every leading space piece is dropped
            }
            surface = replace_substr(p, kSpaceSymbol, " ");
          }
          st.sp_bos_ws_seen = consumed;
          out += surface;
          if (!out.empty()) st.sp_text_nonempty = true;
        }
        if (at_end) flush();
        next.push_back(std::move(out));
        fused = true;
        break;
      }

      case Kind::join_spaces: {
        std::string out;
        for (const std::string& t : tokens) {
          if (st.started) out += ' ';
          out += t;
          st.started = true;
        }
        next.push_back(std::move(out));
        fused = true;
        break;
      }
    }
    tokens.swap(next);
  }
  std::string text;
  for (const std::string& t : tokens) text += t;
  return text;
}

}  // namespace moerun::tok
