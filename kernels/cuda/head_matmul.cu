// Per-head matmuls over one shared weight (MLA's absorbed query and output projections) on the GPU; the
// CPU twin is kernels/cpu/head_matmul.cpp. Head h uses the weight rows first(h) = h * head_rows + row_offset
// onwards, each row_len long:
//   transposed = false: out[t, h, o] = sum_i W[first + o, i] * x[t, h, i]   (i < in_dim = row_len)
//   transposed = true:  out[t, h, o] = sum_i W[first + i, o] * x[t, h, i]   (o < out_dim = row_len)
// FP8 (e4m3) weights carry block scales of the whole weight, as the CPU twin defines them: element (row, i)
// is fp8 * scale[row / block_out, i / block_in] (DeepSeek-V3's kv_b_proj, 128 x 128 blocks).
// Decode (n_tokens <= 4) is bandwidth-bound: the GEMV kernels read every weight byte once per call with
// 16-byte loads (4 floats, 8 halves or 16 FP8 bytes), all tokens accumulated from one load, and enough warps per
// multiprocessor to keep ~32 KB of loads in flight. More tokens (prefill) or weights that cannot be read in
// 16-byte chunks (FP8: also block_in not a multiple of 16) take a tiled fp32 GEMM per head (64 tokens x 64
// outputs per block), which reads each weight once per 64 tokens.
// DeepSeek-V3 decode with FP8 kv_b_proj [32768, 512]: q absorption reads 128 heads x 128 rows x 512 (8 MB),
// the output projection the other 8 MB: 16.8 MB (+ 64 KB of scales) per token and layer, ~3.5 us at 4.8 TB/s;
// 2 FLOPs per weight byte per token, so HBM is the bound.

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

using ::moerun::detail::cat;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGemvTokens = 4;           // decode with a few speculative tokens at most
constexpr size_t kMaxGemvSmem = 48u << 10;  // the staged x of the GEMV kernels; no opt-in needed below this

struct Args {
  float* out;
  const float* x;
  const void* w;
  int64_t n_tokens, in_dim, out_dim, head_rows, row_offset, row_len;
  int64_t x_token_stride, x_head_stride, out_token_stride, out_head_stride;
  const float* scale;  // FP8 only: [ceil(weight rows / block_out), scale_cols]
  int64_t block_out, block_in, scale_cols;
};

template <DType D>
constexpr int kVec = D == DType::f32 ? 4 : D == DType::f8_e4m3 ? 16 : 8;  // elements per 16-byte weight load

__device__ __forceinline__ float fp8_to_float(uint32_t byte) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte), __NV_E4M3);
  return __half2float(__half(h));  // exact; 0x7f / 0xff are NaN
}

// The block scale of weight element (row, col); 1 for the float types.
template <DType D>
__device__ __forceinline__ float scale_at(const Args& a, int64_t row, int64_t col) {
  if constexpr (D == DType::f8_e4m3)
    return __ldg(a.scale + (row / a.block_out) * a.scale_cols + col / a.block_in);
  else
    return 1.0f;
}

template <DType D>
__device__ float widen(const void* w, int64_t i) {
  if constexpr (D == DType::f32)
    return static_cast<const float*>(w)[i];
  else if constexpr (D == DType::bf16)
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(w)[i]) << 16);
  else if constexpr (D == DType::f8_e4m3)
    return fp8_to_float(static_cast<const uint8_t*>(w)[i]);  // unscaled: the caller applies scale_at
  else
    return __half2float(static_cast<const __half*>(w)[i]);
}

// kVec<D> weights starting at element i (16-byte aligned) as fp32.
template <DType D>
__device__ void load_chunk(const void* w, int64_t i, float* o) {
  if constexpr (D == DType::f32) {
    const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(w) + i);
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
  } else if constexpr (D == DType::f8_e4m3) {  // 16 bytes, unscaled
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(w) + i);
    const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 16; ++k) o[k] = fp8_to_float((u[k / 4] >> (8 * (k % 4))) & 0xffu);
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w) + i);
    const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (D == DType::bf16) {
        o[2 * k] = __uint_as_float(u[k] << 16);
        o[2 * k + 1] = __uint_as_float(u[k] & 0xffff0000u);
      } else {
        o[2 * k] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[k] & 0xffffu)));
        o[2 * k + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[k] >> 16)));
      }
    }
  }
}

__device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Stages x[t, h, :in_dim] of this block's head for every token into shared memory ([kTok][in_dim], zero for
// tokens past n_tokens) so the GEMV inner loops read it as aligned float4s.
template <int kTok>
__device__ void stage_x(float* xs, const Args& a, int64_t h) {
  for (int64_t e = threadIdx.x; e < kTok * a.in_dim; e += kThreads) {
    const int64_t t = e / a.in_dim, i = e % a.in_dim;
    xs[e] = t < a.n_tokens ? a.x[t * a.x_token_stride + h * a.x_head_stride + i] : 0.0f;
  }
  __syncthreads();
}

// Not transposed, few tokens. Grid (n_heads, ceil(out_dim / 8)); warp w of a block computes output row
// o = blockIdx.y * 8 + w of head blockIdx.x: its lanes stride over the weight row in 16-byte chunks, multiply
// by every token's x, then reduce across the warp. Requires row_len % kVec == 0 and an aligned weight.
template <DType D, int kTok>
__global__ void __launch_bounds__(kThreads) gemv_rows_kernel(Args a) {
  MOERUN_PDL_WAIT();
  extern __shared__ float4 smem4[];
  float* xs = reinterpret_cast<float*>(smem4);  // [kTok][in_dim]
  const int64_t h = blockIdx.x;
  stage_x<kTok>(xs, a, h);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kWarps + warp;
  if (o >= a.out_dim) return;
  const int64_t base = (h * a.head_rows + a.row_offset + o) * a.row_len;
  constexpr int V = kVec<D>;
  float acc[kTok] = {};
#pragma unroll 2
  for (int64_t c = lane; c < a.in_dim / V; c += 32) {
    float wv[V];
    load_chunk<D>(a.w, base + c * V, wv);
    // FP8: the 16 elements share one block scale (block_in % 16 == 0 on this path).
    const float s = scale_at<D>(a, h * a.head_rows + a.row_offset + o, c * V);
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      if constexpr (D == DType::f8_e4m3) {
        float d = 0.0f;
#pragma unroll
        for (int k = 0; k < V; k += 4) {
          const float4 xv = *reinterpret_cast<const float4*>(xs + t * a.in_dim + c * V + k);
          d += wv[k] * xv.x + wv[k + 1] * xv.y + wv[k + 2] * xv.z + wv[k + 3] * xv.w;
        }
        acc[t] = fmaf(s, d, acc[t]);
      } else {
#pragma unroll
        for (int k = 0; k < V; k += 4) {
          const float4 xv = *reinterpret_cast<const float4*>(xs + t * a.in_dim + c * V + k);
          acc[t] += wv[k] * xv.x + wv[k + 1] * xv.y + wv[k + 2] * xv.z + wv[k + 3] * xv.w;
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kTok; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == 0 && t < a.n_tokens) a.out[t * a.out_token_stride + h * a.out_head_stride + o] = s;
  }
}

// Transposed, few tokens. Grid (n_heads, ceil(out_dim / (32 * kVec))); the block's 256 threads are 8 row
// groups of 32 column threads. Column thread c owns kVec consecutive outputs (one 16-byte load per weight
// row, coalesced across the 32 threads), row group g sums weight rows i = g, g + 8, ...; the 8 partial sums
// are then added in shared memory in a fixed order. Requires row_len, out_dim % kVec == 0 and an aligned
// weight.
template <DType D, int kTok>
__global__ void __launch_bounds__(kThreads) gemv_cols_kernel(Args a) {
  MOERUN_PDL_WAIT();
  constexpr int V = kVec<D>;
  constexpr int kCols = 32 * V;
  extern __shared__ float4 smem4[];
  float* red = reinterpret_cast<float*>(smem4);  // [kWarps][kCols]
  float* xs = red + kWarps * kCols;              // [kTok][in_dim]
  const int64_t h = blockIdx.x;
  stage_x<kTok>(xs, a, h);
  const int g = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kCols + lane * V;
  const bool active = col < a.out_dim;
  const int64_t first = h * a.head_rows + a.row_offset;
  float acc[kTok][V] = {};
  if (active) {
#pragma unroll 4
    for (int64_t i = g; i < a.in_dim; i += kWarps) {
      float wv[V];
      load_chunk<D>(a.w, (first + i) * a.row_len + col, wv);
      const float s = scale_at<D>(a, first + i, col);  // FP8: one scale for the V columns (block_in % 16 == 0)
#pragma unroll
      for (int t = 0; t < kTok; ++t) {
        const float xi = xs[t * a.in_dim + i] * s;
#pragma unroll
        for (int k = 0; k < V; ++k) acc[t][k] += xi * wv[k];
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kTok; ++t) {
#pragma unroll
    for (int k = 0; k < V; ++k) red[g * kCols + lane * V + k] = acc[t][k];
    __syncthreads();
    // Thread j adds the 8 row groups' partials of output columns j, j + kThreads, ... of the tile
    // (FP8's 16-element vectors make the tile 512 columns, twice the threads).
    for (int j = threadIdx.x; j < kCols; j += kThreads) {
      const int64_t oc = static_cast<int64_t>(blockIdx.y) * kCols + j;
      if (oc < a.out_dim && t < a.n_tokens) {
        float s = 0.0f;
        for (int r = 0; r < kWarps; ++r) s += red[r * kCols + j];
        a.out[t * a.out_token_stride + h * a.out_head_stride + oc] = s;
      }
    }
    __syncthreads();
  }
}

// Any shape: grid (ceil(out_dim / 64), ceil(n_tokens / 64), n_heads), one 64-token x 64-output tile of one
// head per block. Each K step of 16 stages x [16][64 tokens] and W [16][64 outputs] (widened to fp32) in
// shared memory; thread (ty, tx) accumulates tokens ty*4.. x outputs tx*4.. in registers, reading both
// operands as float4 (16 FMAs per two shared loads).
constexpr int kTile = 64, kStep = 16, kPad = 4;  // +4 floats per row keep float4 rows aligned, spread banks
static_assert(kTile * kStep == 4 * kThreads, "each thread stages 4 elements of each operand per step");
static_assert((kTile / 4) * (kTile / 4) == kThreads, "one 4x4 micro-tile per thread");

template <DType D, bool kTransposed>
__global__ void __launch_bounds__(kThreads) tiled_kernel(Args a) {
  MOERUN_PDL_WAIT();
  __shared__ __align__(16) float xs[kStep][kTile + kPad];  // [k][token]
  __shared__ __align__(16) float ws[kStep][kTile + kPad];  // [k][output]
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kTile, t0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t h = blockIdx.z;
  const int64_t first = h * a.head_rows + a.row_offset;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < a.in_dim; k0 += kStep) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int e = threadIdx.x + u * kThreads;
      {  // x: consecutive threads read consecutive k of one token
        const int kk = e % kStep, tt = e / kStep;
        const int64_t t = t0 + tt, i = k0 + kk;
        xs[kk][tt] = t < a.n_tokens && i < a.in_dim ? a.x[t * a.x_token_stride + h * a.x_head_stride + i] : 0.0f;
      }
      if constexpr (kTransposed) {  // W[first + i, o]: consecutive threads read consecutive outputs
        const int oo = e % kTile, kk = e / kTile;
        const int64_t o = o0 + oo, i = k0 + kk;
        ws[kk][oo] = o < a.out_dim && i < a.in_dim
                         ? widen<D>(a.w, (first + i) * a.row_len + o) * scale_at<D>(a, first + i, o)
                         : 0.0f;
      } else {  // W[first + o, i]: consecutive threads read consecutive k
        const int kk = e % kStep, oo = e / kStep;
        const int64_t o = o0 + oo, i = k0 + kk;
        ws[kk][oo] = o < a.out_dim && i < a.in_dim
                         ? widen<D>(a.w, (first + o) * a.row_len + i) * scale_at<D>(a, first + o, i)
                         : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kStep; ++k) {
      const float4 xv = *reinterpret_cast<const float4*>(&xs[k][ty * 4]);
      const float4 wv = *reinterpret_cast<const float4*>(&ws[k][tx * 4]);
      const float xa[4] = {xv.x, xv.y, xv.z, xv.w}, wa[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] += xa[r] * wa[c];
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t t = t0 + ty * 4 + r;
    if (t >= a.n_tokens) break;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t o = o0 + tx * 4 + c;
      if (o < a.out_dim) a.out[t * a.out_token_stride + h * a.out_head_stride + o] = acc[r][c];
    }
  }
}

template <DType D>
void launch(const HeadMatmulParams& p, const Args& a, cudaStream_t stream) {
  constexpr int V = kVec<D>;
  // FP8 vectors of 16 must lie inside one scale block.
  const bool aligned = aligned16(p.weight) && p.row_len % V == 0 && (D != DType::f8_e4m3 || p.block_in % 16 == 0);
  const bool few = p.n_tokens <= kMaxGemvTokens;
  const int tok = p.n_tokens == 1 ? 1 : kMaxGemvTokens;
  const size_t x_bytes = static_cast<size_t>(tok * p.in_dim) * sizeof(float);
  if (few && aligned && !p.transposed && p.in_dim % V == 0 && x_bytes <= kMaxGemvSmem) {
    const dim3 grid(static_cast<unsigned>(p.n_heads), static_cast<unsigned>(ceil_div(p.out_dim, kWarps)));
    if (tok == 1)
      launch_kernel(gemv_rows_kernel<D, 1>, grid, kThreads, x_bytes, stream, a);
    else
      launch_kernel(gemv_rows_kernel<D, kMaxGemvTokens>, grid, kThreads, x_bytes, stream, a);
    return;
  }
  const size_t red_bytes = static_cast<size_t>(kWarps) * 32 * V * sizeof(float);
  if (few && aligned && p.transposed && p.out_dim % V == 0 && red_bytes + x_bytes <= kMaxGemvSmem) {
    const dim3 grid(static_cast<unsigned>(p.n_heads), static_cast<unsigned>(ceil_div(p.out_dim, 32 * V)));
    if (tok == 1)
      launch_kernel(gemv_cols_kernel<D, 1>, grid, kThreads, red_bytes + x_bytes, stream, a);
    else
      launch_kernel(gemv_cols_kernel<D, kMaxGemvTokens>, grid, kThreads, red_bytes + x_bytes, stream, a);
    return;
  }
  const int64_t token_tiles = ceil_div(p.n_tokens, kTile);
  if (token_tiles > 65535) throw Error("cuda::head_matmul", "more than 65535 * 64 tokens in one call");
  const dim3 grid(static_cast<unsigned>(ceil_div(p.out_dim, kTile)), static_cast<unsigned>(token_tiles),
                  static_cast<unsigned>(p.n_heads));
  if (p.transposed)
    launch_kernel(tiled_kernel<D, true>, grid, kThreads, 0, stream, a);
  else
    launch_kernel(tiled_kernel<D, false>, grid, kThreads, 0, stream, a);
}

}  // namespace

void head_matmul(const HeadMatmulParams& p, Context& ctx) {
  if (p.n_tokens < 0 || p.n_heads < 0 || p.in_dim < 0 || p.out_dim < 0 || p.head_rows < 0 || p.row_offset < 0)
    throw Error("cuda::head_matmul", "sizes must be >= 0");
  // The weight row length is row_len in both forms; the CPU twin reads non-transposed rows in_dim apart, so
  // the two agree only when the contract's equalities hold.
  if (!p.transposed && p.in_dim != p.row_len)
    throw Error("cuda::head_matmul", "not transposed: in_dim must equal row_len");
  if (p.transposed && p.out_dim != p.row_len)
    throw Error("cuda::head_matmul", "transposed: out_dim must equal row_len");
  if (p.n_heads > 65535) throw Error("cuda::head_matmul", "more than 65535 heads");
  const bool f8 = p.weight_dtype == DType::f8_e4m3;
  if (f8 && !p.weight_scale) throw Error("cuda::head_matmul", "F8_E4M3 weights need weight_scale (block scales)");
  if (f8 && (p.block_out <= 0 || p.block_in <= 0))
    throw Error("cuda::head_matmul", cat("F8_E4M3 block sizes must be positive (block_out ", p.block_out,
                                         ", block_in ", p.block_in, ")"));
  if (p.n_tokens == 0 || p.n_heads == 0 || p.out_dim == 0) return;
  const Args a{p.out,
               p.x,
               p.weight,
               p.n_tokens,
               p.in_dim,
               p.out_dim,
               p.head_rows,
               p.row_offset,
               p.row_len,
               p.x_token_stride,
               p.x_head_stride,
               p.out_token_stride,
               p.out_head_stride,
               f8 ? p.weight_scale : nullptr,
               f8 ? p.block_out : 1,
               f8 ? p.block_in : 1,
               f8 ? (p.row_len + p.block_in - 1) / p.block_in : 0};
  switch (p.weight_dtype) {
    case DType::f32:
      launch<DType::f32>(p, a, ctx.stream());
      break;
    case DType::bf16:
      launch<DType::bf16>(p, a, ctx.stream());
      break;
    case DType::f16:
      launch<DType::f16>(p, a, ctx.stream());
      break;
    case DType::f8_e4m3:
      launch<DType::f8_e4m3>(p, a, ctx.stream());
      break;
    default:
      throw Error("cuda::head_matmul",
                  cat("weight dtype must be f32, bf16, f16 or f8_e4m3, got ", dtype_name(p.weight_dtype)));
  }
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moerun::cuda
