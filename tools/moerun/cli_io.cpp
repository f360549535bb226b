#include "cli_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>

#include "moerun/error.h"

namespace moerun::cli {

using detail::cat;

namespace {

[[noreturn]] void out_failed(int err) {
  // Nothing more can reach stdout; make sure the buffered rest is not retried at exit.
  std::clearerr(stdout);
  throw Error("stdout", cat("cannot write the output: ", std::strerror(err ? err : EIO)));
}

bool g_progress_open = false;
std::string g_progress_text;  // what open_progress printed, redrawn when a bar ends

// The bar of draw_progress(): the operation it belongs to and whether it is on the screen.
struct Bar {
  std::string label;
  uint64_t last = 0;
  std::chrono::steady_clock::time_point start;
  bool shown = false;
};
Bar g_bar;
std::atomic<int> g_signal{0};

extern "C" void on_interrupt(int sig) { g_signal.store(sig); }

struct Fd {  // closes on every path out
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads from `fd` until end of input or more than `cap` bytes; returns false when over `cap`.
bool read_fd(int fd, size_t cap, std::string& out, const std::string& what) {
  char buf[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got == 0) return true;
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(what, cat("read error: ", std::strerror(errno)));
    }
    if (out.size() + static_cast<size_t>(got) > cap) return false;
    out.append(buf, static_cast<size_t>(got));
  }
}

}  // namespace

std::string mib(size_t bytes) {
  if (bytes >= (size_t{1} << 20) && bytes % (size_t{1} << 20) == 0) return cat(bytes >> 20, " MiB");
  if (bytes >= (size_t{1} << 10) && bytes % (size_t{1} << 10) == 0) return cat(bytes >> 10, " KiB");
  return cat(bytes, " bytes");
}

void write_out(std::string_view s, bool flush) {
  if (!s.empty()) {
    errno = 0;
    if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size()) out_failed(errno);
  }
  if (flush) {
    errno = 0;
    if (std::fflush(stdout) != 0) out_failed(errno);
  }
}

void finish_out() {
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) out_failed(errno);
  // close() reports what only the last write-back sees (NFS, some FUSE file systems).
  errno = 0;
  if (std::fclose(stdout) != 0) throw Error("stdout", cat("cannot write the output: ", std::strerror(errno ? errno : EIO)));
}

void guard_standard_fds() {
  // A closed stdout (>&-) must fail its writes, not receive a file we open later: fd 1 is taken by
  // /dev/null opened read-only, so every write to it is EBADF. A closed stdin reads as empty.
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    const int got = ::open("/dev/null", fd == 2 ? O_WRONLY : O_RDONLY);
    if (got >= 0 && got != fd) {
      ::dup2(got, fd);
      ::close(got);
    }
  }
}

void open_progress(const std::string& text) {
  std::fputs(text.c_str(), stderr);
  g_progress_open = true;
  g_progress_text = text;
}

void close_progress(const std::string& tail) {
  std::fprintf(stderr, "%s\n", tail.c_str());
  g_progress_open = false;
  g_bar.shown = false;
}

void end_progress_line() {
  if (g_progress_open || g_bar.shown) std::fputs("\n", stderr);
  g_progress_open = false;
  g_bar.shown = false;
}

void draw_progress(std::string_view label, uint64_t done, uint64_t total) {
  static const bool tty = isatty(STDERR_FILENO) == 1;
  if (!tty) return;
  const auto now = std::chrono::steady_clock::now();
  if (label != g_bar.label || done < g_bar.last) {  // a new operation
    g_bar.label = label;
    g_bar.start = now;
    g_bar.shown = false;
  }
  g_bar.last = done;
  if (done >= total) {
    if (g_bar.shown) std::fprintf(stderr, "\r\033[K%s", g_progress_open ? g_progress_text.c_str() : "");
    g_bar.shown = false;
    g_bar.label.clear();  // the next call starts a new operation, even with this label
    return;
  }
  if (now - g_bar.start < std::chrono::seconds(1)) return;
  constexpr int kWidth = 30;
  const double f = static_cast<double>(done) / static_cast<double>(std::max<uint64_t>(total, 1));
  const int filled = static_cast<int>(kWidth * f);
  std::fprintf(stderr, "\r\033[K# %.*s [%.*s%*s] %3d%% (%.1f of %.1f GB)", static_cast<int>(label.size()), label.data(), filled,
               "##############################", kWidth - filled, "", static_cast<int>(100 * f), static_cast<double>(done) / 1e9,
               static_cast<double>(total) / 1e9);
  g_bar.shown = true;
}

std::string read_stdin(size_t cap, const std::string& why) {
  std::string out;
  // stdin may already hold buffered bytes if anything read it through stdio; nothing does before.
  if (!read_fd(STDIN_FILENO, cap, out, "stdin"))
    throw Error("stdin", cat("the input is larger than ", mib(cap), ", more than ", why, " can hold"));
  return out;
}

bool read_stdin_line(std::string& line, size_t cap) {
  line.clear();
  for (;;) {
    const int ch = std::getchar();
    if (ch == EOF) {
      if (std::ferror(stdin)) throw Error("stdin", cat("read error: ", std::strerror(errno)));
      return !line.empty();
    }
    if (ch == '\n') return true;
    if (line.size() >= cap) throw Error("stdin", cat("a line longer than ", mib(cap), " (no line end in sight)"));
    line.push_back(static_cast<char>(ch));
  }
}

std::string read_file(const std::filesystem::path& path, size_t cap, const std::string& why) {
  const std::string name = path.string();
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw Error(name, cat("cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw Error(name, cat("cannot stat: ", std::strerror(errno)));
  if (S_ISDIR(st.st_mode)) throw Error(name, "is a directory, not a file");
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > cap)
    throw Error(name, cat("the file is ", st.st_size, " bytes, larger than ", mib(cap), " (", why, ")"));
  std::string out;
  if (!read_fd(f.fd, cap, out, name)) throw Error(name, cat("more than ", mib(cap), " of input (", why, ")"));
  return out;
}

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
  namespace fs = std::filesystem;
  const std::string name = path.string();
  if (path.empty()) throw Error("save", "no file name given");
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw Error(name, "is a directory");
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::string tmp = (dir / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  Fd f{::mkstemp(tmp.data())};
  if (f.fd < 0) throw Error(name, cat("cannot create a file in ", dir.string(), ": ", std::strerror(errno)));
  auto fail = [&](const char* what) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(name, cat(what, ": ", std::strerror(err ? err : EIO), " (the old file, if any, is unchanged)"));
  };
  // Keep the permissions an existing file had; a new one gets the usual 0666 less the umask.
  struct stat old {};
  if (::stat(path.c_str(), &old) == 0) {
    ::fchmod(f.fd, old.st_mode & 07777);
  } else {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    ::fchmod(f.fd, 0666 & ~mask);
  }
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(f.fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write");
    done += static_cast<size_t>(n);
  }
  if (::fsync(f.fd) != 0) fail("cannot write (fsync)");
  const int fd = f.fd;
  f.fd = -1;
  if (::close(fd) != 0) fail("cannot write (close)");
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot replace the file");
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd >= 0) ::fsync(d.fd);  // the rename itself reaches the disk
}

InterruptGuard::InterruptGuard() {
  g_signal.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int_);
  sigaction(SIGTERM, &sa, &old_term_);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

int InterruptGuard::signal() { return g_signal.load(); }
void InterruptGuard::clear() { g_signal.store(0); }

}  // namespace moerun::cli
