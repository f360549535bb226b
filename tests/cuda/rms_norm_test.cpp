// CUDA RMSNorm against its CPU twin on random (never zero) inputs and awkward sizes.
// Skips with a reason when no GPU can be used.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

// fp32 in, fp32 out; the GPU sums in a different order (tree vs serial), so allow a few ulps
// relative to the output scale (|out| <= ~4 here): tests/support/op_tolerances.h.
const float kTolF32 = static_cast<float>(testing::tolerance(testing::Op::rms_norm, testing::Check::cuda).abs);

std::vector<float> uniform(size_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(n);
  for (float& x : v) {
    const double u = static_cast<double>(rng() >> 11) / 9007199254740992.0;  // [0, 1), the same on every libstdc++
    x = static_cast<float>(lo + (hi - lo) * u);
    if (x == 0.0f) x = 1e-3f;
  }
  return v;
}

struct DeviceFloats {  // RAII device copy of a host vector
  float* ptr = nullptr;
  explicit DeviceFloats(const std::vector<float>& host) {
    EXPECT_EQ(cudaMalloc(&ptr, host.size() * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceFloats() { cudaFree(ptr); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
};

TEST(RmsNormCuda, MatchesCpu) {
  if (!cuda::available()) GTEST_SKIP() << "no usable CUDA device (cudaGetDeviceCount failed or found none)";
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 31}, {7, 257}, {2, 4096}, {5, 7168}, {1, 14343}}) {
    const uint64_t seed = static_cast<uint64_t>(rows * 100003 + cols);
    const auto x = uniform(static_cast<size_t>(rows * cols), -3.0f, 3.0f, seed);
    const auto w = uniform(static_cast<size_t>(cols), 0.5f, 1.5f, seed + 1);
    std::vector<float> want(x.size()), got(x.size() + 64, 12345.0f);  // 64 guard floats after the output
    cpu::Context cpu_ctx;
    cpu::rms_norm({.out = want.data(), .x = x.data(), .weight = w.data(), .rows = rows, .cols = cols, .eps = 1e-6f},
                  cpu_ctx);

    DeviceFloats dx(x), dw(w), dout(got);
    cuda::Context ctx;
    cuda::rms_norm({.out = dout.ptr, .x = dx.ptr, .weight = dw.ptr, .rows = rows, .cols = cols, .eps = 1e-6f}, ctx);
    ctx.synchronize();
    ASSERT_EQ(cudaMemcpy(got.data(), dout.ptr, got.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);

    float max_diff = 0.0f;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << "rows=" << rows << " cols=" << cols << " i=" << i;
      max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
    }
    EXPECT_LE(max_diff, kTolF32) << "rows=" << rows << " cols=" << cols << " seed=" << seed;
    for (size_t i = want.size(); i < got.size(); ++i) ASSERT_EQ(got[i], 12345.0f) << "guard overwritten at " << i;
  }
}

TEST(RmsNormCuda, ReportsNoDeviceWithoutCrashing) {
  // On a machine without a driver this must be a clean false, and on a GPU machine true.
  const bool have = cuda::available();
  int count = 0;
  const bool runtime_says = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  EXPECT_EQ(have, runtime_says);
}

}  // namespace
}  // namespace moerun
