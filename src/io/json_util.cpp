#include "io/json_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::io {

using detail::cat;

std::string read_text_file(const std::filesystem::path& path) {
  const std::string name = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(name, cat("cannot open for reading: ", std::strerror(errno)));
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_fd{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw Error(name, cat("cannot stat: ", std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw Error(name, "is not a regular file (a directory, FIFO or device)");
  if (static_cast<uint64_t>(st.st_size) > kMaxTextFileBytes)
    throw Error(name, cat("is ", st.st_size, " bytes, more than any config or tokenizer file (", kMaxTextFileBytes >> 20, " MiB)"));
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t got = ::read(fd, text.data() + done, text.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw Error(name, cat("read error: ", std::strerror(errno)));
    if (got == 0) break;  // shrank while we read
    done += static_cast<size_t>(got);
  }
  text.resize(done);
  return text;
}

std::filesystem::path find_regular_file(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::regular) return path;
  if (st.type() == fs::file_type::not_found) {
    if (fs::is_symlink(fs::symlink_status(path, ec))) throw Error(path.string(), "is a symbolic link to nothing");
    return {};
  }
  if (ec) throw Error(path.string(), cat("cannot read: ", ec.message()));
  const char* what = st.type() == fs::file_type::directory ? "a directory" : st.type() == fs::file_type::fifo ? "a FIFO"
                     : st.type() == fs::file_type::character || st.type() == fs::file_type::block ? "a device" : "not a file";
  throw Error(path.string(), cat("is ", what, ", not a regular file"));
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
  } catch (const Json::exception& e) {  // e.g. a number too large for a double ("1e400")
    throw Error(file, cat("invalid JSON: ", e.what()));
  }
}

std::string brief(const Json& j) {
  // Never dump() a container: it recurses once per nesting level and may be huge.
  if (j.is_array()) return cat("a list of ", j.size());
  if (j.is_object()) return cat("an object of ", j.size(), " keys");
  std::string s = j.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return cat(json_type_name(j), " ", s);
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

// An integer, or an integral float as some exporters write them ("intermediate_size": 1408.0).
std::optional<int64_t> as_integer(const Json& j) {
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (j.is_number_integer()) return j.get<int64_t>();
  if (j.is_number_float()) {
    const double d = j.get<double>();
    // 2^63 as a double is the first value outside int64; the range check comes before the cast.
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == std::trunc(d)) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

std::optional<int64_t> JsonFields::opt_i64(const char* key) const {
  const Json* j = get(key);
  if (!j) return std::nullopt;
  if (const auto v = as_integer(*j)) return v;
  fail(key, cat("expected an integer, found ", brief(*j)));
}

int64_t JsonFields::i64(const char* key) const {
  if (auto v = opt_i64(key)) return *v;
  throw Error(file_, cat("missing required field '", prefix_, key, "'"));
}

int64_t JsonFields::i64_or(const char* key, int64_t fallback) const { return opt_i64(key).value_or(fallback); }

std::optional<double> JsonFields::opt_f64(const char* key) const {
  const Json* j = get(key);
  if (!j) return std::nullopt;
  if (!j->is_number()) fail(key, cat("expected a number, found ", brief(*j)));
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
  if (!j->is_boolean()) fail(key, cat("expected true or false, found ", brief(*j)));
  return j->get<bool>();
}

std::optional<std::string> JsonFields::opt_str(const char* key) const {
  const Json* j = get(key);
  if (!j) return std::nullopt;
  if (!j->is_string()) fail(key, cat("expected a string, found ", brief(*j)));
  return j->get<std::string>();
}

std::string JsonFields::str_or(const char* key, const std::string& fallback) const {
  return opt_str(key).value_or(fallback);
}

std::vector<int64_t> JsonFields::i64_list_or(const char* key, std::vector<int64_t> fallback) const {
  const Json* j = get(key);
  if (!j) return fallback;
  if (!j->is_array()) fail(key, cat("expected a list of integers, found ", brief(*j)));
  std::vector<int64_t> out;
  for (const Json& v : *j) {
    const auto i = as_integer(v);
    if (!i) fail(key, cat("expected a list of integers, found an entry ", brief(v)));
    out.push_back(*i);
  }
  return out;
}

std::vector<int64_t> JsonFields::i64_or_list(const char* key) const {
  const Json* j = get(key);
  if (!j) return {};
  if (j->is_number()) return {i64(key)};
  return i64_list_or(key, {});
}

}  // namespace moerun::io
