#pragma once
// Device building blocks of the memory-bound matrix-vector products: the GEMV path of cuda::matmul
// (kernels/cuda/matmul.cu) and the decode path of cuda::moe (kernels/cuda/moe.cu).
//
// Shape of the work: a block owns a few weight rows ([in] each, of one of four storage types) and
// its threads split the row length between them. Each thread streams 16-byte vectors of every row it
// owns (vector v of a row goes to thread v % blockDim.x, so a warp reads 512 contiguous bytes per row
// per step), keeps two vectors of each row in flight before the first use, widens them to fp32 in
// registers and multiplies them into up to 8 tokens at once, so every weight byte is read once for
// all tokens. x (fp32) is read with ordinary cached loads: it is small and every block reads it, so it
// stays in L1/L2; weights bypass L1 (they are read once). A fused RMSNorm of x (Norm) rides on the
// same x loads: per element a square into the token's sum and a product with the norm weight, and
// 1/rms once per output. Partial sums are reduced with warp shuffles, then across warps through
// shared memory, in a fixed order (deterministic).

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/launch.h"

namespace moerun::cuda::gemv {

constexpr int kMaxThreads = 256;  // 8 warps: a row of 2048 bf16 is one vector per thread
constexpr int kMaxWarps = kMaxThreads / 32;
static_assert(kMaxThreads % 32 == 0, "blocks are whole warps");

// Weight storage tags: bytes per element; a 16-byte vector holds 16 / kBytes elements.
struct F32 {
  static constexpr int kBytes = 4;
};
struct BF16 {
  static constexpr int kBytes = 2;
};
struct F16 {
  static constexpr int kBytes = 2;
};
struct F8E4M3 {  // with block scales (DeepSeek-V3)
  static constexpr int kBytes = 1;
};
template <class W>
inline constexpr int kVec = 16 / W::kBytes;
template <class W>
inline constexpr bool kScaled = W::kBytes == 1;

// Threads for a row of `in` elements: whole warps, at most kMaxThreads, and at least two 16-byte
// vectors per thread where the row allows, so every thread issues both loads of its unrolled step
// before waiting (short rows would otherwise leave threads idle and pay a block reduction per row).
inline int threads_for(int64_t in, int vec) {
  const int64_t vectors = (in + vec - 1) / vec;
  const int64_t warps = (vectors + 63) / 64;
  return static_cast<int>(warps < 1 ? 32 : warps > kMaxWarps ? kMaxThreads : warps * 32);
}

// A 16-byte read of data nobody else reads soon: read-only path, no L1 allocation.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
#ifdef __CUDA_ARCH__
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
#else  // a host build of these helpers (a CPU harness stepping through the index arithmetic)
  v = *static_cast<const uint4*>(p);
#endif
  return v;
}

__device__ __forceinline__ float fp8_e4m3_to_float(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));  // exact; 0x7f/0xff are NaN
}

__device__ __forceinline__ float half_bits_to_float(uint16_t h) {
  __half_raw r;
  r.x = h;
  return __half2float(__half(r));
}

// The elements of one 16-byte vector, widened to fp32 (element j is at byte offset j * kBytes; the
// GPU is little-endian, so the low half of a 32-bit word comes first).
__device__ __forceinline__ void widen(F32, const uint4& v, float (&f)[4]) {
  f[0] = __uint_as_float(v.x);
  f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z);
  f[3] = __uint_as_float(v.w);
}

__device__ __forceinline__ void widen(BF16, const uint4& v, float (&f)[8]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = __uint_as_float(u[j] << 16);
    f[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
  }
}

__device__ __forceinline__ void widen(F16, const uint4& v, float (&f)[8]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = half_bits_to_float(static_cast<uint16_t>(u[j] & 0xffffu));
    f[2 * j + 1] = half_bits_to_float(static_cast<uint16_t>(u[j] >> 16));
  }
}

__device__ __forceinline__ void widen(F8E4M3, const uint4& v, float (&f)[16]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // sm_89+: one cvt per byte pair; older chips emulate it
      const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(u[j] >> (16 * h)), __NV_E4M3);
      f[4 * j + 2 * h] = half_bits_to_float(r.x);
      f[4 * j + 2 * h + 1] = half_bits_to_float(r.y);
    }
  }
}

// Element i of a row, widened (the scalar path: row tails and rows that are not 16-byte aligned).
__device__ __forceinline__ float load_elem(F32, const void* row, int64_t i) {
  return __ldg(static_cast<const float*>(row) + i);
}
__device__ __forceinline__ float load_elem(BF16, const void* row, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(__ldg(static_cast<const unsigned short*>(row) + i)) << 16);
}
__device__ __forceinline__ float load_elem(F16, const void* row, int64_t i) {
  return half_bits_to_float(__ldg(static_cast<const unsigned short*>(row) + i));
}
__device__ __forceinline__ float load_elem(F8E4M3, const void* row, int64_t i) {
  return fp8_e4m3_to_float(static_cast<uint8_t>(__ldg(static_cast<const unsigned char*>(row) + i)));
}

// V consecutive floats of x starting at p: float4 loads when p is 16-byte aligned (x_vec), else scalar.
template <int V>
__device__ __forceinline__ void load_x(float (&xv)[V], const float* __restrict__ p, bool x_vec) {
  if (x_vec) {
#pragma unroll
    for (int q = 0; q < V / 4; ++q) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(p) + q);
      xv[4 * q] = f.x;
      xv[4 * q + 1] = f.y;
      xv[4 * q + 2] = f.z;
      xv[4 * q + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) xv[j] = __ldg(p + j);
  }
}

// The fused RMSNorm of x (cuda::matmul's norm_weight), in one pass with the products: as a thread
// loads x[t, i] it adds x^2 to ss[t] (the same loads, so every x element of the row is squared exactly
// once over the block) and multiplies by weight[i] (one 16-byte load per vector, shared by all tokens
// and rows): x for few tokens (NT <= 2, where a block has up to 4 rows), else the widened weights
// (NT >= 4: at most 2 rows), whichever takes fewer multiplies; NT depends only on n, so a matmul and
// the same entry in a group still multiply alike. The caller reduces ss with the products and scales
// token t's sums by
// inv_rms[t] = rsqrt(ss[t] / in + eps) at the end: sum_i W[o, i] * (w[i] * x[t, i]) * inv_rms[t] is the
// matmul of the normalized x up to rounding, with no extra pass over x and no extra barrier.
template <int NT>
struct Norm {
  const float* weight = nullptr;  // [in]
  bool vec = false;               // weight is 16-byte aligned
  float ss[NT] = {};              // this thread's share of sum_i x[t, i]^2
};
template <bool kNorm, int NT>
inline constexpr bool kNormIntoWeights = kNorm && NT >= 4;

// The rows one block multiplies: R row pointers (rows past the matrix point at a valid row; their
// results are dropped) and, for FP8, each row's block-scale row and the scale block width.
template <int R>
struct Rows {
  const void* w[R];
  const float* scale[R];  // FP8 only: scale[r][i / block_in] scales element i of row r
  uint32_t block_in;      // FP8 only
};

// acc[r][t] += sum over the vector's elements of W[r, i0 + j] * x[t, i0 + j], for tokens t < n.
// kNorm: x is normalized as it is loaded (Norm above).
template <class W, int R, int NT, bool kNorm>
__device__ __forceinline__ void fma_vector(float (&acc)[R][NT], const uint4 (&wv)[R], const Rows<R>& rows,
                                           const float* __restrict__ x, int64_t x_stride, int n, int64_t i0,
                                           bool x_vec, Norm<NT>& norm) {
  constexpr int V = kVec<W>;
  float nw[V];
  if constexpr (kNorm) load_x<V>(nw, norm.weight + i0, norm.vec);
  float wf[R][V];
#pragma unroll
  for (int r = 0; r < R; ++r) widen(W{}, wv[r], wf[r]);
  if constexpr (kNormIntoWeights<kNorm, NT>) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int j = 0; j < V; ++j) wf[r][j] *= nw[j];
  }
  float scale[R];
  if constexpr (kScaled<W>) {
    // The host sends FP8 down this path only when block_in is a multiple of 16, so one vector lies in
    // one scale block; in < 2^31 there, so 32-bit division is exact.
    const uint32_t col = static_cast<uint32_t>(i0) / rows.block_in;
#pragma unroll
    for (int r = 0; r < R; ++r) scale[r] = __ldg(rows.scale[r] + col);
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    if (t >= n) break;
    float xv[V];
    load_x<V>(xv, x + t * x_stride + i0, x_vec);
    if constexpr (kNorm) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        norm.ss[t] = fmaf(xv[j], xv[j], norm.ss[t]);
        if constexpr (!kNormIntoWeights<kNorm, NT>) xv[j] *= nw[j];
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if constexpr (kScaled<W>) {
        float d = 0.0f;
#pragma unroll
        for (int j = 0; j < V; ++j) d = fmaf(wf[r][j], xv[j], d);
        acc[r][t] = fmaf(scale[r], d, acc[r][t]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) acc[r][t] = fmaf(wf[r][j], xv[j], acc[r][t]);
      }
    }
  }
}

// acc[r][t] += W[r, i] * x[t, i] for one element i.
template <class W, int R, int NT, bool kNorm>
__device__ __forceinline__ void fma_scalar(float (&acc)[R][NT], const Rows<R>& rows, const float* __restrict__ x,
                                           int64_t x_stride, int n, int64_t i, Norm<NT>& norm) {
  float nw = 1.0f;
  if constexpr (kNorm) nw = __ldg(norm.weight + i);
  float w[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    w[r] = load_elem(W{}, rows.w[r], i);
    if constexpr (kScaled<W>) w[r] *= __ldg(rows.scale[r] + static_cast<uint32_t>(i) / rows.block_in);
    if constexpr (kNormIntoWeights<kNorm, NT>) w[r] *= nw;
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    if (t >= n) break;
    float xv = __ldg(x + t * x_stride + i);
    if constexpr (kNorm) {
      norm.ss[t] = fmaf(xv, xv, norm.ss[t]);
      if constexpr (!kNormIntoWeights<kNorm, NT>) xv *= nw;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r][t] = fmaf(w[r], xv, acc[r][t]);
  }
}

// This thread's share of the R x n dot products over [0, in). `vec`: every row is 16-byte aligned
// (and, for FP8, block_in is a multiple of 16), so whole vectors can be streamed; the last in % V
// elements go through the scalar path. x_vec: every x row start used is 16-byte aligned. kNorm: x is
// normalized on the way (Norm; every element i < in is visited by exactly one thread, once).
template <class W, int R, int NT, bool kNorm>
__device__ __forceinline__ void accumulate(float (&acc)[R][NT], const Rows<R>& rows, const float* __restrict__ x,
                                           int64_t x_stride, int n, int64_t in, bool vec, bool x_vec,
                                           Norm<NT>& norm) {
  constexpr int V = kVec<W>;
  const int64_t step = blockDim.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t nvec = in / V;
    // Two vectors per row and thread are loaded before either is used, so each thread has 2R
    // independent 16-byte loads in flight (latency hiding without relying on occupancy alone).
    for (int64_t v = threadIdx.x; v < nvec; v += 2 * step) {
      const int64_t v1 = v + step;
      const bool has1 = v1 < nvec;
      uint4 a[R], b[R];
#pragma unroll
      for (int r = 0; r < R; ++r) a[r] = load_stream(static_cast<const char*>(rows.w[r]) + v * 16);
#pragma unroll
      for (int r = 0; r < R; ++r)
        b[r] = has1 ? load_stream(static_cast<const char*>(rows.w[r]) + v1 * 16) : make_uint4(0u, 0u, 0u, 0u);
      fma_vector<W, R, NT, kNorm>(acc, a, rows, x, x_stride, n, v * V, x_vec, norm);
      if (has1) fma_vector<W, R, NT, kNorm>(acc, b, rows, x, x_stride, n, v1 * V, x_vec, norm);
    }
    tail = nvec * V;
  }
  for (int64_t i = tail + threadIdx.x; i < in; i += step)
    fma_scalar<W, R, NT, kNorm>(acc, rows, x, x_stride, n, i, norm);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums each of the M values over the block: totals[m] holds the sum for every thread after the
// call. Warps reduce with shuffles, then totals[m] adds the per-warp sums in warp order, so the
// result does not depend on scheduling. Call once per kernel (the shared arrays are not re-armed).
template <int M>
__device__ __forceinline__ void block_sum(const float (&v)[M], float (&partial)[kMaxWarps][M], float (&totals)[M]) {
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = warp_sum(v[m]);
    if (lane == 0) partial[warp][m] = s;
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float s = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) s += partial[w][threadIdx.x];
    totals[threadIdx.x] = s;
  }
  __syncthreads();
}

}  // namespace moerun::cuda::gemv
