#pragma once
// A command driven through a pseudo-terminal, as a person at a terminal drives it: the TTY paths of
// the CLI (libedit prompt, streaming, Ctrl+C, Ctrl+D). Needs -lutil (forkpty).

#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace moerun::testing {

class Pty {
 public:
  // Runs `program args` (through sh, so args are shell words) with HOME in the test temp dir (a
  // history file goes there), TERM=dumb and `env` set.
  Pty(const std::string& program, const std::string& args, const std::vector<std::pair<std::string, std::string>>& env = {}) {
    pid_ = forkpty(&fd_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {
      for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
      setenv("HOME", ::testing::TempDir().c_str(), 1);
      setenv("TERM", "dumb", 1);
      execl("/bin/sh", "sh", "-c", ("exec '" + program + "' " + args).c_str(), nullptr);
      _exit(127);
    }
  }
  ~Pty() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }
  Pty(const Pty&) = delete;
  Pty& operator=(const Pty&) = delete;

  void send(const std::string& s) { ASSERT_EQ(write(fd_, s.data(), s.size()), static_cast<ssize_t>(s.size())); }
  // Reads until `needle` appears after `from` in the output, or the timeout.
  bool wait_for(const std::string& needle, size_t from = 0, int seconds = 60) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    do {
      if (out_.find(needle, from) != std::string::npos) return true;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 200) > 0) {
        char buf[4096];
        const ssize_t n = read(fd_, buf, sizeof buf);
        if (n <= 0) return out_.find(needle, from) != std::string::npos;
        out_.append(buf, static_cast<size_t>(n));
      }
    } while (std::chrono::steady_clock::now() < end);
    return out_.find(needle, from) != std::string::npos;
  }
  // The exit code once the program ends (-1: a signal ended it, -2: still running after 30 s).
  int wait_exit() {
    int status = 0;
    for (int i = 0; i < 300; ++i) {
      wait_for("\x01", out_.size(), 0);  // keep reading so the child never blocks on a full pty
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      usleep(100000);
    }
    return -2;
  }
  const std::string& output() const { return out_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string out_;
};

}  // namespace moerun::testing
