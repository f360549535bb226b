// Batched steps on the GPU: several sessions prefilled and decoded in one Batch on the CUDA backend
// give the logits each gives alone on the CUDA backend (within 1e-4, fp32 weights) and the same
// greedy tokens; and the batch's logits match the CPU backend's batch. Skips without a GPU.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "moerun/engine.h"
#include "support/golden.h"

namespace moerun {
namespace {

using testing::argmax;
using testing::golden_dir;

// Every prompt through one Batch: all prompts in the first step, then `steps` greedy decode steps
// of all of them together. Returns each sequence's logits after every step.
std::vector<std::vector<float>> run_batch(const Engine& engine, const std::vector<std::vector<int32_t>>& prompts, int steps) {
  const int64_t V = engine.config().vocab_size;
  Batch batch(engine, {.max_tokens = 128, .max_sequences = 8});
  std::vector<Session> sessions;
  for (size_t i = 0; i < prompts.size(); ++i) sessions.emplace_back(engine, 0, false);
  std::vector<std::vector<float>> out(prompts.size());
  std::vector<int32_t> last(prompts.size());
  for (int step = 0; step <= steps; ++step) {
    std::vector<BatchEntry> entries;
    for (size_t i = 0; i < prompts.size(); ++i)
      entries.push_back({&sessions[i], step == 0 ? std::span<const int32_t>(prompts[i]) : std::span<const int32_t>(&last[i], 1)});
    const std::span<const float> lg = batch.forward(entries);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const float* row = lg.data() + static_cast<int64_t>(i) * V;
      out[i].insert(out[i].end(), row, row + V);
      last[i] = argmax(row, V);
    }
  }
  return out;
}

std::vector<std::vector<float>> run_alone(const Engine& engine, const std::vector<std::vector<int32_t>>& prompts, int steps) {
  const int64_t V = engine.config().vocab_size;
  std::vector<std::vector<float>> out;
  for (const auto& p : prompts) {
    Session s(engine);
    std::vector<float> all, lg = s.forward(p);
    for (int step = 0; step <= steps; ++step) {
      all.insert(all.end(), lg.begin(), lg.end());
      if (step == steps) break;
      const int32_t t = argmax(lg.data(), V);
      lg = s.forward(std::span<const int32_t>(&t, 1));
    }
    out.push_back(all);
  }
  return out;
}

TEST(CudaBatch, SequencesDecodeAsTheyDoAloneAndAsOnTheCpu) {
  MOERUN_SKIP_WITHOUT_CUDA();
  for (const char* name : {"llama", "qwen3_moe", "deepseek_v3"}) {
    const testing::Golden g = testing::read_golden(name);
    std::vector<std::vector<int32_t>> prompts = g.ids;
    prompts.push_back({g.ids[2].begin() + 3, g.ids[2].begin() + 20});
    const Engine gpu = Engine::load(golden_dir(name), {.kv_type = KvType::f32, .backend = BackendKind::cuda});
    const Engine cpu = Engine::load(golden_dir(name), {.kv_type = KvType::f32, .backend = BackendKind::cpu});
    const auto batched = run_batch(gpu, prompts, 6);
    const auto alone = run_alone(gpu, prompts, 6);
    const auto on_cpu = run_batch(cpu, prompts, 6);
    float vs_alone = 0, vs_cpu = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      vs_alone = std::max(vs_alone, testing::max_abs_diff(batched[i], alone[i]));
      vs_cpu = std::max(vs_cpu, testing::max_abs_diff(batched[i], on_cpu[i]));
    }
    EXPECT_LE(vs_alone, 1e-4f) << name;
    EXPECT_LE(vs_cpu, 1e-3f) << name;
    std::printf("[cuda batch] %-12s max |batch - alone| = %.3g, |gpu - cpu| = %.3g\n", name, vs_alone, vs_cpu);
  }
}

}  // namespace
}  // namespace moerun
