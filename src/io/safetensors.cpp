#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <ostream>
#include <set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::io {
namespace {

using Json = nlohmann::json;
using detail::cat;
using detail::quote;

// Containers may nest three deep: header object -> tensor object -> shape / data_offsets array.
constexpr size_t kMaxNesting = 3;
// No real tensor has more dimensions; the bound keeps hostile headers from building huge shapes.
constexpr size_t kMaxRank = 16;

const char* json_type(const Json& j) {
  if (j.is_number_unsigned()) return "non-negative integer";
  if (j.is_number_integer()) return "negative integer";
  if (j.is_number_float()) return "non-integer or out-of-range number";
  return j.type_name();
}

// "tensor 'name'" in a message, written only when a message is built.
struct TensorName {
  const std::string& name;
  friend std::ostream& operator<<(std::ostream& os, const TensorName& t) { return os << "tensor " << quote(t.name); }
};

// `what` names the value in the message; it is only called on failure (a header may hold a million
// entries, and building messages for every one would dominate the parse).
template <class What>
uint64_t as_u64(const Json& j, const std::string& file, const What& what) {
  if (!j.is_number_unsigned()) throw Error(file, cat(what(), ": expected a non-negative integer, found ", json_type(j)));
  return j.get<uint64_t>();
}

TensorEntry parse_entry(const std::string& name, const Json& j, uint64_t data_size, const std::string& file) {
  const TensorName where{name};
  if (name.empty()) throw Error(file, "tensor with an empty name");
  if (!j.is_object()) throw Error(file, cat(where, ": expected an object, found ", json_type(j)));
  for (const auto& [key, value] : j.items()) {
    (void)value;
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw Error(file, cat(where, ": unexpected key ", quote(key), " (expected dtype, shape, data_offsets)"));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!j.contains(key)) throw Error(file, cat(where, ": missing '", key, "'"));

  TensorEntry e;
  e.name = name;
  const Json& dt = j["dtype"];
  if (!dt.is_string()) throw Error(file, cat(where, ": dtype: expected a string, found ", json_type(dt)));
  const auto dtype = parse_dtype(dt.get<std::string>());
  if (!dtype)
    throw Error(file, cat(where, ": unknown dtype ", quote(dt.get<std::string>()),
                          " (expected one of F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)"));
  e.dtype = *dtype;

  const Json& shape = j["shape"];
  if (!shape.is_array()) throw Error(file, cat(where, ": shape: expected a list, found ", json_type(shape)));
  if (shape.size() > kMaxRank) throw Error(file, cat(where, ": shape has ", shape.size(), " dimensions (at most ", kMaxRank, ")"));
  uint64_t numel = 1;
  bool overflow = false;
  for (const Json& d : shape) {
    const uint64_t dim = as_u64(d, file, [&] { return cat(where, ": shape entry"); });
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw Error(file, cat(where, ": shape entry ", dim, " is too large"));
    overflow |= __builtin_mul_overflow(numel, dim, &numel);
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes);
  if (overflow || nbytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw Error(file, cat(where, ": shape ", shape_str(e.shape), " of ", dtype_name(e.dtype), " overflows 64-bit sizes"));

  const Json& off = j["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    throw Error(file, cat(where, ": data_offsets: expected a list of two integers [begin, end], found ",
                          off.is_array() ? cat("a list of ", off.size()) : std::string(json_type(off))));
  e.begin = as_u64(off[0], file, [&] { return cat(where, ": data_offsets begin"); });
  e.end = as_u64(off[1], file, [&] { return cat(where, ": data_offsets end"); });
  if (e.begin > e.end)
    throw Error(file, cat(where, ": data_offsets [", e.begin, ", ", e.end, ") end before they begin"));
  if (e.end > data_size)
    throw Error(file, cat(where, ": data_offsets [", e.begin, ", ", e.end, ") reach past the data section of ",
                          data_size, " bytes (file truncated?)"));
  if (e.end - e.begin != nbytes)
    throw Error(file, cat(where, ": ", dtype_name(e.dtype), " ", shape_str(e.shape), " needs ", nbytes,
                          " bytes but data_offsets [", e.begin, ", ", e.end, ") hold ", e.end - e.begin));
  return e;
}

// The header's JSON, read in one pass. nlohmann's SAX interface gives the events; this handler
// rejects what the format forbids while parsing (duplicate keys, which a JSON library would silently
// resolve to the last; nesting deeper than the format uses) and builds each top-level value (a tensor
// entry or __metadata__) as a small JSON value that is checked and dropped as soon as it is complete.
// Work and memory are linear in the header: nlohmann's callback parser, used before, rescanned the
// whole top-level object each time a tensor's entry closed (quadratic: 40k tensors took 20 s).
//
// Problems inside entries are kept until the parse ends, so invalid JSON later in the text is what
// gets reported (the header is not JSON at all); otherwise the first bad entry in file order is.
class HeaderReader final : public nlohmann::json_sax<Json> {
 public:
  HeaderReader(SafetensorsHeader& h, const std::string& file) : h_(h), file_(file) {}

  // The first problem with an entry, if any; thrown once the whole text has parsed.
  void finish() {
    if (entry_error_) throw *entry_error_;
  }

  bool null() override { return scalar(Json(nullptr)); }
  bool boolean(bool v) override { return scalar(Json(v)); }
  bool number_integer(number_integer_t v) override { return scalar(Json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(Json(v)); }
  bool number_float(number_float_t v, const string_t& /*text*/) override { return scalar(Json(v)); }
  bool string(string_t& v) override { return scalar(Json(std::move(v))); }
  bool binary(binary_t& v) override { return scalar(Json::binary(std::move(v))); }  // not produced by JSON text

  bool start_object(std::size_t /*elements*/) override { return open(true); }
  bool start_array(std::size_t /*elements*/) override { return open(false); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& k) override {
    if (open_.size() == 1) {  // a tensor name (or __metadata__)
      if (!names_.insert(k).second) throw Error(file_, cat("header has duplicate key ", quote(k)));
      name_ = k;
    } else {
      if (!keys_.back().insert(k).second) throw Error(file_, cat(in_tensor(), "header has duplicate key ", quote(k)));
      key_ = std::move(k);
    }
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const Json::exception& e) override {
    throw Error(file_, cat("header is not valid JSON: ", e.what()));
  }

 private:
  std::string in_tensor() const { return name_.empty() ? std::string() : cat("tensor ", quote(name_), ": "); }

  bool open(bool object) {
    if (open_.size() >= kMaxNesting)
      throw Error(file_, cat(in_tensor(), "header nests deeper than the format allows (", kMaxNesting, " levels)"));
    if (open_.size() == 1) {  // a top-level value begins
      value_ = object ? Json::object() : Json::array();
      path_.assign(1, &value_);
    } else if (open_.size() > 1) {
      path_.push_back(&add(object ? Json::object() : Json::array()));
    }
    if (object && !open_.empty()) keys_.emplace_back();  // the top level's keys go to names_
    open_.push_back(object);
    return true;
  }

  bool close() {
    if (open_.back() && open_.size() > 1) keys_.pop_back();
    open_.pop_back();
    if (open_.size() == 1) {
      take(std::move(value_));
    } else if (open_.size() > 1) {
      path_.pop_back();
    }
    return true;
  }

  bool scalar(Json v) {
    if (open_.size() == 1) take(std::move(v));
    else if (open_.size() > 1) add(std::move(v));
    return true;  // outside the top-level object the parser itself reports the text as invalid
  }

  // Appends v to the innermost open container of the value being built.
  Json& add(Json v) {
    Json& parent = *path_.back();
    if (parent.is_object()) return parent[key_] = std::move(v);
    parent.push_back(std::move(v));
    return parent.back();
  }

  // A complete top-level value.
  void take(Json value) {
    if (entry_error_) return;  // only JSON problems are still looked for
    try {
      if (name_ == "__metadata__") {
        metadata(value);
      } else {
        h_.tensors.push_back(parse_entry(name_, value, h_.data_size, file_));
      }
    } catch (const Error& e) {
      entry_error_ = e;
    }
  }

  void metadata(const Json& value) {
    if (value.is_null()) return;  // the reference reader takes null as "no metadata"
    if (!value.is_object()) throw Error(file_, cat("__metadata__: expected an object of strings, found ", json_type(value)));
    for (const auto& [k, v] : value.items()) {
      if (!v.is_string()) throw Error(file_, cat("__metadata__ entry ", quote(k), ": expected a string, found ", json_type(v)));
      h_.metadata.emplace(k, v.get<std::string>());
    }
  }

  SafetensorsHeader& h_;
  const std::string& file_;
  std::vector<bool> open_;                 // the open containers, outermost first: true for an object
  std::vector<std::set<std::string>> keys_;  // keys seen in each open object below the top level
  std::set<std::string> names_;            // top-level keys seen
  std::string name_;                       // the top-level key whose value is being read
  std::string key_;                        // the last key inside that value
  Json value_;                             // that value, as far as it has been read
  std::vector<Json*> path_;                // its open containers, value_ first
  std::optional<Error> entry_error_;
};

}  // namespace

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> bytes, const std::string& file) {
  if (bytes.size() < 8)
    throw Error(file, cat("too short for a safetensors file: ", bytes.size(), " bytes, need at least 8"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  if (n > kMaxHeaderSize)
    throw Error(file, cat("header length ", n, " exceeds the 100 MB limit (not a safetensors file?)"));
  if (n > bytes.size() - 8)
    throw Error(file, cat("header length ", n, " runs past the end of the ", bytes.size(), "-byte file (truncated?)"));
  if (n < 2) throw Error(file, cat("header length ", n, " is too small for a JSON object"));

  SafetensorsHeader h;
  h.header_size = n;
  h.data_size = bytes.size() - 8 - n;
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, static_cast<size_t>(n));
  if (text.front() != '{') throw Error(file, cat("header does not start with '{' but with ", quote(text.substr(0, 1))));
  // The JSON library stops at a NUL byte and would never look at what follows; no valid header
  // contains one (padding is spaces), so refuse it outright.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    throw Error(file, cat("header contains a NUL byte at offset ", 8 + nul, " (padding must be spaces)"));
  HeaderReader reader(h, file);
  Json::sax_parse(text.begin(), text.end(), &reader);
  reader.finish();

  // The tensors must tile the data section exactly: no overlap, no gap, nothing left over.
  // (Zero-byte tensors at the same offset are ordered by name.)
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end != b.end ? a.end < b.end : a.name < b.name;
  });
  uint64_t expected = 0;
  const TensorEntry* prev = nullptr;
  for (const TensorEntry& e : h.tensors) {
    if (e.begin < expected)
      throw Error(file, cat("tensor ", quote(e.name), ": data_offsets [", e.begin, ", ", e.end,
                            ") overlap tensor ", quote(prev->name), " [", prev->begin, ", ", prev->end, ")"));
    if (e.begin > expected)
      throw Error(file, cat("tensor ", quote(e.name), ": data_offsets begin at ", e.begin, " but the previous tensor",
                            prev ? cat(" ", quote(prev->name)) : std::string(), " ends at ", expected,
                            " (gap in the data section)"));
    expected = e.end;
    prev = &e;
  }
  if (expected != h.data_size)
    throw Error(file, cat("data section has ", h.data_size - expected, " bytes after the last tensor (tensors cover ",
                          expected, " of ", h.data_size, ")"));
  return h;
}

SafetensorsFile::SafetensorsFile(std::filesystem::path path, MappedFile map, SafetensorsHeader header)
    : path_(std::move(path)), map_(std::move(map)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) by_name_.emplace(header_.tensors[i].name, i);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  MappedFile map = MappedFile::open(path);
  SafetensorsHeader header = parse_safetensors_header(map.bytes(), path.string());
  return std::make_shared<SafetensorsFile>(path, std::move(map), std::move(header));
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const noexcept {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

Tensor SafetensorsFile::tensor(const TensorEntry& e) const {
  const std::byte* data = map_.bytes().data() + 8 + header_.header_size + e.begin;
  return Tensor(e.dtype, e.shape, data, shared_from_this());
}

}  // namespace moerun::io
