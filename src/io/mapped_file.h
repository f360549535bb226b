#pragma once
// MappedFile: owns one read-only mapping of a whole file; weights are views into it. And the
// memory calls around mappings: read-ahead advice and locking in RAM.

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

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

// How a range of memory is about to be read (madvise). Best effort: the kernel may ignore it, and
// errors are ignored (a heap range, a kernel without the call).
enum class Advice {
  normal,      // the default read-around on faults: what decode's scattered expert reads want
  sequential,  // read ahead aggressively; pages read once may be dropped first
  willneed,    // start reading the range into the page cache now, without waiting for it
};
void advise(std::span<const std::byte> range, Advice advice) noexcept;

// Locks the pages of every range in memory (mlock), ranges rounded out to whole pages, overlapping
// or adjacent ones merged. Throws Error(what, ...) when the kernel refuses, with the size asked for
// and the limit on locked memory (RLIMIT_MEMLOCK, `ulimit -l`); what was locked is unlocked then.
void lock_ranges(std::vector<std::span<const std::byte>> ranges, const std::string& what);

}  // namespace moerun::io
