// End to end on the GPU: every golden model run on the CUDA backend against the CPU backend (the
// reference, itself checked against transformers by tests/runtime/golden_test.cpp): logits at every
// position, the greedy continuation, token-by-token decoding through the recorded (CUDA graph)
// decode step, and a prefill after decoding (which must re-record the step). Skips without a GPU.

#include <gtest/gtest.h>

#include <cstdio>
#include <ostream>
#include <string>

#include "kernels/ops.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "support/golden.h"

namespace moerun {
namespace {

using testing::argmax;
using testing::golden_dir;
using testing::max_abs_diff;

struct Case {
  std::string name;
  EngineOptions options;  // backend is set per run
  bool bf16 = false;      // bf16 weights: cuBLAS rounds prefill activations to bf16 (closeness rule)
};

// fp32 checkpoints: both backends compute in fp32 (GEMV and cuBLAS with CUBLAS_COMPUTE_32F, no
// TF32); only summation order differs, so the transformers budget of 1e-3 holds here too.
constexpr float kF32Tol = 1e-3f;

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* name : {"llama", "llama3_tied", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite",
                           "deepseek_v2", "deepseek_v3", "qwen2_moe_gelu_tanh", "olmoe_gelu"})
    out.push_back({name, {}, false});
  for (const char* name : {"deepseek_v2_lite", "deepseek_v2", "deepseek_v3"}) out.push_back({name, {.mla = MlaMode::naive}, false});
  out.push_back({"deepseek_v3_fp8", {.fp8_dequant = DType::f32}, false});
  out.push_back({"deepseek_v3_bf16", {}, true});
  out.push_back({"deepseek_v3_fp8", {.fp8_dequant = DType::bf16}, true});  // FP8 dequantized to bf16 at load
  return out;
}

std::string label(const Case& c) {
  return c.name + (c.options.mla == MlaMode::naive ? "_naive" : "") + (c.options.fp8_dequant == DType::f32 ? "_f32" : "");
}

std::string case_name(const ::testing::TestParamInfo<Case>& p) { return label(p.param); }

// What ctest and gtest print for GetParam(): the case's name, not its bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << label(c) << (c.bf16 ? " (bf16 closeness)" : ""); }

Engine load(const Case& c, BackendKind backend) {
  EngineOptions o = c.options;
  o.backend = backend;
  o.kv_type = KvType::f32;  // CUDA caches are f32 (so far): the CPU's too, to compare the same arithmetic
  return Engine::load(golden_dir(c.name), o);
}

class CudaGolden : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no usable CUDA device (cudaGetDeviceCount failed or found none)";
  }
};

TEST_P(CudaGolden, LogitsMatchTheCpuBackend) {
  const Case& c = GetParam();
  const testing::Golden g = testing::read_golden(c.name);
  const Engine cpu = load(c, BackendKind::cpu), gpu = load(c, BackendKind::cuda);
  ASSERT_EQ(gpu.backend(), BackendKind::cuda);
  const int64_t V = cpu.config().vocab_size;
  float worst = 0.0f;
  testing::Closeness total;
  for (const auto& ids : g.ids) {
    Session a(cpu), b(gpu);
    const std::vector<float> want = a.forward(ids, true), got = b.forward(ids, true);
    if (!c.bf16) {
      const float err = max_abs_diff(got, want);
      worst = std::max(worst, err);
      EXPECT_LE(err, kF32Tol) << c.name << " prompt length " << ids.size();
    } else {
      // bf16 weights: prefill GEMMs round activations to bf16 (relative 2^-9 per element), which
      // moves logits by a few 0.01 and can flip a near-tied expert; the bf16 closeness rule applies.
      total += testing::closeness(got, want, V);
    }
  }
  if (c.bf16) testing::expect_close_to_bf16_reference(total, (c.name + " on CUDA vs the CPU backend").c_str());
  std::printf("[cuda golden] %-24s max |logit CUDA - CPU| = %.3g (close %d/%d)\n", label(c).c_str(), worst,
              total.close, total.positions);
}

TEST_P(CudaGolden, GreedyContinuationIsTheCpuBackendsAndTransformers) {
  const Case& c = GetParam();
  const testing::Golden g = testing::read_golden(c.name);
  auto greedy = [&](const Engine& e) {
    Session s(e);
    std::vector<float> logits = s.forward(g.ids[1]);
    std::vector<int32_t> got;
    for (size_t i = 0; i < 24; ++i) {  // past the golden's 16 so the recorded step replays many times
      got.push_back(argmax(logits.data(), e.config().vocab_size));
      logits = s.forward(std::span<const int32_t>(&got.back(), 1));
    }
    return got;
  };
  const std::vector<int32_t> on_gpu = greedy(load(c, BackendKind::cuda));
  EXPECT_EQ(on_gpu, greedy(load(c, BackendKind::cpu)));
  if (!c.bf16) {
    EXPECT_EQ(std::vector<int32_t>(on_gpu.begin(), on_gpu.begin() + 16), g.greedy);
  }
}

TEST_P(CudaGolden, RecordedDecodeStepsEqualOnePrefillAndSurviveANewPrefill) {
  const Case& c = GetParam();
  if (c.bf16) GTEST_SKIP() << "prefill and decode round differently with bf16 weights";
  const testing::Golden g = testing::read_golden(c.name);
  const Engine gpu = load(c, BackendKind::cuda);
  const std::vector<int32_t>& ids = g.ids[2];
  const int64_t V = gpu.config().vocab_size;
  Session full(gpu);
  const std::vector<float> all = full.forward(ids, true);
  // Steps 0..15 one at a time (recorded after the first), then the rest as one prefill (buffers
  // grow, the recording goes stale), then decoding again must re-record and stay right.
  Session step(gpu);
  float worst = 0.0f;
  auto row = [&](size_t t) {
    return std::vector<float>(all.begin() + static_cast<int64_t>(t) * V, all.begin() + static_cast<int64_t>(t + 1) * V);
  };
  for (size_t t = 0; t < 16; ++t) worst = std::max(worst, max_abs_diff(step.forward(std::span<const int32_t>(&ids[t], 1)), row(t)));
  const std::vector<float> mid = step.forward(std::span<const int32_t>(ids.data() + 16, 10), true);
  for (size_t t = 16; t < 26; ++t)
    worst = std::max(worst, max_abs_diff(std::vector<float>(mid.begin() + static_cast<int64_t>(t - 16) * V,
                                                            mid.begin() + static_cast<int64_t>(t - 15) * V), row(t)));
  for (size_t t = 26; t < ids.size(); ++t)
    worst = std::max(worst, max_abs_diff(step.forward(std::span<const int32_t>(&ids[t], 1)), row(t)));
  EXPECT_LE(worst, 1e-4f) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Golden, CudaGolden, ::testing::ValuesIn(cases()), case_name);

// CUDA caches are f32 so far: another KV type is refused when the engine loads, by name, and the
// default on CUDA is f32 whatever the CPU's default is.
TEST(CudaKv, OtherKvTypesAreRefusedAtLoadAndTheDefaultIsF32) {
  if (!cuda::available()) GTEST_SKIP() << "no usable CUDA device (cudaGetDeviceCount failed or found none)";
  EXPECT_EQ(Engine::load(golden_dir("llama"), {.backend = BackendKind::cuda}).kv_type(), KvType::f32);
  try {
    Engine::load(golden_dir("qwen3_moe"), {.kv_type = KvType::q8_0, .backend = BackendKind::cuda});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-type"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moerun
