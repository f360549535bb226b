#pragma once
// The cuBLAS GEMM behind cuda::matmul's many-token path, shared with cuda::moe's prefill (which
// gathers its activations straight into the weights' dtype and so skips matmul's conversion), and the
// host-side launch arithmetic of cuda::matmul (which path, how many rows per GEMV block, how many
// kernel launches a call costs). The arithmetic is plain constexpr C++ (no CUDA header), so g++ can
// compile it too (a launch counter, the CPU suite). Implemented in kernels/cuda/matmul.cu.

#include <cstdint>

#include "moerun/dtype.h"

namespace moerun::cuda {
class Context;

namespace detail {

// out[t, o] = sum_i x[t, i] * W[o, i] + beta * out[t, o] for t < n, o < out_features, fp32 accumulation
// and output (beta 0: out is only written; 1: the fused residual add).
// W is [out_features, in] row-major (rows contiguous); x is [n, in] with row stride ldx and the same
// dtype as W (f32, bf16 or f16); out has row stride ldo. f32 runs in true fp32 (no TF32). Asynchronous
// on ctx's stream; needs no workspace of its own.
void gemm_xwt(Context& ctx, float* out, int64_t ldo, const void* w, const void* x, int64_t ldx, DType dtype, int64_t n,
              int64_t in, int64_t out_features, float beta = 0.0f);

}  // namespace detail

namespace matmul_plan {

inline constexpr int64_t kGemvMaxTokens = 8;        // n above this takes the cuBLAS path
inline constexpr int64_t kFp8TileBytes = 64 << 20;  // bf16 dequantization tile of the FP8 GEMM path
inline constexpr int kGemvMaxEntries = 32;          // a group launch's entry table (cpu::kMatmulGroupMax)

// Rows per GEMV block: the most rows the token count allows (4 for n <= 2, 2 for n <= 8: a thread
// holds rows x tokens accumulators, and more rows reuse each x load for more weights) unless that
// leaves fewer than 2 blocks per SM, then fewer rows (2, then 1) so small outputs (router 256 rows,
// kv_a 576) still spread over the whole chip. The row count never changes a row's bits (each row's
// sum has the same order whatever its neighbours), so a group and its entries may choose differently.
// Split-K is deliberately not used: it would add a reduce launch (a graph node, ~1-2 us) to save a
// fraction of a matrix that takes < 1 us to stream, and it would change the summation order.
constexpr int gemv_rows_per_block(int64_t total_rows, int64_t n, int sm_count) {
  const int max_rows = n <= 2 ? 4 : 2;
  const int64_t target = 2 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  for (int r = max_rows; r > 1; r /= 2)
    if ((total_rows + r - 1) / r >= target) return r;
  return 1;
}

// Kernel launches (graph kernel nodes) one cuda::matmul enqueues; cuBLAS GEMMs count as one each
// (its heuristics may add a split-K reduce of its own). GEMV: 1 (bias, fused norm and accumulate
// included). GEMM: f32 1, + 1 with a fused norm (x normalized into the workspace); bf16/f16 2 (x
// rounded, or normalized and rounded, GEMM); FP8 2 + 2 per 64 MB bf16 tile of dequantized rows beyond
// the first (round x, then per tile dequantize + GEMM); + 1 for a bias. accumulate adds none (cuBLAS
// beta = 1).
constexpr int64_t matmul_launches(int64_t n, int64_t in, int64_t out_features, DType dtype, bool bias,
                                  bool norm = false) {
  if (n <= 0) return 0;
  if (n <= kGemvMaxTokens) return 1;
  int64_t k = dtype == DType::f32 && norm ? 2 : 1;  // (the norm +) the GEMM, or the first tile's GEMM
  if (dtype == DType::bf16 || dtype == DType::f16) k = 2;
  if (dtype == DType::f8_e4m3) {
    int64_t tile_rows = kFp8TileBytes / (2 * (in > 0 ? in : 1));
    tile_rows = tile_rows < 1 ? 1 : tile_rows > out_features ? out_features : tile_rows;
    const int64_t tiles = tile_rows > 0 ? (out_features + tile_rows - 1) / tile_rows : 0;
    k = 1 + 2 * tiles;
  }
  return k + (bias ? 1 : 0);
}

}  // namespace matmul_plan
}  // namespace moerun::cuda
