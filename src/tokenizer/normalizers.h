#pragma once
// Normalizers of tokenizer.json ("normalizer": {...}): NFC, NFD, NFKC, NFKD, Lowercase, Strip,
// StripAccents, ByteLevel, Prepend, Replace and Sequence (flattened into one list of steps).

#include <memory>
#include <string>
#include <vector>

#include "io/json_util.h"
#include "tokenizer/regex.h"

namespace moerun::tok {

class Normalizer {
 public:
  // `where` names the file and field for errors ("tokenizer.json: normalizer").
  static Normalizer from_json(const io::Json& j, const std::string& file, const std::string& field);

  void normalize(std::string& s) const;  // `s` is valid UTF-8 and stays valid
  bool empty() const { return steps_.empty(); }

 private:
  enum class Kind { nfc, nfd, nfkc, nfkd, lowercase, strip, strip_accents, byte_level, prepend, replace };
  struct Step {
    Kind kind;
    bool left = false, right = false;  // Strip
    std::string text;                  // Prepend: what to prepend; Replace: the replacement
    std::shared_ptr<const Regex> pattern;  // Replace
  };
  void add(const io::Json& j, const std::string& file, const std::string& field, int depth);
  std::vector<Step> steps_;
};

}  // namespace moerun::tok
