#pragma once
// Small typed readers for the nested objects of tokenizer.json: every problem is an Error naming the
// file and the JSON path of the field ("tokenizer.json: field 'pre_tokenizer.pretokenizers[2].behavior'").

#include <cstdint>
#include <string>

#include "io/json_util.h"
#include "tokenizer/regex.h"

namespace moerun::tok::json {

using io::Json;

// Deepest Sequence-in-Sequence we parse (real files use one level; this bounds the recursion).
inline constexpr int kMaxNesting = 16;

[[noreturn]] void fail(const std::string& file, const std::string& field, const std::string& problem);

// The object at `j`, or an Error when it is something else.
const Json& object(const Json& j, const std::string& file, const std::string& field);
// obj[key] when present and not null, else nullptr.
const Json* find(const Json& obj, const char* key);
const Json& require(const Json& obj, const char* key, const std::string& file, const std::string& field);

std::string string_at(const Json& obj, const char* key, const std::string& file, const std::string& field);
std::string string_or(const Json& obj, const char* key, const std::string& fallback, const std::string& file,
                      const std::string& field);
bool bool_or(const Json& obj, const char* key, bool fallback, const std::string& file, const std::string& field);
int64_t int_at(const Json& obj, const char* key, const std::string& file, const std::string& field);
int64_t int_or(const Json& obj, const char* key, int64_t fallback, const std::string& file, const std::string& field);
// A string that must hold exactly one character (Metaspace replacement, Strip content).
std::string one_char(const Json& obj, const char* key, const std::string& fallback, const std::string& file,
                     const std::string& field);
// A {"String": "..."} or {"Regex": "..."} pattern, compiled as tokenizers compiles it.
Regex pattern_at(const Json& obj, const char* key, const std::string& file, const std::string& field);

// "a.b" joined for messages.
inline std::string sub(const std::string& field, const char* key) {
  return field.empty() ? std::string(key) : field + "." + key;
}
inline std::string index(const std::string& field, size_t i) { return field + "[" + std::to_string(i) + "]"; }

}  // namespace moerun::tok::json
