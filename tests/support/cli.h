#pragma once
// What the CLI suites share: the result of one `moerun` run and the default model they drive
// (models/default, installed by scripts/setup.sh; tests that need it skip without it).

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "support/writer.h"

namespace moerun::testing {

struct CliRun {
  int code = -1;  // exit code (-1: ended by a signal)
  std::string out, err;
};

inline std::filesystem::path default_model() { return std::filesystem::path(MOERUN_SOURCE_DIR) / "models" / "default"; }

// `moerun ARGS` with stdin from /dev/null, its stdout and stderr captured (through files in a scratch
// directory of this test binary); a run ended by a signal fails the test.
inline CliRun run_moerun(const std::string& args) {
  static const std::filesystem::path dir = fresh_dir("cli_output");
  const std::filesystem::path out = dir / "stdout", err = dir / "stderr";
  const std::string cmd = std::string("'") + MOERUN_CLI + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "' </dev/null";
  const int status = std::system(cmd.c_str());
  CliRun r;
  EXPECT_TRUE(WIFEXITED(status)) << "moerun " << args << " ended by a signal";
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

}  // namespace moerun::testing

#ifdef MOERUN_SANITIZED
// 135M parameters through an unoptimised sanitizer build take minutes per answer; the Release
// suite runs these tests.
#define REQUIRE_DEFAULT_MODEL() GTEST_SKIP() << "too slow under sanitizers; the Release suite runs it"
#else
#define REQUIRE_DEFAULT_MODEL()                                                                   \
  do {                                                                                            \
    if (!std::filesystem::exists(::moerun::testing::default_model() / "model.safetensors"))      \
      GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";                  \
  } while (0)
#endif
