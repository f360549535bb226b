#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <limits>

#include "moerun/error.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun::tok {

namespace {

// Rust regex `\w$` / `^\w` on the text around a single_word match.
bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t k = s.size() - 1;
  while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  char32_t c = 0;
  decode_utf8(s, k, c);
  return is_word_char(c);
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  char32_t c = 0;
  decode_utf8(s, 0, c);
  return is_word_char(c);
}

// Start of the whitespace run that ends `s` (`\s*$`).
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t k = end - 1;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    char32_t c = 0;
    decode_utf8(s, k, c);
    if (!is_whitespace(c)) break;
    end = k;
  }
  return end;
}

// Length of the whitespace run that starts `s` (`^\s*`).
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    char32_t c = 0;
    const size_t n = decode_utf8(s, i, c);
    if (!is_whitespace(c)) break;
    i += n;
  }
  return i;
}

// The first range of `spans` that ends after `b`.
std::span<const TextSpan>::iterator first_after(std::span<const TextSpan> spans, size_t b) {
  return std::upper_bound(spans.begin(), spans.end(), b, [](size_t x, const TextSpan& s) { return x < s.end; });
}

}  // namespace

bool PlainRanges::overlaps(size_t b, size_t e) const {
  if (all) return true;
  const auto it = first_after(spans, b);
  return it != spans.end() && it->begin < e;
}

size_t PlainRanges::next_plain(size_t pos) const {
  if (all) return pos;
  const auto it = first_after(spans, pos);
  return it == spans.end() ? std::numeric_limits<size_t>::max() : std::max(it->begin, pos);
}

namespace {

// Sorts `spans` by start and merges overlapping and touching ones, dropping empty ones.
void merge_spans(std::vector<TextSpan>& spans) {
  std::erase_if(spans, [](const TextSpan& s) { return s.end <= s.begin; });
  const auto by_begin = [](const TextSpan& a, const TextSpan& b) { return a.begin < b.begin; };
  if (!std::is_sorted(spans.begin(), spans.end(), by_begin)) std::sort(spans.begin(), spans.end(), by_begin);
  size_t n = 0;
  for (const TextSpan& s : spans) {
    if (n && spans[n - 1].end >= s.begin) {
      spans[n - 1].end = std::max(spans[n - 1].end, s.end);
    } else {
      spans[n++] = s;
    }
  }
  spans.resize(n);
}

}  // namespace

std::vector<TextSpan> sorted_plain_spans(std::span<const TextSpan> spans, size_t size) {
  for (const TextSpan& s : spans)
    if (s.begin > s.end || s.end > size)
      throw Error("tokenizer input", detail::cat("plain span [", s.begin, ", ", s.end, ") is not a range of the ", size,
                                                 "-byte text"));
  std::vector<TextSpan> out(spans.begin(), spans.end());
  merge_spans(out);
  return out;
}

MappedPlain plain_ranges_after_normalizing(std::string_view raw, const std::string& normalized,
                                           std::span<const TextSpan> plain, const Normalizer& normalizer) {
  constexpr size_t kMaxRanges = 16;  // each boundary costs two normalizations of the stretch
  if (plain.size() > kMaxRanges) return {{}, true};
  std::string part;
  // Where raw offset x lands in `normalized`: the leftmost (for a range's start) or rightmost (for
  // its end) of the candidates, so the mapped range can only grow; nullopt without a candidate.
  auto map = [&](size_t x, bool leftmost) -> std::optional<size_t> {
    if (x == 0) return 0;
    if (x == raw.size()) return normalized.size();
    std::optional<size_t> at;
    part.assign(raw.substr(0, x));
    normalizer.normalize(part);
    if (part.size() <= normalized.size() && normalized.compare(0, part.size(), part) == 0) at = part.size();
    part.assign(raw.substr(x));
    normalizer.normalize(part);
    if (part.size() <= normalized.size() &&
        normalized.compare(normalized.size() - part.size(), part.size(), part) == 0) {
      const size_t y = normalized.size() - part.size();
      at = !at ? y : leftmost ? std::min(*at, y) : std::max(*at, y);
    }
    return at;
  };
  MappedPlain m;
  for (const TextSpan& s : plain) {
    const std::optional<size_t> b = map(s.begin, true), e = map(s.end, false);
    if (!b || !e) return {{}, true};
    m.spans.push_back({*b, *e});
  }
  merge_spans(m.spans);
  return m;
}

void AddedVocabulary::Trie::insert(std::string_view key, int32_t token_index) {
  int32_t node = 0;
  for (const char ch : key) {
    const unsigned char b = static_cast<unsigned char>(ch);
    const uint64_t e = (static_cast<uint64_t>(node) << 8) | b;
    const auto it = edges_.find(e);
    if (it != edges_.end()) {
      node = it->second;
    } else {
      edges_.emplace(e, nodes_);
      terminal_.push_back(-1);
      node = nodes_++;
    }
  }
  if (!key.empty()) {
    first_byte_[static_cast<unsigned char>(key[0])] = true;
    if (terminal_[static_cast<size_t>(node)] < 0) terminal_[static_cast<size_t>(node)] = token_index;
  }
}

std::optional<std::pair<int32_t, size_t>> AddedVocabulary::Trie::longest_at(std::string_view text, size_t pos) const {
  if (!first_byte_[static_cast<unsigned char>(text[pos])]) return std::nullopt;
  std::optional<std::pair<int32_t, size_t>> best;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges_.end()) break;
    node = it->second;
    if (const int32_t t = terminal_[static_cast<size_t>(node)]; t >= 0) best = std::make_pair(t, i + 1 - pos);
  }
  return best;
}

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  for (AddedToken& t : tokens) {
    if (t.content.empty() || by_content_.count(t.content)) continue;  // tokenizers ignores both
    const size_t index = tokens_.size();
    by_id_.emplace(t.id, index);
    by_content_.emplace(t.content, index);
    tokens_.push_back(std::move(t));
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    AddedToken& t = tokens_[i];
    t.surface = t.content;
    if (!t.normalized) {
      raw_.insert(t.content, static_cast<int32_t>(i));
    } else {
      if (normalizer) normalizer->normalize(t.surface);
      normalized_.insert(t.surface, static_cast<int32_t>(i));
    }
  }
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view content) const {
  const auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

void AddedVocabulary::find_matches(std::string_view text, bool at_start, const Trie& trie, bool parse_special,
                                   const PlainRanges& plain, std::vector<Segment>& out) const {
  size_t start_offset = 0;  // end of what has been emitted
  const auto emit_text = [&](size_t b, size_t e) {
    if (e > b) out.push_back({std::string(text.substr(b, e - b)), -1, at_start && b == 0, b});
  };
  if (!trie.empty()) {
    size_t pos = 0;  // where the search resumes: the end of the last match, stripped or not
    while (pos < text.size()) {
      auto m = trie.longest_at(text, pos);
      if (!m) {
        ++pos;
        continue;
      }
      if (plain.overlaps(pos, pos + m->second)) {
        // Not from plain bytes; but a token that ends before them still matches (a token that is a
        // prefix of the one found, which no released vocabulary has among its control tokens).
        const size_t limit = plain.next_plain(pos);
        const auto shorter = limit > pos ? trie.longest_at(text.substr(0, limit), pos) : std::nullopt;
        if (!shorter) {
          pos += m->second;  // left in the text for the model
          continue;
        }
        m = shorter;
      }
      const AddedToken& tok = tokens_[static_cast<size_t>(m->first)];
      size_t start = pos, stop = pos + m->second;
      pos = stop;
      if (!parse_special && tok.special) continue;  // left in the text for the model
      if (tok.single_word) {
        const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
        const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), start_offset);
      if (tok.rstrip) stop += leading_space_len(text.substr(stop));
      emit_text(start_offset, start);
      out.push_back({std::string(text.substr(start, stop - start)), tok.id, at_start && start == 0, start});
      // tokenizers resumes the search after the unstripped match, so a later match may begin inside
      // whitespace an rstrip already took; it is emitted all the same, like there.
      start_offset = stop;
    }
  }
  if (start_offset < text.size()) emit_text(start_offset, text.size());
}

std::vector<Segment> AddedVocabulary::split(std::string_view text, const Normalizer* normalizer, bool parse_special,
                                            std::span<const TextSpan> plain) const {
  std::vector<Segment> first, out;
  find_matches(text, true, raw_, parse_special, PlainRanges{plain}, first);
  std::vector<TextSpan> local;  // the plain ranges of one segment, in its own bytes
  for (Segment& seg : first) {
    if (seg.token >= 0) {
      out.push_back(std::move(seg));
      continue;
    }
    const size_t b = seg.offset, e = b + seg.text.size();
    local.clear();
    for (auto it = first_after(plain, b); it != plain.end() && it->begin < e; ++it)
      local.push_back({std::max(it->begin, b) - b, std::min(it->end, e) - b});
    PlainRanges seg_plain;
    MappedPlain mapped;
    if (!local.empty() && !normalized_.empty()) {
      if (normalizer) {
        const std::string raw = seg.text;
        normalizer->normalize(seg.text);
        mapped = plain_ranges_after_normalizing(raw, seg.text, local, *normalizer);
        seg_plain = {mapped.spans, mapped.all};
      } else {
        seg_plain = {local};
      }
    } else if (normalizer) {
      normalizer->normalize(seg.text);
    }
    find_matches(seg.text, seg.at_start, normalized_, parse_special, seg_plain, out);
  }
  return out;
}

}  // namespace moerun::tok
