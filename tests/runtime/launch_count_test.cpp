// The ops one decode token enqueues, per family, counted by the counting backend (runtime/
// counting_backend.h) around the CPU backend: every op is one CUDA launch or a fixed few (a split-K
// combine, the MoE kernel's three), so this is the launch count a GPU run starts from, checked here
// without one. A change that adds ops to the decode step shows up as a failure to update on purpose.
// On a GPU, bench/cuda_kernels_bench.cpp reports the captured graph's real kernel count beside it.

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moerun/engine.h"
#include "runtime/backend.h"
#include "runtime/counting_backend.h"
#include "support/golden.h"

namespace moerun {
namespace {

using runtime::OpCounts;
using runtime::OpKind;

using Counting = runtime::ScopedOpCounting;

// The ops of one decode token by the executor's structure (src/runtime/executor.cpp, Runner::block):
// the input norm folded into the attention's first projections and its o_proj adding into the
// residual stream; a dense FFN with its norm folded into gate + up and down adding into the stream;
// an MoE block's norm, router, route and moe op (DeepSeek's ungated shared expert inside it), then
// its add; then the embedding and the LM head (the final norm folded in).
bool shared_fused(const ModelConfig& c) {
  return c.shared.count > 0 && !c.shared.gated && c.shared.intermediate_size == c.moe_intermediate_size;
}
int64_t expected_ops(const ModelConfig& c) {
  int64_t attn = 0;
  if (c.attention == AttentionKind::gqa) {
    // q/k/v as one group, q rope, K (rotated as stored) and V stores, attention, o_proj.
    attn = 6 + (c.qk_norm != QkNorm::none ? 2 : 0) + (c.clip_qkv ? 3 : 0);
  } else {
    // (q_a + kv_a) as one group [q_b with q_a's norm folded], the kv norm, q's rope, the latent
    // store (rotating its rope key), the two absorption head matmuls around the attention, the
    // rope-part copy, o_proj.
    attn = 9 + (c.q_lora_rank ? 1 : 0);
  }
  int64_t ops = 2;  // embed, LM head
  for (FfnKind f : c.layer_ffn) {
    int64_t ffn = 3;  // dense: gate + up as one group, act, down
    if (f == FfnKind::moe) {
      ffn = 2 + 3;  // norm and add, router, route, moe
      if (c.shared.count > 0 && !shared_fused(c)) ffn += 3 + 1 + (c.shared.gated ? 1 : 0);  // the shared expert, its add, [its gate]
    }
    ops += attn + ffn;
  }
  return ops;
}

TEST(LaunchCount, OneDecodeTokenEnqueuesTheOpsItsFamilyNeeds) {
  for (const std::string name : {"llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3"}) {
    Counting counting;
    const Engine engine = Engine::load(testing::golden_dir(name), {.backend = BackendKind::cpu});
    Session s(engine);
    s.forward(std::vector<int32_t>{1, 2, 3, 4});
    counting.counts() = {};
    s.forward(std::vector<int32_t>{5});
    const OpCounts& n = counting.counts();
    const ModelConfig& c = engine.config();
    const auto layers = static_cast<int64_t>(c.layer_ffn.size());
    EXPECT_EQ(n.total(), expected_ops(c)) << name;
    // The projections that read the same rows run as one group: q/k/v (or q_a + kv_a) and every
    // gate + up pair.
    int64_t groups = layers;  // attention's
    for (FfnKind f : c.layer_ffn) groups += f == FfnKind::moe ? (c.shared.count > 0 && !shared_fused(c) ? 1 : 0) : 1;
    EXPECT_EQ(n[OpKind::matmul_group], groups) << name;
    EXPECT_EQ(n[OpKind::attention], layers) << name;
    EXPECT_EQ(n[OpKind::embed], 1) << name;
    std::string summary;
    for (size_t k = 0; k < n.calls.size(); ++k)
      if (n.calls[k]) summary += " " + std::string(runtime::kOpNames[k]) + "=" + std::to_string(n.calls[k]);
    std::printf("%-18s %2lld layers: %4lld ops per decode token (%.1f per layer):%s\n", name.c_str(),
                static_cast<long long>(layers), static_cast<long long>(n.total()),
                static_cast<double>(n.total() - 2) / static_cast<double>(layers), summary.c_str());
  }
}

// The counts add up across a batch's sequences the way the executor runs them: one op per layer for
// all rows, attention once per sequence.
TEST(LaunchCount, ABatchedStepRunsEachOpOnceAndAttentionPerSequence) {
  Counting counting;
  const Engine engine = Engine::load(testing::golden_dir("qwen3_moe"), {.backend = BackendKind::cpu});
  Session one(engine);
  one.forward(std::vector<int32_t>{1, 2});
  counting.counts() = {};
  one.forward(std::vector<int32_t>{3});
  const int64_t single = counting.counts().total();
  const auto layers = static_cast<int64_t>(engine.config().layer_ffn.size());
  // Prefill of 4 tokens at once costs the same ops as one token: rows are a dimension, not a loop.
  Session two(engine);
  counting.counts() = {};
  two.forward(std::vector<int32_t>{1, 2, 3, 4});
  EXPECT_EQ(counting.counts().total(), single);
  EXPECT_EQ(counting.counts()[OpKind::attention], layers);
}

}  // namespace
}  // namespace moerun
