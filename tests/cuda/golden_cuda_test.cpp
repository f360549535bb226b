// End to end on the GPU: every golden model run on the CUDA backend against the CPU backend (the
// reference, itself checked against transformers by tests/runtime/golden_test.cpp): logits at every
// position, a teacher-forced greedy decode (both backends fed the CPU's greedy tokens, top-1 compared
// where the CPU's choice is decisive), token-by-token decoding through the recorded (CUDA graph)
// decode step, a prefill after decoding (which must re-record the step), and the KV cache types CUDA
// takes. Skips without a GPU.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

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

// Both backends with f32 caches, explicitly (the defaults differ: f16 on the CPU, bf16 on CUDA): the
// strict fp32 comparison needs the same cache arithmetic on both sides.
Engine load(const Case& c, BackendKind backend) {
  EngineOptions o = c.options;
  o.backend = backend;
  o.kv_type = KvType::f32;
  return Engine::load(golden_dir(c.name), o);
}

// The CPU's top logit minus its second.
float top2_gap(const float* v, int64_t n) {
  std::vector<float> sorted(v, v + n);
  std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
  return sorted[0] - sorted[1];
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

// Greedy decoding, teacher forced: the CPU decodes greedily for 16 steps after each golden prompt and
// both backends are fed the CPU's tokens, so one near-tie cannot send the GPU down another
// continuation (3 x 17 = 51 positions: each prompt's last one and the 16 steps). The GPU's top-1 must
// be the CPU's wherever the CPU's choice is decisive: its top two logits further apart than the margin,
// twice the logit tolerance (an error of at most tol per logit cannot swap them).
//   fp32 weights: tol = kF32Tol, margin 2e-3, and every position must be within tol.
//   bf16 weights (activations rounded to bf16 in the prefill and MoE GEMMs): tol = 0.04, about two
//   bf16 roundings (2^-8 relative each) of the largest golden logits (~4.4; measured differences
//   are a few 0.01), so margin 0.08. As in the bf16 closeness rule (support/golden.h), positions
//   further than 0.1 from the CPU (a flipped expert choice) are waived, at most 20% of them.
// The goldens' logits are nearly flat (median top-2 gap 0.16-0.25), so the margin decides how much
// is checked: 0.08 leaves ~70% of positions decisive, and at least half must be, or the test says
// little (0.2, twice the closeness rule's 0.1, would leave under half).
TEST_P(CudaGolden, TeacherForcedGreedyDecodeAgreesWithTheCpuBackend) {
  const Case& c = GetParam();
  const testing::Golden g = testing::read_golden(c.name);
  const Engine cpu = load(c, BackendKind::cpu), gpu = load(c, BackendKind::cuda);
  const int64_t V = cpu.config().vocab_size;
  constexpr size_t kSteps = 16;
  const float tol = c.bf16 ? 0.04f : kF32Tol, margin = 2.0f * tol;
  constexpr float kFlipped = 0.1f;  // the closeness rule's band: further is a flipped route
  int positions = 0, waived = 0, checked = 0, same = 0;
  float worst = 0.0f;
  for (size_t p = 0; p < g.ids.size(); ++p) {
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> want;  // the CPU's logits after the prompt and after each token
    {
      Session s(cpu);
      want.push_back(s.forward(g.ids[p]));
      for (size_t i = 0; i < kSteps; ++i) {
        tokens.push_back(argmax(want.back().data(), V));
        want.push_back(s.forward(std::span<const int32_t>(&tokens.back(), 1)));
      }
    }
    if (p == 1 && !c.bf16) {
      EXPECT_EQ(tokens, g.greedy) << c.name << ": the CPU backend against transformers";
    }
    Session s(gpu);
    std::vector<std::vector<float>> got = {s.forward(g.ids[p])};
    for (size_t i = 0; i < kSteps; ++i) got.push_back(s.forward(std::span<const int32_t>(&tokens[i], 1)));
    for (size_t t = 0; t < want.size(); ++t) {
      ++positions;
      const float err = max_abs_diff(got[t], want[t]);
      worst = std::max(worst, err);
      if (!c.bf16) {
        EXPECT_LE(err, tol) << c.name << ": prompt " << p << " step " << t;
      } else if (err > kFlipped) {
        ++waived;
        continue;
      }
      const float gap = top2_gap(want[t].data(), V);
      if (gap <= margin) continue;
      ++checked;
      const int32_t g_top = argmax(got[t].data(), V), c_top = argmax(want[t].data(), V);
      same += g_top == c_top;
      EXPECT_EQ(g_top, c_top) << c.name << ": prompt " << p << " step " << t << " (CPU's top-2 gap " << gap << ", max |diff| " << err << ")";
    }
  }
  EXPECT_LE(waived * 5, positions) << c.name << ": " << waived << " of " << positions << " positions further than " << kFlipped;
  EXPECT_GE(checked * 2, positions) << c.name << ": only " << checked << " of " << positions << " positions have a top-2 gap above " << margin;
  std::printf("[cuda golden] %-24s teacher-forced decode: top-1 same at %d of %d decisive positions (of %d, %d waived), max |diff| %.3g\n",
              label(c).c_str(), same, checked, positions, waived, worst);
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

// KV cache types on CUDA: bf16 by default; f32, f16 and bf16 load and give the CPU backend's logits
// (the CPU loaded with the same KV type, so both round the cache alike); q8_0 is refused at load,
// naming --kv-type.
//
// Tolerance: fp32 weights, so the only difference beside summation order is where a K or V element
// lands on the other side of a 16-bit rounding boundary (the two backends compute it a few fp32 ulps
// apart): one bf16 ulp (2^-8 relative) in that element. A handful of those over a prompt move logits of
// magnitude ~4 by well under a bf16 ulp of the logit (2^-6 at 4); 0.05 leaves room and stays half the
// bf16 closeness rule's 0.1. f32 caches keep the strict kF32Tol.
constexpr float kHalfCacheTol = 0.05f;

TEST(CudaKv, DefaultIsBf16AndF16Bf16F32AgreeWithTheCpuBackend) {
  if (!cuda::available()) GTEST_SKIP() << "no usable CUDA device (cudaGetDeviceCount failed or found none)";
  EXPECT_EQ(Engine::load(golden_dir("llama"), {.backend = BackendKind::cuda}).kv_type(), KvType::bf16);
  for (const char* name : {"llama", "qwen3_moe", "deepseek_v3"}) {
    const testing::Golden g = testing::read_golden(name);
    for (const KvType kv : {KvType::f32, KvType::f16, KvType::bf16}) {
      const std::string what = std::string(name) + " kv " + std::string(kv_type_name(kv));
      const Engine gpu = Engine::load(golden_dir(name), {.kv_type = kv, .backend = BackendKind::cuda});
      const Engine cpu = Engine::load(golden_dir(name), {.kv_type = kv, .backend = BackendKind::cpu});
      ASSERT_EQ(gpu.backend(), BackendKind::cuda) << what;
      ASSERT_EQ(gpu.kv_type(), kv) << what;
      ASSERT_EQ(cpu.kv_type(), kv) << what;
      const float tol = kv == KvType::f32 ? kF32Tol : kHalfCacheTol;
      const int64_t V = cpu.config().vocab_size;
      float worst = 0.0f;
      for (const auto& ids : g.ids) {
        // The prompt in one prefill, then four teacher-forced decode steps that read the cache back.
        Session a(cpu), b(gpu);
        worst = std::max(worst, max_abs_diff(b.forward(ids, true), a.forward(ids, true)));
        std::vector<float> last = a.forward(std::span<const int32_t>(&ids.back(), 1));
        worst = std::max(worst, max_abs_diff(b.forward(std::span<const int32_t>(&ids.back(), 1)), last));
        for (int step = 0; step < 3; ++step) {
          const int32_t t = argmax(last.data(), V);
          last = a.forward(std::span<const int32_t>(&t, 1));
          worst = std::max(worst, max_abs_diff(b.forward(std::span<const int32_t>(&t, 1)), last));
        }
      }
      EXPECT_LE(worst, tol) << what;
      std::printf("[cuda kv] %-32s max |logit CUDA - CPU| = %.3g (tolerance %.3g)\n", what.c_str(), worst, tol);
    }
  }
}

TEST(CudaKv, Q8IsRefusedAtLoadNamingTheFlag) {
  if (!cuda::available()) GTEST_SKIP() << "no usable CUDA device (cudaGetDeviceCount failed or found none)";
  try {
    Engine::load(golden_dir("qwen3_moe"), {.kv_type = KvType::q8_0, .backend = BackendKind::cuda});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-type"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moerun
