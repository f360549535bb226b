#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::io {
namespace {

struct Fd {  // closes on every path out of open()
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

uintptr_t page_size() {
  static const uintptr_t size = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

// [begin, end) rounded out to whole pages.
struct Pages {
  uintptr_t begin, end;
};
Pages pages_of(std::span<const std::byte> r) {
  const uintptr_t p = page_size(), b = reinterpret_cast<uintptr_t>(r.data());
  return {b & ~(p - 1), (b + r.size() + p - 1) & ~(p - 1)};
}

}  // namespace

MappedFile MappedFile::open(const std::filesystem::path& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw Error(path.string(), std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw Error(path.string(), std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path.string(), "not a regular file");
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) return MappedFile(nullptr, 0);
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, f.fd, 0);
  if (p == MAP_FAILED) throw Error(path.string(), std::string("cannot map: ") + std::strerror(errno));
  // The mapping keeps the kernel's default advice (MADV_NORMAL), which is what decode wants: a step
  // reads whole expert matrices (MBs each) at places the router picks, and a fault's read-around
  // brings in a whole matrix where MADV_RANDOM would read it a page per fault. MADV_SEQUENTIAL would
  // let pages go soon after they are read, the wrong thing for weights read again every token.
  // Sequential reads at load ask for what comes next themselves (advise(willneed) over a window
  // ahead: Model::prefetch, model::prepare_weights): measured on a 7.9 GB file with a cold page
  // cache, a prefetch took 5.0-5.5 s that way against 8.3-15.6 s touching pages alone, and
  // --quant q8 preparation 17.7 s against 35 s (as fast as with a warm cache). Huge pages
  // (MADV_HUGEPAGE) were tried on the converted copies and lost to compaction (see convert.cpp).
  return MappedFile(static_cast<const std::byte*>(p), size);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    this->~MappedFile();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

void advise(std::span<const std::byte> range, Advice advice) noexcept {
  if (range.empty()) return;
  const Pages p = pages_of(range);
  const int how = advice == Advice::willneed ? MADV_WILLNEED : advice == Advice::sequential ? MADV_SEQUENTIAL : MADV_NORMAL;
  ::madvise(reinterpret_cast<void*>(p.begin), p.end - p.begin, how);
}

void lock_ranges(std::vector<std::span<const std::byte>> ranges, const std::string& what) {
  std::vector<Pages> pages;
  for (const auto& r : ranges)
    if (!r.empty()) pages.push_back(pages_of(r));
  std::sort(pages.begin(), pages.end(), [](const Pages& a, const Pages& b) { return a.begin < b.begin; });
  std::vector<Pages> merged;
  for (const Pages& p : pages) {
    if (!merged.empty() && p.begin <= merged.back().end) merged.back().end = std::max(merged.back().end, p.end);
    else merged.push_back(p);
  }
  uint64_t total = 0;
  for (const Pages& p : merged) total += p.end - p.begin;
  for (size_t i = 0; i < merged.size(); ++i) {
    if (::mlock(reinterpret_cast<void*>(merged[i].begin), merged[i].end - merged[i].begin) == 0) continue;
    const int err = errno;
    for (size_t j = 0; j < i; ++j) ::munlock(reinterpret_cast<void*>(merged[j].begin), merged[j].end - merged[j].begin);
    struct rlimit lim {};
    std::string limit = "unknown";
    if (::getrlimit(RLIMIT_MEMLOCK, &lim) == 0)
      limit = lim.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : detail::format_bytes(lim.rlim_cur);
    throw Error(what, std::string("cannot lock ") + detail::format_bytes(total) + " in memory (mlock: " + std::strerror(err) +
                          "); the limit on locked memory (RLIMIT_MEMLOCK) is " + limit +
                          (err == ENOMEM && limit == "unlimited" ? ", so the machine has too little free RAM" : "") +
                          ": raise it with `ulimit -l unlimited` (or memlock in /etc/security/limits.conf, "
                          "LimitMEMLOCK= for a systemd service) or run without --mlock");
  }
}

}  // namespace moerun::io
