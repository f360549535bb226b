// Decode attention over a KV cache of each KvType (moerun_kernel_bench; kernels_bench.cpp holds the
// main). bytes_per_second counts the cache bytes one decode token reads (keys and values; MLA's value
// is inside its key row), so the types compare against the machine's read bandwidth
// (BM_ReadBandwidth) and against each other. Run e.g.
//   build/bench/moerun_kernel_bench --benchmark_filter=Kv
// The step cycles through copies of the cache totalling more than the last-level cache, as a decode
// step does through its layers, so every call reads its cache from memory.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/kv.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"

namespace moerun {
namespace {

constexpr size_t kKvStreamBytes = size_t{192} << 20;  // several times a 32 MiB L3

// Deterministic values in [-1, 1), never zero (SplitMix64).
std::vector<float> kv_random(int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  uint64_t s = seed;
  for (float& f : v) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    f = static_cast<float>((static_cast<double>(z >> 40) + 0.5) * 0x1p-23 - 1.0);
  }
  return v;
}

// args: kv_type, context, mla, threads. GQA: 32 query heads over 4 KV heads of 128 (Qwen3-30B-A3B);
// MLA absorbed: 128 heads over one latent row of 512 + 64, the value its first 512 (DeepSeek-V3).
// One decode token at the last position.
void BM_KvAttentionDecode(benchmark::State& state) {
  const auto type = static_cast<KvType>(state.range(0));
  const int64_t ctx = state.range(1);
  const bool mla = state.range(2) != 0;
  const int threads = static_cast<int>(state.range(3));
  std::unique_ptr<cpu::ThreadPool> pool = threads > 1 ? std::make_unique<cpu::ThreadPool>(threads) : nullptr;
  cpu::Context context(pool.get());

  const int64_t H = mla ? 128 : 32, Hkv = mla ? 1 : 4, qk = mla ? 576 : 128, vd = mla ? 512 : 128;
  const int64_t k_row = Hkv * qk, v_row = mla ? qk : Hkv * vd;
  // One cache (keys, then values for GQA) stored through store_rows, as decode fills it.
  const int64_t k_bytes = static_cast<int64_t>(kv_bytes(type, ctx * k_row));
  const int64_t v_bytes = mla ? 0 : static_cast<int64_t>(kv_bytes(type, ctx * v_row));
  const int64_t one = k_bytes + v_bytes;
  const size_t copies = std::max<size_t>(2, kKvStreamBytes / static_cast<size_t>(one));
  std::vector<unsigned char> all(static_cast<size_t>(one) * copies);
  {
    std::vector<int64_t> positions(static_cast<size_t>(ctx));
    for (int64_t s = 0; s < ctx; ++s) positions[static_cast<size_t>(s)] = s;
    const std::vector<float> k = kv_random(ctx * k_row, 6);
    cpu::store_rows({.cache = all.data(), .cache_type = type, .src = k.data(), .positions = positions.data(), .n = ctx,
                     .cols = k_row, .src_stride = k_row, .cache_stride = k_row},
                    context);
    if (!mla) {
      const std::vector<float> v = kv_random(ctx * v_row, 7);
      cpu::store_rows({.cache = all.data() + k_bytes, .cache_type = type, .src = v.data(), .positions = positions.data(),
                       .n = ctx, .cols = v_row, .src_stride = v_row, .cache_stride = v_row},
                      context);
    }
    for (size_t c = 1; c < copies; ++c)
      std::memcpy(all.data() + c * static_cast<size_t>(one), all.data(), static_cast<size_t>(one));
  }
  const std::vector<float> q = kv_random(H * qk, 5);
  std::vector<float> out(static_cast<size_t>(H * vd));
  const int64_t pos = ctx - 1;
  size_t c = 0;
  for (auto _ : state) {
    const unsigned char* k = all.data() + c * static_cast<size_t>(one);
    cpu::attention({.out = out.data(), .q = q.data(), .k = k, .v = mla ? k : k + k_bytes, .kv_type = type,
                    .positions = &pos, .n_tokens = 1, .n_heads = H, .n_kv_heads = Hkv, .qk_dim = qk, .v_dim = vd,
                    .q_token_stride = H * qk, .q_head_stride = qk, .k_pos_stride = k_row, .k_head_stride = mla ? 0 : qk,
                    .v_pos_stride = v_row, .v_head_stride = mla ? 0 : vd, .scale = 0.0722f},
                   context);
    benchmark::DoNotOptimize(out.data());
    c = (c + 1) % copies;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * one);
  state.SetLabel(std::string(kv_type_name(type)) + (mla ? " mla" : " gqa"));
}

void kv_args(benchmark::internal::Benchmark* b) {
  for (int64_t mla : {0, 1})
    for (int64_t ctx : {4096, 16384})
      for (KvType t : {KvType::f32, KvType::f16, KvType::bf16, KvType::q8_0})
        for (int64_t threads : {1, 2}) b->Args({static_cast<int64_t>(t), ctx, mla, threads});
  b->ArgNames({"kv", "ctx", "mla", "threads"})->UseRealTime()->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_KvAttentionDecode)->Apply(kv_args);

}  // namespace
}  // namespace moerun
