// The reference RMSNorm against hand-computed answers.

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/ops.h"

namespace moerun {
namespace {

TEST(RmsNormCpu, KnownAnswer) {
  // Row [3, 4]: mean of squares 12.5, so x / sqrt(12.5 + eps) scaled by the weight.
  const std::vector<float> x = {3.0f, 4.0f, -1.0f, 1.0f};
  const std::vector<float> w = {2.0f, 0.5f};
  std::vector<float> out(4);
  cpu::Context ctx;
  cpu::rms_norm({.out = out.data(), .x = x.data(), .weight = w.data(), .rows = 2, .cols = 2, .eps = 0.0f}, ctx);
  const float r0 = std::sqrt(12.5f);
  EXPECT_FLOAT_EQ(out[0], 2.0f * 3.0f / r0);
  EXPECT_FLOAT_EQ(out[1], 0.5f * 4.0f / r0);
  EXPECT_FLOAT_EQ(out[2], -2.0f);
  EXPECT_FLOAT_EQ(out[3], 0.5f);
}

TEST(RmsNormCpu, EpsIsInsideTheRoot) {
  const std::vector<float> x = {0.0f, 0.0f, 0.0f, 1e-3f};
  const std::vector<float> w = {1.0f, 1.0f, 1.0f, 1.0f};
  std::vector<float> out(4);
  cpu::Context ctx;
  cpu::rms_norm({.out = out.data(), .x = x.data(), .weight = w.data(), .rows = 1, .cols = 4, .eps = 1e-6f}, ctx);
  EXPECT_NEAR(out[3], 1e-3 / std::sqrt(1e-6 / 4 + 1e-6), 1e-6);
  EXPECT_EQ(out[0], 0.0f);
}

TEST(RmsNormCpu, ZeroRowsWritesNothing) {
  float sentinel = 7.0f;
  cpu::Context ctx;
  cpu::rms_norm({.out = &sentinel, .x = nullptr, .weight = nullptr, .rows = 0, .cols = 4, .eps = 1e-6f}, ctx);
  EXPECT_EQ(sentinel, 7.0f);
}

}  // namespace
}  // namespace moerun
