#pragma once
// Internals of cpu::matmul shared by its per-instruction-set files (matmul.cpp dispatches,
// matmul_avx512.cpp and matmul_avx2.cpp hold the vector kernels) and by the tests, which run every
// path this CPU supports against the scalar one.
//
// A call is prepared once by the calling thread (activations padded, reordered or quantized into
// the context's call scratch, which all workers read), then output rows [o0, o1) are computed per
// thread, each with its own worker scratch.

#include <cstdint>

#include "kernels/cpu/context.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"

namespace moerun::cpu::detail {

// Few tokens (decode, and a batched decode step of up to 16 sequences) read each weight straight
// from its storage for all of them, in passes of a few tokens over rows that stay in L1; more tokens
// go through panels of rows packed once per call (AVX-512: outer-product tiles; AVX2: widened rows
// reused across a cache-sized tile of tokens). Packing converts every weight to fp32 per call, which
// below about 16 tokens costs more than the passes (default model, 2 threads, 8 tokens per step:
// measured in docs/performance.md).
inline constexpr int64_t kGemvMaxTokens = 16;

// Software prefetch of the decode kernels, which stream R weight rows side by side: each row is
// prefetched kPrefetchNear bytes ahead into L1, and the same offset in the rows whole passes ahead
// (at least kPrefetchFar bytes) into L2. The far one is for short rows: the hardware's L2 streamer
// learns each 4 KiB page anew and cannot guess the next pass's rows, so without it every pass began
// with R cold misses (measured on q8_0 2048 x 2048, 1 thread: 9.2 -> 12 GB/s of a 14.5 GB/s ceiling).
inline constexpr int64_t kPrefetchNear = 1024;
inline constexpr int64_t kPrefetchFar = 8192;
// Bytes from a row's position to the same position whole passes (of pass_bytes) ahead.
constexpr int64_t prefetch_far_offset(int64_t pass_bytes) noexcept {
  const int64_t passes = (kPrefetchFar + pass_bytes - 1) / pass_bytes;
  return (passes > 0 ? passes : 1) * pass_bytes;
}

// FP8 decode kernels step through each weight row 64 bytes (one cache line) at a time; their scaled
// activations are padded to a multiple of this.
inline constexpr int64_t kF8Chunk = 64;
// FP8 weights take the decode kernels up to this many tokens, in groups of up to 4 per pass over
// rows that stay in L1: widening a weight once per 4 tokens in registers costs less than packing it
// into a panel (measured on 2048 x 2048, 1 thread: 5 tokens 1.46 -> 0.51 ms, 16 tokens 2.2 -> 1.35
// ms; even at 64 tokens no slower), but every 4 rows read all tokens' scaled x, which should stay in
// L2 (16 x 7168 floats: 448 KiB).
inline constexpr int64_t kF8GemvMaxTokens = 16;

// The block scales of FP8 weight row o: scale[o / block_out, :] (ceil(in / block_in) of them).
inline const float* f8_scale_row(const MatmulParams& p, int64_t o) noexcept {
  return p.weight_scale + (o / p.block_out) * ((p.in_features + p.block_in - 1) / p.block_in);
}

// One prepared call.
struct MatmulCall {
  const MatmulParams* p = nullptr;
  int64_t xs = 0, os = 0;  // resolved row strides of x and out
  // Float weights, n <= kGemvMaxTokens: token t's x at xp + t * kp, zero padded to kp (a multiple of
  // the chunk: 32 floats for avx512, 16 for avx2). For bf16 weights each chunk is reordered as its
  // even elements then its odd elements, matching how a vector of bf16 widens (see the kernels).
  // f8_e4m3 weights, n <= kF8GemvMaxTokens, vector kernels: xp stays null and kp is in_features rounded
  // up to kF8Chunk; each worker scales x by one row block's scales at a time into its own scratch
  // (WorkerScratch::f8x, token t at + t * kp, zero padded; avx512 reorders each 32 as bf16 does),
  // since the scales differ per row block.
  const float* xp = nullptr;
  int64_t kp = 0;
  // Quantized weights (q8_0, q4_0): token t's activations as int8 per 32-block, xq + t * kp (kp a
  // multiple of 64, zero padded), with per-block scales xd[t * nb + b] and sums xsum[t * nb + b].
  const int8_t* xq = nullptr;
  const float* xd = nullptr;
  const int32_t* xsum = nullptr;
  int64_t nb = 0;
  // avx512 only, per token and unit of blocks that one 64-byte weight load covers (nu units of 2
  // blocks for q8_0, 4 for q4_0): 16 int32 lanes starting the VNNI dot (-offset * sum in each
  // block's first lane) and 16 float lanes of the activation scales (16 / unit lanes per block).
  const int32_t* xcorr = nullptr;
  const float* xdp = nullptr;
  int64_t nu = 0;
  // avx512 q4_0 only: per token and unit of 4 blocks, the blocks' first halves (16 activations
  // each) then their second halves, 128 bytes, to match how the weights unpack: xq4 + (t * nu + u) * 128.
  const int8_t* xq4 = nullptr;
};

// Output rows [o0, o1) on each instruction set, with the scratch of the worker running them.
void rows_scalar(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s);
void rows_avx2(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s);
void rows_avx512(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s);

// Activations for quantized weights: per token and 32-block, d = max|x| / 127 and
// q = round(x * 127 / max|x|) (nearest even), the same bits on every instruction set.
void quantize_acts_scalar(const float* x, int64_t xs, int64_t n, int64_t k, int64_t kp, int8_t* q, float* d,
                          int32_t* sum);
void quantize_acts_avx512(const float* x, int64_t xs, int64_t n, int64_t k, int64_t kp, int8_t* q, float* d,
                          int32_t* sum);

// Weight row o of any float dtype (f32, bf16, f16, f8_e4m3 with its block scales) as k floats. The
// scalar reference: f8_e4m3 elements are fp8 * scale rounded once (to nearest even), which the
// vector widenings (AVX-512 GEMM panels, AVX2 GEMM rows) reproduce bit for bit.
void widen_row(const MatmulParams& p, int64_t o, float* dst);
void widen_row_f8_avx2(const MatmulParams& p, int64_t o, float* dst);

// out[j] += alpha * scale[j / block] * fp8(w[j]) for j < n: one row of a transposed FP8 weight
// (head_matmul), block scales per `block` columns. The vector ones round alpha * scale once, then
// accumulate with one FMA per element; the scalar one multiplies alpha * scale by the exact weight.
// E4M3's NaN bytes read as finite +-480 on the vector paths (see matmul_avx512.cpp).
void axpy_f8_scalar(float* out, float alpha, const uint8_t* w, const float* scale, int64_t n, int64_t block);
void axpy_f8_avx2(float* out, float alpha, const uint8_t* w, const float* scale, int64_t n, int64_t block);
void axpy_f8_avx512(float* out, float alpha, const uint8_t* w, const float* scale, int64_t n, int64_t block);
void axpy_f8(Isa isa, float* out, float alpha, const uint8_t* w, const float* scale, int64_t n, int64_t block);

// The matmul on a chosen instruction set (which this CPU must support).
void matmul_isa(const MatmulParams& p, Context& ctx, Isa isa);
void matmul_group_isa(const MatmulParams* ps, size_t count, Context& ctx, Isa isa);
// The matmul run by one worker alone, inside another op's chunk (no dispatch), with its scratch.
void matmul_alone(const MatmulParams& p, WorkerScratch& s, Isa isa);

}  // namespace moerun::cpu::detail
