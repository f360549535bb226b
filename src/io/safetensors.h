#pragma once
// safetensors: 8-byte little-endian header length N, N bytes of JSON header, then the data section.
// The header is validated completely (docs/MODELS.md §1.1 and the format's rules) before any tensor
// is handed out; every violation is an Error naming the file, the tensor and expected vs found.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/mapped_file.h"
#include "moerun/tensor.h"

namespace moerun::io {

inline constexpr uint64_t kMaxHeaderSize = 100'000'000;  // 100 MB, as the reference implementation

struct TensorEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // data_offsets, relative to the data section
};

struct SafetensorsHeader {
  uint64_t header_size = 0;            // N
  uint64_t data_size = 0;              // bytes after the header
  std::vector<TensorEntry> tensors;    // sorted by data offset
  std::map<std::string, std::string> metadata;  // __metadata__
};

// Validates the header of a whole safetensors file image; `file` names it in messages.
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file_bytes, const std::string& file);

class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return path_; }
  const SafetensorsHeader& header() const noexcept { return header_; }
  std::span<const std::byte> bytes() const noexcept { return map_.bytes(); }  // the whole mapped file
  const TensorEntry* find(std::string_view name) const noexcept;
  Tensor tensor(const TensorEntry& entry) const;  // zero-copy view that keeps this file mapped

  SafetensorsFile(std::filesystem::path path, MappedFile map, SafetensorsHeader header);

 private:
  std::filesystem::path path_;
  MappedFile map_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

}  // namespace moerun::io
