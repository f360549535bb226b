// Device ceilings (see ceilings.h): a device-to-device copy for memory bandwidth and a cuBLAS bf16
// GEMM for the matrix rate, each the best of several runs timed with CUDA events on the stream.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/ceilings.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"

namespace moerun::cuda {
namespace {

constexpr int kWarmups = 2;
constexpr int kRuns = 10;
constexpr int kGemmSize = 8192;

// Two events on one stream, destroyed on every path out (errors throw).
class EventPair {
 public:
  EventPair() {
    MOERUN_CUDA_CHECK(cudaEventCreate(&start_));
    if (const cudaError_t err = cudaEventCreate(&stop_); err != cudaSuccess) {
      cudaEventDestroy(start_);
      MOERUN_CUDA_CHECK(err);
    }
  }
  ~EventPair() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;

  // Milliseconds taken by the work `enqueue` puts on `stream`.
  template <class F>
  float time_ms(cudaStream_t stream, F&& enqueue) {
    MOERUN_CUDA_CHECK(cudaEventRecord(start_, stream));
    enqueue();
    MOERUN_CUDA_CHECK(cudaEventRecord(stop_, stream));
    MOERUN_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    MOERUN_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// p[i] = a bf16 in [-1, 1) from a hash of (i, seed): random enough that the tensor cores toggle as
// on real weights (zeros run faster and would overstate the ceiling), with no generator state.
__global__ void fill_random_bf16_kernel(__nv_bfloat16* __restrict__ p, int64_t n, uint32_t seed) {
  MOERUN_PDL_WAIT();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9e3779b9u ^ static_cast<uint32_t>(i >> 32) ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    p[i] = __float2bfloat16_rn(static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

}  // namespace

double measure_copy_bandwidth_gbs(Context& ctx) {
  // 1 GiB each way: far past the 50-60 MB L2, so the copy streams HBM; halved while it would take
  // more than half of the free memory.
  size_t bytes = size_t{1} << 30;
  const size_t free = memory_info().free;
  while (bytes > (size_t{64} << 20) && 4 * bytes > free) bytes /= 2;
  DeviceBuffer src(bytes, "the copy-bandwidth source"), dst(bytes, "the copy-bandwidth destination");
  cudaStream_t stream = ctx.stream();
  MOERUN_CUDA_CHECK(cudaMemsetAsync(src.data(), 0x5a, bytes, stream));  // touch both buffers before timing
  MOERUN_CUDA_CHECK(cudaMemsetAsync(dst.data(), 0, bytes, stream));
  EventPair events;
  float best = 0.0f;
  for (int run = 0; run < kWarmups + kRuns; ++run) {
    const float ms = events.time_ms(stream, [&] {
      MOERUN_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, stream));
    });
    if (run >= kWarmups && (best == 0.0f || ms < best)) best = ms;
  }
  return 2.0 * static_cast<double>(bytes) / (static_cast<double>(best) * 1e-3) / 1e9;  // read + write
}

double measure_gemm_tflops(Context& ctx) {
  const int64_t n = kGemmSize;
  const size_t elems = static_cast<size_t>(n * n);
  DeviceBuffer a(elems * sizeof(__nv_bfloat16), "the GEMM-rate A matrix");
  DeviceBuffer b(elems * sizeof(__nv_bfloat16), "the GEMM-rate B matrix");
  DeviceBuffer c(elems * sizeof(float), "the GEMM-rate C matrix");
  cudaStream_t stream = ctx.stream();
  launch_kernel(fill_random_bf16_kernel, 4096, 256, 0, stream, a.as<__nv_bfloat16>(), static_cast<int64_t>(elems), 1u);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  launch_kernel(fill_random_bf16_kernel, 4096, 256, 0, stream, b.as<__nv_bfloat16>(), static_cast<int64_t>(elems), 2u);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  cublasHandle_t handle = ctx.cublas();
  const float alpha = 1.0f, beta = 0.0f;
  const int m = kGemmSize;
  EventPair events;
  float best = 0.0f;
  for (int run = 0; run < kWarmups + kRuns; ++run) {
    const float ms = events.time_ms(stream, [&] {
      MOERUN_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, m, m, &alpha, a.data(), CUDA_R_16BF, m,
                                       b.data(), CUDA_R_16BF, m, &beta, c.data(), CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT));
    });
    if (run >= kWarmups && (best == 0.0f || ms < best)) best = ms;
  }
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) /
         (static_cast<double>(best) * 1e-3) / 1e12;
}

}  // namespace moerun::cuda
