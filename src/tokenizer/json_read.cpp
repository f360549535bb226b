#include "tokenizer/json_read.h"

#include "moerun/error.h"
#include "tokenizer/unicode.h"
#include "util/strings.h"

namespace moerun::tok::json {

using detail::cat;

void fail(const std::string& file, const std::string& field, const std::string& problem) {
  throw Error(file, field.empty() ? problem : cat("field '", field, "': ", problem));
}

const Json& object(const Json& j, const std::string& file, const std::string& field) {
  if (!j.is_object()) fail(file, field, cat("expected an object, found ", io::brief(j)));
  return j;
}

const Json* find(const Json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

const Json& require(const Json& obj, const char* key, const std::string& file, const std::string& field) {
  const Json* v = find(obj, key);
  if (!v) fail(file, sub(field, key), "missing");
  return *v;
}

std::string string_at(const Json& obj, const char* key, const std::string& file, const std::string& field) {
  const Json& v = require(obj, key, file, field);
  if (!v.is_string()) fail(file, sub(field, key), cat("expected a string, found ", io::brief(v)));
  return v.get<std::string>();
}

std::string string_or(const Json& obj, const char* key, const std::string& fallback, const std::string& file,
                      const std::string& field) {
  return find(obj, key) ? string_at(obj, key, file, field) : fallback;
}

bool bool_or(const Json& obj, const char* key, bool fallback, const std::string& file, const std::string& field) {
  const Json* v = find(obj, key);
  if (!v) return fallback;
  if (!v->is_boolean()) fail(file, sub(field, key), cat("expected true or false, found ", io::brief(*v)));
  return v->get<bool>();
}

int64_t int_at(const Json& obj, const char* key, const std::string& file, const std::string& field) {
  const Json& v = require(obj, key, file, field);
  const std::optional<int64_t> i = io::as_integer(v);
  if (!i) fail(file, sub(field, key), cat("expected an integer, found ", io::brief(v)));
  return *i;
}

int64_t int_or(const Json& obj, const char* key, int64_t fallback, const std::string& file, const std::string& field) {
  return find(obj, key) ? int_at(obj, key, file, field) : fallback;
}

std::string one_char(const Json& obj, const char* key, const std::string& fallback, const std::string& file,
                     const std::string& field) {
  const std::string s = string_or(obj, key, fallback, file, field);
  if (s.empty() || find_invalid_utf8(s) || utf8_len(static_cast<unsigned char>(s[0])) != s.size())
    fail(file, sub(field, key), cat("expected a single character, found ", detail::quote(s)));
  return s;
}

Regex pattern_at(const Json& obj, const char* key, const std::string& file, const std::string& field) {
  const std::string f = sub(field, key);
  const Json& p = require(obj, key, file, field);
  if (p.is_string()) return Regex::literal(p.get<std::string>(), cat(file, ": field '", f, "'"));
  object(p, file, f);
  if (const Json* s = find(p, "String")) {
    if (!s->is_string()) fail(file, sub(f, "String"), cat("expected a string, found ", io::brief(*s)));
    return Regex::literal(s->get<std::string>(), cat(file, ": field '", sub(f, "String"), "'"));
  }
  if (const Json* r = find(p, "Regex")) {
    if (!r->is_string()) fail(file, sub(f, "Regex"), cat("expected a string, found ", io::brief(*r)));
    return Regex(r->get<std::string>(), cat(file, ": field '", sub(f, "Regex"), "'"));
  }
  fail(file, f, "expected {\"String\": ...} or {\"Regex\": ...}");
}

}  // namespace moerun::tok::json
