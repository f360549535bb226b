// Engines on the GPU through the public API (moerun/engine.h) only: sessions that share an engine and
// step in turns, the out-of-memory paths (an engine whose memory plan cannot fit the device is refused
// with an Error that says so, a session whose cache cannot be allocated likewise, and `automatic` falls
// back to the CPU when the plan does not fit the device), and an FP8 checkpoint on CUDA against the
// CPU backend reading its FP8 weights as they are. cuda_runtime.h only to skip without a device and
// to fill the device's memory. Skips without a GPU.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "support/golden.h"

namespace moerun {
namespace {

using testing::argmax;
using testing::golden_dir;
using testing::max_abs_diff;

bool have_gpu() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  (void)cudaGetLastError();  // a failed query leaves its error behind
  return ok;
}

#define SKIP_WITHOUT_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no usable CUDA device (cudaGetDeviceCount failed or found none)"

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// One session's run: the prompt, then `steps` decode steps fed `tokens` (teacher forcing, so a run's
// inputs do not depend on its outputs); the logits after each.
struct SessionRun {
  const std::vector<int32_t>* prompt = nullptr;
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
};

// Two sessions on one CUDA engine, each alone and then both stepping in turns (prefill A, prefill B,
// decode A, decode B, ...), must give the same logits: a session's state (cache, positions, the
// recorded decode step) is its own, whatever the engine ran in between. Different contexts too, so
// the sessions' caches and attention grids differ in size.
TEST(CudaEngine, TwoSessionsSteppingInTurnsGiveTheLogitsEachGivesAlone) {
  SKIP_WITHOUT_GPU();
  constexpr int kSteps = 10;
  constexpr float kTol = 1e-4f;  // the same kernels on the same inputs; only a re-recorded graph differs
  for (const char* name : {"llama", "qwen3_moe", "deepseek_v3"}) {
    const testing::Golden g = testing::read_golden(name);
    const Engine gpu = Engine::load(golden_dir(name), {.backend = BackendKind::cuda});
    ASSERT_EQ(gpu.backend(), BackendKind::cuda);
    const int64_t V = gpu.config().vocab_size;
    const std::vector<int64_t> contexts = {0, 64};  // the default, and a short one
    std::vector<SessionRun> alone(2);
    alone[0].prompt = &g.ids[2];
    alone[1].prompt = &g.ids[1];
    for (size_t i = 0; i < 2; ++i) {  // alone: greedy, which fixes the tokens both runs are fed
      Session s(gpu, contexts[i]);
      alone[i].logits.push_back(s.forward(*alone[i].prompt));
      for (int t = 0; t < kSteps; ++t) {
        alone[i].tokens.push_back(argmax(alone[i].logits.back().data(), V));
        alone[i].logits.push_back(s.forward(std::span<const int32_t>(&alone[i].tokens.back(), 1)));
      }
    }
    Session a(gpu, contexts[0]), b(gpu, contexts[1]);
    std::vector<std::vector<float>> got_a = {a.forward(*alone[0].prompt)}, got_b = {b.forward(*alone[1].prompt)};
    for (int t = 0; t < kSteps; ++t) {
      got_a.push_back(a.forward(std::span<const int32_t>(&alone[0].tokens[static_cast<size_t>(t)], 1)));
      got_b.push_back(b.forward(std::span<const int32_t>(&alone[1].tokens[static_cast<size_t>(t)], 1)));
    }
    float worst = 0.0f;
    for (size_t t = 0; t <= kSteps; ++t) {
      const float ea = max_abs_diff(got_a[t], alone[0].logits[t]), eb = max_abs_diff(got_b[t], alone[1].logits[t]);
      EXPECT_LE(ea, kTol) << name << ": session A, step " << t;
      EXPECT_LE(eb, kTol) << name << ": session B, step " << t;
      worst = std::max({worst, ea, eb});
    }
    EXPECT_EQ(a.position(), static_cast<int64_t>(alone[0].prompt->size()) + kSteps);
    EXPECT_EQ(b.position(), static_cast<int64_t>(alone[1].prompt->size()) + kSteps);
    std::printf("[cuda engine] %-12s two sessions in turns vs alone: max |diff| = %.3g\n", name, worst);
  }
}

// 2^31 positions of llama's f32 cache (2 layers x K and V x 2 heads x 16 x 4 bytes = 512 bytes a
// position) is 1 TiB: more than any GPU holds, while the weights fit anywhere.
constexpr int64_t kHugeContext = int64_t{1} << 31;

TEST(CudaEngine, AnEngineWhosePlanCannotFitTheDeviceIsRefusedNamingMemory) {
  SKIP_WITHOUT_GPU();
  try {
    const Engine loaded = Engine::load(golden_dir("llama"), {.context = kHugeContext,
                                                             .context_override = true,
                                                             .kv_type = KvType::f32,
                                                             .backend = BackendKind::cuda});
    FAIL() << "loaded on " << (loaded.backend() == BackendKind::cuda ? "cuda" : "the cpu") << " with a plan of " << kHugeContext
           << " positions";
  } catch (const Error& e) {
    const std::string what = lower(e.what());
    EXPECT_NE(what.find("memory"), std::string::npos) << e.what();
    EXPECT_NE(what.find("does not fit"), std::string::npos) << e.what();
  }
  // Nothing was left behind: the same model at its own context loads and runs.
  const Engine ok = Engine::load(golden_dir("llama"), {.backend = BackendKind::cuda});
  Session s(ok);
  const std::vector<float> logits = s.forward(testing::read_golden("llama").ids[1]);
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
}

// The engine fits (its default context) but a session asks for the huge one: its cache cannot be
// allocated on the device, which is an Error naming memory, and the engine stays usable.
TEST(CudaEngine, ASessionWhoseCacheCannotBeAllocatedIsRefusedNamingMemory) {
  SKIP_WITHOUT_GPU();
  const Engine gpu = Engine::load(golden_dir("llama"), {.context_override = true, .kv_type = KvType::f32, .backend = BackendKind::cuda});
  try {
    Session s(gpu, kHugeContext);
    FAIL() << "a session of " << kHugeContext << " positions was made";
  } catch (const Error& e) {
    EXPECT_NE(lower(e.what()).find("memory"), std::string::npos) << e.what();
  }
  Session s(gpu);
  const std::vector<float> logits = s.forward(testing::read_golden("llama").ids[1]);
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
}

// Takes the device's free memory (plain cudaMalloc, in blocks) until at most `leave` bytes are free.
class DeviceHog {
 public:
  explicit DeviceHog(size_t leave) {
    size_t chunk = size_t{8} << 30;
    while (chunk >= (size_t{2} << 20)) {
      size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) != cudaSuccess || free < leave + (size_t{2} << 20)) break;
      void* p = nullptr;
      if (cudaMalloc(&p, std::min(chunk, free - leave)) == cudaSuccess) {
        blocks_.push_back(p);
      } else {
        (void)cudaGetLastError();
        chunk /= 2;
      }
    }
  }
  ~DeviceHog() {
    for (void* p : blocks_) cudaFree(p);
  }
  DeviceHog(const DeviceHog&) = delete;
  DeviceHog& operator=(const DeviceHog&) = delete;

  static size_t free_bytes() {
    size_t free = 0, total = 0;
    return cudaMemGetInfo(&free, &total) == cudaSuccess ? free : 0;
  }

 private:
  std::vector<void*> blocks_;
};

// `automatic` plans for the GPU when one is usable; when that plan does not fit the device's free
// memory but fits the host, the engine runs on the CPU instead (a busy or small GPU is not an error).
// The device is filled to under 128 MiB free and the model asks for a 512 MiB f32 cache (2^20
// positions of 512 bytes), which the host holds easily.
TEST(CudaEngine, AutomaticFallsBackToTheCpuWhenThePlanDoesNotFitTheDevice) {
  SKIP_WITHOUT_GPU();
  constexpr int64_t kContext = int64_t{1} << 20;
  const EngineOptions o{.context = kContext, .context_override = true, .kv_type = KvType::f32, .backend = BackendKind::automatic};
  {
    const DeviceHog hog(size_t{96} << 20);
    if (DeviceHog::free_bytes() > (size_t{128} << 20))
      GTEST_SKIP() << "could not fill the device (" << DeviceHog::free_bytes() / (1 << 20) << " MiB still free)";
    const Engine e = Engine::load(golden_dir("llama"), o);
    EXPECT_EQ(e.backend(), BackendKind::cpu);
    Session s(e, 64);  // a short session: the point is where it runs
    const std::vector<float> logits = s.forward(testing::read_golden("llama").ids[1]);
    EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
  }
  // With the device free again the same options choose it.
  EXPECT_EQ(Engine::load(golden_dir("llama"), o).backend(), BackendKind::cuda);
}

// DeepSeek-V3's FP8 golden checkpoint (block-scaled F8_E4M3 weights) on CUDA with its default weight
// form, against the CPU backend reading the FP8 weights as they are (zero copy, block scales applied in
// its kernels), both with a bf16 cache: every prompt's logits at every position plus eight
// teacher-forced decode steps, under the bf16 closeness rule (support/golden.h: 80% of positions within
// 0.1, the same top token at every decisive one), since CUDA's prefill rounds activations to bf16.
TEST(CudaEngine, Fp8CheckpointOnCudaIsCloseToTheCpuBackend) {
  SKIP_WITHOUT_GPU();
  const testing::Golden g = testing::read_golden("deepseek_v3_fp8");
  const Engine gpu = Engine::load(golden_dir("deepseek_v3_fp8"), {.kv_type = KvType::bf16, .backend = BackendKind::cuda});
  const Engine cpu = Engine::load(golden_dir("deepseek_v3_fp8"), {.kv_type = KvType::bf16, .backend = BackendKind::cpu});
  ASSERT_EQ(gpu.backend(), BackendKind::cuda);
  ASSERT_EQ(cpu.options().fp8_dequant, DType::f8_e4m3);
  const int64_t V = cpu.config().vocab_size;
  testing::Closeness total;
  for (const auto& ids : g.ids) {
    Session a(cpu), b(gpu);
    std::vector<float> want = a.forward(ids, true);
    total += testing::closeness(b.forward(ids, true), want, V);
    std::vector<float> last(want.end() - V, want.end());
    for (int step = 0; step < 8; ++step) {
      const int32_t t = argmax(last.data(), V);
      last = a.forward(std::span<const int32_t>(&t, 1));
      total += testing::closeness(b.forward(std::span<const int32_t>(&t, 1)), last, V);
    }
  }
  testing::expect_close_to_bf16_reference(total, "deepseek_v3_fp8 on CUDA vs the CPU backend (FP8 kept)");
}

}  // namespace
}  // namespace moerun
