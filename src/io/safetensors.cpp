#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

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

// Parses the header JSON, rejecting duplicate keys (the format forbids them and a JSON library
// would silently keep the last) and nesting deeper than the format uses. Problems inside a tensor's
// entry name the tensor.
Json parse_json(std::string_view text, const std::string& file) {
  // The JSON library stops at a NUL byte and would never look at what follows; no valid header
  // contains one (padding is spaces), so refuse it outright.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    throw Error(file, cat("header contains a NUL byte at offset ", 8 + nul, " (padding must be spaces)"));
  std::vector<std::set<std::string>> keys;  // one key set per open object
  std::vector<bool> is_object;              // the open containers
  std::string tensor;                       // the top-level key whose value is being parsed
  auto in_tensor = [&] { return tensor.empty() ? std::string() : cat("tensor ", quote(tensor), ": "); };
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) -> bool {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (is_object.size() >= kMaxNesting)
          throw Error(file, cat(in_tensor(), "header nests deeper than the format allows (", kMaxNesting, " levels)"));
        is_object.push_back(event == Json::parse_event_t::object_start);
        if (is_object.back()) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
      case Json::parse_event_t::array_end:
        if (!is_object.empty()) {
          if (is_object.back()) keys.pop_back();
          is_object.pop_back();
        }
        break;
      case Json::parse_event_t::key: {
        const std::string key = parsed.get<std::string>();
        if (!keys.back().insert(key).second) throw Error(file, cat(in_tensor(), "header has duplicate key ", quote(key)));
        if (is_object.size() == 1) tensor = key;
        break;
      }
      case Json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), callback);
  } catch (const Json::exception& e) {
    throw Error(file, cat("header is not valid JSON: ", e.what()));
  }
}

const char* json_type(const Json& j) {
  if (j.is_number_unsigned()) return "non-negative integer";
  if (j.is_number_integer()) return "negative integer";
  if (j.is_number_float()) return "non-integer or out-of-range number";
  return j.type_name();
}

uint64_t as_u64(const Json& j, const std::string& file, const std::string& what) {
  if (!j.is_number_unsigned()) throw Error(file, cat(what, ": expected a non-negative integer, found ", json_type(j)));
  return j.get<uint64_t>();
}

TensorEntry parse_entry(const std::string& name, const Json& j, uint64_t data_size, const std::string& file) {
  const std::string where = cat("tensor ", quote(name));
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
    const uint64_t dim = as_u64(d, file, cat(where, ": shape entry"));
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
  e.begin = as_u64(off[0], file, cat(where, ": data_offsets begin"));
  e.end = as_u64(off[1], file, cat(where, ": data_offsets end"));
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
  const Json j = parse_json(text, file);
  if (!j.is_object()) throw Error(file, cat("header: expected a JSON object, found ", json_type(j)));

  for (const auto& [name, value] : j.items()) {
    if (name == "__metadata__") {
      if (value.is_null()) continue;  // the reference reader takes null as "no metadata"
      if (!value.is_object()) throw Error(file, cat("__metadata__: expected an object of strings, found ", json_type(value)));
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string())
          throw Error(file, cat("__metadata__ entry ", quote(k), ": expected a string, found ", json_type(v)));
        h.metadata.emplace(k, v.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(parse_entry(name, value, h.data_size, file));
  }

  // The tensors must tile the data section exactly: no overlap, no gap, nothing left over.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
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
