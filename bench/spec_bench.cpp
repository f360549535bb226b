// What DeepSeek-V3's multi-token prediction costs per step (moerun_spec_bench), on a synthetic
// model of a config's shapes with random weights (acceptance on random weights means nothing, so
// the mechanism is timed on its own): a plain decode step, a verification of 1 + k rows, and
// Session::mtp_draft of k tokens (the MTP layer's row for the last position and k - 1 chained rows).
// Every benchmark starts from the same state: a session holding a 256-token prompt.
//
//   MOERUN_SPEC_CONFIG=tests/data/configs/deepseek_v3.json MOERUN_SPEC_LAYERS=2 MOERUN_SPEC_EXPERTS=8
//     build/bench/moerun_spec_bench --benchmark_min_time=2   (one line; these are the defaults)
//
// MOERUN_SPEC_THREADS sets the engine's threads (default: every hardware thread). The ratio of the
// MTP draft to the decode step here, with the decode step scaled to the full layer count, is what
// docs/performance.md reports as the mechanism's cost.

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moerun/config.h"
#include "moerun/engine.h"
#include "moerun/model.h"

namespace moerun {
namespace {

constexpr int64_t kPrompt = 256;

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

struct Fixture {
  std::optional<Engine> engine;
  std::optional<Session> session;
  std::vector<int32_t> prompt;
  int32_t next = 0;
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture x;
    const char* path = std::getenv("MOERUN_SPEC_CONFIG");
    ConfigOverrides o;
    o.num_hidden_layers = env_int("MOERUN_SPEC_LAYERS", 2);
    if (const int64_t e = env_int("MOERUN_SPEC_EXPERTS", 8); e > 0) o.max_routed_experts = e;
    const ModelConfig config = load_model_config(path && *path ? path : "tests/data/configs/deepseek_v3.json", o);
    EngineOptions eo;
    eo.mtp = true;
    eo.threads = static_cast<int>(env_int("MOERUN_SPEC_THREADS", 0));
    eo.backend = BackendKind::cpu;
    eo.memory_check = false;  // planned by the caller: the synthetic weights hold their memory already
    x.engine.emplace(Engine::from_model(Model::synthetic(config, 1, false, /*mtp=*/true), eo));
    x.session.emplace(*x.engine, 1024);
    for (int64_t i = 0; i < kPrompt; ++i) x.prompt.push_back(static_cast<int32_t>((i * 7919 + 13) % config.vocab_size));
    x.session->forward(x.prompt);
    x.session->mtp_prefill();
    x.next = 17;
    return x;
  }();
  return f;
}

// One plain decode step (fed and truncated away again, so the state stays).
void BM_DecodeStep(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.session->forward_view(std::span<const int32_t>(&f.next, 1)).data());
    f.session->truncate(kPrompt);
  }
}
BENCHMARK(BM_DecodeStep)->Unit(benchmark::kMillisecond)->UseRealTime();

// A verification: the fed token and k drafts in one forward.
void BM_Verify(benchmark::State& state) {
  Fixture& f = fixture();
  const std::vector<int32_t> ids(static_cast<size_t>(state.range(0)) + 1, f.next);
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.session->forward_view(ids, /*all_positions=*/true).data());
    f.session->truncate(kPrompt);
  }
}
BENCHMARK(BM_Verify)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();

// k MTP drafts after the cached prompt and `next`.
void BM_MtpDraft(benchmark::State& state) {
  Fixture& f = fixture();
  std::vector<int32_t> drafts;
  for (auto _ : state) benchmark::DoNotOptimize(f.session->mtp_draft(f.next, static_cast<size_t>(state.range(0)), drafts));
}
BENCHMARK(BM_MtpDraft)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace moerun

BENCHMARK_MAIN();
