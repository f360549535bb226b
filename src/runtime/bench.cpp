#include "moerun/bench.h"

#if MOERUN_HAVE_CUDA
#include "kernels/cuda/ceilings.h"
#include "kernels/cuda/context.h"
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>

#include "moerun/error.h"
#include "moerun/sampler.h"

namespace moerun {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void finish(BenchResult& r) {
  double sum = 0;
  for (double t : r.tps) sum += t;
  r.mean = sum / static_cast<double>(r.tps.size());
  double var = 0;
  for (double t : r.tps) var += (t - r.mean) * (t - r.mean);
  r.sd = r.tps.size() > 1 ? std::sqrt(var / static_cast<double>(r.tps.size() - 1)) : 0.0;
}

std::vector<int32_t> random_ids(const Engine& engine, int n, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(engine.config().vocab_size));
  return ids;
}

int64_t bytes(const Tensor& t) { return t ? static_cast<int64_t>(t.nbytes()) : 0; }
int64_t bytes(const LinearWeight& w) { return bytes(w.weight) + bytes(w.bias); }
int64_t bytes(const MlpWeights& m) { return bytes(m.gate_proj) + bytes(m.up_proj) + bytes(m.down_proj); }

}  // namespace

BandwidthCeiling measure_read_bandwidth(int threads, uint64_t size) {
  threads = std::max(threads, 1);
  const size_t n = static_cast<size_t>(size / sizeof(uint64_t));
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  for (size_t i = 0; i < n; ++i) buf[i] = i;  // touch every page before timing
  BandwidthCeiling best{0, threads, size};
  for (int pass = 0; pass < 5; ++pass) {
    std::vector<uint64_t> sums(static_cast<size_t>(threads));
    std::vector<std::thread> pool;
    const auto t0 = Clock::now();
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        // Integer adds in eight lanes: no floating-point latency chain, so the loop is bound by
        // memory, not by the adder, and the compiler keeps it in vector registers.
        const size_t lo = n * static_cast<size_t>(t) / static_cast<size_t>(threads);
        const size_t hi = n * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
        uint64_t acc[8] = {};
        size_t i = lo;
        for (; i + 8 <= hi; i += 8)
          for (int j = 0; j < 8; ++j) acc[j] += buf[i + static_cast<size_t>(j)];
        uint64_t s = 0;
        for (uint64_t a : acc) s += a;
        for (; i < hi; ++i) s += buf[i];
        sums[static_cast<size_t>(t)] = s;
      });
    for (std::thread& th : pool) th.join();
    const double secs = seconds_since(t0);
    volatile uint64_t sink = 0;
    for (uint64_t s : sums) sink = sink + s;  // keep the reads
    best.gbps = std::max(best.gbps, static_cast<double>(size) / secs / 1e9);
  }
  return best;
}

BandwidthCeiling measure_device_bandwidth() {
#if MOERUN_HAVE_CUDA
  cuda::Context ctx;
  return BandwidthCeiling{cuda::measure_copy_bandwidth_gbs(ctx), 1, 0};
#else
  throw Error("bench", "this build has no CUDA support, so there is no device bandwidth to measure");
#endif
}

double measure_device_gemm_tflops() {
#if MOERUN_HAVE_CUDA
  cuda::Context ctx;
  return cuda::measure_gemm_tflops(ctx);
#else
  throw Error("bench", "this build has no CUDA support, so there is no device GEMM rate to measure");
#endif
}

double prefill_flops_per_token(const Engine& engine) {
  const ModelConfig& c = engine.config();
  const bool tied = engine.weights().lm_head.data() == engine.weights().embed_tokens.data();
  const double multiplied = static_cast<double>(engine.model().active_params()) -
                            (tied ? 0.0 : static_cast<double>(c.vocab_size) * static_cast<double>(c.hidden_size));
  return 2.0 * multiplied;
}

double decode_bytes_per_token(const Engine& engine, double context) {
  const ModelConfig& c = engine.config();
  const ModelWeights& w = engine.weights();
  double total = static_cast<double>(bytes(w.norm) + bytes(w.lm_head));
  total += static_cast<double>(bytes(w.embed_tokens)) / static_cast<double>(c.vocab_size);  // one row
  for (const LayerWeights& L : w.layers) {
    total += static_cast<double>(bytes(L.input_layernorm) + bytes(L.post_attention_layernorm) + bytes(L.q_proj) +
                                 bytes(L.k_proj) + bytes(L.v_proj) + bytes(L.o_proj) + bytes(L.q_norm) +
                                 bytes(L.k_norm) + bytes(L.q_a_proj) + bytes(L.q_a_layernorm) + bytes(L.q_b_proj) +
                                 bytes(L.kv_a_proj_with_mqa) + bytes(L.kv_a_layernorm) + bytes(L.kv_b_proj) +
                                 bytes(L.mlp) + bytes(L.router) + bytes(L.e_score_correction_bias) +
                                 bytes(L.shared_expert) + bytes(L.shared_expert_gate));
    if (!L.experts.empty()) {
      int64_t all = 0;
      for (const MlpWeights& e : L.experts) all += bytes(e);
      total += static_cast<double>(all) / static_cast<double>(L.experts.size()) *
               static_cast<double>(c.router.num_experts_per_tok);
    }
  }
  // KV rows read by attention (the fp32 cache): GQA K and V per KV head; MLA one latent row.
  const double row = c.attention == AttentionKind::gqa ? 2.0 * static_cast<double>(c.num_key_value_heads * c.head_dim)
                                                       : static_cast<double>(c.kv_lora_rank + c.qk_rope_head_dim);
  total += row * sizeof(float) * context * static_cast<double>(c.num_hidden_layers);
  return total;
}

namespace {

std::string test_name(const char* kind, int tokens, int depth) {
  return kind + std::to_string(tokens) + (depth > 0 ? " @ d" + std::to_string(depth) : "");
}

// A session with room for depth + tokens, holding `depth` cached tokens.
Session filled_session(const Engine& engine, int tokens, int depth) {
  Session s(engine, std::max<int64_t>(engine.default_context(), int64_t{depth} + tokens));
  if (depth > 0) {
    const std::vector<int32_t> fill = random_ids(engine, depth, 3);
    for (int at = 0; at < depth; at += 2048)  // in chunks, as a long prompt would be fed
      s.forward(std::span<const int32_t>(fill.data() + at, static_cast<size_t>(std::min(2048, depth - at))));
  }
  return s;
}

}  // namespace

BenchResult bench_prefill(const Engine& engine, int tokens, int reps, int depth) {
  BenchResult r;
  r.test = test_name("pp", tokens, depth);
  r.tokens = tokens;
  const std::vector<int32_t> ids = random_ids(engine, tokens, 1);
  for (int rep = -1; rep < reps; ++rep) {  // rep -1: warm-up
    Session s = filled_session(engine, tokens, depth);
    const auto t0 = Clock::now();
    s.forward(ids);
    const double secs = seconds_since(t0);
    if (rep >= 0) r.tps.push_back(tokens / secs);
  }
  finish(r);
  return r;
}

BenchResult bench_decode(const Engine& engine, int tokens, int reps, int depth) {
  BenchResult r;
  r.test = test_name("tg", tokens, depth);
  r.tokens = tokens;
  const std::vector<int32_t> ids = random_ids(engine, tokens, 2);
  for (int rep = -1; rep < reps; ++rep) {
    Session s = filled_session(engine, tokens, depth);
    const auto t0 = Clock::now();
    for (int i = 0; i < tokens; ++i) s.forward(std::span<const int32_t>(&ids[static_cast<size_t>(i)], 1));
    const double secs = seconds_since(t0);
    if (rep >= 0) r.tps.push_back(tokens / secs);
  }
  finish(r);
  r.bytes_per_token = decode_bytes_per_token(engine, depth + tokens / 2.0);  // mean cached length during the run
  r.gbps = r.bytes_per_token * r.mean / 1e9;
  return r;
}

}  // namespace moerun
