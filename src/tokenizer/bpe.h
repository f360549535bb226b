#pragma once
// Byte-pair encoding as tokenizers' BPE model does it: split a piece into characters (or
// byte-fallback <0xNN> tokens, or unk), then apply merges lowest rank first, leftmost first among
// equal ranks, with a priority queue (O(n log n) per word, not a quadratic rescan).

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/json_util.h"
#include "tokenizer/model.h"

namespace moerun::tok {

// Hashes strings and string_views alike so maps keyed by std::string can be searched without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel final : public Model {
 public:
  // `j` is the "model" object of tokenizer.json; errors name `file` and the field.
  static std::unique_ptr<BpeModel> from_json(const io::Json& j, const std::string& file, const std::string& field);

  void tokenize(std::string_view piece, std::vector<int32_t>& ids) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  const std::string* id_to_token(int32_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_r_.size()); }

  // How many words the cache holds (for tests).
  size_t cache_size() const;

 private:
  struct MergeTarget {
    int32_t rank;
    int32_t new_id;
  };
  // (left id, right id) -> merge, in an open-addressing table: the merge loop does a few lookups per
  // merge and std::unordered_map's node hops dominated it.
  class MergeTable {
   public:
    void reserve(size_t n);
    void assign(int32_t left, int32_t right, MergeTarget target);
    const MergeTarget* find(int32_t left, int32_t right) const {
      const uint64_t key = pack(left, right);
      for (size_t i = slot(key);; i = (i + 1) & mask_) {
        if (keys_[i] == key) return &values_[i];
        if (keys_[i] == kEmpty) return nullptr;
      }
    }

   private:
    static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are below 2^28, so no key is all ones
    static uint64_t pack(int32_t a, int32_t b) {
      return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }
    std::vector<uint64_t> keys_ = std::vector<uint64_t>(1, kEmpty);
    std::vector<MergeTarget> values_ = std::vector<MergeTarget>(1);
    size_t mask_ = 0;
    int shift_ = 63;
    size_t size_ = 0;
  };
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;

  std::string file_;
  StringMap vocab_;
  std::vector<std::string> vocab_r_;  // id -> token
  std::vector<bool> has_id_;          // vocab_r_[id] is a real token (ids may have gaps)
  MergeTable merges_;
  // id of the one-character token for each code point below 0x10000, -1 when none: the first step of
  // every word looks its characters up here instead of hashing strings.
  std::vector<int32_t> char_ids_;
  std::optional<std::string> unk_token_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // id of "<0xNN>", -1 when absent

  // Word cache (as tokenizers: at most kCacheCapacity words shorter than kCacheMaxWord bytes). Shared by
  // all threads encoding with this tokenizer; it only uses try-locks, so a busy cache is skipped
  // instead of waited for, and a hit or miss never changes the result.
  static constexpr size_t kCacheCapacity = 10000;
  static constexpr size_t kCacheMaxWord = 256;
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace moerun::tok
