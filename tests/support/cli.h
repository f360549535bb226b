#pragma once
// What the CLI suites share: the result of one `moerun` run and the default model they drive
// (models/default, installed by scripts/setup.sh; tests that need it skip without it).

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace moerun::testing {

struct CliRun {
  int code = -1;  // exit code (-1: ended by a signal)
  std::string out, err;
};

inline std::filesystem::path default_model() { return std::filesystem::path(MOERUN_SOURCE_DIR) / "models" / "default"; }

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
