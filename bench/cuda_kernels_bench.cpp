// Google Benchmark microbenchmarks of the CUDA kernels against their ceilings (moerun_cuda_bench):
// the decode GEMV (bf16 and FP8 at batch 1, DeepSeek-V3 and Qwen3 shapes) and MLA decode attention
// over the latent cache (128 heads, 576-wide rows; fp32 at 1k..32k positions, bf16 at 8k and 32k). Each reports GB/s of bytes
// the kernel must read (counter gbps) and the device copy bandwidth measured once (copy_gbps), timed
// with CUDA events around back-to-back launches. Without a usable device every benchmark skips.

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/ceilings.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"

namespace moerun {
namespace {

cuda::Context& context() {
  static cuda::Context ctx;
  return ctx;
}

double copy_gbps() {
  static const double gbps = cuda::measure_copy_bandwidth_gbs(context());
  return gbps;
}

// Times `launch` with CUDA events; reports bytes / second as gbps next to the copy ceiling.
template <class Launch>
void time_kernel(benchmark::State& state, double bytes, Launch&& launch) {
  cuda::Context& ctx = context();
  for (int i = 0; i < 3; ++i) launch(ctx);  // warm-up: workspace sizing, attributes, caches
  cudaEvent_t start = nullptr, stop = nullptr;
  MOERUN_CUDA_CHECK(cudaEventCreate(&start));
  MOERUN_CUDA_CHECK(cudaEventCreate(&stop));
  constexpr int kLaunches = 20;
  for (auto _ : state) {
    MOERUN_CUDA_CHECK(cudaEventRecord(start, ctx.stream()));
    for (int i = 0; i < kLaunches; ++i) launch(ctx);
    MOERUN_CUDA_CHECK(cudaEventRecord(stop, ctx.stream()));
    MOERUN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    MOERUN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3 / kLaunches);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  state.counters["gbps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_gbps"] = copy_gbps();
}

// Device memory filled with a repeating non-zero pattern (0x3c3c is a plain bf16 and e4m3 value).
cuda::DeviceBuffer filled(size_t bytes, int byte = 0x3c) {
  cuda::DeviceBuffer b(bytes, "benchmark data");
  MOERUN_CUDA_CHECK(cudaMemset(b.data(), byte, bytes));
  return b;
}

// args: out_features, in_features, dtype (0 bf16, 1 fp8 with 128x128 block scales)
void BM_CudaGemv(benchmark::State& state) {
  if (!cuda::available()) return state.SkipWithError("no usable CUDA device");
  const int64_t out = state.range(0), in = state.range(1);
  const bool fp8 = state.range(2) == 1;
  const size_t wbytes = static_cast<size_t>(out * in) * (fp8 ? 1 : 2);
  const int64_t so = (out + 127) / 128, si = (in + 127) / 128;
  cuda::DeviceBuffer w = filled(wbytes), x = filled(static_cast<size_t>(in) * 4, 0x3f), y(static_cast<size_t>(out) * 4, "y");
  cuda::DeviceBuffer scale = filled(static_cast<size_t>(so * si) * 4, 0x3f);
  const MatmulParams p{.out = y.as<float>(), .x = x.as<float>(), .weight = w.data(),
                       .weight_dtype = fp8 ? DType::f8_e4m3 : DType::bf16, .n = 1, .in_features = in,
                       .out_features = out, .weight_scale = fp8 ? scale.as<float>() : nullptr};
  time_kernel(state, static_cast<double>(wbytes), [&](cuda::Context& ctx) { cuda::matmul(p, ctx); });
}
BENCHMARK(BM_CudaGemv)
    ->Args({18432, 7168, 0})   // DeepSeek-V3 dense gate/up
    ->Args({7168, 18432, 0})   // its down projection
    ->Args({2048, 7168, 0})    // an expert's gate/up
    ->Args({4096, 2048, 0})    // Qwen3-30B-A3B q_proj
    ->Args({151936, 2048, 0})  // Qwen3 LM head
    ->Args({18432, 7168, 1})   // FP8 weights with block scales
    ->UseManualTime();

// MLA absorbed decode: 128 query heads over one latent row of 512 + 64 elements per position, over an fp32
// cache (the tiled SIMT kernel) or a bf16 cache (the tensor-core MMA kernel on sm_80+). gbps counts the cache
// bytes (len x 576 x element size). The bf16 design bound (attention.cu): 242 FLOP per cache byte at 128
// heads, above an H200's bf16 ridge (~206), so it is compute-bound even at tensor-core peak; tflops reports
// the rate of the 128 x 2 x (576 + 512) FLOP per row. args: cached positions, cache type (0 f32, 1 bf16)
void BM_CudaMlaDecode(benchmark::State& state) {
  if (!cuda::available()) return state.SkipWithError("no usable CUDA device");
  const int64_t len = state.range(0), H = 128, r = 512, dr = 64, row = r + dr;
  const bool bf16 = state.range(1) == 1;
  const int64_t elem = bf16 ? 2 : 4;
  // Bytes 0x3c: every bf16 and float element is a plain number (~0.0115).
  cuda::DeviceBuffer cache = filled(static_cast<size_t>(len * row * elem), 0x3c);
  cuda::DeviceBuffer q = filled(static_cast<size_t>(H * row) * 4, 0x3c), out(static_cast<size_t>(H * r) * 4, "out");
  const int64_t position = len - 1;
  cuda::DeviceBuffer pos(sizeof(int64_t), "positions");
  MOERUN_CUDA_CHECK(cudaMemcpy(pos.data(), &position, sizeof position, cudaMemcpyHostToDevice));
  const AttentionParams p{.out = out.as<float>(), .q = q.as<float>(), .k = cache.data(), .v = cache.data(),
                          .kv_type = bf16 ? KvType::bf16 : KvType::f32, .positions = pos.as<int64_t>(),
                          .n_tokens = 1, .n_heads = H, .n_kv_heads = 1, .qk_dim = row, .v_dim = r,
                          .q_token_stride = H * row, .q_head_stride = row, .k_pos_stride = row, .k_head_stride = 0,
                          .v_pos_stride = row, .v_head_stride = 0, .scale = 0.1f, .max_len = len};
  time_kernel(state, static_cast<double>(len * row * elem), [&](cuda::Context& ctx) { cuda::attention(p, ctx); });
  state.counters["tflops"] = benchmark::Counter(static_cast<double>(len * H * 2 * (row + r)) / 1e12,
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CudaMlaDecode)
    ->Args({1024, 0})
    ->Args({8192, 0})
    ->Args({32768, 0})
    ->Args({8192, 1})   // DeepSeek-V3 decode at 8k over the default bf16 cache
    ->Args({32768, 1})  // and at 32k
    ->UseManualTime();

// GQA decode: 32 query heads over 4 KV heads of 128 (Qwen3-30B-A3B). args: cached positions
void BM_CudaGqaDecode(benchmark::State& state) {
  if (!cuda::available()) return state.SkipWithError("no usable CUDA device");
  const int64_t len = state.range(0), H = 32, Hkv = 4, d = 128, kv_row = Hkv * d;
  cuda::DeviceBuffer k = filled(static_cast<size_t>(len * kv_row) * 4), v = filled(static_cast<size_t>(len * kv_row) * 4);
  cuda::DeviceBuffer q = filled(static_cast<size_t>(H * d) * 4), out(static_cast<size_t>(H * d) * 4, "out");
  const int64_t position = len - 1;
  cuda::DeviceBuffer pos(sizeof(int64_t), "positions");
  MOERUN_CUDA_CHECK(cudaMemcpy(pos.data(), &position, sizeof position, cudaMemcpyHostToDevice));
  const AttentionParams p{.out = out.as<float>(), .q = q.as<float>(), .k = k.as<float>(), .v = v.as<float>(),
                          .positions = pos.as<int64_t>(), .n_tokens = 1, .n_heads = H, .n_kv_heads = Hkv,
                          .qk_dim = d, .v_dim = d, .q_token_stride = H * d, .q_head_stride = d,
                          .k_pos_stride = kv_row, .k_head_stride = d, .v_pos_stride = kv_row, .v_head_stride = d,
                          .scale = 0.088f, .max_len = len};
  time_kernel(state, static_cast<double>(2 * len * kv_row) * 4, [&](cuda::Context& ctx) { cuda::attention(p, ctx); });
}
BENCHMARK(BM_CudaGqaDecode)->Arg(8192)->Arg(32768)->UseManualTime();

}  // namespace
}  // namespace moerun

BENCHMARK_MAIN();
