// Encode throughput (MB/s of UTF-8 input) on the corpus's 2000-character paragraph, for every tokenizer
// in tests/data/tokenizers. Not a test: run build/tests/tokenizer_bench in a Release build.
//   warm: the same paragraph again and again (the BPE word cache holds its words, as in a chat)
//   cold: a freshly loaded tokenizer each time (empty cache; loading is not timed)

#include <benchmark/benchmark.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "moerun/tokenizer.h"

namespace {

namespace fs = std::filesystem;
const fs::path kData = fs::path(MOERUN_TEST_DATA) / "tokenizers";

std::string paragraph() {
  std::ifstream in(kData / "corpus.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j["id"] == "paragraph_2000") return j["text"];
  }
  throw std::runtime_error("paragraph_2000 not in corpus.jsonl");
}

void encode_warm(benchmark::State& state, const fs::path& path) {
  const moerun::Tokenizer tok = moerun::Tokenizer::load(kData / path);
  const std::string text = paragraph();
  size_t n = 0;
  for (auto _ : state) {
    const std::vector<int32_t> ids = tok.encode(text);
    n = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(n);
}

void encode_cold(benchmark::State& state, const fs::path& path) {
  const std::string text = paragraph();
  std::vector<moerun::Tokenizer> used;  // destroyed after the loop: freeing the tables is not timed either
  for (auto _ : state) {
    state.PauseTiming();
    used.push_back(moerun::Tokenizer::load(kData / path));
    state.ResumeTiming();
    benchmark::DoNotOptimize(used.back().encode(text).data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

BENCHMARK_CAPTURE(encode_warm, deepseek_v3, fs::path("deepseek_v3/tokenizer.json"));
BENCHMARK_CAPTURE(encode_warm, mistral, fs::path("mistral/tokenizer.json"));
BENCHMARK_CAPTURE(encode_warm, spm_bpe, fs::path("spm_bpe/spm_bpe.model"));
BENCHMARK_CAPTURE(encode_warm, spm_unigram, fs::path("spm_unigram/spm_unigram.model"));
BENCHMARK_CAPTURE(encode_cold, deepseek_v3, fs::path("deepseek_v3/tokenizer.json"))->Iterations(8);
BENCHMARK_CAPTURE(encode_cold, mistral, fs::path("mistral/tokenizer.json"))->Iterations(8);

}  // namespace

BENCHMARK_MAIN();
