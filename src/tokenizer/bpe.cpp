#include "tokenizer/bpe.h"

#include <mutex>
#include <queue>

#include "moerun/error.h"
#include "tokenizer/json_read.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

namespace {

// Largest id we accept in a vocabulary: ids index a dense table.
constexpr int64_t kMaxId = int64_t{1} << 28;

}  // namespace

void BpeModel::MergeTable::reserve(size_t n) {
  size_t cap = 16;
  int bits = 4;
  while (cap < 2 * n) {
    cap *= 2;
    ++bits;
  }
  keys_.assign(cap, kEmpty);
  values_.assign(cap, MergeTarget{});
  mask_ = cap - 1;
  shift_ = 64 - bits;
  size_ = 0;
}

void BpeModel::MergeTable::assign(int32_t left, int32_t right, MergeTarget target) {
  if (2 * (size_ + 1) > keys_.size()) {  // keep the load factor at most 1/2
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<MergeTarget> old_values = std::move(values_);
    reserve(old_keys.size());
    for (size_t i = 0; i < old_keys.size(); ++i)
      if (old_keys[i] != kEmpty)
        assign(static_cast<int32_t>(old_keys[i] >> 32), static_cast<int32_t>(old_keys[i] & 0xFFFFFFFFu), old_values[i]);
  }
  const uint64_t key = pack(left, right);
  size_t i = slot(key);
  while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
  if (keys_[i] == kEmpty) ++size_;
  keys_[i] = key;
  values_[i] = target;
}

std::unique_ptr<BpeModel> BpeModel::from_json(const io::Json& j, const std::string& file, const std::string& field) {
  auto m = std::unique_ptr<BpeModel>(new BpeModel());
  m->file_ = file;
  const io::Json& vocab = json::require(j, "vocab", file, field);
  const std::string vf = json::sub(field, "vocab");
  if (!vocab.is_object()) json::fail(file, vf, cat("expected an object of token -> id, found ", io::brief(vocab)));
  m->vocab_.reserve(vocab.size());
  int64_t max_id = -1;
  for (const auto& [token, idj] : vocab.items()) {
    const std::optional<int64_t> id = io::as_integer(idj);
    if (!id || *id < 0 || *id >= kMaxId)
      json::fail(file, vf, cat("token ", detail::quote(token), ": expected an id in [0, ", kMaxId, "), found ",
                               io::brief(idj)));
    m->vocab_.emplace(token, static_cast<int32_t>(*id));
    max_id = std::max(max_id, *id);
  }
  m->vocab_r_.resize(static_cast<size_t>(max_id + 1));
  m->has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : m->vocab_) {
    m->vocab_r_[static_cast<size_t>(id)] = token;
    m->has_id_[static_cast<size_t>(id)] = true;
  }

  if (const io::Json* unk = json::find(j, "unk_token")) {
    if (!unk->is_string()) json::fail(file, json::sub(field, "unk_token"), cat("expected a string, found ", io::brief(*unk)));
    m->unk_token_ = unk->get<std::string>();
  }
  m->continuing_subword_prefix_ = json::string_or(j, "continuing_subword_prefix", "", file, field);
  m->end_of_word_suffix_ = json::string_or(j, "end_of_word_suffix", "", file, field);
  m->fuse_unk_ = json::bool_or(j, "fuse_unk", false, file, field);
  m->byte_fallback_ = json::bool_or(j, "byte_fallback", false, file, field);
  m->ignore_merges_ = json::bool_or(j, "ignore_merges", false, file, field);
  // "dropout" randomises merges for training; inference never wants it, so it is not applied.

  m->char_ids_.assign(0x10000, -1);
  for (const auto& [token, id] : m->vocab_) {
    if (token.empty() || utf8_len(static_cast<unsigned char>(token[0])) != token.size()) continue;
    char32_t cp = 0;
    decode_utf8(token, 0, cp);
    if (cp < 0x10000) m->char_ids_[cp] = id;
  }

  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const std::string name = cat("<0x", kHex[b >> 4], kHex[b & 15], ">");
    const auto it = m->vocab_.find(name);
    m->byte_ids_[b] = it == m->vocab_.end() ? -1 : it->second;
  }

  const io::Json* merges = json::find(j, "merges");
  const std::string mf = json::sub(field, "merges");
  if (merges && !merges->is_array()) json::fail(file, mf, cat("expected a list, found ", io::brief(*merges)));
  const size_t prefix_len = m->continuing_subword_prefix_.size();
  if (merges) {
    m->merges_.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const io::Json& e = (*merges)[i];
      std::string a, b;
      if (e.is_string()) {  // "a b"
        const std::string& s = e.get_ref<const std::string&>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos)
          json::fail(file, json::index(mf, i), cat("expected \"left right\", found ", detail::quote(s)));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["a", "b"]
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        json::fail(file, json::index(mf, i), cat("expected \"left right\" or [\"left\", \"right\"], found ", io::brief(e)));
      }
      const auto ia = m->vocab_.find(a), ib = m->vocab_.find(b);
      if (ia == m->vocab_.end() || ib == m->vocab_.end())
        json::fail(file, json::index(mf, i), cat("merge token ", detail::quote(ia == m->vocab_.end() ? a : b),
                                                 " is not in the vocabulary"));
      if (b.size() < prefix_len)
        json::fail(file, json::index(mf, i), cat("right token ", detail::quote(b), " is shorter than continuing_subword_prefix"));
      const std::string merged = a + b.substr(prefix_len);
      const auto im = m->vocab_.find(merged);
      if (im == m->vocab_.end())
        json::fail(file, json::index(mf, i), cat("merged token ", detail::quote(merged), " is not in the vocabulary"));
      // A repeated pair keeps its last rank, as tokenizers' HashMap collect does.
      m->merges_.assign(ia->second, ib->second, MergeTarget{static_cast<int32_t>(i), im->second});
    }
  }
  return m;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_r_.size() || !has_id_[static_cast<size_t>(id)]) return nullptr;
  return &vocab_r_[static_cast<size_t>(id)];
}

size_t BpeModel::cache_size() const {
  const std::shared_lock lock(cache_mutex_);
  return cache_.size();
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (const auto it = vocab_.find(piece); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  {
    const std::shared_lock lock(cache_mutex_, std::try_to_lock);
    if (lock.owns_lock()) {
      if (const auto it = cache_.find(piece); it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
  }
  const size_t first = ids.size();
  merge_word(piece, ids);
  if (piece.size() < kCacheMaxWord) {
    const std::unique_lock lock(cache_mutex_, std::try_to_lock);
    if (lock.owns_lock() && cache_.size() < kCacheCapacity)
      cache_.emplace(std::string(piece), std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end()));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours in the linked list of live symbols, -1 at the ends
    size_t len;          // bytes of the word this symbol covers; 0 once merged into its left neighbour
  };
  std::vector<Symbol> symbols;
  symbols.reserve(w.size());
  const auto add = [&symbols](int32_t id, size_t len) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, len});
  };
  const auto unk_id = [&]() -> int32_t {
    const auto it = vocab_.find(*unk_token_);
    if (it == vocab_.end()) throw Error(file_, cat("model.unk_token ", detail::quote(*unk_token_), " is not in the vocabulary"));
    return it->second;
  };

  // Initial symbols: one per character, as tokenizers' merge_word.
  // A pending unk symbol (id and bytes covered) while fuse_unk may still extend it; -1 when none.
  int32_t unk = -1;
  size_t unk_len = 0;
  std::string s;
  for (size_t i = 0; i < w.size();) {
    const size_t n = std::min(utf8_len(static_cast<unsigned char>(w[i])), w.size() - i);
    const bool is_first = i == 0, is_last = i + n == w.size();
    const bool affixed = (!is_first && !continuing_subword_prefix_.empty()) || (is_last && !end_of_word_suffix_.empty());
    int32_t id = -1;
    char32_t cp = 0;
    if (!affixed && decode_utf8(w, i, cp) == n && cp < 0x10000) {
      id = char_ids_[cp];
      if (id < 0) s.assign(w.substr(i, n));  // for byte fallback below
    } else {
      s.assign(w.substr(i, n));
      if (!is_first && !continuing_subword_prefix_.empty()) s.insert(0, continuing_subword_prefix_);
      if (is_last && !end_of_word_suffix_.empty()) s += end_of_word_suffix_;
      if (const auto it = vocab_.find(s); it != vocab_.end()) id = it->second;
    }
    i += n;

    if (id >= 0) {
      if (unk >= 0) {
        add(unk, unk_len);
        unk = -1;
      }
      add(id, n);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (const char c : s) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // tokenizers adds the byte tokens without first flushing a pending unk; so do we.
        for (const char c : s) add(byte_ids_[static_cast<unsigned char>(c)], 1);
        continue;
      }
    }
    if (unk_token_) {
      if (unk >= 0 && fuse_unk_) {
        unk_len += n;
      } else {
        if (unk >= 0) add(unk, unk_len);
        unk = unk_id();
        unk_len = n;
      }
    }
    // Without an unk token the character is dropped, as tokenizers does.
  }
  if (unk >= 0) add(unk, unk_len);

  // Merge: lowest rank first, then leftmost; entries made stale by earlier merges are skipped.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Candidate& o) const {  // std::priority_queue pops the largest: invert
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  for (size_t k = 0; k + 1 < symbols.size(); ++k)
    if (const MergeTarget* m = merges_.find(symbols[k].id, symbols[k + 1].id))
      queue.push({m->rank, static_cast<int32_t>(k), m->new_id});

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& cur = symbols[static_cast<size_t>(top.pos)];
    if (cur.len == 0 || cur.next == -1) continue;
    const Symbol right = symbols[static_cast<size_t>(cur.next)];
    const MergeTarget* target = merges_.find(cur.id, right.id);
    if (!target || target->new_id != top.new_id) continue;  // stale entry

    symbols[static_cast<size_t>(cur.next)].len = 0;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;

    if (cur.prev >= 0) {
      const Symbol& prev = symbols[static_cast<size_t>(cur.prev)];
      if (const MergeTarget* m = merges_.find(prev.id, cur.id)) queue.push({m->rank, cur.prev, m->new_id});
    }
    if (cur.next >= 0) {
      const Symbol& next = symbols[static_cast<size_t>(cur.next)];
      if (const MergeTarget* m = merges_.find(cur.id, next.id)) queue.push({m->rank, top.pos, m->new_id});
    }
  }
  for (const Symbol& sym : symbols)
    if (sym.len != 0) ids.push_back(sym.id);
}

}  // namespace moerun::tok
