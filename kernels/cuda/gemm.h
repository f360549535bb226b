#pragma once
// The cuBLAS GEMM behind cuda::matmul's many-token path, shared with cuda::moe's prefill (which
// gathers its activations straight into the weights' dtype and so skips matmul's conversion).
// Implemented in kernels/cuda/matmul.cu.

#include <cstdint>

#include "moerun/dtype.h"

namespace moerun::cuda {
class Context;

namespace detail {

// out[t, o] = sum_i x[t, i] * W[o, i] for t < n, o < out_features, fp32 accumulation and output.
// W is [out_features, in] row-major (rows contiguous); x is [n, in] with row stride ldx and the same
// dtype as W (f32, bf16 or f16); out has row stride ldo. f32 runs in true fp32 (no TF32). Asynchronous
// on ctx's stream; needs no workspace of its own.
void gemm_xwt(Context& ctx, float* out, int64_t ldo, const void* w, const void* x, int64_t ldx, DType dtype, int64_t n,
              int64_t in, int64_t out_features);

}  // namespace detail
}  // namespace moerun::cuda
