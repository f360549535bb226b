// Causal attention of new tokens over an fp32 cache on the GPU (GQA, MQA and MLA's absorbed form); the CPU
// twin is kernels/cpu/attention.cpp. Token t attends cache rows [0, positions[t]], with positions read on
// the device so a captured decode graph stays valid as they grow; the grid is sized by p.max_len only.
//
// One tiled kernel serves decode and prefill (the arithmetic is in attention_plan.h):
//   grid (query tiles, KV heads, splits); block = 256 threads; one block computes, for kQueryTile = 16 query
//   rows of one KV head's group (token-major: all heads of the group for one token, then the next token),
//   flash attention over one split of the cache: tiles of 32 (or 16) cache rows are copied into shared memory
//   with cp.async (double-buffered when it fits), scores S = Q K^T come from 4x4 register micro-tiles (each
//   thread a 4-query x 4-row block over one slice of the head dimension, 16 FMAs per two float4 loads), an
//   online softmax keeps a running max and sum per query, and O += P V accumulates in registers (each thread
//   4 queries x 8 value columns). Every K/V row is read from memory once per block, i.e. once for all the
//   query heads of its group: the MLA absorbed form (1 KV head, k == v, qk 576, v 512) reads the latent
//   cache once per split for 16 heads, and v aliasing k is not loaded twice.
//   - Decode (few query tiles): the cache is split so the device has ~2 blocks per multiprocessor; each
//     block writes an unnormalised partial (out, max, sum) to the workspace and combine_kernel merges the
//     splits of each (token, head) in split order (deterministic).
//   - Prefill (many query tiles): one split; each block runs over rows up to its own tokens' longest length
//     and writes the normalised output itself.
// Where the tile does not fit the device's shared memory (large dims on a 99 KB part), warp_kernel does
// the same math with one warp per (token, head) and split, reading K/V per query head: slower, same result.
//
// Bandwidth: GQA decode is memory-bound (4 FLOP per byte at head_dim 128, group 8) and streams the cache
// with 16-byte cp.async. The MLA absorbed form does 2 * 1088 FLOP per query head per 2304-byte row, so
// with 16 heads it sits at the fp32 FMA roofline of an H100/H200 (~15 FLOP/byte) and with 128 heads it is
// compute-bound in fp32 (8 query tiles re-read each split from L2); only tensor cores would change that.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

namespace plan = attention_plan;
constexpr int kThreads = plan::kThreads;
constexpr int kQT = plan::kQueryTile;
static_assert(kQT == 16 && kThreads == 256, "the micro-tile mappings below assume 16 queries and 256 threads");
static_assert(plan::kMaxVDim == 2 * 64 * 4, "PV: 64 threads x float4 x 2 chunks cover the value columns");

struct Args {
  float* out;                // [n_tokens, n_heads, v_dim]
  const float* q;            // [n_tokens, n_heads, qk_dim] by q strides
  const float* k;            // [max_len, n_kv_heads, qk_dim] by k strides
  const float* v;            // [max_len, n_kv_heads, v_dim] by v strides
  const int64_t* positions;  // [n_tokens]
  float* part_o;             // [n_splits, n_tokens * n_heads, v_dim]; nullptr with one split
  float* part_ml;            // [n_splits, n_tokens * n_heads, 2] (max, sum)
  int64_t n_tokens, n_heads, group, qk_dim, v_dim, max_len;
  int64_t q_token_stride, q_head_stride, k_pos_stride, k_head_stride, v_pos_stride, v_head_stride;
  float scale;
  int64_t rows_per_split, n_splits;
  bool v_aliases_k;   // MLA absorbed: values are the first v_dim floats of the key rows already in shared memory
  bool k_vec, v_vec;  // rows can be copied in 16-byte pieces (aligned base and strides, dims % 4 == 0)
};

// Rows token t attends: positions[t] + 1, kept inside the cache so a bad position cannot read past it.
__device__ int64_t attended(const Args& a, int64_t t) { return min(max(a.positions[t] + 1, int64_t{1}), a.max_len); }

// cp.async copies global -> shared without a register round trip; src_bytes < size zero-fills the rest
// (0: nothing is read, the destination becomes zeros).
__device__ void cp_async16(float* dst, const float* src, int src_bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
}
__device__ void cp_async4(float* dst, const float* src, int src_bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
}
__device__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Copies cache rows [r0, r0 + kRows) of one head (row stride pos_stride floats, dim floats each) to shared
// rows `ld` apart. Rows at or past row_end become zeros, so masked rows of the last tile multiply as 0 * 0.
template <int kRows>
__device__ void load_rows(float* dst, const float* head_base, int64_t pos_stride, int64_t dim, int64_t ld, int64_t r0,
                          int64_t row_end, bool vec) {
  if (vec) {
    const int64_t n4 = dim / 4;
    for (int64_t e = threadIdx.x; e < kRows * n4; e += kThreads) {
      const int64_t r = e / n4, c = (e % n4) * 4;
      const bool ok = r0 + r < row_end;
      cp_async16(dst + r * ld + c, head_base + (ok ? r0 + r : 0) * pos_stride + c, ok ? 16 : 0);
    }
  } else {
    for (int64_t e = threadIdx.x; e < kRows * dim; e += kThreads) {
      const int64_t r = e / dim, c = e % dim;
      const bool ok = r0 + r < row_end;
      cp_async4(dst + r * ld + c, head_base + (ok ? r0 + r : 0) * pos_stride + c, ok ? 4 : 0);
    }
  }
}

__device__ void fma4(float& acc, const float4& a, const float4& b) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  acc = fmaf(a.w, b.w, acc);
}

// Reductions over the kWidth lanes of an aligned lane group (kWidth 16 or 32).
template <int kWidth>
__device__ float group_max(float v) {
  for (int o = kWidth / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int kWidth>
__device__ float group_sum(float v) {
  for (int o = kWidth / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ------------------------------------------------------------------------------------------------
// The tiled kernel. Grid (query tiles, KV heads, splits); see the file comment and attention_plan.h.
// Thread roles per tile of kRows cache rows:
//   QK:      kSlices = 256 / kRows slices of the head dimension; within a slice, thread m = tid % kRows owns
//            queries qg*4.. (qg = m / (kRows/4)) x rows rg + (kRows/4)*j (rg = m % (kRows/4), j < 4). Rows of
//            one quarter-warp are consecutive, and rows are an odd number of float4s apart, so their float4
//            reads hit 8 different bank groups; the query reads are broadcasts.
//   softmax: kRows lanes per query, one lane per row: sums the slices, masks, updates max and sum.
//   PV:      thread (pg = tid / 64, vl = tid % 64) owns queries pg*4.. x value columns 4vl.. and 256 + 4vl..
// Capped at 128 registers (no spills at sm_80/89/90) so two blocks share a multiprocessor where shared memory
// allows (GQA: ~95 KB each): two tiles of loads in flight per SM instead of one.
template <int kRows>
__global__ void __launch_bounds__(kThreads, 2) tile_kernel(Args a, plan::TileLayout L) {
  constexpr int kSlices = kThreads / kRows;
  constexpr int kGroups = kRows / 4;
  constexpr int kQPerWarp = 32 / kRows;           // queries per warp in the softmax
  constexpr int kPasses = kQT / (8 * kQPerWarp);  // softmax passes to cover 16 queries with 8 warps
  static_assert(kRows == 16 || kRows == 32, "tile rows");
  static_assert(kPasses * 8 * kQPerWarp == kQT, "softmax covers every query once");

  extern __shared__ float4 smem4[];
  float* sm = reinterpret_cast<float*>(smem4);
  float* qs = sm + L.q;
  float* part = sm + L.part;
  float* ps = sm + L.p;
  float* alpha_s = sm + L.stat;
  float* m_s = alpha_s + kQT;
  float* l_s = m_s + kQT;
  int* len_s = reinterpret_cast<int*>(l_s + kQT);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t g = blockIdx.y, split = blockIdx.z;
  const int64_t nq = a.n_tokens * a.group;  // query rows of this KV head
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kQT;

  if (tid < kQT) len_s[tid] = q0 + tid < nq ? static_cast<int>(attended(a, (q0 + tid) / a.group)) : 0;
  __syncthreads();
  int64_t len_max = 0;
#pragma unroll
  for (int i = 0; i < kQT; ++i) len_max = max(len_max, static_cast<int64_t>(len_s[i]));
  const int64_t row_begin = split * a.rows_per_split;
  const int64_t row_end = min(len_max, row_begin + a.rows_per_split);
  if (row_begin >= row_end) return;  // no query of this block reaches this split; the combine skips it

  // Queries, zero-padded to ld_qk and to 16 rows; key/value padding columns zeroed once (tiles never write them).
  for (int64_t e = tid; e < kQT * L.ld_qk; e += kThreads) {
    const int64_t i = e / L.ld_qk, d = e % L.ld_qk, qr = q0 + i;
    float val = 0.0f;
    if (qr < nq && d < a.qk_dim) {
      const int64_t t = qr / a.group, h = g * a.group + qr % a.group;
      val = a.q[t * a.q_token_stride + h * a.q_head_stride + d];
    }
    qs[e] = val;
  }
  const int64_t k_pad = L.ld_qk - a.qk_dim, v_pad = L.ld_v - a.v_dim;
  for (int64_t e = tid; e < int64_t{L.stages} * kRows * k_pad; e += kThreads)
    sm[L.k + (e / k_pad) * L.ld_qk + a.qk_dim + e % k_pad] = 0.0f;
  if (!a.v_aliases_k)
    for (int64_t e = tid; e < int64_t{L.stages} * kRows * v_pad; e += kThreads)
      sm[L.v + (e / v_pad) * L.ld_v + a.v_dim + e % v_pad] = 0.0f;

  const float* k_head = a.k + g * a.k_head_stride;
  const float* v_head = a.v + g * a.v_head_stride;
  auto load_tile = [&](int64_t r0, int stage) {
    load_rows<kRows>(sm + L.k + int64_t{stage} * kRows * L.ld_qk, k_head, a.k_pos_stride, a.qk_dim, L.ld_qk, r0,
                     row_end, a.k_vec);
    if (!a.v_aliases_k)
      load_rows<kRows>(sm + L.v + int64_t{stage} * kRows * L.ld_v, v_head, a.v_pos_stride, a.v_dim, L.ld_v, r0, row_end,
                       a.v_vec);
    cp_async_commit();
  };

  // Per-thread state: softmax statistics of the queries this thread's lane group owns, and its O block.
  float m_run[kPasses], l_run[kPasses];
#pragma unroll
  for (int i = 0; i < kPasses; ++i) m_run[i] = -INFINITY, l_run[i] = 0.0f;
  float4 acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  // QK roles.
  const int slice = tid / kRows, mq = tid % kRows, qg = mq / kGroups, rg = mq % kGroups;
  const int64_t n4 = (a.qk_dim + 3) / 4;
  const int64_t per_slice = (n4 + kSlices - 1) / kSlices;
  const int64_t c_begin = slice * per_slice, c_end = min(n4, c_begin + per_slice);
  // PV roles.
  const int pg = tid / 64, vl = tid % 64;
  const int64_t v4 = (a.v_dim + 3) / 4;

  const int64_t n_tiles = (row_end - row_begin + kRows - 1) / kRows;
  load_tile(row_begin, 0);
  for (int64_t it = 0; it < n_tiles; ++it) {
    const int stage = L.stages == 2 ? static_cast<int>(it & 1) : 0;
    const int64_t r0 = row_begin + it * kRows;
    cp_async_wait_all();
    __syncthreads();  // this tile is in shared memory for everyone, and everyone is done with the other buffer
    if (L.stages == 2 && it + 1 < n_tiles) load_tile(r0 + kRows, stage ^ 1);
    const float* kt = sm + L.k + int64_t{stage} * kRows * L.ld_qk;
    const float* vt = a.v_aliases_k ? kt : sm + L.v + int64_t{stage} * kRows * L.ld_v;
    const int64_t ldv = a.v_aliases_k ? L.ld_qk : L.ld_v;

    // S partials over this thread's slice of the head dimension.
    float s[4][4] = {};
    for (int64_t c = c_begin; c < c_end; ++c) {
      float4 qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) qv[i] = *reinterpret_cast<const float4*>(qs + (qg * 4 + i) * L.ld_qk + 4 * c);
#pragma unroll
      for (int j = 0; j < 4; ++j) kv[j] = *reinterpret_cast<const float4*>(kt + (rg + kGroups * j) * L.ld_qk + 4 * c);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) fma4(s[i][j], qv[i], kv[j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) part[(slice * kQT + qg * 4 + i) * kRows + rg + kGroups * j] = s[i][j];
    __syncthreads();

    // Online softmax: lane r of a query's lane group owns cache row r0 + r.
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      const int qi = (pass * 8 + warp) * kQPerWarp + lane / kRows;
      const int r = lane % kRows;
      float dot = 0.0f;
#pragma unroll
      for (int sl = 0; sl < kSlices; ++sl) dot += part[(sl * kQT + qi) * kRows + r];
      const int64_t row = r0 + r;
      const float sc = row < len_s[qi] && row < row_end ? dot * a.scale : -INFINITY;
      const float m_new = fmaxf(m_run[pass], group_max<kRows>(sc));
      // A query with no row yet (m_new = -inf) keeps p = 0 and its sums untouched instead of exp(nan).
      const float p = m_new == -INFINITY ? 0.0f : expf(sc - m_new);
      const float alpha = m_new == -INFINITY ? 1.0f : expf(m_run[pass] - m_new);
      l_run[pass] = l_run[pass] * alpha + group_sum<kRows>(p);
      m_run[pass] = m_new;
      ps[r * kQT + qi] = p;
      if (r == 0) alpha_s[qi] = alpha;
    }
    __syncthreads();

    // O = O * alpha + P V over the rows of this tile that exist.
    const float4 al = *reinterpret_cast<const float4*>(alpha_s + pg * 4);
    const float alv[4] = {al.x, al.y, al.z, al.w};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int ch = 0; ch < 2; ++ch) {
        acc[i][ch].x *= alv[i], acc[i][ch].y *= alv[i], acc[i][ch].z *= alv[i], acc[i][ch].w *= alv[i];
      }
    const int rows_here = static_cast<int>(min(static_cast<int64_t>(kRows), row_end - r0));
    for (int r = 0; r < rows_here; ++r) {
      const float4 pv = *reinterpret_cast<const float4*>(ps + r * kQT + pg * 4);
      const float pa[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
      for (int ch = 0; ch < 2; ++ch) {
        const int64_t c4 = vl + 64 * ch;
        if (c4 >= v4) break;
        const float4 vv = *reinterpret_cast<const float4*>(vt + r * ldv + 4 * c4);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc[i][ch].x = fmaf(pa[i], vv.x, acc[i][ch].x);
          acc[i][ch].y = fmaf(pa[i], vv.y, acc[i][ch].y);
          acc[i][ch].z = fmaf(pa[i], vv.z, acc[i][ch].z);
          acc[i][ch].w = fmaf(pa[i], vv.w, acc[i][ch].w);
        }
      }
    }
    if (L.stages == 1 && it + 1 < n_tiles) {
      __syncthreads();  // everyone is done with the only buffer
      load_tile(r0 + kRows, 0);
    }
  }

  // Publish each query's statistics from its owning lane, then write outputs or partials.
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int qi = (pass * 8 + warp) * kQPerWarp + lane / kRows;
    if (lane % kRows == 0) m_s[qi] = m_run[pass], l_s[qi] = l_run[pass];
  }
  __syncthreads();
  const int64_t n_rows_out = a.n_tokens * a.n_heads;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int qi = pg * 4 + i;
    const int64_t qr = q0 + qi;
    if (qr >= nq) break;
    const int64_t t = qr / a.group, h = g * a.group + qr % a.group;
    const int64_t idx = t * a.n_heads + h;
    const bool direct = a.n_splits == 1;
    float* dst = direct ? a.out + idx * a.v_dim : a.part_o + (split * n_rows_out + idx) * a.v_dim;
    const float f = direct ? 1.0f / l_s[qi] : 1.0f;
#pragma unroll
    for (int ch = 0; ch < 2; ++ch) {
      const int64_t c = 4 * (vl + 64 * ch);
      const float vals[4] = {acc[i][ch].x, acc[i][ch].y, acc[i][ch].z, acc[i][ch].w};
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (c + j < a.v_dim) dst[c + j] = vals[j] * f;
    }
    if (!direct && vl == 0) {
      a.part_ml[(split * n_rows_out + idx) * 2] = m_s[qi];
      a.part_ml[(split * n_rows_out + idx) * 2 + 1] = l_s[qi];
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The fallback: grid (ceil(n_tokens * n_heads / 8), 1, splits), one warp per (token, head) row of the output
// and split. Lanes hold q[lane + 32j] and output columns lane + 32j in registers; each cache row is a warp
// dot product, then the same online softmax. Used only where the tile kernel's shared memory does not fit.
constexpr int kWarpQk = plan::kMaxQkDim / 32;  // 18 registers of q per lane
constexpr int kWarpV = plan::kMaxVDim / 32;    // 16 output columns per lane
static_assert(kWarpQk * 32 == plan::kMaxQkDim && kWarpV * 32 == plan::kMaxVDim, "whole warps of dims");

__global__ void __launch_bounds__(kThreads) warp_kernel(Args a) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + warp;
  const int64_t split = blockIdx.z;
  if (idx >= a.n_tokens * a.n_heads) return;
  const int64_t t = idx / a.n_heads, h = idx % a.n_heads, g = h / a.group;
  const int64_t begin = split * a.rows_per_split, end = min(attended(a, t), begin + a.rows_per_split);
  if (begin >= end) return;  // past this token's length: the combine does not read this split
  const float* q = a.q + t * a.q_token_stride + h * a.q_head_stride;
  float qr[kWarpQk], acc[kWarpV];
#pragma unroll
  for (int j = 0; j < kWarpQk; ++j) qr[j] = lane + 32 * j < a.qk_dim ? q[lane + 32 * j] : 0.0f;
#pragma unroll
  for (int j = 0; j < kWarpV; ++j) acc[j] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int64_t row = begin; row < end; ++row) {
    const float* k = a.k + row * a.k_pos_stride + g * a.k_head_stride;
    const float* v = a.v + row * a.v_pos_stride + g * a.v_head_stride;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kWarpQk; ++j)
      if (lane + 32 * j < a.qk_dim) dot = fmaf(qr[j], k[lane + 32 * j], dot);
    const float sc = group_sum<32>(dot) * a.scale;
    const float m_new = fmaxf(m, sc);
    const float alpha = expf(m - m_new), p = expf(sc - m_new);
    l = l * alpha + p;
    m = m_new;
#pragma unroll
    for (int j = 0; j < kWarpV; ++j)
      if (lane + 32 * j < a.v_dim) acc[j] = fmaf(p, v[lane + 32 * j], acc[j] * alpha);
  }
  const bool direct = a.n_splits == 1;
  const int64_t n_rows_out = a.n_tokens * a.n_heads;
  float* dst = direct ? a.out + idx * a.v_dim : a.part_o + (split * n_rows_out + idx) * a.v_dim;
  const float f = direct ? 1.0f / l : 1.0f;
#pragma unroll
  for (int j = 0; j < kWarpV; ++j)
    if (lane + 32 * j < a.v_dim) dst[lane + 32 * j] = acc[j] * f;
  if (!direct && lane == 0) {
    a.part_ml[(split * n_rows_out + idx) * 2] = m;
    a.part_ml[(split * n_rows_out + idx) * 2 + 1] = l;
  }
}

// ------------------------------------------------------------------------------------------------
// Merges split partials: grid (n_tokens * n_heads), 128 threads. Reads exactly the splits that hold rows of
// the token (splits_for_len), in order, so the result does not depend on scheduling:
//   M = max_s m_s,  w_s = exp(m_s - M),  out = sum_s w_s o_s / sum_s w_s l_s.
constexpr int kCombineThreads = 128;

__global__ void __launch_bounds__(kCombineThreads) combine_kernel(Args a) {
  extern __shared__ float4 smem4[];
  float* w = reinterpret_cast<float*>(smem4);  // [n_splits] weights, then [n_splits] sums
  float* ls = w + a.n_splits;
  __shared__ float inv_sum;
  const int64_t idx = blockIdx.x, t = idx / a.n_heads;
  const int64_t n_rows_out = a.n_tokens * a.n_heads;
  const int64_t len = attended(a, t);
  const int64_t ns = min(a.n_splits, max(int64_t{1}, (len + a.rows_per_split - 1) / a.rows_per_split));
  for (int64_t s = threadIdx.x; s < ns; s += kCombineThreads) {
    w[s] = a.part_ml[(s * n_rows_out + idx) * 2];
    ls[s] = a.part_ml[(s * n_rows_out + idx) * 2 + 1];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = -INFINITY;
    for (int64_t s = 0; s < ns; ++s) m = fmaxf(m, w[s]);
    float sum = 0.0f;
    for (int64_t s = 0; s < ns; ++s) {
      w[s] = w[s] == -INFINITY ? 0.0f : expf(w[s] - m);  // a split with no row of this token weighs nothing
      sum += w[s] * ls[s];
    }
    inv_sum = 1.0f / sum;
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < a.v_dim; c += kCombineThreads) {
    float o = 0.0f;
    for (int64_t s = 0; s < ns; ++s)
      if (w[s] != 0.0f) o = fmaf(w[s], a.part_o[(s * n_rows_out + idx) * a.v_dim + c], o);
    a.out[idx * a.v_dim + c] = o * inv_sum;
  }
}

}  // namespace

void attention(const AttentionParams& p, Context& ctx) {
  if (p.n_tokens < 0 || p.n_heads <= 0 || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0)
    throw Error("cuda::attention", "n_heads and n_kv_heads must be positive with n_heads a multiple of n_kv_heads");
  if (p.qk_dim <= 0 || p.qk_dim > plan::kMaxQkDim || p.v_dim <= 0 || p.v_dim > plan::kMaxVDim)
    throw Error("cuda::attention", "qk_dim must be in [1, 576] and v_dim in [1, 512]");
  if (p.max_len <= 0 || p.max_len > 0x7fffffff)
    throw Error("cuda::attention", "max_len (the cache rows any token may attend) must be set, below 2^31, on CUDA");
  if (p.n_kv_heads > 65535) throw Error("cuda::attention", "more than 65535 KV heads");
  if (p.kv_type != KvType::f32)
    throw Error("cuda::attention", std::string("a ") + std::string(kv_type_name(p.kv_type)) +
                                       " KV cache is not supported on CUDA yet (f32 only; --kv-type f32)");
  if (p.n_tokens == 0) return;

  int sm_count = 0, smem_optin = 0;
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, ctx.device()));
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device()));

  const int64_t group = p.n_heads / p.n_kv_heads;
  const bool alias =
      p.v == p.k && p.v_pos_stride == p.k_pos_stride && p.v_head_stride == p.k_head_stride && p.v_dim <= p.qk_dim;
  const plan::TileLayout layout = plan::choose_tile(p.qk_dim, p.v_dim, alias, static_cast<size_t>(smem_optin));
  const int64_t tiles = plan::query_tiles(p.n_tokens, group);
  const int64_t warp_blocks = plan::ceil_div(p.n_tokens * p.n_heads, kThreads / 32);
  const int64_t first_dim = layout.rows ? tiles : warp_blocks;
  if (first_dim > 0x7fffffff) throw Error("cuda::attention", "too many tokens for one launch");
  const plan::Splits splits = plan::plan_splits(p.max_len, layout.rows ? tiles * p.n_kv_heads : warp_blocks, sm_count);

  // One workspace request for all partials (none with one split).
  float* part_o = nullptr;
  float* part_ml = nullptr;
  if (splits.n_splits > 1) {
    part_o = static_cast<float*>(ctx.workspace(plan::workspace_bytes(splits, p.n_tokens, p.n_heads, p.v_dim)));
    part_ml = part_o + plan::partial_out_floats(splits, p.n_tokens, p.n_heads, p.v_dim);
  }

  Args a{};
  a.out = p.out, a.q = p.q, a.k = static_cast<const float*>(p.k), a.v = static_cast<const float*>(p.v), a.positions = p.positions, a.part_o = part_o, a.part_ml = part_ml;
  a.n_tokens = p.n_tokens, a.n_heads = p.n_heads, a.group = group, a.qk_dim = p.qk_dim, a.v_dim = p.v_dim;
  a.max_len = p.max_len;
  a.q_token_stride = p.q_token_stride, a.q_head_stride = p.q_head_stride;
  a.k_pos_stride = p.k_pos_stride, a.k_head_stride = p.k_head_stride;
  a.v_pos_stride = p.v_pos_stride, a.v_head_stride = p.v_head_stride;
  a.scale = p.scale;
  a.rows_per_split = splits.rows_per_split, a.n_splits = splits.n_splits;
  a.v_aliases_k = alias;
  a.k_vec = aligned16(p.k) && p.k_pos_stride % 4 == 0 && p.k_head_stride % 4 == 0 && p.qk_dim % 4 == 0;
  a.v_vec = aligned16(p.v) && p.v_pos_stride % 4 == 0 && p.v_head_stride % 4 == 0 && p.v_dim % 4 == 0;

  const cudaStream_t stream = ctx.stream();
  const dim3 grid(static_cast<unsigned>(first_dim), layout.rows ? static_cast<unsigned>(p.n_kv_heads) : 1u,
                  static_cast<unsigned>(splits.n_splits));
  if (layout.rows) {
    // Raising a kernel's shared-memory limit is not a stream operation; do it outside graph capture (the
    // uncaptured warm-up step that sizes the workspace also sets this, and it persists).
    const auto kernel = layout.rows == 32 ? tile_kernel<32> : tile_kernel<16>;
    if (!ctx.capturing())
      MOERUN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin));
    kernel<<<grid, kThreads, layout.bytes(), stream>>>(a, layout);
  } else {
    warp_kernel<<<grid, kThreads, 0, stream>>>(a);
  }
  MOERUN_CUDA_CHECK(cudaGetLastError());
  if (splits.n_splits > 1) {
    const size_t combine_smem = static_cast<size_t>(2 * splits.n_splits) * sizeof(float);
    combine_kernel<<<static_cast<unsigned>(p.n_tokens * p.n_heads), kCombineThreads, combine_smem, stream>>>(a);
    MOERUN_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace moerun::cuda
