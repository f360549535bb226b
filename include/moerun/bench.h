#pragma once
// Throughput measurement in llama-bench's conventions (pp = prefill of N tokens, tg = N decode
// steps from an empty cache), plus what llama-bench lacks: the bytes a decode step reads and the
// fraction of a read-bandwidth ceiling measured on the same machine.

#include <cstdint>
#include <string>
#include <vector>

#include "moerun/engine.h"

namespace moerun {

struct BandwidthCeiling {
  double gbps = 0;   // best of several passes, GB = 1e9 bytes
  int threads = 1;
  uint64_t bytes = 0;  // buffer size read per pass
};

// A STREAM-like read: threads sum disjoint slices of a buffer much larger than the last-level cache.
BandwidthCeiling measure_read_bandwidth(int threads, uint64_t bytes = uint64_t{512} << 20);

// Bytes one decode step reads at `context` cached positions: every weight except the embedding
// table (one row) and the routed experts (only top-k per MoE layer, at the average expert size),
// plus the KV cache rows attention reads.
double decode_bytes_per_token(const Engine& engine, double context);

struct BenchResult {
  std::string test;         // "pp512", "tg128"
  int tokens = 0;
  std::vector<double> tps;  // tokens/s per repetition
  double mean = 0, sd = 0;  // of tps
  double bytes_per_token = 0;  // tg only
  double gbps = 0;             // tg only: bytes_per_token * mean
};

// pp: prefill `tokens` random ids into an empty session; tg: decode `tokens` steps from an empty
// session. One warm-up run, then `reps` timed ones. Token ids are seeded random (no tokenizer or
// sampler in the timing).
BenchResult bench_prefill(const Engine& engine, int tokens, int reps);
BenchResult bench_decode(const Engine& engine, int tokens, int reps);

}  // namespace moerun
