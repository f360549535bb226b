#pragma once
// Throughput measurement in llama-bench's conventions (pp = prefill of N tokens, tg = N decode
// steps from an empty cache), plus what llama-bench lacks: the bytes a decode step reads and the
// fraction of a read-bandwidth ceiling measured on the same machine.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moerun/engine.h"
#include "moerun/generate.h"

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
// plus the KV cache rows attention reads (not the multi-token-prediction layer's: it only drafts).
double decode_bytes_per_token(const Engine& engine, double context);
// Bytes one batched decode step of `sequences` sequences reads: the weights once (embedding: one
// row per sequence), of each MoE layer's routed experts `experts_per_layer` distinct ones (top-k
// for one sequence; more, up to all, as the batch grows), and every sequence's KV rows, `contexts`
// cached positions summed over the sequences.
double decode_bytes_per_step(const Engine& engine, double contexts, int sequences, double experts_per_layer);

// Dense-projection FLOPs of one prefill token: 2 x the active parameters that are multiplied (every
// projection, the routed experts at top-k, the LM head; not the embedding lookup; attention's
// score/value products not counted). What the GEMM ceiling is compared with.
double prefill_flops_per_token(const Engine& engine);

struct BenchResult {
  std::string test;         // "pp512", "tg128"
  int tokens = 0;
  std::vector<double> tps;  // tokens/s per repetition
  double mean = 0, sd = 0;  // of tps
  double bytes_per_token = 0;  // tg only (batched: bytes per step / batch)
  double gbps = 0;             // tg only: bytes_per_token * mean
  int batch = 1;               // sequences decoded together (bench_batched); mean is their aggregate t/s
  double experts_per_layer = 0;  // batched tg on an MoE: distinct routed experts a layer ran per step (measured)
  // Distributed engines (mpirun): the ranks, the bytes this rank (the leader) put into collectives per
  // token of the timed runs, and the share of their wall time it spent inside them (measured).
  int ranks = 1;
  double comm_bytes_per_token = 0;
  double comm_fraction = 0;
  // Speculative decoding (bench_speculative): "ngram", "draft" or "mtp" on the speculating row,
  // "none" on its plain row (the same prompt decoded without speculation); "" on every other test.
  std::string spec{};
  int64_t drafted = 0, accepted = 0;  // draft tokens verified and accepted, over the timed runs
  int64_t steps = 0;                  // the target's decode forwards (after the prefill), over the timed runs
  double draft_seconds = 0;           // drafting's share of the timed runs' decode time
  // Drafting time per draft token, in ms: what a drafter (a draft model, the MTP layer) costs.
  double draft_ms_per_token() const { return drafted > 0 ? 1e3 * draft_seconds / static_cast<double>(drafted) : 0.0; }
  double acceptance() const { return drafted > 0 ? static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0; }
  // Accepted drafts per decode forward: each forward yields this many tokens beyond the one it verifies.
  double accepted_per_step() const { return steps > 0 ? static_cast<double>(accepted) / static_cast<double>(steps) : 0.0; }
  // tg rows: the backend ops one decode step enqueues (counted), and on CUDA the kernels its
  // recorded graph launches (its kernel nodes; 0 on the CPU).
  int64_t ops_per_token = 0, launches_per_token = 0;
};

// pp: prefill `tokens` random ids into a session holding `depth` cached tokens; tg: decode `tokens`
// steps after `depth` cached tokens (llama-bench's -d; the cache is filled once per test, untimed,
// and every run restarts from it). One warm-up run, then `reps` timed ones. Token ids are seeded random (no tokenizer or sampler in the timing).
// Tests are named as llama-bench does: "pp512", "tg128", "tg128 @ d8192".
BenchResult bench_prefill(const Engine& engine, int tokens, int reps, int depth = 0);
BenchResult bench_decode(const Engine& engine, int tokens, int reps, int depth = 0);
// Parallel decode, llama-batched-bench style: `batch` sequences each prefilled with `prompt` seeded
// random tokens (together, in Batch steps of at most 512 tokens: the "pp{prompt} b{batch}" result,
// batch x prompt tokens/s), then decoding `tokens` steps together (the "tg{tokens} b{batch}" result:
// aggregate generated tokens/s; per sequence it is mean / batch). One warm-up run, then `reps`.
struct BatchedBench {
  BenchResult prefill, decode;
};
BatchedBench bench_batched(const Engine& engine, int batch, int prompt, int tokens, int reps);

// Speculative decoding on a real text (bench --spec): generate() decodes up to `tokens` tokens
// greedily after `prompt`, stopping at an id of `eos_ids` (the answer's end; none: exactly `tokens`;
// greedy, so every run makes the same count, the rows' `tokens`), once with `spec` (the "tg{tokens}
// spec {kind}" result) and once without (the "tg{tokens} prompt" result), the two alternating in every
// repetition (and swapping order) so drift in the machine's speed hits both alike; one warm-up
// pair, then `reps` timed ones. t/s counts the generated tokens over the decode time (the prefill
// is not timed). `draft`: the draft model's session (SpecKind::draft; its context must hold the prompt
// and the tokens), reset before every run as the target's is. `tokenizer`: the model's (the text is
// decoded as run does); null: none is needed (a synthetic model; the text is not looked at).
// bytes_per_token counts the target's weights and KV reads once per decode forward (the drafter's
// reads are not counted), so the speculating row reads fewer bytes per token than the plain one.
struct SpecBench {
  BenchResult spec, plain;
};
SpecBench bench_speculative(const Engine& engine, Session* draft, std::span<const int32_t> prompt, SpecKind spec, int spec_max,
                            int tokens, int reps, const Tokenizer* tokenizer = nullptr, std::span<const int32_t> eos_ids = {});

// One row of bench's report: one test on one engine, with the ceilings it is compared with.
struct BenchRow {
  std::string model;    // "llama 135.00 M bf16": model_type, total parameters, weight dtype
  std::string size;     // the weight files' size ("256.00 MiB"), or "in memory" (synthetic)
  std::string params;   // total parameters, and active ones for an MoE ("1.00 B / 300.00 M")
  std::string backend;  // "CPU" or "CUDA"
  int threads = 1;
  std::string kv_type = "f32";  // the KV cache's element type (--kv-type)
  BenchResult result;
  double ceiling_gbps = 0;         // the read-bandwidth ceiling the tg rows are compared with
  double gemm_ceiling_tflops = 0;  // the GEMM ceiling the pp rows are compared with; 0: none (CPU)
  double tflops = 0;               // pp rows: dense-projection TFLOP/s achieved (prefill_flops_per_token)
};

// A row for `result`, measured on `engine` with `threads` threads (CUDA rows say 1), describing the
// engine and, for a pp result, the TFLOP/s it achieved.
BenchRow bench_row(const Engine& engine, int threads, const BenchResult& result, double ceiling_gbps,
                   double gemm_ceiling_tflops = 0);

enum class BenchFormat : uint8_t { markdown, json, csv };

// The rows as a markdown table (llama-bench's columns, the TFLOP/s ones only when a row has a GEMM
// ceiling), a JSON array of objects (2-space indent) or CSV with a header line; text ending in a
// newline. All three come from one list of columns (name, JSON key, formatters): JSON and CSV carry
// every column under the same keys -- model, size, params, backend, threads, kv_type, test, tokens,
// tps_mean, tps_sd, tps (every repetition; in CSV one quoted field, space-separated),
// bytes_per_token, gbps, ceiling_gbps, bw_fraction, tflops, gemm_ceiling_tflops, gemm_fraction,
// ... ranks, comm_bytes_per_token, comm_fraction, then speculation's spec, drafted_tokens,
// accepted_tokens, acceptance_rate (accepted / drafted), accepted_per_step -- and the table a readable
// subset (speculation's columns only when some row is a speculative test).
std::string format_bench(std::span<const BenchRow> rows, BenchFormat format);

}  // namespace moerun
