// Batched steps (moerun::Batch): a sequence's logits must not depend on who else is in the batch
// beyond float rounding. Every golden family decodes several sequences alone (Session::forward)
// and in batches of 1, 3 and 8, with prompts of different lengths prefilled in the same steps as
// other sequences decode; logits agree within 1e-4 (fp32 weights, f32 cache) and greedy tokens are
// identical. Also: prompts prefilled together against transformers, the naive MLA form, dynamic
// NTK RoPE (per-sequence tables), the default model's greedy answers, and every refusal.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "support/golden.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using testing::argmax;
using testing::golden_dir;
using testing::max_abs_diff;
using testing::read_golden;

constexpr float kBatchTol = 1e-4f;

// The prompts of a run: the golden prompts and pieces of them, different lengths (1..33).
std::vector<std::vector<int32_t>> prompts_from(const testing::Golden& g, size_t count) {
  std::vector<std::vector<int32_t>> out;
  const std::vector<int32_t>& longest = g.ids[2];
  for (size_t i = 0; out.size() < count; ++i) {
    if (i < g.ids.size()) {
      out.push_back(g.ids[i]);
      continue;
    }
    const size_t len = 2 + (i * 5) % (longest.size() - 2);
    const size_t from = i % 3;
    out.emplace_back(longest.begin() + static_cast<int64_t>(from), longest.begin() + static_cast<int64_t>(std::min(longest.size(), from + len)));
  }
  return out;
}

struct Trace {
  std::vector<std::vector<float>> logits;  // after the prompt, then after each fed-back token
  std::vector<int32_t> tokens;             // greedy picks
};

// Each prompt alone: prefill, then `steps` greedy decode steps.
Trace alone(const Engine& engine, const std::vector<int32_t>& prompt, int steps) {
  const int64_t V = engine.config().vocab_size;
  Session s(engine);
  Trace t;
  t.logits.push_back(s.forward(prompt));
  for (int i = 0; i < steps; ++i) {
    t.tokens.push_back(argmax(t.logits.back().data(), V));
    t.logits.push_back(s.forward(std::span<const int32_t>(&t.tokens.back(), 1)));
  }
  return t;
}

// The same prompts through Batch steps of at most `width` sequences: sequence i joins at step i
// (so prompts are prefilled, in chunks of at most `chunk` tokens, while earlier ones decode), and
// every active sequence advances once per step.
std::vector<Trace> batched(const Engine& engine, const std::vector<std::vector<int32_t>>& prompts, int steps, size_t width,
                           int64_t chunk) {
  const int64_t V = engine.config().vocab_size;
  Batch batch(engine, {.max_tokens = 256, .max_sequences = 8});
  std::vector<Session> sessions;
  for (size_t i = 0; i < prompts.size(); ++i) sessions.emplace_back(engine, 0, /*workspace=*/false);
  std::vector<Trace> out(prompts.size());
  std::vector<size_t> fed(prompts.size(), 0);  // prompt tokens run so far
  size_t next = 0;                             // the next sequence to join
  std::vector<size_t> active;
  for (int guard = 0; guard < 10000; ++guard) {
    while (active.size() < width && next < prompts.size() && next <= static_cast<size_t>(guard)) active.push_back(next++);
    if (active.empty()) break;
    std::vector<BatchEntry> entries;
    std::vector<size_t> who;
    for (size_t i : active) {
      if (fed[i] < prompts[i].size()) {
        const size_t n = std::min<size_t>(static_cast<size_t>(chunk), prompts[i].size() - fed[i]);
        entries.push_back({&sessions[i], std::span<const int32_t>(prompts[i]).subspan(fed[i], n)});
        fed[i] += n;
      } else {
        entries.push_back({&sessions[i], std::span<const int32_t>(&out[i].tokens.back(), 1)});
      }
      who.push_back(i);
    }
    const std::span<const float> lg = batch.forward(entries);
    EXPECT_EQ(lg.size(), entries.size() * static_cast<size_t>(V));
    std::vector<size_t> still;
    for (size_t e = 0; e < who.size(); ++e) {
      const size_t i = who[e];
      if (fed[i] < prompts[i].size()) {  // mid-prompt: its logits are not a prediction anyone uses
        still.push_back(i);
        continue;
      }
      out[i].logits.emplace_back(lg.begin() + static_cast<int64_t>(e) * V, lg.begin() + static_cast<int64_t>(e + 1) * V);
      if (static_cast<int>(out[i].tokens.size()) == steps) continue;  // done
      out[i].tokens.push_back(argmax(out[i].logits.back().data(), V));
      still.push_back(i);
    }
    active = still;
  }
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(sessions[i].position(), static_cast<int64_t>(prompts[i].size()) + steps) << "sequence " << i;
  return out;
}

void expect_same(const std::vector<Trace>& want, const std::vector<Trace>& got, const std::string& what) {
  float worst = 0.0f;
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << what << " sequence " << i;
    ASSERT_EQ(got[i].logits.size(), want[i].logits.size()) << what << " sequence " << i;
    for (size_t k = 0; k < want[i].logits.size(); ++k) worst = std::max(worst, max_abs_diff(got[i].logits[k], want[i].logits[k]));
  }
  EXPECT_LE(worst, kBatchTol) << what;
  std::printf("[batch] %-40s max |logit - alone| = %.3g\n", what.c_str(), worst);
}

struct Case {
  std::string name;
  EngineOptions options;
};

class BatchGolden : public ::testing::TestWithParam<Case> {};

TEST_P(BatchGolden, SequencesDecodeAsTheyDoAlone) {
  const Case& c = GetParam();
  const testing::Golden g = read_golden(c.name);
  const Engine engine = Engine::load(golden_dir(c.name), c.options);
  constexpr int kSteps = 6;
  const auto prompts = prompts_from(g, 8);
  std::vector<Trace> want;
  for (const auto& p : prompts) want.push_back(alone(engine, p, kSteps));
  for (size_t width : {1, 3, 8}) {
    // Whole prompts in one step, and prompts in chunks of 5 tokens beside decoding sequences.
    expect_same(want, batched(engine, prompts, kSteps, width, 64), c.name + " batch of " + std::to_string(width));
    expect_same(want, batched(engine, prompts, kSteps, width, 5), c.name + " batch of " + std::to_string(width) + ", chunks of 5");
  }
}

TEST_P(BatchGolden, PromptsPrefilledTogetherMatchTransformers) {
  const Case& c = GetParam();
  const testing::Golden g = read_golden(c.name);
  const Engine engine = Engine::load(golden_dir(c.name), c.options);
  const int64_t V = engine.config().vocab_size;
  Batch batch(engine);
  std::vector<Session> sessions;
  std::vector<BatchEntry> entries;
  for (size_t i = 0; i < g.ids.size(); ++i) sessions.emplace_back(engine);
  for (size_t i = 0; i < g.ids.size(); ++i) entries.push_back({&sessions[i], g.ids[i]});
  const std::span<const float> lg = batch.forward(entries);
  for (size_t i = 0; i < g.ids.size(); ++i) {
    const std::vector<float> got(lg.begin() + static_cast<int64_t>(i) * V, lg.begin() + static_cast<int64_t>(i + 1) * V);
    const auto last = g.logits[i].end() - V;
    EXPECT_LE(max_abs_diff(got, std::vector<float>(last, g.logits[i].end())), 1e-3f) << c.name << " prompt " << i;
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* name : {"llama", "llama3_tied", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v2",
                           "deepseek_v3", "deepseek_v3_fp8"})
    out.push_back({name, {.kv_type = KvType::f32, .backend = BackendKind::cpu}});
  out.push_back({"deepseek_v3", {.kv_type = KvType::f32, .mla = MlaMode::naive, .backend = BackendKind::cpu}});
  return out;
}
std::string case_name(const ::testing::TestParamInfo<Case>& p) {
  return p.param.name + (p.param.options.mla == MlaMode::naive ? "_naive" : "");
}
INSTANTIATE_TEST_SUITE_P(Hf, BatchGolden, ::testing::ValuesIn(cases()), case_name);

// Dynamic NTK scales RoPE by the sequence's own length: in a batch every sequence keeps its own
// table. (llama's golden checkpoint with dynamic scaling past a 16-token max_position_embeddings.)
TEST(Batch, DynamicRopeKeepsATablePerSequence) {
  const fs::path dir = testing::fresh_dir("llama_dynamic");
  fs::copy_file(golden_dir("llama") / "model.safetensors", dir / "model.safetensors");
  auto config = testing::Json::parse(testing::read_file(golden_dir("llama") / "config.json"));
  config["max_position_embeddings"] = 16;
  config["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  testing::write_file(dir / "config.json", config.dump());
  const Engine engine = Engine::load(dir, {.context = 64, .context_override = true, .kv_type = KvType::f32, .backend = BackendKind::cpu});
  const testing::Golden g = read_golden("llama");
  const auto prompts = prompts_from(g, 5);
  std::vector<Trace> want;
  for (const auto& p : prompts) want.push_back(alone(engine, p, 8));
  expect_same(want, batched(engine, prompts, 8, 5, 7), "llama, dynamic NTK, batch of 5");
}

// The default model (bf16 weights, the default f16 cache): eight conversations decoded together
// pick exactly the tokens they pick alone.
TEST(Batch, DefaultModelGreedyIsTheSameInABatchOfEight) {
#ifdef MOERUN_SANITIZED
  GTEST_SKIP() << "135M parameters through the scalar reference path take minutes under sanitizers";
#endif
  const fs::path dir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";
  if (!fs::exists(dir / "model.safetensors")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  const auto goldens = testing::Json::parse(testing::read_file(fs::path(MOERUN_TEST_DATA) / "default_model" / "goldens.json"));
  const Engine engine = Engine::load(dir);
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& c : goldens["cases"]) prompts.push_back(c["prompt_ids"].get<std::vector<int32_t>>());
  for (size_t i = 0; prompts.size() < 8; ++i) {  // more conversations: the first ones cut shorter
    std::vector<int32_t> p = prompts[i % 3];
    p.resize(p.size() - 1 - i);
    prompts.push_back(p);
  }
  std::vector<Trace> want;
  for (const auto& p : prompts) want.push_back(alone(engine, p, 16));
  const std::vector<Trace> got = batched(engine, prompts, 16, 8, 32);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i].tokens, want[i].tokens) << "conversation " << i;
}

TEST(Batch, RefusesBadEntriesAndChangesNothing) {
  const Engine engine = Engine::load(golden_dir("llama"), {.context = 32, .backend = BackendKind::cpu});
  const Engine other = Engine::load(golden_dir("llama"), {.context = 32, .backend = BackendKind::cpu});
  Batch batch(engine, {.max_tokens = 16, .max_sequences = 2});
  Session a(engine, 0, false), b(engine, 0, false), stranger(other);
  const std::vector<int32_t> three = {1, 2, 3}, bad = {1, 1 << 30}, many(14, 5);
  ASSERT_EQ(batch.forward(std::vector<BatchEntry>{{&a, three}, {&b, three}}).size(), 2u * static_cast<size_t>(engine.config().vocab_size));
  auto refuses = [&](std::vector<BatchEntry> entries, const std::string& says) {
    try {
      batch.forward(entries);
      ADD_FAILURE() << "accepted; expected an error saying '" << says << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    EXPECT_EQ(a.position(), 3);
    EXPECT_EQ(b.position(), 3);
  };
  refuses({}, "no entries");
  refuses({{&a, three}, {&a, three}}, "again");
  refuses({{&a, three}, {&stranger, three}}, "another engine");
  refuses({{&a, three}, {nullptr, three}}, "no session");
  refuses({{&a, std::span<const int32_t>()}}, "no tokens");
  refuses({{&a, bad}}, "outside the vocabulary");
  refuses({{&a, three}, {&b, many}}, "16 tokens");
  refuses({{&a, three}, {&b, three}, {&b, three}}, "more than the 2");
  const std::vector<int32_t> fill(16, 7);
  batch.forward(std::vector<BatchEntry>{{&a, fill}});
  batch.forward(std::vector<BatchEntry>{{&a, std::span<const int32_t>(fill).first(13)}});  // 32: full
  EXPECT_EQ(a.position(), 32);
  EXPECT_THROW(batch.forward(std::vector<BatchEntry>{{&a, three}}), Error);  // past the context
  EXPECT_EQ(a.position(), 32);
  EXPECT_THROW(Batch(engine, {.max_tokens = 0}), Error);
  EXPECT_THROW(Batch(engine, {.max_tokens = 4, .max_sequences = 5}), Error);
}

// A session made without its own workspace allocates only its cache, and still runs alone.
TEST(Batch, SessionsWithoutAWorkspaceStillRunAlone) {
  const Engine engine = Engine::load(golden_dir("llama"), {.backend = BackendKind::cpu});
  Session lean(engine, 0, false), full(engine);
  EXPECT_LT(lean.memory_bytes(), full.memory_bytes());
  const testing::Golden g = read_golden("llama");
  EXPECT_EQ(lean.forward(g.ids[1]), full.forward(g.ids[1]));
  EXPECT_EQ(lean.memory_bytes(), full.memory_bytes());
}

}  // namespace
}  // namespace moerun
