// Backend choice and the CPU backend's memory: what `auto` resolves to, a clear error when CUDA is
// asked for but cannot run, and buffers that grow, keep their capacity and suit the vector kernels.

#include <gtest/gtest.h>

#include <cstdint>

#include "kernels/ops.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/backend.h"
#include "support/golden.h"

namespace moerun {
namespace {

TEST(Backend, AutomaticIsCudaExactlyWhenAGpuIsUsable) {
#if MOERUN_HAVE_CUDA
  const BackendKind want = cuda::available() ? BackendKind::cuda : BackendKind::cpu;
#else
  const BackendKind want = BackendKind::cpu;
#endif
  EXPECT_EQ(runtime::resolve_backend(BackendKind::automatic), want);
  EXPECT_EQ(runtime::resolve_backend(BackendKind::cpu), BackendKind::cpu);
  EXPECT_EQ(Engine::load(testing::golden_dir("llama"), {.backend = BackendKind::cpu}).backend(), BackendKind::cpu);
}

TEST(Backend, CudaWithoutAUsableGpuIsAClearError) {
#if MOERUN_HAVE_CUDA
  if (cuda::available()) GTEST_SKIP() << "a GPU is usable here, so asking for CUDA is not an error";
#endif
  try {
    Engine::load(testing::golden_dir("llama"), {.backend = BackendKind::cuda});
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("backend cuda"), std::string::npos) << msg;
    EXPECT_TRUE(msg.find("no usable CUDA device") != std::string::npos || msg.find("no CUDA support") != std::string::npos) << msg;
  }
}

TEST(Backend, CpuBuffersAreAlignedAndKeepCapacity) {
  auto be = runtime::make_cpu_backend(std::make_shared<cpu::ThreadPool>(1));
  runtime::Buffer b;
  be->reserve(b, 10 * sizeof(float));
  auto* p = static_cast<float*>(b.data);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  EXPECT_EQ(b.bytes, 10 * sizeof(float));  // the usable size is what was reserved
  p[9] = 1.5f;
  be->reserve(b, 5 * sizeof(float));
  EXPECT_EQ(b.data, p);  // smaller: the same memory
  be->reserve(b, 100000 * sizeof(float));
  auto* q = static_cast<float*>(b.data);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q) % 64, 0u);
  EXPECT_EQ(b.bytes, 100000 * sizeof(float));
  q[99999] = 2.0f;  // the whole range is usable (ASan checks it)
  EXPECT_EQ(be->weight(Tensor()), nullptr);
}

TEST(Backend, ASessionOnTheCpuBackendSurvivesPrefillAfterDecode) {
  // A decode step must not leave the workspace unfit for a later multi-token step (a chat's next turn).
  const Engine engine = Engine::load(testing::golden_dir("qwen3_moe"), {.backend = BackendKind::cpu});
  const std::vector<int32_t> ids = {5, 6, 7, 8, 9, 10, 11, 12, 13};
  Session ref(engine);
  const std::vector<float> want = ref.forward(ids, true);
  Session s(engine);
  for (size_t i = 0; i < 3; ++i) s.forward(std::span<const int32_t>(&ids[i], 1));
  const std::vector<float> rest = s.forward(std::span<const int32_t>(ids.data() + 3, ids.size() - 3), true);
  const int64_t V = engine.config().vocab_size;
  EXPECT_LE(testing::max_abs_diff(rest, std::vector<float>(want.begin() + 3 * V, want.end())), 1e-4f);
}

}  // namespace
}  // namespace moerun
