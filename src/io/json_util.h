#pragma once
// Typed field access for config-style JSON files (config.json, index, tokenizer_config.json):
// every missing or mistyped field is an Error naming the file and the field.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moerun::io {

using Json = nlohmann::json;

// Reads a whole file as text. Error naming the file when it cannot, when it is not a regular file (a
// FIFO or /dev/zero would never end) or when it is larger than kMaxTextFileBytes.
std::string read_text_file(const std::filesystem::path& path);
constexpr uint64_t kMaxTextFileBytes = uint64_t{1} << 30;  // the largest tokenizer.json is tens of MB

// `path` when it is a regular file (or a link to one), an empty path when nothing has that name, and
// an Error naming it when something else does (a directory, FIFO, device or dangling link), so such a
// config.json is reported as what it is rather than as missing.
std::filesystem::path find_regular_file(const std::filesystem::path& path);
// Parses JSON text; errors name `file` and the line and column.
Json parse_json_text(const std::string& text, const std::string& file);

class JsonFields {
 public:
  // `obj` must outlive this reader; `prefix` is prepended to field names in messages ("rope_scaling.").
  JsonFields(const Json& obj, std::string file, std::string prefix = "");

  bool has(const char* key) const;  // present and not null
  const Json* get(const char* key) const;  // nullptr when absent or null

  int64_t i64(const char* key) const;  // required
  int64_t i64_or(const char* key, int64_t fallback) const;
  std::optional<int64_t> opt_i64(const char* key) const;
  double f64(const char* key) const;   // integers accepted ("rope_theta": 10000)
  double f64_or(const char* key, double fallback) const;
  std::optional<double> opt_f64(const char* key) const;
  bool boolean_or(const char* key, bool fallback) const;
  std::string str_or(const char* key, const std::string& fallback) const;
  std::optional<std::string> opt_str(const char* key) const;
  std::vector<int64_t> i64_list_or(const char* key, std::vector<int64_t> fallback) const;
  std::vector<int64_t> i64_or_list(const char* key) const;  // int or list of ints; empty when absent

  [[noreturn]] void fail(const char* key, const std::string& problem) const;
  const std::string& file() const noexcept { return file_; }
  std::string field(const char* key) const { return prefix_ + key; }

 private:
  const Json& obj_;
  std::string file_;
  std::string prefix_;
};

const char* json_type_name(const Json& j);  // "string", "integer", "list", ...
// A short description of a value for messages: `integer 12`, `string "x"`, `a list of 3`. Never
// serialises a container (deeply nested input would recurse and could be huge).
std::string brief(const Json& j);
// The value as an int64 when it is an integer or an integral float in range.
std::optional<int64_t> as_integer(const Json& j);

}  // namespace moerun::io
