#pragma once
// The CLI's contact with the outside: stdout (the product: every write checked, so a full disk, a
// closed stdout or a reader that went away is exit 1 with a message, never lost output and exit 0),
// bounded reads of stdin and files (an endless or huge input fails fast instead of eating memory),
// atomic file writes (a failure never leaves a half-written file where a good one was), the open
// progress line on stderr, and SIGINT/SIGTERM during generation.

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace moerun::cli {

// --- stdout --------------------------------------------------------------------------------
// Writes `s` to stdout; with `flush` also pushes it out (streamed answers). Throws Error("stdout",
// reason) when the write fails (ENOSPC, EPIPE, EBADF, ...), so the caller stops at once.
void write_out(std::string_view s, bool flush = false);
// Flushes and closes stdout, throwing Error on a failed write that only shows up now. main() calls
// it after a command succeeds.
void finish_out();
// Makes sure file descriptors 0-2 are open, so a file opened later never becomes stdout. A closed
// stdout stays unwritable (every write fails with EBADF and is reported).
void guard_standard_fds();

// --- stderr progress line --------------------------------------------------------------------
// Prints text on stderr that leaves the line open ("# loading ... "); close_progress() ends it with
// `tail` and a newline. An error printed while the line is open starts on a line of its own.
void open_progress(const std::string& text);
void close_progress(const std::string& tail);
void end_progress_line();  // a bare newline if the line is open (before an error message)
// A progress bar for load-time work ("# converting weights [#####     ]  42% (3.1 of 7.9 GB)"),
// drawn over the open progress line, only when stderr is a terminal and only once the operation
// has run for more than a second (shorter ones stay silent). An operation starts at a call with a
// new label or with `done` going back; done == total ends it, and the open line (its text from
// open_progress) is shown again.
void draw_progress(std::string_view label, uint64_t done, uint64_t total);

// --- bounded input -----------------------------------------------------------------------------
// No real tokenizer has tokens longer than this, so text longer than context x this cannot fit the
// context: the cap on a prompt read from stdin or a file.
constexpr size_t kMaxBytesPerToken = 256;
// The most bytes a prompt for a `context`-token session can usefully have (at least 1 MiB).
inline size_t prompt_bytes_cap(int64_t context) { return static_cast<size_t>(context < 4096 ? 4096 : context) * kMaxBytesPerToken; }
// The cap on text that no context bounds (tokenize's input, a conversation file): large enough for
// any real use, small enough that /dev/zero fails in a second.
constexpr size_t kMaxTextBytes = size_t{256} << 20;

// All of stdin, at most `cap` bytes: more is Error("stdin", ...) naming the cap and `why` (what
// bounds it, e.g. "the 4096-token context").
std::string read_stdin(size_t cap, const std::string& why);
// One line of stdin (without its end); false at end of input. A line longer than `cap` is an Error.
bool read_stdin_line(std::string& line, size_t cap);
// A file's bytes, at most `cap`: a directory, a missing or unreadable file, or more than `cap` bytes
// (a FIFO or /dev/zero that never ends) is an Error naming `path`.
std::string read_file(const std::filesystem::path& path, size_t cap, const std::string& why);
std::string mib(size_t bytes);  // "64 MiB"

// --- files ---------------------------------------------------------------------------------
// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed and fsync'd,
// then renamed over `path` (and the directory fsync'd). On any failure the temporary is removed,
// `path` is left as it was, and Error names `path` and the reason.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// --- signals -------------------------------------------------------------------------------
// While alive, SIGINT and SIGTERM set a flag instead of killing the process (the previous handlers
// come back on destruction). signal() is the number caught, 0 for none.
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  static int signal();   // the last signal caught since the guard was made, or 0
  static void clear();
  static int exit_code() { return signal() ? 128 + signal() : 0; }  // 130 for SIGINT, 143 for SIGTERM

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

}  // namespace moerun::cli
