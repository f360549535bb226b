#pragma once
// MappedFile: owns one read-only mapping of a whole file; weights are views into it.

#include <cstddef>
#include <filesystem>
#include <span>

namespace moerun::io {

class MappedFile {
 public:
  // Maps `path` read-only. Throws Error naming the path when it cannot be opened or mapped.
  static MappedFile open(const std::filesystem::path& path);

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  size_t size() const noexcept { return size_; }

 private:
  MappedFile(const std::byte* data, size_t size) : data_(data), size_(size) {}
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace moerun::io
