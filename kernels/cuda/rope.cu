// Rotary position embedding on the GPU, in place; the CPU twin is kernels/cpu/rope.cpp.
// The arithmetic is kernels/cuda/rope.cuh's (fp32 angle, accurate sincosf, products and sums rounded one
// by one), shared with store_rows' fused rotation so the two agree bit for bit; it differs from the CPU
// by a few ulps (sincosf against the C library's sin and cos).

#include <cuda_runtime.h>

#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/rope.cuh"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

constexpr int kThreads = 256;

// Grid (n_tokens, ceil(n_heads * half / kThreads)); one thread per (head, pair) of one token. Consecutive
// threads take consecutive pairs of one head, so neox's two halves are each read coalesced, and
// interleaved pairs are adjacent floats. The position is read on the device so a captured decode step
// stays valid as it grows.
__global__ void rope_kernel(float* x,                               // [n_tokens, n_heads, ...] by the strides
                            const int64_t* __restrict__ positions,  // [n_tokens]
                            const float* __restrict__ inv_freq,     // [half]
                            int64_t n_heads, int64_t half, int64_t token_stride, int64_t head_stride,
                            int64_t rot_offset, float attention_factor, bool neox) {
  MOERUN_PDL_WAIT();
  const int64_t t = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (j >= n_heads * half) return;
  const int64_t h = j / half, i = j % half;
  const detail::RopeCosSin r = detail::rope_cos_sin(positions[t], inv_freq[i], attention_factor);
  float* row = x + t * token_stride + h * head_stride + rot_offset;
  const int64_t a = neox ? i : 2 * i;
  const int64_t b = neox ? i + half : 2 * i + 1;
  const float x0 = row[a], x1 = row[b];
  row[a] = detail::rope_first(x0, x1, r);
  row[b] = detail::rope_second(x0, x1, r);
}

}  // namespace

void rope(const RopeParams& p, Context& ctx) {
  if (p.n_tokens < 0 || p.n_heads < 0 || p.rot_dim < 0 || p.rot_dim % 2 != 0 || p.rot_offset < 0)
    throw Error("cuda::rope", "n_tokens, n_heads, rot_offset must be >= 0 and rot_dim even and >= 0");
  const int64_t half = p.rot_dim / 2;
  if (p.n_tokens == 0 || p.n_heads == 0 || half == 0) return;
  const int64_t per_token = p.n_heads * half;
  const int64_t y_blocks = ceil_div(per_token, kThreads);
  if (p.n_tokens > 0x7fffffff || y_blocks > 65535)
    throw Error("cuda::rope", "too many tokens (max 2^31 - 1) or heads * rot_dim / 2 (max 65535 * 256) for one launch");
  const dim3 grid(static_cast<unsigned>(p.n_tokens), static_cast<unsigned>(y_blocks));
  launch_kernel(rope_kernel, grid, kThreads, 0, ctx.stream(), p.x, p.positions, p.inv_freq, p.n_heads, half,
                p.token_stride, p.head_stride, p.rot_offset, p.attention_factor, p.style == RopeStyle::neox);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moerun::cuda
