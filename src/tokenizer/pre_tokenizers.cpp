#include "tokenizer/pre_tokenizers.h"

#include <algorithm>

#include "moerun/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_read.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

namespace {

// GPT-2's pre-tokenization regex, as tokenizers' ByteLevel pre-tokenizer compiles it.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

SplitBehavior parse_behavior(const io::Json& j, const char* key, const std::string& fallback, const std::string& file,
                             const std::string& field) {
  const std::string b = json::string_or(j, key, fallback, file, field);
  if (b == "Removed") return SplitBehavior::removed;
  if (b == "Isolated") return SplitBehavior::isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (b == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (b == "Contiguous") return SplitBehavior::contiguous;
  json::fail(file, json::sub(field, key),
             cat("unknown split behavior '", b,
                 "' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)"));
}

// Each character for which `pred` holds is a match of its own (tokenizers' Pattern for Fn(char)).
template <class Pred>
std::vector<Regex::Piece> char_matches(const std::string& s, Pred pred) {
  std::vector<Regex::Piece> out;
  if (s.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    char32_t c = 0;
    const size_t n = decode_utf8(s, i, c);
    if (pred(c)) {
      if (last < i) out.push_back({last, i, false});
      out.push_back({i, i + n, true});
      last = i + n;
    }
    i += n;
  }
  if (last < s.size()) out.push_back({last, s.size(), false});
  return out;
}

// Applies `behavior` to a covering list of matches (NormalizedString::split) and appends the
// non-empty pieces of `in` to `out`.
void split_by(const Piece& in, std::vector<Regex::Piece> matches, SplitBehavior behavior, bool invert,
              std::vector<Piece>& out) {
  if (invert)
    for (Regex::Piece& m : matches) m.match = !m.match;
  struct Range {
    size_t begin, end;
    bool keep;
  };
  std::vector<Range> ranges;
  ranges.reserve(matches.size());
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const auto& m : matches) ranges.push_back({m.begin, m.end, true});
      break;
    case SplitBehavior::removed:
      for (const auto& m : matches) ranges.push_back({m.begin, m.end, !m.match});
      break;
    case SplitBehavior::contiguous: {
      bool previous = false;
      for (const auto& m : matches) {
        if (m.match == previous && !ranges.empty()) {
          ranges.back().end = m.end;
        } else {
          ranges.push_back({m.begin, m.end, true});
        }
        previous = m.match;
      }
      break;
    }
    case SplitBehavior::merged_with_previous: {
      bool previous = false;
      for (const auto& m : matches) {
        if (m.match && !previous && !ranges.empty()) {
          ranges.back().end = m.end;
        } else {
          ranges.push_back({m.begin, m.end, true});
        }
        previous = m.match;
      }
      break;
    }
    case SplitBehavior::merged_with_next: {
      bool previous = false;  // here: the match flag of the piece to the right
      for (size_t k = matches.size(); k-- > 0;) {
        const auto& m = matches[k];
        if (m.match && !previous && !ranges.empty()) {
          ranges.back().begin = m.begin;
        } else {
          ranges.push_back({m.begin, m.end, true});
        }
        previous = m.match;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
    }
  }
  for (const Range& r : ranges)
    if (r.keep && r.end > r.begin) out.push_back({in.text.substr(r.begin, r.end - r.begin), in.at_start && r.begin == 0});
}

// `\w+|[^\w\s]+` as a covering match list (the Whitespace pre-tokenizer's regex, Rust semantics).
std::vector<Regex::Piece> word_runs(const std::string& s) {
  std::vector<Regex::Piece> out;
  if (s.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  enum Cls { word, space, other };
  const auto cls = [](char32_t c) { return is_word_char(c) ? word : is_whitespace(c) ? space : other; };
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    char32_t c = 0;
    size_t n = decode_utf8(s, i, c);
    const Cls k = cls(c);
    if (k == space) {
      i += n;
      continue;
    }
    size_t j = i + n;
    while (j < s.size()) {
      n = decode_utf8(s, j, c);
      if (cls(c) != k) break;
      j += n;
    }
    if (last < i) out.push_back({last, i, false});
    out.push_back({i, j, true});
    last = i = j;
  }
  if (last < s.size()) out.push_back({last, s.size(), false});
  return out;
}

std::string replace_all(const std::string& s, char from, const std::string& to) {
  std::string out;
  out.reserve(s.size() + 8);
  for (const char c : s) {
    if (c == from) {
      out += to;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const io::Json& j, const std::string& file, const std::string& field) {
  PreTokenizer p;
  p.add(j, file, field, 0);
  return p;
}

void PreTokenizer::add(const io::Json& j, const std::string& file, const std::string& field, int depth) {
  json::object(j, file, field);
  if (depth > json::kMaxNesting) json::fail(file, field, "Sequence nested too deeply");
  const std::string type = json::string_at(j, "type", file, field);
  Step s{};
  if (type == "Sequence") {
    const io::Json& list = json::require(j, "pretokenizers", file, field);
    const std::string f = json::sub(field, "pretokenizers");
    if (!list.is_array()) json::fail(file, f, cat("expected a list, found ", io::brief(list)));
    for (size_t i = 0; i < list.size(); ++i) add(list[i], file, json::index(f, i), depth + 1);
    return;
  } else if (type == "ByteLevel") {
    s.kind = Kind::byte_level;
    s.flag = json::bool_or(j, "add_prefix_space", true, file, field);
    s.use_regex = json::bool_or(j, "use_regex", true, file, field);
    if (s.use_regex) s.regex = std::make_shared<const Regex>(kGpt2Pattern, file + ": ByteLevel regex");
  } else if (type == "Split") {
    s.kind = Kind::split;
    s.regex = std::make_shared<const Regex>(json::pattern_at(j, "pattern", file, field));
    s.behavior = parse_behavior(j, "behavior", "", file, field);
    s.invert = json::bool_or(j, "invert", false, file, field);
  } else if (type == "Digits") {
    s.kind = Kind::digits;
    s.flag = json::bool_or(j, "individual_digits", false, file, field);
  } else if (type == "Metaspace") {
    s.kind = Kind::metaspace;
    s.text = json::one_char(j, "replacement", "\xE2\x96\x81", file, field);
    s.flag = json::bool_or(j, "split", true, file, field);
    const bool add_prefix_space = json::bool_or(j, "add_prefix_space", true, file, field);
    const std::string scheme = json::string_or(j, "prepend_scheme", add_prefix_space ? "always" : "never", file, field);
    if (scheme == "always") {
      s.prepend = Prepend::always;
    } else if (scheme == "first") {
      s.prepend = Prepend::first;
    } else if (scheme == "never") {
      s.prepend = Prepend::never;
    } else {
      json::fail(file, json::sub(field, "prepend_scheme"),
                 cat("unknown prepend_scheme '", scheme, "' (expected first, always or never)"));
    }
    if (!add_prefix_space) s.prepend = Prepend::never;  // tokenizers: add_prefix_space=false forces never
  } else if (type == "Whitespace") {
    s.kind = Kind::whitespace;
  } else if (type == "WhitespaceSplit") {
    s.kind = Kind::whitespace_split;
  } else if (type == "Punctuation") {
    s.kind = Kind::punctuation;
    s.behavior = parse_behavior(j, "behavior", "Isolated", file, field);
  } else if (type == "BertPreTokenizer") {
    s.kind = Kind::bert;
  } else if (type == "CharDelimiterSplit") {
    s.kind = Kind::char_delimiter;
    s.text = json::one_char(j, "delimiter", "", file, field);
  } else {
    json::fail(file, json::sub(field, "type"),
               cat("unsupported pre-tokenizer type '", type,
                   "' (supported: ByteLevel, Split, Digits, Metaspace, Whitespace, WhitespaceSplit, Punctuation, "
                   "BertPreTokenizer, CharDelimiterSplit, Sequence)"));
  }
  steps_.push_back(std::move(s));
}

void PreTokenizer::apply(const Step& step, const Piece& in, std::vector<Piece>& out) const {
  switch (step.kind) {
    case Kind::byte_level: {
      // Every split gets the prefix space, not only the first (tokenizers applies it per split).
      Piece p = in;
      if (step.flag && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, " ");
      const size_t first = out.size();
      if (step.use_regex) {
        split_by(p, step.regex->split_matches(p.text), SplitBehavior::isolated, false, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
      for (size_t k = first; k < out.size(); ++k) out[k].text = bytes_to_byte_level(out[k].text);
      break;
    }
    case Kind::split:
      split_by(in, step.regex->split_matches(in.text), step.behavior, step.invert, out);
      break;
    case Kind::digits:
      split_by(in, char_matches(in.text, is_numeric),
               step.flag ? SplitBehavior::isolated : SplitBehavior::contiguous, false, out);
      break;
    case Kind::metaspace: {
      Piece p{replace_all(in.text, ' ', step.text), in.at_start};
      const bool starts = p.text.compare(0, step.text.size(), step.text) == 0;
      if (!p.text.empty() && !starts &&
          (step.prepend == Prepend::always || (step.prepend == Prepend::first && in.at_start)))
        p.text.insert(0, step.text);
      if (step.flag) {
        char32_t rep = 0;
        decode_utf8(step.text, 0, rep);
        split_by(p, char_matches(p.text, [rep](char32_t c) { return c == rep; }), SplitBehavior::merged_with_next,
                 false, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
      break;
    }
    case Kind::whitespace:
      split_by(in, word_runs(in.text), SplitBehavior::removed, true, out);
      break;
    case Kind::whitespace_split:
      split_by(in, char_matches(in.text, is_whitespace), SplitBehavior::removed, false, out);
      break;
    case Kind::punctuation:
      split_by(in, char_matches(in.text, is_punctuation), step.behavior, false, out);
      break;
    case Kind::bert: {
      std::vector<Piece> words;
      split_by(in, char_matches(in.text, is_whitespace), SplitBehavior::removed, false, words);
      for (const Piece& w : words) split_by(w, char_matches(w.text, is_punctuation), SplitBehavior::isolated, false, out);
      break;
    }
    case Kind::char_delimiter: {
      char32_t d = 0;
      decode_utf8(step.text, 0, d);
      split_by(in, char_matches(in.text, [d](char32_t c) { return c == d; }), SplitBehavior::removed, false, out);
      break;
    }
  }
}

void PreTokenizer::pre_tokenize(std::vector<Piece>& pieces) const {
  std::vector<Piece> next;
  for (const Step& step : steps_) {
    next.clear();
    next.reserve(pieces.size() * 2);
    for (const Piece& p : pieces) apply(step, p, next);
    pieces.swap(next);
  }
}

}  // namespace moerun::tok
