// CUDA RMSNorm against its CPU twin on random (never zero) inputs: awkward sizes, and strided rows as
// MLA's latent norm uses them (rows of 576 floats, the first 512 normed, the 64 RoPE floats after
// them untouched), out of place and in place. Copies are ordered on the context's stream
// (cuda_test_util.h). Skips with a reason when no GPU can be used.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using namespace cuda::testing;

// fp32 in, fp32 out; the GPU sums in a different order (tree vs serial), so allow a few ulps
// relative to the output scale (|out| <= ~4 here): tests/support/op_tolerances.h.
const float kTolF32 = static_cast<float>(testing::tolerance(testing::Op::rms_norm, testing::Check::cuda).abs);

TEST(RmsNormCuda, MatchesCpu) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  cpu::Context cpu_ctx;
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 31}, {7, 257}, {2, 4096}, {5, 7168}, {1, 14343}}) {
    const uint64_t seed = static_cast<uint64_t>(rows * 100003 + cols);
    const auto x = uniform(static_cast<size_t>(rows * cols), -3.0f, 3.0f, seed);
    const auto w = uniform(static_cast<size_t>(cols), 0.5f, 1.5f, seed + 1);
    std::vector<float> want(x.size());
    cpu::rms_norm({.out = want.data(), .x = x.data(), .weight = w.data(), .rows = rows, .cols = cols, .eps = 1e-6f}, cpu_ctx);

    const DeviceBuffer dx = upload(x, ctx), dw = upload(w, ctx), dout = output_with_guard(x.size(), ctx);
    cuda::rms_norm({.out = dout.as<float>(), .x = dx.as<float>(), .weight = dw.as<float>(), .rows = rows, .cols = cols, .eps = 1e-6f},
                   ctx);
    const std::vector<float> got = download(dout, ctx);
    EXPECT_LE(max_abs_diff(got, want), kTolF32) << "rows=" << rows << " cols=" << cols << " seed=" << seed;
    EXPECT_EQ(first_bad_guard(got, want.size()), -1) << "rows=" << rows << " cols=" << cols;
  }
}

// MLA's kv norm: compressed_kv rows hold [kv_lora_rank 512 | rope 64]; only the first 512 are normed,
// and the 64 after them (the RoPE key, roped later) must come out bit for bit as they went in.
TEST(RmsNormCuda, StridedRowsLeaveTheRestUntouched) {
  MOERUN_SKIP_WITHOUT_CUDA();
  constexpr int64_t kStride = 576, kCols = 512;
  cuda::Context ctx;
  cpu::Context cpu_ctx;
  for (const int64_t rows : {1, 3, 37, 300}) {
    for (const bool in_place : {false, true}) {
      const uint64_t seed = static_cast<uint64_t>(rows * 7 + (in_place ? 1 : 0));
      const size_t n = static_cast<size_t>(rows * kStride);
      const auto x = uniform(n, -3.0f, 3.0f, seed);
      const auto w = uniform(static_cast<size_t>(kCols), 0.5f, 1.5f, seed + 1);
      // Out of place, the output starts as other random values: its tails must keep them.
      const auto before = in_place ? x : uniform(n, -9.0f, 9.0f, seed + 2);
      std::vector<float> want = before;
      cpu::rms_norm({.out = want.data(), .x = in_place ? want.data() : x.data(), .weight = w.data(), .rows = rows, .cols = kCols,
                     .eps = 1e-6f, .stride = kStride},
                    cpu_ctx);

      std::vector<float> init = before;
      init.resize(n + kGuardCount, kGuard);
      const DeviceBuffer dx = upload(x, ctx), dw = upload(w, ctx), dout = upload(init, ctx, "test output");
      cuda::rms_norm({.out = dout.as<float>(),
                      .x = in_place ? dout.as<float>() : dx.as<float>(),
                      .weight = dw.as<float>(),
                      .rows = rows,
                      .cols = kCols,
                      .eps = 1e-6f,
                      .stride = kStride},
                     ctx);
      const std::vector<float> got = download(dout, ctx);
      const std::string what = "rows=" + std::to_string(rows) + (in_place ? " in place" : " out of place");
      float worst = 0.0f;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < kStride; ++c) {
          const size_t i = static_cast<size_t>(r * kStride + c);
          if (c < kCols) {
            ASSERT_TRUE(std::isfinite(got[i])) << what << " row " << r << " col " << c;
            worst = std::max(worst, std::fabs(got[i] - want[i]));
          } else {
            ASSERT_EQ(std::memcmp(&got[i], &before[i], sizeof(float)), 0)
                << what << ": row " << r << " col " << c << " (past the normed columns) changed from " << before[i] << " to " << got[i];
          }
        }
      }
      EXPECT_LE(worst, kTolF32) << what;
      EXPECT_EQ(first_bad_guard(got, n), -1) << what;
    }
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
