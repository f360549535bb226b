// y = x W^T + b on the GPU; the CPU twin is kernels/cpu/matmul.cpp.
//
// Few tokens (n <= kGemvMaxTokens, decode): our GEMV (kernels/cuda/gemv.cuh). It is memory-bound, so
// the design goal is to read every weight byte exactly once at close to HBM bandwidth: one block per
// few output rows, 16-byte streaming loads, all n tokens multiplied from the same registers.
// Many tokens (prefill): cuBLAS, fp32 accumulation and fp32 output. bf16/f16 weights multiply x
// rounded to the weights' dtype (tensor cores; x is converted into the workspace first); f32 weights
// run a true fp32 GEMM (no TF32) so results stay close to the CPU; FP8 weights are dequantized to
// bf16 in row tiles into the workspace and each tile is one bf16 GEMM (correctness first: the tile is
// written once and read once more than an FP8 GEMM would). The bias is a separate small kernel.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "kernels/cuda/context.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

using ::moerun::detail::cat;

constexpr int64_t kGemvMaxTokens = 8;        // beyond this the weights are worth staging through tensor cores
constexpr int64_t kFp8TileBytes = 64 << 20;  // bf16 dequantization tile of the FP8 GEMM path

// Rows per GEMV block. A thread holds R x NT accumulators and 2R weight vectors; more rows reuse each
// x load for more weights (x traffic per weight byte falls as 1/R), fewer keep registers for tokens.
template <int NT>
inline constexpr int kGemvRows = NT <= 2 ? 4 : 2;

struct GemvArgs {
  float* out;          // [n, out_features], row stride out_stride
  const float* x;      // [n, in], row stride x_stride
  const void* w;       // [out_features, in]
  const float* bias;   // [out_features] or nullptr
  const float* scale;  // FP8: [ceil(out / block_out), scale_cols]
  int64_t n, in, out_features, x_stride, out_stride;
  int64_t row_bytes;  // in * element size
  int64_t scale_cols, block_out;
  uint32_t block_in;
  bool vec;    // 16-byte weight vectors allowed (FP8: block_in % 16 == 0)
  bool x_vec;  // every x row is 16-byte aligned
};

// Grid: ceil(out_features / R) blocks, one per R consecutive output rows; block: gemv::threads_for(in)
// threads splitting the row length. Each block streams its R rows once and produces out[t, o] for all
// n <= NT tokens; the reduction order is fixed, so repeated runs give identical bits.
template <class W, int NT>
__global__ void __launch_bounds__(gemv::kMaxThreads) gemv_kernel(const GemvArgs a) {
  constexpr int R = kGemvRows<NT>;
  constexpr int M = R * NT;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * R;
  gemv::Rows<R> rows;
  bool vec = a.vec;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t o = o0 + r < a.out_features ? o0 + r : a.out_features - 1;  // past the end: a duplicate, dropped
    rows.w[r] = static_cast<const char*>(a.w) + o * a.row_bytes;
    rows.scale[r] = gemv::kScaled<W> ? a.scale + (o / a.block_out) * a.scale_cols : nullptr;
    vec = vec && aligned16(rows.w[r]);  // odd rows of an odd-length bf16 matrix take the scalar path
  }
  rows.block_in = a.block_in;

  float acc[R][NT] = {};
  gemv::accumulate<W, R, NT>(acc, rows, a.x, a.x_stride, static_cast<int>(a.n), a.in, vec, a.x_vec);

  float flat[M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) flat[r * NT + t] = acc[r][t];
  __shared__ float partial[gemv::kMaxWarps][M];
  __shared__ float totals[M];
  gemv::block_sum<M>(flat, partial, totals);
  if (threadIdx.x < M) {
    const int r = static_cast<int>(threadIdx.x) / NT, t = static_cast<int>(threadIdx.x) % NT;
    const int64_t o = o0 + r;
    if (o < a.out_features && t < a.n) a.out[t * a.out_stride + o] = totals[threadIdx.x] + (a.bias ? a.bias[o] : 0.0f);
  }
}

template <class W, int NT>
void launch_gemv(const GemvArgs& a, cudaStream_t stream) {
  const int64_t blocks = (a.out_features + kGemvRows<NT> - 1) / kGemvRows<NT>;
  gemv_kernel<W, NT><<<static_cast<unsigned>(blocks), gemv::threads_for(a.in, gemv::kVec<W>), 0, stream>>>(a);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

template <class W>
void launch_gemv_tokens(const GemvArgs& a, cudaStream_t stream) {
  // Token counts round up to an instantiated width; the kernel skips tokens t >= n.
  if (a.n == 1) {
    launch_gemv<W, 1>(a, stream);
  } else if (a.n == 2) {
    launch_gemv<W, 2>(a, stream);
  } else if (a.n <= 4) {
    launch_gemv<W, 4>(a, stream);
  } else {
    launch_gemv<W, 8>(a, stream);
  }
}

// dst[r, c] = x[r, c] rounded to nearest (even) bf16 or f16; dst dense [n, in], x row stride x_stride.
template <class T>
__global__ void round_rows_kernel(T* __restrict__ dst, const float* __restrict__ x, int64_t n, int64_t in,
                                  int64_t x_stride) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * in;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[(i / in) * x_stride + i % in];
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      dst[i] = __float2bfloat16_rn(v);
    } else {
      dst[i] = __float2half_rn(v);
    }
  }
}

// dst[r, c] = bf16(fp8(w[o0 + r, c]) * scale[(o0 + r) / block_out, c / block_in]) for r < rows: one
// row tile of an FP8 weight, ready for a bf16 GEMM.
__global__ void dequant_fp8_kernel(__nv_bfloat16* __restrict__ dst, const uint8_t* __restrict__ w,
                                   const float* __restrict__ scale, int64_t o0, int64_t rows, int64_t in,
                                   int64_t block_out, int64_t block_in, int64_t scale_cols) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * in;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = o0 + i / in, c = i % in;
    const float s = scale[(o / block_out) * scale_cols + c / block_in];
    dst[i] = __float2bfloat16_rn(gemv::fp8_e4m3_to_float(w[o * in + c]) * s);
  }
}

// out[t, o] += bias[o].
__global__ void add_bias_kernel(float* __restrict__ out, const float* __restrict__ bias, int64_t n, int64_t cols,
                                int64_t out_stride) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * cols;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = i % cols;
    out[(i / cols) * out_stride + o] += bias[o];
  }
}

}  // namespace

namespace detail {

void gemm_xwt(Context& ctx, float* out, int64_t ldo, const void* w, const void* x, int64_t ldx, DType dtype, int64_t n,
              int64_t in, int64_t out_features) {
  if (n <= 0) return;
  for (const int64_t v : {n, in, out_features, ldo, ldx})
    if (v > INT_MAX) throw Error("cuda::matmul", cat("GEMM size ", v, " exceeds cuBLAS's 32-bit limit"));
  cudaDataType_t type = CUDA_R_32F;
  switch (dtype) {
    case DType::f32: type = CUDA_R_32F; break;
    case DType::bf16: type = CUDA_R_16BF; break;
    case DType::f16: type = CUDA_R_16F; break;
    default: throw Error("cuda::matmul", cat("GEMM of ", dtype_name(dtype), " is not supported"));
  }
  // cuBLAS is column-major. A row-major [rows, cols] matrix with row stride ld is the column-major
  // [cols, rows] matrix with leading dimension ld, i.e. its transpose, so with no copies:
  //   W   [O, in] row-major = column-major A [in, O], lda = in  -> op(A) = A^T is W   [O, in]
  //   x   [n, in] row-major = column-major B [in, n], ldb = ldx -> op(B) = B   is x^T [in, n]
  //   out [n, O]  row-major = column-major C [O, n],  ldc = ldo    and C = W x^T = (x W^T)^T.
  // So C = op(A) op(B) with transa = T, transb = N, m = O, n = n, k = in.
  const float alpha = 1.0f, beta = 0.0f;
  MOERUN_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out_features),
                                   static_cast<int>(n), static_cast<int>(in), &alpha, w, type, static_cast<int>(in), x,
                                   type, static_cast<int>(ldx), &beta, out, CUDA_R_32F, static_cast<int>(ldo),
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace detail

void matmul(const MatmulParams& p, Context& ctx) {
  const int64_t in = p.in_features, O = p.out_features;
  const int64_t xs = p.x_stride ? p.x_stride : in, os = p.out_stride ? p.out_stride : O;
  if (p.n < 0 || in <= 0 || O <= 0)
    throw Error("cuda::matmul", cat("bad shape: n ", p.n, ", in_features ", in, ", out_features ", O));
  if (xs < in || os < O)
    throw Error("cuda::matmul", cat("row strides must cover a row: x_stride ", xs, " < in_features ", in,
                                    " or out_stride ", os, " < out_features ", O));
  const DType dt = p.weight_dtype;
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16 && dt != DType::f8_e4m3)
    throw Error("cuda::matmul", cat("weights of ", dtype_name(dt), " are not supported (f32, bf16, f16, f8_e4m3)"));
  const bool fp8 = dt == DType::f8_e4m3;
  if (fp8 && (!p.weight_scale || p.block_out <= 0 || p.block_in <= 0 || in > INT_MAX || p.block_in > INT_MAX))
    throw Error("cuda::matmul", cat("FP8 weights need weight_scale and positive block sizes (block_out ", p.block_out,
                                    ", block_in ", p.block_in, ", in_features ", in, ")"));
  if (p.n == 0) return;
  if (!p.out || !p.x || !p.weight) throw Error("cuda::matmul", "out, x and weight must be set");
  const int64_t scale_cols = fp8 ? (in + p.block_in - 1) / p.block_in : 0;

  if (p.n <= kGemvMaxTokens) {
    GemvArgs a{};  // field by field: the CUDA dialect here is C++17 (no designated initializers)
    a.out = p.out;
    a.x = p.x;
    a.w = p.weight;
    a.bias = p.bias;
    a.scale = p.weight_scale;
    a.n = p.n;
    a.in = in;
    a.out_features = O;
    a.x_stride = xs;
    a.out_stride = os;
    a.row_bytes = in * static_cast<int64_t>(dtype_size(dt));
    a.scale_cols = scale_cols;
    a.block_out = p.block_out;
    a.block_in = static_cast<uint32_t>(fp8 ? p.block_in : 1);
    a.vec = !fp8 || p.block_in % 16 == 0;
    a.x_vec = aligned16(p.x) && (p.n == 1 || xs % 4 == 0);
    if (O > INT_MAX) throw Error("cuda::matmul", cat("out_features ", O, " exceeds the grid"));
    switch (dt) {
      case DType::f32: launch_gemv_tokens<gemv::F32>(a, ctx.stream()); break;
      case DType::bf16: launch_gemv_tokens<gemv::BF16>(a, ctx.stream()); break;
      case DType::f16: launch_gemv_tokens<gemv::F16>(a, ctx.stream()); break;
      default: launch_gemv_tokens<gemv::F8E4M3>(a, ctx.stream()); break;
    }
    return;
  }

  cudaStream_t stream = ctx.stream();
  if (dt == DType::f32) {
    detail::gemm_xwt(ctx, p.out, os, p.weight, p.x, xs, DType::f32, p.n, in, O);
  } else {
    // x rounded to the GEMM's 16-bit type, dense [n, in]; FP8 also needs a bf16 tile of weight rows.
    const size_t x_bytes = round_up(static_cast<size_t>(p.n * in) * 2, kWorkspaceAlign);
    const int64_t tile_rows = fp8 ? std::clamp<int64_t>(kFp8TileBytes / (2 * in), 1, O) : 0;
    char* ws = static_cast<char*>(ctx.workspace(x_bytes + static_cast<size_t>(tile_rows * in) * 2));
    const DType gemm_type = dt == DType::f16 ? DType::f16 : DType::bf16;
    if (gemm_type == DType::f16) {
      round_rows_kernel<__half>
          <<<elt_blocks(p.n * in), kEltThreads, 0, stream>>>(reinterpret_cast<__half*>(ws), p.x, p.n, in, xs);
    } else {
      round_rows_kernel<__nv_bfloat16>
          <<<elt_blocks(p.n * in), kEltThreads, 0, stream>>>(reinterpret_cast<__nv_bfloat16*>(ws), p.x, p.n, in, xs);
    }
    MOERUN_CUDA_CHECK(cudaGetLastError());
    if (!fp8) {
      detail::gemm_xwt(ctx, p.out, os, p.weight, ws, in, gemm_type, p.n, in, O);
    } else {
      auto* tile = reinterpret_cast<__nv_bfloat16*>(ws + x_bytes);
      for (int64_t o0 = 0; o0 < O; o0 += tile_rows) {  // stream order keeps each tile until its GEMM has read it
        const int64_t rows = std::min(tile_rows, O - o0);
        dequant_fp8_kernel<<<elt_blocks(rows * in), kEltThreads, 0, stream>>>(
            tile, static_cast<const uint8_t*>(p.weight), p.weight_scale, o0, rows, in, p.block_out, p.block_in,
            scale_cols);
        MOERUN_CUDA_CHECK(cudaGetLastError());
        detail::gemm_xwt(ctx, p.out + o0, os, tile, ws, in, DType::bf16, p.n, in, rows);
      }
    }
  }
  if (p.bias) {
    add_bias_kernel<<<elt_blocks(p.n * O), kEltThreads, 0, stream>>>(p.out, p.bias, p.n, O, os);
    MOERUN_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace moerun::cuda
