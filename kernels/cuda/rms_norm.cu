// RMSNorm on the GPU; the CPU twin is kernels/cpu/rms_norm.cpp.

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

constexpr int kThreads = 256;  // 8 warps: enough loads in flight for rows up to ~16k wide
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block must be whole warps");

__device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One block per row (rows `stride` floats apart): each thread accumulates a strided slice of x^2 in fp32, warps reduce with
// shuffles, warp 0 combines the per-warp sums, then every thread scales its slice.
__global__ void rms_norm_kernel(float* out,                        // [rows, cols]; may equal x
                                const float* x,                    // [rows, cols]
                                const float* __restrict__ weight,  // [cols]
                                int64_t cols, int64_t stride, float eps) {
  MOERUN_PDL_WAIT();
  __shared__ float partial[kThreads / 32];
  __shared__ float inv_rms;
  const float* row = x + blockIdx.x * stride;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) sum += row[i] * row[i];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : 0.0f;
    s = warp_sum(s);
    if (threadIdx.x == 0) inv_rms = rsqrtf(s / static_cast<float>(cols) + eps);
  }
  __syncthreads();
  float* o = out + blockIdx.x * stride;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) o[i] = weight[i] * (row[i] * inv_rms);
}

}  // namespace

void rms_norm(const RmsNormParams& p, Context& ctx) {
  if (p.rows < 0 || p.cols <= 0 || p.rows > 0x7fffffff)
    throw Error("cuda::rms_norm", "rows must be in [0, 2^31) and cols positive");
  if (p.stride != 0 && p.stride < p.cols)
    throw Error("cuda::rms_norm", "stride " + std::to_string(p.stride) + " is less than cols " + std::to_string(p.cols) +
                                      " (rows would overlap; 0 means cols)");
  if (p.rows == 0) return;
  launch_kernel(rms_norm_kernel, static_cast<unsigned>(p.rows), kThreads, 0, ctx.stream(), p.out, p.x, p.weight, p.cols,
                p.stride ? p.stride : p.cols, p.eps);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moerun::cuda
