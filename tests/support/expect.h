#pragma once
// The message of the moerun::Error that `f` throws (a test failure when it throws none), for tests
// that check what an error says.

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "moerun/error.h"

namespace moerun::testing {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no moerun::Error thrown";
  return "";
}

}  // namespace moerun::testing
