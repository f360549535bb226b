#include "io/json_util.h"

#include <fstream>
#include <sstream>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::io {

using detail::cat;

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string(), "cannot open for reading");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) throw Error(path.string(), "read error");
  return os.str();
}

Json parse_json_text(const std::string& text, const std::string& file) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    // e.byte is the 1-based offset of the failure; turn it into line:column for people.
    size_t line = 1, col = 1;
    for (size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::string what = e.what();
    if (const size_t p = what.find("syntax error"); p != std::string::npos) what = what.substr(p);
    throw Error(file, cat("invalid JSON at line ", line, ", column ", col, ": ", what));
  }
}

const char* json_type_name(const Json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "number";
  if (j.is_array()) return "list";
  if (j.is_object()) return "object";
  return j.type_name();
}

JsonFields::JsonFields(const Json& obj, std::string file, std::string prefix)
    : obj_(obj), file_(std::move(file)), prefix_(std::move(prefix)) {
  if (!obj_.is_object())
    throw Error(file_, cat(prefix_.empty() ? std::string("top level") : prefix_.substr(0, prefix_.size() - 1),
                           ": expected a JSON object, found ", json_type_name(obj_)));
}

void JsonFields::fail(const char* key, const std::string& problem) const {
  throw Error(file_, cat("field '", prefix_, key, "': ", problem));
}

const Json* JsonFields::get(const char* key) const {
  const auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonFields::has(const char* key) const { return get(key) != nullptr; }

std::optional<int64_t> JsonFields::opt_i64(const char* key) const {
  const Json* j = get(key);
  if (!j) return std::nullopt;
  if (j->is_number_integer()) return j->get<int64_t>();
  // Some exporters write integral values as floats ("intermediate_size": 1408.0).
  if (j->is_number_float()) {
    const double d = j->get<double>();
    if (d == static_cast<double>(static_cast<int64_t>(d))) return static_cast<int64_t>(d);
  }
  fail(key, cat("expected an integer, found ", json_type_name(*j), " ", j->dump()));
}

int64_t JsonFields::i64(const char* key) const {
  if (auto v = opt_i64(key)) return *v;
  throw Error(file_, cat("missing required field '", prefix_, key, "'"));
}

int64_t JsonFields::i64_or(const char* key, int64_t fallback) const { return opt_i64(key).value_or(fallback); }

std::optional<double> JsonFields::opt_f64(const char* key) const {
  const Json* j = get(key);
  if (!j) return std::nullopt;
  if (!j->is_number()) fail(key, cat("expected a number, found ", json_type_name(*j), " ", j->dump()));
  return j->get<double>();
}

double JsonFields::f64(const char* key) const {
  if (auto v = opt_f64(key)) return *v;
  throw Error(file_, cat("missing required field '", prefix_, key, "'"));
}

double JsonFields::f64_or(const char* key, double fallback) const { return opt_f64(key).value_or(fallback); }

bool JsonFields::boolean_or(const char* key, bool fallback) const {
  const Json* j = get(key);
  if (!j) return fallback;
  if (!j->is_boolean()) fail(key, cat("expected true or false, found ", json_type_name(*j), " ", j->dump()));
  return j->get<bool>();
}

std::optional<std::string> JsonFields::opt_str(const char* key) const {
  const Json* j = get(key);
  if (!j) return std::nullopt;
  if (!j->is_string()) fail(key, cat("expected a string, found ", json_type_name(*j), " ", j->dump()));
  return j->get<std::string>();
}

std::string JsonFields::str_or(const char* key, const std::string& fallback) const {
  return opt_str(key).value_or(fallback);
}

std::vector<int64_t> JsonFields::i64_list_or(const char* key, std::vector<int64_t> fallback) const {
  const Json* j = get(key);
  if (!j) return fallback;
  if (!j->is_array()) fail(key, cat("expected a list of integers, found ", json_type_name(*j)));
  std::vector<int64_t> out;
  for (const Json& v : *j) {
    if (!v.is_number_integer()) fail(key, cat("expected a list of integers, found an entry ", v.dump()));
    out.push_back(v.get<int64_t>());
  }
  return out;
}

std::vector<int64_t> JsonFields::i64_or_list(const char* key) const {
  const Json* j = get(key);
  if (!j) return {};
  if (j->is_number_integer()) return {j->get<int64_t>()};
  return i64_list_or(key, {});
}

}  // namespace moerun::io
