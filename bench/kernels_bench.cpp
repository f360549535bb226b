// Microbenchmarks of the CPU kernels: GEMV per weight dtype (the decode roofline: bytes/s of weight
// streamed, and as a fraction of the machine's read bandwidth), GEMM prefill, attention decode over a long
// cache (GQA and MLA absorbed shapes) and routing. Run e.g.
//   build/bench/moerun_kernel_bench --benchmark_filter=Gemv --benchmark_repetitions=5
// GEMV cycles through copies of the weight totalling kStreamBytes (more than the last-level cache), so
// every iteration reads its weights from memory as decode does.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/bench.h"

namespace moerun {
namespace {

constexpr size_t kStreamBytes = size_t{768} << 20;  // > a 260 MiB L3

class Rng {  // SplitMix64
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  float uniform() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<float>(static_cast<double>(z >> 40) * 0x1p-24) * 2.0f - 1.0f;
  }

 private:
  uint64_t s_;
};

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = rng.uniform();
  return v;
}

// One [out, in] weight of `dtype` as bytes (f8_e4m3: random finite bytes; its scales: f8_scales).
std::vector<unsigned char> make_weight(DType dtype, int64_t out, int64_t in, uint64_t seed) {
  const std::vector<float> f = random_floats(out * in, seed);
  std::vector<unsigned char> raw(dtype_bytes(dtype, out * in));
  for (int64_t o = 0; o < out; ++o) {
    const float* src = f.data() + o * in;
    unsigned char* dst = raw.data() + dtype_bytes(dtype, o * in);
    switch (dtype) {
      case DType::f32: std::memcpy(dst, src, static_cast<size_t>(in) * 4); break;
      case DType::bf16:
      case DType::f16:
        for (int64_t i = 0; i < in; ++i) {
          const uint16_t h = dtype == DType::bf16 ? cpu::f32_to_bf16(src[i]) : cpu::f32_to_f16(src[i]);
          std::memcpy(dst + 2 * i, &h, 2);
        }
        break;
      case DType::f8_e4m3:
        for (int64_t i = 0; i < in; ++i) {
          const auto b = static_cast<unsigned char>((src[i] + 1.0f) * 127.5f);
          dst[i] = (b & 0x7f) == 0x7f ? b ^ 1 : b;  // no NaN
        }
        break;
      default: cpu::quantize_row(dtype, src, in, dst);
    }
  }
  return raw;
}

// Block scales of an FP8 [out, in] weight in DeepSeek-V3's 128 x 128 blocks (empty for other dtypes).
constexpr int64_t kF8Block = 128;
std::vector<float> f8_scales(DType dtype, int64_t out, int64_t in) {
  if (dtype != DType::f8_e4m3) return {};
  std::vector<float> s = random_floats((out + kF8Block - 1) / kF8Block * ((in + kF8Block - 1) / kF8Block), 5);
  for (float& v : s) v = 1e-3f + std::abs(v) * 1e-2f;
  return s;
}

// What a benchmark's ops run with: a pool of `threads` (none for one thread) and its context.
struct Threads {
  std::unique_ptr<cpu::ThreadPool> pool;
  cpu::Context ctx;
  explicit Threads(int threads)
      : pool(threads > 1 ? std::make_unique<cpu::ThreadPool>(threads) : nullptr), ctx(pool.get()) {}
};

// The roofline for BM_Gemv: the same read-bandwidth ceiling `moerun bench` measures (1 GiB, wide
// loads, best of 5 passes), as the counter ceiling_bytes_per_second. args: threads.
void BM_ReadBandwidth(benchmark::State& state) {
  double gbps = 0;
  for (auto _ : state) gbps = std::max(gbps, measure_read_bandwidth(static_cast<int>(state.range(0))).gbps);
  state.counters["ceiling_bytes_per_second"] = gbps * 1e9;
}
BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->ArgName("threads")->Iterations(1)->UseRealTime();

// The read-bandwidth ceiling of BM_ReadBandwidth for `threads` (1 or 2), measured once per run.
double read_ceiling_gbps(int threads) {
  static double measured[3] = {};
  double& c = measured[std::clamp(threads, 1, 2)];
  if (c == 0) c = measure_read_bandwidth(threads).gbps;
  return c;
}

// args: dtype, out_features, in_features, threads[, hot]. hot = 1: one copy of the weight that stays
// in cache (the kernel's compute ceiling rather than the memory's). Streamed (hot = 0), the counter
// of_ceiling is the bytes/s as a fraction of the read ceiling for the same threads.
void BM_Gemv(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t out = state.range(1), in = state.range(2);
  Threads threads(static_cast<int>(state.range(3)));
  const bool hot = state.range(4) != 0;
  const std::vector<unsigned char> one = make_weight(dtype, out, in, 1);
  const size_t copies = hot ? 1 : std::max<size_t>(1, kStreamBytes / one.size());
  std::vector<unsigned char> all(one.size() * copies);
  for (size_t c = 0; c < copies; ++c) std::memcpy(all.data() + c * one.size(), one.data(), one.size());
  const std::vector<float> x = random_floats(in, 2);
  const std::vector<float> scales = f8_scales(dtype, out, in);  // one copy: 1 / 16384 of the bytes
  std::vector<float> y(static_cast<size_t>(out));
  size_t c = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    cpu::matmul({.out = y.data(), .x = x.data(), .weight = all.data() + c * one.size(), .weight_dtype = dtype, .n = 1,
                 .in_features = in, .out_features = out, .weight_scale = scales.empty() ? nullptr : scales.data(),
                 .block_out = kF8Block, .block_in = kF8Block},
                threads.ctx);
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const size_t bytes = one.size() + scales.size() * sizeof(float);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
  if (!hot) {
    const double gbps = static_cast<double>(state.iterations()) * static_cast<double>(bytes) / seconds * 1e-9;
    state.counters["of_ceiling"] = gbps / read_ceiling_gbps(static_cast<int>(state.range(3)));
  }
  state.SetLabel(std::string(dtype_name(dtype)));
}

void gemv_args(benchmark::internal::Benchmark* b) {
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3, DType::q8_0, DType::q4_0})
    for (auto [out, in] : {std::pair<int64_t, int64_t>{2048, 2048}, {768, 2048}, {2048, 768}})
      for (int threads : {1, 2}) b->Args({static_cast<int64_t>(d), out, in, threads, 0});
  // DeepSeek-V3's expert matrices (gate / up 2048 x 7168, down 7168 x 2048), FP8 as it ships.
  for (DType d : {DType::bf16, DType::f8_e4m3})
    for (auto [out, in] : {std::pair<int64_t, int64_t>{7168, 2048}, {2048, 7168}})
      for (int threads : {1, 2}) b->Args({static_cast<int64_t>(d), out, in, threads, 0});
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3, DType::q8_0, DType::q4_0})
    b->Args({static_cast<int64_t>(d), 256, 2048, 1, 1});
  b->ArgNames({"dtype", "out", "in", "threads", "hot"})->UseRealTime();
}
BENCHMARK(BM_Gemv)->Apply(gemv_args);

// args: dtype, tokens, threads, out_features, in_features.
void BM_Gemm(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t n = state.range(1), out = state.range(3), in = state.range(4);
  Threads threads(static_cast<int>(state.range(2)));
  const std::vector<unsigned char> w = make_weight(dtype, out, in, 3);
  const std::vector<float> scales = f8_scales(dtype, out, in);
  const std::vector<float> x = random_floats(n * in, 4);
  std::vector<float> y(static_cast<size_t>(n * out));
  for (auto _ : state) {
    cpu::matmul({.out = y.data(), .x = x.data(), .weight = w.data(), .weight_dtype = dtype, .n = n,
                 .in_features = in, .out_features = out, .weight_scale = scales.empty() ? nullptr : scales.data(),
                 .block_out = kF8Block, .block_in = kF8Block},
                threads.ctx);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);  // tokens/s
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * n * out * in * 1e-9,
                                                 benchmark::Counter::kIsRate);
  state.SetLabel(std::string(dtype_name(dtype)));
}
void gemm_args(benchmark::internal::Benchmark* b) {
  for (DType d : {DType::bf16, DType::f32, DType::f8_e4m3, DType::q8_0, DType::q4_0})
    for (int64_t tokens : {5, 8, 16, 64, 512})
      for (int threads : {1, 2}) b->Args({static_cast<int64_t>(d), tokens, threads, 2048, 2048});
  // DeepSeek-V3's expert shapes: FP8 as it ships against bf16 (FP8 should keep >= 75% of its rate).
  for (auto [out, in] : {std::pair<int64_t, int64_t>{7168, 2048}, {2048, 7168}})
    for (DType d : {DType::bf16, DType::f8_e4m3})
      for (int64_t tokens : {16, 64, 512})
        for (int threads : {1, 2}) b->Args({static_cast<int64_t>(d), tokens, threads, out, in});
  b->ArgNames({"dtype", "tokens", "threads", "out", "in"})->UseRealTime()->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_Gemm)->Apply(gemm_args);

// args: context, mla (0: GQA 32 q / 4 kv heads of 128, Qwen3-30B-A3B; 1: MLA absorbed, 16 heads over
// one 512 + 64 latent row, DeepSeek-V2-Lite), threads. One decode token at the last position.
void BM_AttentionDecode(benchmark::State& state) {
  const int64_t ctx = state.range(0);
  const bool mla = state.range(1) != 0;
  Threads threads(static_cast<int>(state.range(2)));
  const int64_t H = mla ? 16 : 32, Hkv = mla ? 1 : 4, qk = mla ? 576 : 128, vd = mla ? 512 : 128;
  const int64_t k_row = Hkv * qk, v_row = mla ? qk : Hkv * vd;
  const std::vector<float> q = random_floats(H * qk, 5), k = random_floats(ctx * k_row, 6);
  const std::vector<float> v = mla ? std::vector<float>() : random_floats(ctx * v_row, 7);
  std::vector<float> out(static_cast<size_t>(H * vd));
  const int64_t pos = ctx - 1;
  for (auto _ : state) {
    cpu::attention({.out = out.data(), .q = q.data(), .k = k.data(), .v = mla ? k.data() : v.data(), .positions = &pos,
                    .n_tokens = 1, .n_heads = H, .n_kv_heads = Hkv, .qk_dim = qk, .v_dim = vd,
                    .q_token_stride = H * qk, .q_head_stride = qk, .k_pos_stride = k_row, .k_head_stride = mla ? 0 : qk,
                    .v_pos_stride = v_row, .v_head_stride = mla ? 0 : vd, .scale = 0.08f},
                   threads.ctx);
    benchmark::DoNotOptimize(out.data());
  }
  const int64_t cache_bytes = ctx * (k_row + (mla ? 0 : v_row)) * 4;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * cache_bytes);
}
BENCHMARK(BM_AttentionDecode)
    ->ArgsProduct({{512, 4096}, {0, 1}, {1, 2}})
    ->ArgNames({"ctx", "mla", "threads"})
    ->UseRealTime();

// args: experts, top_k, noaux_tc (0: softmax greedy, Qwen3-MoE/OLMoE; 1: sigmoid + bias + 8 groups,
// DeepSeek-V3), tokens.
void BM_Route(benchmark::State& state) {
  const int64_t E = state.range(0), K = state.range(1), n = state.range(3);
  const bool v3 = state.range(2) != 0;
  const std::vector<float> logits = random_floats(n * E, 8), bias = random_floats(E, 9);
  std::vector<int32_t> ids(static_cast<size_t>(n * K));
  std::vector<float> weights(static_cast<size_t>(n * K));
  cpu::Context ctx;
  for (auto _ : state) {
    cpu::route({.expert_ids = ids.data(), .expert_weights = weights.data(), .logits = logits.data(),
                .correction_bias = v3 ? bias.data() : nullptr, .n_tokens = n, .n_experts = E, .top_k = K,
                .score = v3 ? ScoreFunc::sigmoid : ScoreFunc::softmax,
                .method = v3 ? TopkMethod::noaux_tc : TopkMethod::greedy, .n_group = v3 ? 8 : 1,
                .topk_group = v3 ? 4 : 1, .norm_topk_prob = true, .routed_scaling_factor = v3 ? 2.5f : 1.0f},
               ctx);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
}
BENCHMARK(BM_Route)->Args({64, 8, 0, 1})->Args({256, 8, 1, 1})->Args({64, 8, 0, 512})->Args({256, 8, 1, 512})
    ->ArgNames({"experts", "top_k", "noaux_tc", "tokens"});

}  // namespace
}  // namespace moerun

BENCHMARK_MAIN();
