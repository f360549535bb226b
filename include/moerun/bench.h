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

// A STREAM-like read: threads sum disjoint slices of a buffer larger than the last-level cache
// (1 GiB; some servers have 256+ MiB of L3) with wide vector loads; best of 5 passes.
BandwidthCeiling measure_read_bandwidth(int threads, uint64_t bytes = uint64_t{1} << 30);

// The GPU's ceiling: a device-to-device copy, counting the bytes read and written (CUDA builds with
// a usable device; throws Error otherwise).
BandwidthCeiling measure_device_bandwidth();
// The GPU's dense-math ceiling: a large cuBLAS bf16 GEMM with fp32 accumulation, in TFLOP/s.
double measure_device_gemm_tflops();

// Bytes one decode step reads at `context` cached positions: every weight except the embedding
// table (one row) and the routed experts (only top-k per MoE layer, at the average expert size),
// plus the KV cache rows attention reads.
double decode_bytes_per_token(const Engine& engine, double context);

// Dense-projection FLOPs of one prefill token: 2 x the active parameters that are multiplied (every
// projection, the routed experts at top-k, the LM head; not the embedding lookup; attention's
// score/value products not counted). What the GEMM ceiling is compared with.
double prefill_flops_per_token(const Engine& engine);

struct BenchResult {
  std::string test;         // "pp512", "tg128"
  int tokens = 0;
  std::vector<double> tps;  // tokens/s per repetition
  double mean = 0, sd = 0;  // of tps
  double bytes_per_token = 0;  // tg only
  double gbps = 0;             // tg only: bytes_per_token * mean
};

// pp: prefill `tokens` random ids into a session holding `depth` cached tokens; tg: decode `tokens`
// steps after `depth` cached tokens (llama-bench's -d; the filling is not timed). One warm-up run,
// then `reps` timed ones. Token ids are seeded random (no tokenizer or sampler in the timing).
// Tests are named as llama-bench does: "pp512", "tg128", "tg128 @ d8192".
BenchResult bench_prefill(const Engine& engine, int tokens, int reps, int depth = 0);
BenchResult bench_decode(const Engine& engine, int tokens, int reps, int depth = 0);

}  // namespace moerun
