// y = x W^T + b on the GPU; the CPU twin is kernels/cpu/matmul.cpp.
//
// Few tokens (n <= kGemvMaxTokens = 8, decode): our GEMV (kernels/cuda/gemv.cuh). It is memory-bound,
// so the design goal is to read every weight byte exactly once at close to HBM bandwidth: one block per
// R output rows, 16-byte streaming loads, all n tokens multiplied from the same registers, bias fused.
// R (4, 2 or 1) is matmul_plan::gemv_rows_per_block (kernels/cuda/gemm.h): the most rows per block
// that still leave >= 2 blocks per SM, so small outputs (router 256 x 7168, kv_a 576 x 7168) fill the
// chip. The kernel takes a table of up to 32 entries (out, weight, scale, bias, rows, first block):
// a plain matmul is a table of one, and matmul_group runs every set of entries that read the same x
// (q/k/v, q_a + kv_a, gate + up) as one launch whose blocks map to (entry, row block). A row's sum has
// the same order whatever R and whatever the other entries are (same threads per block, same vector
// or scalar path per entry), so grouped and separate calls give identical bits.
// Fusions (MatmulParams::norm_weight, accumulate), for the executor's launch count: the GEMV reads x
// through the norm in the same pass (gemv::Norm: each thread squares the x elements it loads anyway
// and multiplies them by the norm weight; the block reduction sums the squares with the products, and
// each output is scaled by its token's 1/rms), so the norm costs no launch, no barrier and no extra
// pass over x: per block in * 4 bytes of norm weight (L1/L2, like x) and 2 FMA-pipe operations per x
// element per token (against R per element per token of products: +50% at R = 4, n <= 2; hidden while
// the GEMV is HBM-bound, which it is at n <= 4). The result is sum_i W[o, i] (w[i] x[t, i]) * inv_rms[t],
// the normalized matmul up to rounding. Entries share a launch only with the same norm (weight, eps).
// accumulate: the epilogue adds into out (out + (x W^T + b), the CPU's order). The GEMM path
// normalizes x in the kernel that rounds it to 16 bits anyway (norm_rows_kernel; f32 weights: into
// fp32 in the workspace, one more launch) and accumulates through cuBLAS's beta = 1.
// Many tokens (prefill): cuBLAS, fp32 accumulation and fp32 output. bf16/f16 weights multiply x
// rounded to the weights' dtype (tensor cores; x is converted into the workspace first); f32 weights
// run a true fp32 GEMM (no TF32) so results stay close to the CPU; FP8 weights are dequantized to
// bf16 in row tiles into the workspace and each tile is one bf16 GEMM (correctness first: the tile is
// written once and read once more than an FP8 GEMM would). The bias is a separate small kernel.
//
// Kernel launches per call (matmul_plan::matmul_launches): GEMV 1 (bias, norm and accumulate
// included); a group 1 per set of entries sharing x and norm (entries that share with nobody: 1 each);
// GEMM f32 1 (2 with a norm), bf16/f16 2 (round or normalize x + GEMM), FP8 1 + 2 per 64 MB tile
// (round or normalize x, then dequantize + GEMM per tile), each + 1 with a bias.
// No split-K: the GEMV path needs no workspace and no second kernel, so it is graph-safe trivially.
//
// Decode bound at DeepSeek-V3 shapes (per token, per layer, FP8 weights + fp32 block scales): q_a
// 1536 x 7168 (11.0 MB) + kv_a 576 x 7168 (4.1 MB) + q_b 24576 x 1536 (37.7 MB) + o 7168 x 16384
// (117 MB) + router 256 x 7168 bf16 (3.7 MB) + the shared expert (3 x 2048 x 7168, 44 MB) ~ 218 MB; at
// 4.8 TB/s that is ~45 us per layer, and lm_head 129280 x 7168 bf16 (1.85 GB) ~ 0.39 ms. FLOPs are
// 2 per weight per token: 2n per FP8 byte, n per bf16 byte. Up to n = 4 that is <= 38 TFLOP/s at full
// HBM speed, under the ~67 TFLOP/s fp32 FMA ceiling, so the target is HBM: ~85-90% on the large
// matrices, less on the small ones (< 5 MB is ~1 us of streaming, comparable to the launch and the
// tail). FP8 at n = 8 would need ~77 TFLOP/s (plus the byte conversions): the FMA pipe bounds it first.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <type_traits>
#include <utility>

#include "kernels/cuda/context.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

using ::moerun::detail::cat;

using matmul_plan::kFp8TileBytes;
using matmul_plan::kGemvMaxEntries;
using matmul_plan::kGemvMaxTokens;
static_assert(kGemvMaxEntries == static_cast<int>(cpu::kMatmulGroupMax), "a group fits one launch's table");

// One matmul of a GEMV launch: its own weight, scales, bias and output; x and the shapes are shared.
struct GemvEntry {
  float* out = nullptr;          // [n, out_features], row stride out_stride
  const void* w = nullptr;       // [out_features, in]
  const float* scale = nullptr;  // FP8: [ceil(out_features / block_out), scale_cols]
  const float* bias = nullptr;   // [out_features] or nullptr
  int64_t out_features = 0, out_stride = 0, block_out = 1;
  bool vec = false;  // 16-byte weight vectors: every row 16-byte aligned (FP8: and block_in % 16 == 0)
  bool add_to_out = false;  // MatmulParams::accumulate: out += y
};

// Kernel parameters (by value, ~2.2 KB of the 4 KB allowed): what the entries share, and the table.
struct GemvArgs {
  const float* x = nullptr;  // [n, in], row stride x_stride
  int64_t n = 0, in = 0, x_stride = 0;
  int64_t row_bytes = 0;   // in * element size
  int64_t scale_cols = 0;  // FP8: ceil(in / block_in)
  uint32_t block_in = 1;   // FP8 only
  bool x_vec = false;      // every x row is 16-byte aligned
  const float* norm_weight = nullptr;  // the fused RMSNorm of x (shared by the entries), or nullptr
  float norm_eps = 0.0f;
  bool norm_vec = false;   // norm_weight is 16-byte aligned
  int count = 0;           // entries used
  uint32_t first_block[kGemvMaxEntries + 1] = {};  // entry k owns blocks [first_block[k], first_block[k + 1])
  GemvEntry e[kGemvMaxEntries];
};

// Grid: sum over entries of ceil(out_features / R) blocks, each R consecutive output rows of one
// entry; block: gemv::threads_for(in) threads splitting the row length. Each block streams its R rows
// once and produces out[t, o] for all n <= NT tokens; the reduction order is fixed (and independent of
// R and of the other entries), so repeated and grouped runs give identical bits.
// kNorm (a.norm_weight set): x is normalized on the way in (gemv::Norm): the block reduction also sums
// each token's x^2 (NT more values) and token t's sums are scaled by its inv_rms in the epilogue.
template <class W, int NT, int R, bool kNorm>
__global__ void __launch_bounds__(gemv::kMaxThreads) gemv_kernel(const GemvArgs a) {
  MOERUN_PDL_WAIT();
  constexpr int M = R * NT;
  constexpr int MS = kNorm ? M + NT : M;  // the products, then the sums of squares
  // The block's entry: the last one starting at or before it. Constant indices only (unrolled), so
  // the table stays in the parameter bank instead of being copied to local memory.
  const uint32_t b = blockIdx.x;
  int k = 0;
#pragma unroll
  for (int j = 1; j < kGemvMaxEntries; ++j)
    if (j < a.count && b >= a.first_block[j]) k = j;
  GemvEntry e = a.e[0];
  uint32_t first = a.first_block[0];
#pragma unroll
  for (int j = 1; j < kGemvMaxEntries; ++j)
    if (j == k) e = a.e[j], first = a.first_block[j];

  const int64_t o0 = static_cast<int64_t>(b - first) * R;
  gemv::Rows<R> rows;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t o = o0 + r < e.out_features ? o0 + r : e.out_features - 1;  // past the end: a duplicate, dropped
    rows.w[r] = static_cast<const char*>(e.w) + o * a.row_bytes;
    rows.scale[r] = gemv::kScaled<W> ? e.scale + (o / e.block_out) * a.scale_cols : nullptr;
  }
  rows.block_in = a.block_in;

  float acc[R][NT] = {};
  gemv::Norm<NT> norm;
  norm.weight = a.norm_weight;
  norm.vec = a.norm_vec;
  gemv::accumulate<W, R, NT, kNorm>(acc, rows, a.x, a.x_stride, static_cast<int>(a.n), a.in, e.vec, a.x_vec, norm);

  float flat[MS];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) flat[r * NT + t] = acc[r][t];
  if constexpr (kNorm) {
#pragma unroll
    for (int t = 0; t < NT; ++t) flat[M + t] = norm.ss[t];
  }
  __shared__ float partial[gemv::kMaxWarps][MS];
  __shared__ float totals[MS];
  gemv::block_sum<MS>(flat, partial, totals);
  if (threadIdx.x < M) {  // blocks have >= 32 threads >= MS
    const int r = static_cast<int>(threadIdx.x) / NT, t = static_cast<int>(threadIdx.x) % NT;
    const int64_t o = o0 + r;
    if (o < e.out_features && t < a.n) {
      float y = totals[threadIdx.x];
      // rms_norm's arithmetic (kernels/cuda/rms_norm.cu): rsqrt of the mean square plus eps.
      if constexpr (kNorm) y *= rsqrtf(totals[M + t] / static_cast<float>(a.in) + a.norm_eps);
      y += e.bias ? e.bias[o] : 0.0f;
      float* dst = e.out + t * e.out_stride + o;
      *dst = e.add_to_out ? *dst + y : y;  // the residual add: out + (x W^T + b), as cpu::matmul's order
    }
  }
}

// SMs of the context's device, asked once per device (the attribute query is cheap but not free, and
// it is no stream operation, so it is safe during capture either way).
int sm_count(const Context& ctx) {
  constexpr int kDevices = 64;
  static std::atomic<int> cached[kDevices];  // static storage: zero, i.e. not asked yet
  const int d = ctx.device();
  if (d >= 0 && d < kDevices) {
    if (const int c = cached[d].load(std::memory_order_relaxed); c > 0) return c;
  }
  int c = 0;
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, d));
  if (d >= 0 && d < kDevices) cached[d].store(c, std::memory_order_relaxed);
  return c;
}

template <class W, int NT, int R>
void launch_gemv(GemvArgs& a, cudaStream_t stream) {
  const unsigned threads = static_cast<unsigned>(gemv::threads_for(a.in, gemv::kVec<W>));
  uint32_t blocks = 0;
  for (int k = 0; k < a.count; ++k) {
    a.first_block[k] = blocks;
    blocks += static_cast<uint32_t>((a.e[k].out_features + R - 1) / R);  // the caller bounded the total rows
  }
  for (int k = a.count; k <= kGemvMaxEntries; ++k) a.first_block[k] = blocks;
  if (a.norm_weight) {
    launch_kernel(gemv_kernel<W, NT, R, true>, blocks, threads, 0, stream, a);
  } else {
    launch_kernel(gemv_kernel<W, NT, R, false>, blocks, threads, 0, stream, a);
  }
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

template <class W, int NT>
void launch_gemv_rows(GemvArgs& a, int rows_per_block, cudaStream_t stream) {
  if constexpr (NT <= 2) {
    if (rows_per_block >= 4) return launch_gemv<W, NT, 4>(a, stream);
  }
  if (rows_per_block >= 2) return launch_gemv<W, NT, 2>(a, stream);
  launch_gemv<W, NT, 1>(a, stream);
}

template <class W>
void launch_gemv_tokens(GemvArgs& a, int rows_per_block, cudaStream_t stream) {
  // Token counts round up to an instantiated width; the kernel skips tokens t >= n.
  if (a.n == 1) {
    launch_gemv_rows<W, 1>(a, rows_per_block, stream);
  } else if (a.n == 2) {
    launch_gemv_rows<W, 2>(a, rows_per_block, stream);
  } else if (a.n <= 4) {
    launch_gemv_rows<W, 4>(a, rows_per_block, stream);
  } else {
    launch_gemv_rows<W, 8>(a, rows_per_block, stream);
  }
}

// dst[r, c] = x[r, c] rounded to nearest (even) bf16 or f16; dst dense [n, in], x row stride x_stride.
template <class T>
__global__ void round_rows_kernel(T* __restrict__ dst, const float* __restrict__ x, int64_t n, int64_t in,
                                  int64_t x_stride) {
  MOERUN_PDL_WAIT();
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

// dst[r, c] = RMSNorm(x)[r, c] in T (float, or rounded to nearest even bf16 / f16); dst dense [n, in].
// The GEMM path's fused norm: one block of kNormThreads per row, exactly rms_norm_kernel's arithmetic
// (kernels/cuda/rms_norm.cu: the same threads, the same strided fp32 sum of squares, warp shuffles, then
// warp 0 over the warp sums), so the f32 GEMM reads the bits cuda::rms_norm would have written.
constexpr int kNormThreads = 256;
template <class T>
__global__ void __launch_bounds__(kNormThreads) norm_rows_kernel(T* __restrict__ dst, const float* __restrict__ x,
                                                                 const float* __restrict__ weight, int64_t in,
                                                                 int64_t x_stride, float eps) {
  MOERUN_PDL_WAIT();
  __shared__ float partial[kNormThreads / 32];
  __shared__ float inv_rms;
  const float* row = x + blockIdx.x * x_stride;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < in; i += kNormThreads) sum += row[i] * row[i];
  sum = gemv::warp_sum(sum);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < kNormThreads / 32 ? partial[threadIdx.x] : 0.0f;
    t = gemv::warp_sum(t);
    if (threadIdx.x == 0) inv_rms = rsqrtf(t / static_cast<float>(in) + eps);
  }
  __syncthreads();
  T* o = dst + blockIdx.x * in;
  for (int64_t i = threadIdx.x; i < in; i += kNormThreads) {
    const float v = weight[i] * (row[i] * inv_rms);
    if constexpr (std::is_same_v<T, float>) {
      o[i] = v;
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      o[i] = __float2bfloat16_rn(v);
    } else {
      o[i] = __float2half_rn(v);
    }
  }
}

// dst[r, c] = bf16(fp8(w[o0 + r, c]) * scale[(o0 + r) / block_out, c / block_in]) for r < rows: one
// row tile of an FP8 weight, ready for a bf16 GEMM.
__global__ void dequant_fp8_kernel(__nv_bfloat16* __restrict__ dst, const uint8_t* __restrict__ w,
                                   const float* __restrict__ scale, int64_t o0, int64_t rows, int64_t in,
                                   int64_t block_out, int64_t block_in, int64_t scale_cols) {
  MOERUN_PDL_WAIT();
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
  MOERUN_PDL_WAIT();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * cols;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = i % cols;
    out[(i / cols) * out_stride + o] += bias[o];
  }
}

}  // namespace

namespace detail {

void gemm_xwt(Context& ctx, float* out, int64_t ldo, const void* w, const void* x, int64_t ldx, DType dtype, int64_t n,
              int64_t in, int64_t out_features, float beta) {
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
  const float alpha = 1.0f;  // beta 1: out += x W^T (the fused residual add)
  MOERUN_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out_features),
                                   static_cast<int>(n), static_cast<int>(in), &alpha, w, type, static_cast<int>(in), x,
                                   type, static_cast<int>(ldx), &beta, out, CUDA_R_32F, static_cast<int>(ldo),
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace detail

namespace {

// Checks p as matmul documents it; returns the resolved x and out row strides.
std::pair<int64_t, int64_t> validate(const MatmulParams& p) {
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
  if (p.n > 0 && (!p.out || !p.x || !p.weight)) throw Error("cuda::matmul", "out, x and weight must be set");
  if (O > INT_MAX) throw Error("cuda::matmul", cat("out_features ", O, " exceeds the grid"));
  if (p.n > INT_MAX) throw Error("cuda::matmul", cat("n ", p.n, " exceeds the grid"));
  if (p.accumulate && p.n > 0) {
    // out is read and written while other blocks read x: they must not overlap.
    const auto* x0 = reinterpret_cast<const char*>(p.x);
    const auto* x1 = reinterpret_cast<const char*>(p.x + (p.n - 1) * xs + in);
    const auto* o0 = reinterpret_cast<const char*>(p.out);
    const auto* o1 = reinterpret_cast<const char*>(p.out + (p.n - 1) * os + O);
    if (o0 < x1 && x0 < o1) throw Error("cuda::matmul", "accumulate: out overlaps x");
  }
  return {xs, os};
}

// The GEMV launch's shared fields for p (validated, 0 < n <= kGemvMaxTokens), with no entries yet.
GemvArgs gemv_args(const MatmulParams& p, int64_t xs) {
  const bool fp8 = p.weight_dtype == DType::f8_e4m3;
  GemvArgs a;  // field by field: the CUDA dialect here is C++17 (no designated initializers)
  a.x = p.x;
  a.n = p.n;
  a.in = p.in_features;
  a.x_stride = xs;
  a.row_bytes = p.in_features * static_cast<int64_t>(dtype_size(p.weight_dtype));
  a.scale_cols = fp8 ? (p.in_features + p.block_in - 1) / p.block_in : 0;
  a.block_in = static_cast<uint32_t>(fp8 ? p.block_in : 1);
  a.x_vec = aligned16(p.x) && (p.n == 1 || xs % 4 == 0);
  a.norm_weight = p.norm_weight;
  a.norm_eps = p.norm_weight ? p.norm_eps : 0.0f;
  a.norm_vec = aligned16(p.norm_weight);
  return a;
}

// Appends p as an entry of a. The vector path is decided per entry for all its rows (never per
// block), so a row's summation order depends on nothing but its own matmul.
void add_entry(GemvArgs& a, const MatmulParams& p, int64_t os) {
  const bool fp8 = p.weight_dtype == DType::f8_e4m3;
  GemvEntry& e = a.e[a.count++];
  e.out = p.out;
  e.w = p.weight;
  e.scale = fp8 ? p.weight_scale : nullptr;
  e.bias = p.bias;
  e.out_features = p.out_features;
  e.out_stride = os;
  e.block_out = fp8 ? p.block_out : 1;
  e.vec = (!fp8 || p.block_in % 16 == 0) && aligned16(p.weight) && a.row_bytes % 16 == 0;
  e.add_to_out = p.accumulate;
}

void run_gemv(GemvArgs& a, DType dt, Context& ctx) {
  int64_t rows = 0;
  for (int k = 0; k < a.count; ++k) rows += a.e[k].out_features;
  if (rows > INT_MAX) throw Error("cuda::matmul_group", cat("group of ", rows, " output rows exceeds the grid"));
  const int per_block = matmul_plan::gemv_rows_per_block(rows, a.n, sm_count(ctx));
  switch (dt) {
    case DType::f32: launch_gemv_tokens<gemv::F32>(a, per_block, ctx.stream()); break;
    case DType::bf16: launch_gemv_tokens<gemv::BF16>(a, per_block, ctx.stream()); break;
    case DType::f16: launch_gemv_tokens<gemv::F16>(a, per_block, ctx.stream()); break;
    default: launch_gemv_tokens<gemv::F8E4M3>(a, per_block, ctx.stream()); break;
  }
}

// Whether b can join a's GEMV launch: the same activations read the same way, the same weight
// format (FP8: the same block_in, which fixes the scale columns and the vector path), the same fused
// norm (weight and eps: the launch normalizes x once for all; accumulate is per entry).
bool shares_gemv(const MatmulParams& a, int64_t axs, const MatmulParams& b, int64_t bxs) {
  const bool same_norm = a.norm_weight == b.norm_weight && (!a.norm_weight || a.norm_eps == b.norm_eps);
  return a.x == b.x && a.n == b.n && a.in_features == b.in_features && axs == bxs && same_norm &&
         a.weight_dtype == b.weight_dtype && (a.weight_dtype != DType::f8_e4m3 || a.block_in == b.block_in);
}

}  // namespace

void matmul(const MatmulParams& p, Context& ctx) {
  const auto [xs, os] = validate(p);
  const int64_t in = p.in_features, O = p.out_features;
  const DType dt = p.weight_dtype;
  const bool fp8 = dt == DType::f8_e4m3;
  if (p.n == 0) return;
  const int64_t scale_cols = fp8 ? (in + p.block_in - 1) / p.block_in : 0;

  if (p.n <= kGemvMaxTokens) {
    GemvArgs a = gemv_args(p, xs);
    add_entry(a, p, os);
    run_gemv(a, dt, ctx);
    return;
  }

  cudaStream_t stream = ctx.stream();
  const float beta = p.accumulate ? 1.0f : 0.0f;  // the fused residual add: cuBLAS adds into out
  const unsigned rows = static_cast<unsigned>(p.n);  // validated <= INT_MAX
  if (dt == DType::f32) {
    if (!p.norm_weight) {
      detail::gemm_xwt(ctx, p.out, os, p.weight, p.x, xs, DType::f32, p.n, in, O, beta);
    } else {  // normalized x, fp32, dense [n, in] in the workspace
      auto* xn = static_cast<float*>(ctx.workspace(static_cast<size_t>(p.n * in) * sizeof(float)));
      launch_kernel(norm_rows_kernel<float>, rows, kNormThreads, 0, stream, xn, p.x, p.norm_weight, in, xs, p.norm_eps);
      MOERUN_CUDA_CHECK(cudaGetLastError());
      detail::gemm_xwt(ctx, p.out, os, p.weight, xn, in, DType::f32, p.n, in, O, beta);
    }
  } else {
    // x rounded to the GEMM's 16-bit type (normalized first with a fused norm), dense [n, in]; FP8 also
    // needs a bf16 tile of weight rows.
    const size_t x_bytes = round_up(static_cast<size_t>(p.n * in) * 2, kWorkspaceAlign);
    const int64_t tile_rows = fp8 ? std::clamp<int64_t>(kFp8TileBytes / (2 * in), 1, O) : 0;
    char* ws = static_cast<char*>(ctx.workspace(x_bytes + static_cast<size_t>(tile_rows * in) * 2));
    const DType gemm_type = dt == DType::f16 ? DType::f16 : DType::bf16;
    if (gemm_type == DType::f16) {
      auto* xh = reinterpret_cast<__half*>(ws);
      if (p.norm_weight) {
        launch_kernel(norm_rows_kernel<__half>, rows, kNormThreads, 0, stream, xh, p.x, p.norm_weight, in, xs,
                      p.norm_eps);
      } else {
        launch_kernel(round_rows_kernel<__half>, elt_blocks(p.n * in), kEltThreads, 0, stream, xh, p.x, p.n, in, xs);
      }
    } else {
      auto* xb = reinterpret_cast<__nv_bfloat16*>(ws);
      if (p.norm_weight) {
        launch_kernel(norm_rows_kernel<__nv_bfloat16>, rows, kNormThreads, 0, stream, xb, p.x, p.norm_weight, in, xs,
                      p.norm_eps);
      } else {
        launch_kernel(round_rows_kernel<__nv_bfloat16>, elt_blocks(p.n * in), kEltThreads, 0, stream, xb, p.x, p.n, in,
                      xs);
      }
    }
    MOERUN_CUDA_CHECK(cudaGetLastError());
    if (!fp8) {
      detail::gemm_xwt(ctx, p.out, os, p.weight, ws, in, gemm_type, p.n, in, O, beta);
    } else {
      auto* tile = reinterpret_cast<__nv_bfloat16*>(ws + x_bytes);
      for (int64_t o0 = 0; o0 < O; o0 += tile_rows) {  // stream order keeps each tile until its GEMM has read it
        const int64_t tr = std::min(tile_rows, O - o0);
        launch_kernel(dequant_fp8_kernel, elt_blocks(tr * in), kEltThreads, 0, stream, tile,
                      static_cast<const uint8_t*>(p.weight), p.weight_scale, o0, tr, in, p.block_out, p.block_in,
                      scale_cols);
        MOERUN_CUDA_CHECK(cudaGetLastError());
        detail::gemm_xwt(ctx, p.out + o0, os, tile, ws, in, DType::bf16, p.n, in, tr, beta);
      }
    }
  }
  // With accumulate this is (out + x W^T) + b: the bias after cuBLAS's out += x W^T, where the CPU adds
  // out + (x W^T + b): the same sum, rounded in another order.
  if (p.bias) {
    launch_kernel(add_bias_kernel, elt_blocks(p.n * O), kEltThreads, 0, stream, p.out, p.bias, p.n, O, os);
    MOERUN_CUDA_CHECK(cudaGetLastError());
  }
}

void matmul_group(const MatmulParams* ps, size_t count, Context& ctx) {
  if (count > static_cast<size_t>(kGemvMaxEntries))
    throw Error("cuda::matmul_group", cat("at most ", kGemvMaxEntries, " matmuls per group, got ", count));
  if (count > 0 && !ps) throw Error("cuda::matmul_group", "ps is null");
  std::pair<int64_t, int64_t> strides[kGemvMaxEntries];
  for (size_t i = 0; i < count; ++i) strides[i] = validate(ps[i]);  // all checked before any runs
  bool done[kGemvMaxEntries] = {};
  for (size_t i = 0; i < count; ++i) {
    if (done[i]) continue;
    done[i] = true;
    const MatmulParams& p = ps[i];
    if (p.n == 0) continue;
    if (p.n > kGemvMaxTokens) {
      matmul(p, ctx);
      continue;
    }
    // Entry i and every later entry reading the same x the same way: one launch.
    GemvArgs a = gemv_args(p, strides[i].first);
    add_entry(a, p, strides[i].second);
    for (size_t j = i + 1; j < count; ++j) {
      if (done[j] || !shares_gemv(p, strides[i].first, ps[j], strides[j].first)) continue;
      done[j] = true;
      add_entry(a, ps[j], strides[j].second);
    }
    run_gemv(a, p.weight_dtype, ctx);
  }
}

}  // namespace moerun::cuda
