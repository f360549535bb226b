// Causal attention of new tokens over an f32, bf16 or f16 cache on the GPU (GQA, MQA and MLA's absorbed
// form); the CPU twin is kernels/cpu/attention.cpp (q8_0 caches stay CPU-only). Token t attends cache rows
// [0, positions[t]], with positions read on the device so a captured decode graph stays valid as they grow;
// the grid is sized by p.max_len only, while each split's row range follows the live length (the longest
// attended length of the step, read on the device: attention_plan.h), so early in a long context every split
// shares the live rows. The arithmetic is in attention_plan.h.
//
// Three kernels, one split/combine scheme:
//   - mma_kernel (MLA absorbed decode on tensor cores, sm_80+, 16-bit cache, k == v, qk_dim % 16, v_dim % 32):
//     grid (ceil(query rows / 64), KV heads, splits), 256 threads = 8 warps. Warp w owns query rows
//     16 (w % 4).. of the block's 64 and value columns (w / 4) * v_dim / 2.. . Per tile of 32 cache rows
//     (copied as stored with cp.async, up to 3 stages deep): S = Q K^T by mma.sync m16n8k16 (q rounded to the
//     cache's 16-bit type when staged, fp32 accumulation), each warp of a pair doing half the head dimension
//     and adding its partner's half through shared memory (x + y == y + x, so both hold identical S); an
//     online softmax in fp32; P rounded to 16 bits straight from the score registers into the A fragments of
//     O += P V (V = the first v_dim columns of the same shared tile, read with ldmatrix.trans); O stays in
//     fp32 registers (128 per thread), and so do the warp's Q fragments (72; 255 registers in all, with 8 bytes
//     of spill at sm_90 and up to 48 at sm_80/89). Every latent row is read from memory once per block, i.e.
//     once per 64 query heads per split. It serves decode and prefill alike (one split once the query tiles
//     fill the GPU).
//   - tile_kernel<32|16> (everything else): grid (query tiles, KV heads, splits); block = 256 threads; one
//     block computes, for kQueryTile = 16 query rows of one KV head's group (token-major), flash attention over
//     one split: tiles of 32 (or 16) cache rows are copied into shared memory as stored with cp.async
//     (double-buffered when it fits) and widened to fp32 as they are read; scores come from 4x4 register
//     micro-tiles (each thread 4 queries x 4 rows over one slice of the head dimension), an online softmax
//     keeps a running max and sum per query, and O += P V accumulates in registers (4 queries x 8 columns
//     per thread). v aliasing k is not loaded twice.
//   - warp_kernel: where no tile fits the device's shared memory, one warp per (token, head) and split.
// Decode (few query tiles) splits the cache so the device has ~2 blocks per multiprocessor (tile) or ~1
// (MMA); blocks write unnormalised partials (out, max, sum) and combine_kernel merges the splits of each
// (token, head) in split order (deterministic). Prefill (many tiles) runs one split and writes the output.
//
// Design bound of the MMA path at DeepSeek-V3's shapes (128 heads, qk 576, v 512, bf16 cache, batch 1):
// per layer per token the cache is ctx x 576 x 2 B = 1152 B per row (9.4 MB at 8k), the math
// 128 x 2 x (576 + 512) = 278,528 FLOP per row: 242 FLOP/byte, above an H200's dense bf16 ridge
// (989 TFLOP/s / 4.8 TB/s = 206 FLOP/byte). So even at tensor-core peak the kernel is compute-bound:
// 2.3 us per layer at 8k vs 1.97 us to stream the bytes (at most ~85% of HBM bandwidth). mma.sync with
// operands from shared memory further caps it: with Q held in registers (loaded once per block), per 32-row
// tile and 64 query rows the warps read ~307 KB of shared memory (K for S: 147 KB, the partner exchange
// 32 KB, V for PV: 128 KB) for 4.5 MFLOP (~14.5 FLOP per shared byte at 128 B/clock/SM: ~1860 FLOP/clock/SM
// against ~4096 at tensor-core peak): ~5-6 us per layer at 8k, ~30-40% of copy bandwidth; fp32 SIMT (the
// tile kernel) is ~5x slower. Reaching ~80% needs wgmma (sm_90a: the tensor cores read operands from shared
// memory themselves). GQA decode (head_dim 128, group 8) is memory-bound: 4 FLOP per fp32 byte, 8 per
// 16-bit byte.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace attention_plan {
namespace {
std::atomic<Layout> g_layout{Layout::automatic};
}  // namespace
void set_layout_override(Layout layout) { g_layout.store(layout); }
Layout layout_override() { return g_layout.load(); }
}  // namespace attention_plan

namespace {

namespace plan = attention_plan;
constexpr int kThreads = plan::kThreads;
constexpr int kQT = plan::kQueryTile;
static_assert(kQT == 16 && kThreads == 256, "the micro-tile mappings below assume 16 queries and 256 threads");
static_assert(plan::kMaxVDim == 2 * 64 * 4, "PV: 64 threads x float4 x 2 chunks cover the value columns");

// Cache element types the kernels read; the storage is float or the 16 bits as stored.
enum class Kv { f32, bf16, f16 };
template <Kv E>
struct KvStore {
  using T = uint16_t;
};
template <>
struct KvStore<Kv::f32> {
  using T = float;
};

// Exact widening to fp32 (as kernels/cpu/kv.cpp's kv_to_f32).
template <Kv E>
__device__ __forceinline__ float widen(typename KvStore<E>::T x) {
  if constexpr (E == Kv::f32)
    return x;
  else if constexpr (E == Kv::bf16)
    return __uint_as_float(static_cast<uint32_t>(x) << 16);
  else
    return __half2float(__ushort_as_half(x));
}

// Four consecutive elements from shared memory (16-byte aligned for f32, 8-byte for 16-bit) as a float4.
template <Kv E>
__device__ __forceinline__ float4 load4(const typename KvStore<E>::T* p) {
  if constexpr (E == Kv::f32) {
    return *reinterpret_cast<const float4*>(p);
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    return make_float4(widen<E>(static_cast<uint16_t>(u.x & 0xffffu)), widen<E>(static_cast<uint16_t>(u.x >> 16)),
                       widen<E>(static_cast<uint16_t>(u.y & 0xffffu)), widen<E>(static_cast<uint16_t>(u.y >> 16)));
  }
}

struct Args {
  float* out;                // [n_tokens, n_heads, v_dim]
  const float* q;            // [n_tokens, n_heads, qk_dim] by q strides
  const void* k;             // [max_len, n_kv_heads, qk_dim] of the cache type, by k strides (elements)
  const void* v;             // [max_len, n_kv_heads, v_dim] of the cache type, by v strides
  const int64_t* positions;  // [n_tokens]
  float* part_o;             // [n_splits, n_tokens * n_heads, v_dim]; nullptr with one split
  float* part_ml;            // [n_splits, n_tokens * n_heads, 2] (max, sum)
  int64_t n_tokens, n_heads, group, qk_dim, v_dim, max_len;
  int64_t q_token_stride, q_head_stride, k_pos_stride, k_head_stride, v_pos_stride, v_head_stride;
  float scale;
  int64_t n_splits;   // fixed by max_len (graph-safe); each split's rows follow the live length
  bool v_aliases_k;   // MLA absorbed: values are the first v_dim elements of the key rows already in shared memory
  bool k_vec, v_vec;  // rows can be copied in 16-byte pieces (aligned base and strides, dims whole pieces)
};

// Rows token t attends: positions[t] + 1, kept inside the cache so a bad position cannot read past it.
__device__ int64_t attended(const Args& a, int64_t t) { return min(max(a.positions[t] + 1, int64_t{1}), a.max_len); }

// Rows per split for this launch, the same in every block of every kernel and in the combine: from the live
// length (the longest attended length, all threads of the block reading the positions together) when the
// cache is split, else the whole capacity. Must be called by every thread of the block (it synchronises).
__device__ int64_t block_rows_per_split(const Args& a, int* live_s) {
  if (a.n_splits == 1) return a.max_len;
  if (threadIdx.x == 0) *live_s = 1;
  __syncthreads();
  int64_t mx = 1;
  for (int64_t t = threadIdx.x; t < a.n_tokens; t += blockDim.x) mx = max(mx, attended(a, t));
  if (mx > 1) atomicMax(live_s, static_cast<int>(mx));
  __syncthreads();
  return plan::live_rows_per_split(*live_s, a.n_splits, plan::kRowAlign);
}

// cp.async copies global -> shared without a register round trip; src_bytes < size zero-fills the rest
// (0: nothing is read, the destination becomes zeros).
__device__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
}
__device__ void cp_async4(void* dst, const void* src, int src_bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
}
__device__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
template <int kPending>
__device__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Copies cache rows [r0, r0 + kRows) of one head (row stride pos_stride elements, dim elements each) to
// shared rows `ld` elements apart. Rows at or past row_end become zeros, so masked rows of the last tile
// multiply as 0 * 0. vec: 16-byte pieces by cp.async; else f32 by 4-byte cp.async and 16-bit elements by
// plain loads (odd shapes only).
template <int kRows, Kv E>
__device__ void load_rows(typename KvStore<E>::T* dst, const typename KvStore<E>::T* head_base, int64_t pos_stride,
                          int64_t dim, int64_t ld, int64_t r0, int64_t row_end, bool vec) {
  using T = typename KvStore<E>::T;
  constexpr int kPer = 16 / static_cast<int>(sizeof(T));
  if (vec) {
    const int np = static_cast<int>(dim / kPer);  // 32-bit index math: kRows * dim is small
    for (int e = threadIdx.x; e < kRows * np; e += kThreads) {
      const int r = e / np, c = (e % np) * kPer;
      const bool ok = r0 + r < row_end;
      cp_async16(dst + r * ld + c, head_base + (ok ? r0 + r : 0) * pos_stride + c, ok ? 16 : 0);
    }
  } else {
    const int n = static_cast<int>(dim);
    for (int e = threadIdx.x; e < kRows * n; e += kThreads) {
      const int r = e / n, c = e % n;
      const bool ok = r0 + r < row_end;
      if constexpr (E == Kv::f32)
        cp_async4(dst + r * ld + c, head_base + (ok ? r0 + r : 0) * pos_stride + c, ok ? 4 : 0);
      else
        dst[r * ld + c] = ok ? head_base[(r0 + r) * pos_stride + c] : T{0};
    }
  }
}

__device__ void fma4(float& acc, const float4& a, const float4& b) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  acc = fmaf(a.w, b.w, acc);
}

// Reductions over the kWidth lanes of an aligned lane group (kWidth 4, 16 or 32).
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

// Writes one query row's result: normalised to the output with one split, else the partial and its stats.
__device__ void store_result(const Args& a, int64_t idx, int64_t split, int64_t col, float v0, float v1, bool two,
                             float l) {
  const bool direct = a.n_splits == 1;
  const int64_t n_rows_out = a.n_tokens * a.n_heads;
  float* dst = direct ? a.out + idx * a.v_dim : a.part_o + (split * n_rows_out + idx) * a.v_dim;
  const float f = direct ? 1.0f / l : 1.0f;
  dst[col] = v0 * f;
  if (two) dst[col + 1] = v1 * f;
}
__device__ void store_stats(const Args& a, int64_t idx, int64_t split, float m, float l) {
  const int64_t n_rows_out = a.n_tokens * a.n_heads;
  a.part_ml[(split * n_rows_out + idx) * 2] = m;
  a.part_ml[(split * n_rows_out + idx) * 2 + 1] = l;
}

// ------------------------------------------------------------------------------------------------
// The tiled kernel. Grid (query tiles, KV heads, splits); see the file comment and attention_plan.h.
// Thread roles per tile of kRows cache rows:
//   QK:      kSlices = 256 / kRows slices of the head dimension; within a slice, thread m = tid % kRows owns
//            queries qg*4.. (qg = m / (kRows/4)) x rows rg + (kRows/4)*j (rg = m % (kRows/4), j < 4). Rows of
//            one quarter-warp are consecutive, and rows are an odd number of 4-element groups apart, so their
//            reads (a float4 or 4 16-bit elements) hit 8 different bank groups; the query reads are broadcasts.
//   softmax: kRows lanes per query, one lane per row: sums the slices, masks, updates max and sum.
//   PV:      thread (pg = tid / 64, vl = tid % 64) owns queries pg*4.. x value columns 4vl.. and 256 + 4vl..
// Capped at 128 registers so two blocks share a multiprocessor where shared memory allows (GQA: ~95 KB each
// in fp32): two tiles of loads in flight per SM instead of one. No spills at sm_90; at sm_80/89 the 16-row
// fp32 variant spills 8 bytes (a fallback there).
template <int kRows, Kv E>
__global__ void __launch_bounds__(kThreads, 2) tile_kernel(Args a, plan::TileLayout L) {
  MOERUN_PDL_WAIT();
  using T = typename KvStore<E>::T;
  constexpr int kSlices = kThreads / kRows;
  constexpr int kGroups = kRows / 4;
  constexpr int kQPerWarp = 32 / kRows;           // queries per warp in the softmax
  constexpr int kPasses = kQT / (8 * kQPerWarp);  // softmax passes to cover 16 queries with 8 warps
  static_assert(kRows == 16 || kRows == 32, "tile rows");
  static_assert(kPasses * 8 * kQPerWarp == kQT, "softmax covers every query once");

  extern __shared__ float4 smem4[];  // no static shared memory: the opt-in limit is all dynamic
  float* sm = reinterpret_cast<float*>(smem4);
  float* qs = sm + L.q;
  T* ks = reinterpret_cast<T*>(sm + L.k);
  T* vs = reinterpret_cast<T*>(sm + L.v);
  float* part = sm + L.part;
  float* ps = sm + L.p;
  float* alpha_s = sm + L.stat;
  float* m_s = alpha_s + kQT;
  float* l_s = m_s + kQT;
  int* len_s = reinterpret_cast<int*>(l_s + kQT);
  int* live_s = len_s + kQT;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t g = blockIdx.y, split = blockIdx.z;
  const int64_t nq = a.n_tokens * a.group;  // query rows of this KV head
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kQT;

  const int64_t rows_per_split = block_rows_per_split(a, live_s);
  if (tid < kQT) len_s[tid] = q0 + tid < nq ? static_cast<int>(attended(a, (q0 + tid) / a.group)) : 0;
  __syncthreads();
  int64_t len_max = 0;
#pragma unroll
  for (int i = 0; i < kQT; ++i) len_max = max(len_max, static_cast<int64_t>(len_s[i]));
  const int64_t row_begin = plan::live_split_begin(rows_per_split, split);
  const int64_t row_end = plan::live_split_end(rows_per_split, split, len_max);
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
    ks[(e / k_pad) * L.ld_qk + a.qk_dim + e % k_pad] = T{0};
  if (!a.v_aliases_k)
    for (int64_t e = tid; e < int64_t{L.stages} * kRows * v_pad; e += kThreads)
      vs[(e / v_pad) * L.ld_v + a.v_dim + e % v_pad] = T{0};

  const T* k_head = static_cast<const T*>(a.k) + g * a.k_head_stride;
  const T* v_head = static_cast<const T*>(a.v) + g * a.v_head_stride;
  auto load_tile = [&](int64_t r0, int stage) {
    load_rows<kRows, E>(ks + int64_t{stage} * kRows * L.ld_qk, k_head, a.k_pos_stride, a.qk_dim, L.ld_qk, r0, row_end,
                        a.k_vec);
    if (!a.v_aliases_k)
      load_rows<kRows, E>(vs + int64_t{stage} * kRows * L.ld_v, v_head, a.v_pos_stride, a.v_dim, L.ld_v, r0, row_end,
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
    const T* kt = ks + int64_t{stage} * kRows * L.ld_qk;
    const T* vt = a.v_aliases_k ? kt : vs + int64_t{stage} * kRows * L.ld_v;
    const int64_t ldv = a.v_aliases_k ? L.ld_qk : L.ld_v;

    // S partials over this thread's slice of the head dimension.
    float s[4][4] = {};
    for (int64_t c = c_begin; c < c_end; ++c) {
      float4 qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) qv[i] = *reinterpret_cast<const float4*>(qs + (qg * 4 + i) * L.ld_qk + 4 * c);
#pragma unroll
      for (int j = 0; j < 4; ++j) kv[j] = load4<E>(kt + (rg + kGroups * j) * L.ld_qk + 4 * c);
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
        const float4 vv = load4<E>(vt + r * ldv + 4 * c4);
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
    if (!direct && vl == 0) store_stats(a, idx, split, m_s[qi], l_s[qi]);
  }
}

// ------------------------------------------------------------------------------------------------
// The MMA kernel (see the file comment). Fragment layouts of mma.sync.m16n8k16 (g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major): reg0 = (row g, cols 2t, 2t+1), reg1 = (row g+8, same), reg2 = (row g, cols 2t+8,
//     2t+9), reg3 = (row g+8, cols 2t+8, 2t+9); each register two 16-bit values, the lower column low.
//   B (16 x 8, k x n): reg0 = (k 2t, 2t+1; n g), reg1 = (k 2t+8, 2t+9; n g).
//   C (16 x 8, fp32): c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, same).
// ldmatrix.x4 loads four 8x8 16-bit matrices; lanes 8i..8i+7 give the row addresses of matrix i, and each
// lane receives (row lane/4, cols 2(lane%4), +1) of every matrix (.trans: (rows 2(lane%4), +1; col lane/4)).
// So for A the matrices are (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15);
// for B = K^T over cache rows n0..n0+15: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
// give reg0, reg1 of n-tile 0 and of n-tile 1; for B = V (k = cache rows, n = columns) .trans of
// (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) does the same.
constexpr int kMmaQ = plan::kMmaQueryRows;
constexpr int kMmaRows = plan::kMmaRows;
constexpr int kMmaNTiles = kMmaRows / 8;            // score n-tiles per warp (all the tile's rows)
constexpr int kMmaMaxVTiles = plan::kMaxVDim / 16;  // value n-tiles per warp (half the columns)
constexpr int kMmaMaxHalfSteps = (plan::kMaxQkDim / 16 + 1) / 2;  // score k-steps per warp (half the dims)
static_assert(kMmaQ == 4 * 16 && kMmaRows == 32, "4 row groups of 16 x 2 halves; P of 32 rows = 2 k-steps");

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
template <Kv E>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (E == Kv::bf16)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two floats rounded (nearest even) to the 16-bit type, lo in the low half.
template <Kv E>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (E == Kv::bf16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
template <Kv E, int kStages>
__global__ void __launch_bounds__(kThreads, 1) mma_kernel(Args a, plan::MmaLayout L) {
  MOERUN_PDL_WAIT();
  static_assert(E != Kv::f32, "tensor cores read the 16-bit cache");
  extern __shared__ float4 smem4[];
  char* sm = reinterpret_cast<char*>(smem4);
  uint16_t* qs = reinterpret_cast<uint16_t*>(sm + L.q);
  uint16_t* ks = reinterpret_cast<uint16_t*>(sm + L.k);
  float* xs = reinterpret_cast<float*>(sm + L.x);
  int* len_s = reinterpret_cast<int*>(sm + L.len);
  int* live_s = len_s + kMmaQ;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int rw = warp % 4, hv = warp / 4;  // query rows 16 rw.., value columns half * v_dim / 2..
  const int gq = lane / 4, tq = lane % 4;    // fragment row and column pair
  const int mi = lane / 8, mr = lane % 8;    // ldmatrix: which matrix this lane addresses, and which row
  const int64_t g = blockIdx.y, split = blockIdx.z;
  const int64_t nq = a.n_tokens * a.group;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kMmaQ;
  const int64_t ld = L.ld;

  const int64_t rows_per_split = block_rows_per_split(a, live_s);
  if (tid < kMmaQ) len_s[tid] = q0 + tid < nq ? static_cast<int>(attended(a, (q0 + tid) / a.group)) : 0;
  __syncthreads();
  int64_t len_max = 0;
  for (int i = 0; i < kMmaQ; ++i) len_max = max(len_max, static_cast<int64_t>(len_s[i]));
  const int64_t row_begin = plan::live_split_begin(rows_per_split, split);
  const int64_t row_end = plan::live_split_end(rows_per_split, split, len_max);
  if (row_begin >= row_end) return;  // uniform over the block: no query of it reaches this split

  const uint16_t* k_head = static_cast<const uint16_t*>(a.k) + g * a.k_head_stride;
  const int pieces = static_cast<int>(a.qk_dim / 8);  // 16-byte pieces per row
  // Warp w copies rows w, w + 8, ..; its lanes take consecutive pieces (512 coalesced bytes per step).
  auto load_tile = [&](int64_t r0, int stage) {
    uint16_t* dst = ks + int64_t{stage} * kMmaRows * ld;
    for (int r = warp; r < kMmaRows; r += kThreads / 32) {
      const bool ok = r0 + r < row_end;
      const uint16_t* src = k_head + (ok ? r0 + r : 0) * a.k_pos_stride;
      for (int c = lane; c < pieces; c += 32) cp_async16(dst + r * ld + c * 8, src + c * 8, ok ? 16 : 0);
    }
  };
  const int64_t n_tiles = (row_end - row_begin + kMmaRows - 1) / kMmaRows;
  // Prologue: tiles 0 .. kStages-2 in flight (one commit group each, empty past the last tile).
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles) load_tile(row_begin + st * kMmaRows, st);
    cp_async_commit();
  }

  // Queries rounded to the 16-bit type, two columns per lane (qk_dim is even); rows past the last query are
  // zeros (their results are not written). Warp w stages rows w, w + 8, ..
  for (int i = warp; i < kMmaQ; i += kThreads / 32) {
    const int64_t qr = q0 + i;
    const float* src = nullptr;
    if (qr < nq) src = a.q + (qr / a.group) * a.q_token_stride + (g * a.group + qr % a.group) * a.q_head_stride;
    for (int d = 2 * lane; d < a.qk_dim; d += 64)
      *reinterpret_cast<uint32_t*>(qs + i * ld + d) = src ? pack2<E>(src[d], src[d + 1]) : 0u;
  }

  // This warp's score k-steps (half the head dimension) and value columns.
  const int ksteps = static_cast<int>(a.qk_dim / 16), kh = ksteps / 2;
  const int ks_begin = hv == 0 ? 0 : kh, ks_end = hv == 0 ? kh : ksteps;
  const int v_tiles = static_cast<int>(a.v_dim / 16);  // 8-column tiles in this warp's half
  const int64_t vc0 = hv * (a.v_dim / 2);
  // Lengths of this lane's two query rows (gq and gq + 8 of the warp's 16).
  const int len_lo = len_s[rw * 16 + gq], len_hi = len_s[rw * 16 + gq + 8];

  float o[kMmaMaxVTiles][4];
#pragma unroll
  for (int j = 0; j < kMmaMaxVTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

  // This warp's queries as A fragments, loaded once: 16 rows x its half of the head dimension (<= 18 k-steps,
  // 72 registers), so the score loop reads only K from shared memory.
  __syncthreads();  // the queries are staged
  const int nk = ks_end - ks_begin;
  uint32_t qf[kMmaMaxHalfSteps][4];
#pragma unroll
  for (int i = 0; i < kMmaMaxHalfSteps; ++i)
    if (i < nk) ldmatrix_x4(qf[i], qs + (rw * 16 + (mi & 1) * 8 + mr) * ld + (ks_begin + i) * 16 + (mi >> 1) * 8);

  for (int64_t it = 0; it < n_tiles; ++it) {
    const int stage = static_cast<int>(it % kStages);
    const int64_t r0 = row_begin + it * kMmaRows;
    cp_async_wait<kStages - 2>();  // this thread's copies of tile `it` have landed
    __syncthreads();  // everyone's have, the queries are staged, and everyone is done with tile it - 1's buffer
    if (it + kStages - 1 < n_tiles)
      load_tile(r0 + (kStages - 1) * kMmaRows, static_cast<int>((it + kStages - 1) % kStages));
    cp_async_commit();
    const uint16_t* kt = ks + int64_t{stage} * kMmaRows * ld;

    // S (16 query rows x 32 cache rows) over this warp's half of the head dimension.
    float s[kMmaNTiles][4];
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int i = 0; i < kMmaMaxHalfSteps; ++i) {
      if (i >= nk) break;
      const int kk = ks_begin + i;
#pragma unroll
      for (int np = 0; np < kMmaNTiles / 2; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, kt + (np * 16 + (mi >> 1) * 8 + mr) * ld + kk * 16 + (mi & 1) * 8);
        mma16816<E>(s[2 * np], qf[i], bf[0], bf[1]);
        mma16816<E>(s[2 * np + 1], qf[i], bf[2], bf[3]);
      }
    }
    // Add the partner warp's half (same fragment positions): x + y is y + x, so both hold the same S.
    float* mine = xs + warp * (16 * kMmaRows);
    const float* other = xs + (warp ^ 4) * (16 * kMmaRows);
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) mine[(j * 4 + c) * 32 + lane] = s[j][c];
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[j][c] += other[(j * 4 + c) * 32 + lane];

    // Online softmax of rows gq (c0, c1) and gq + 8 (c2, c3); the 4 lanes of a quad hold a row's 32 scores.
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t row = r0 + j * 8 + 2 * tq + (c & 1);
        const int lim = c < 2 ? len_lo : len_hi;
        const float sc = row < lim && row < row_end ? s[j][c] * a.scale : -INFINITY;
        s[j][c] = sc;
        if (c < 2)
          mx_lo = fmaxf(mx_lo, sc);
        else
          mx_hi = fmaxf(mx_hi, sc);
      }
    const float mn_lo = fmaxf(m_lo, group_max<4>(mx_lo)), mn_hi = fmaxf(m_hi, group_max<4>(mx_hi));
    const float al_lo = mn_lo == -INFINITY ? 1.0f : expf(m_lo - mn_lo);
    const float al_hi = mn_hi == -INFINITY ? 1.0f : expf(m_hi - mn_hi);
    m_lo = mn_lo, m_hi = mn_hi;
    // P rounded to 16 bits as the A fragments of the two k-steps (cache rows 0-15, 16-31); the sums add the
    // rounded values, so the normalisation matches what is multiplied.
    uint32_t pf[2][4];
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j) {
      const float p0 = mn_lo == -INFINITY ? 0.0f : expf(s[j][0] - mn_lo);
      const float p1 = mn_lo == -INFINITY ? 0.0f : expf(s[j][1] - mn_lo);
      const float p2 = mn_hi == -INFINITY ? 0.0f : expf(s[j][2] - mn_hi);
      const float p3 = mn_hi == -INFINITY ? 0.0f : expf(s[j][3] - mn_hi);
      const uint32_t lo = pack2<E>(p0, p1), hi = pack2<E>(p2, p3);
      pf[j / 2][(j & 1) * 2] = lo;      // reg0 (row g) for even n-tiles, reg2 for odd
      pf[j / 2][(j & 1) * 2 + 1] = hi;  // reg1 (row g + 8), reg3
      sum_lo += widen<E>(static_cast<uint16_t>(lo & 0xffffu)) + widen<E>(static_cast<uint16_t>(lo >> 16));
      sum_hi += widen<E>(static_cast<uint16_t>(hi & 0xffffu)) + widen<E>(static_cast<uint16_t>(hi >> 16));
    }
    l_lo = l_lo * al_lo + group_sum<4>(sum_lo);
    l_hi = l_hi * al_hi + group_sum<4>(sum_hi);

    // O = O * alpha + P V over this warp's value columns.
#pragma unroll
    for (int j = 0; j < kMmaMaxVTiles; ++j) {
      o[j][0] *= al_lo, o[j][1] *= al_lo, o[j][2] *= al_hi, o[j][3] *= al_hi;
    }
#pragma unroll
    for (int kk = 0; kk < 2; ++kk)
#pragma unroll
      for (int jp = 0; jp < kMmaMaxVTiles / 2; ++jp) {
        if (2 * jp >= v_tiles) break;
        uint32_t bf[4];
        ldmatrix_x4_trans(bf, kt + (kk * 16 + (mi & 1) * 8 + mr) * ld + vc0 + jp * 16 + (mi >> 1) * 8);
        mma16816<E>(o[2 * jp], pf[kk], bf[0], bf[1]);
        mma16816<E>(o[2 * jp + 1], pf[kk], bf[2], bf[3]);
      }
  }
  cp_async_wait_all();  // no copy may still target shared memory when the block exits

  // Results: the quad's lanes hold columns vc0 + 8j + 2tq, +1 of rows gq and gq + 8.
#pragma unroll
  for (int hrow = 0; hrow < 2; ++hrow) {
    const int64_t qr = q0 + rw * 16 + gq + 8 * hrow;
    if (qr >= nq) continue;
    const int64_t t = qr / a.group, h = g * a.group + qr % a.group;
    const int64_t idx = t * a.n_heads + h;
    const float l = hrow ? l_hi : l_lo;
#pragma unroll
    for (int j = 0; j < kMmaMaxVTiles; ++j) {
      if (j >= v_tiles) break;
      store_result(a, idx, split, vc0 + 8 * j + 2 * tq, o[j][2 * hrow], o[j][2 * hrow + 1], true, l);
    }
    if (a.n_splits > 1 && hv == 0 && tq == 0) store_stats(a, idx, split, hrow ? m_hi : m_lo, l);
  }
}

// ------------------------------------------------------------------------------------------------
// The fallback: grid (ceil(n_tokens * n_heads / 8), 1, splits), one warp per (token, head) row of the output
// and split. Lanes hold q[lane + 32j] and output columns lane + 32j in registers; each cache row is a warp
// dot product, then the same online softmax. Used where no tile fits the shared memory (or when forced).
constexpr int kWarpQk = plan::kMaxQkDim / 32;  // 18 registers of q per lane
constexpr int kWarpV = plan::kMaxVDim / 32;    // 16 output columns per lane
static_assert(kWarpQk * 32 == plan::kMaxQkDim && kWarpV * 32 == plan::kMaxVDim, "whole warps of dims");

template <Kv E>
__global__ void __launch_bounds__(kThreads) warp_kernel(Args a) {
  MOERUN_PDL_WAIT();
  using T = typename KvStore<E>::T;
  __shared__ int live_s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + warp;
  const int64_t split = blockIdx.z;
  const int64_t rows_per_split = block_rows_per_split(a, &live_s);  // before any early exit: it synchronises
  if (idx >= a.n_tokens * a.n_heads) return;
  const int64_t t = idx / a.n_heads, h = idx % a.n_heads, g = h / a.group;
  const int64_t begin = plan::live_split_begin(rows_per_split, split);
  const int64_t end = plan::live_split_end(rows_per_split, split, attended(a, t));
  if (begin >= end) return;  // past this token's length: the combine does not read this split
  const float* q = a.q + t * a.q_token_stride + h * a.q_head_stride;
  float qr[kWarpQk], acc[kWarpV];
#pragma unroll
  for (int j = 0; j < kWarpQk; ++j) qr[j] = lane + 32 * j < a.qk_dim ? q[lane + 32 * j] : 0.0f;
#pragma unroll
  for (int j = 0; j < kWarpV; ++j) acc[j] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int64_t row = begin; row < end; ++row) {
    const T* k = static_cast<const T*>(a.k) + row * a.k_pos_stride + g * a.k_head_stride;
    const T* v = static_cast<const T*>(a.v) + row * a.v_pos_stride + g * a.v_head_stride;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kWarpQk; ++j)
      if (lane + 32 * j < a.qk_dim) dot = fmaf(qr[j], widen<E>(k[lane + 32 * j]), dot);
    const float sc = group_sum<32>(dot) * a.scale;
    const float m_new = fmaxf(m, sc);
    const float alpha = expf(m - m_new), p = expf(sc - m_new);
    l = l * alpha + p;
    m = m_new;
#pragma unroll
    for (int j = 0; j < kWarpV; ++j)
      if (lane + 32 * j < a.v_dim) acc[j] = fmaf(p, widen<E>(v[lane + 32 * j]), acc[j] * alpha);
  }
#pragma unroll
  for (int j = 0; j < kWarpV; ++j)
    if (lane + 32 * j < a.v_dim) store_result(a, idx, split, lane + 32 * j, acc[j], 0.0f, false, l);
  if (a.n_splits > 1 && lane == 0) store_stats(a, idx, split, m, l);
}

// ------------------------------------------------------------------------------------------------
// Merges split partials: grid (n_tokens * n_heads), 128 threads. Reads exactly the splits that hold rows of
// the token (live_splits_for_len with the same live rows per split as the kernels), in order, so the result
// does not depend on scheduling:  M = max_s m_s,  w_s = exp(m_s - M),  out = sum_s w_s o_s / sum_s w_s l_s.
constexpr int kCombineThreads = 128;

__global__ void __launch_bounds__(kCombineThreads) combine_kernel(Args a) {
  MOERUN_PDL_WAIT();
  extern __shared__ float4 smem4[];
  float* w = reinterpret_cast<float*>(smem4);  // [n_splits] weights, then [n_splits] sums
  float* ls = w + a.n_splits;
  __shared__ float inv_sum;
  __shared__ int live_s;
  const int64_t idx = blockIdx.x, t = idx / a.n_heads;
  const int64_t n_rows_out = a.n_tokens * a.n_heads;
  const int64_t rows_per_split = block_rows_per_split(a, &live_s);
  const int64_t ns = plan::live_splits_for_len(rows_per_split, a.n_splits, attended(a, t));
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

const char* layout_name(plan::Layout l) {
  switch (l) {
    case plan::Layout::automatic: return "automatic";
    case plan::Layout::mma: return "mma";
    case plan::Layout::tile32x2: return "tile32x2";
    case plan::Layout::tile32x1: return "tile32x1";
    case plan::Layout::tile16x2: return "tile16x2";
    case plan::Layout::tile16x1: return "tile16x1";
    case plan::Layout::warp: return "warp";
  }
  return "?";
}

// Launches the chosen kernel for cache element E. Raising a kernel's shared-memory limit is not a stream
// operation; it is done outside graph capture (the uncaptured warm-up step that sizes the workspace also
// sets it, and it persists).
template <Kv E>
void launch(const Args& a, const plan::TileLayout& tile, const plan::MmaLayout& mma, bool use_mma, dim3 grid,
            int smem_optin, Context& ctx) {
  const cudaStream_t stream = ctx.stream();
  if constexpr (E == Kv::f32) {
    (void)mma, (void)use_mma;  // tensor cores read 16-bit caches only (use_mma is false here)
  } else {
    if (use_mma) {
      const auto kernel = mma.stages == 3 ? mma_kernel<E, 3> : mma_kernel<E, 2>;
      if (!ctx.capturing())
        MOERUN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin));
      launch_kernel(kernel, grid, kThreads, static_cast<size_t>(mma.bytes), stream, a, mma);
      return;
    }
  }
  if (tile.rows) {
    const auto kernel = tile.rows == 32 ? tile_kernel<32, E> : tile_kernel<16, E>;
    if (!ctx.capturing())
      MOERUN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin));
    launch_kernel(kernel, grid, kThreads, tile.bytes(), stream, a, tile);
  } else {
    launch_kernel(warp_kernel<E>, grid, kThreads, 0, stream, a);
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
  if (p.kv_type != KvType::f32 && p.kv_type != KvType::bf16 && p.kv_type != KvType::f16)
    throw Error("cuda::attention", std::string("a ") + std::string(kv_type_name(p.kv_type)) +
                                       " KV cache is not supported on CUDA (f32, bf16 or f16: --kv-type bf16)");
  if (p.n_tokens == 0) return;

  int sm_count = 0, smem_optin = 0, cc_major = 0;
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, ctx.device()));
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device()));
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, ctx.device()));

  const int elem = p.kv_type == KvType::f32 ? 4 : 2;
  const int64_t per16 = 16 / elem;  // elements per 16-byte piece
  const int64_t group = p.n_heads / p.n_kv_heads;
  const bool alias =
      p.v == p.k && p.v_pos_stride == p.k_pos_stride && p.v_head_stride == p.k_head_stride && p.v_dim <= p.qk_dim;
  const bool k_vec =
      aligned16(p.k) && p.k_pos_stride % per16 == 0 && p.k_head_stride % per16 == 0 && p.qk_dim % per16 == 0;
  const bool v_vec =
      aligned16(p.v) && p.v_pos_stride % per16 == 0 && p.v_head_stride % per16 == 0 && p.v_dim % per16 == 0;

  // The kernel shape: the override (tests), else MMA where it applies, else the largest tile that fits, else
  // the warp kernel.
  const plan::Layout forced = plan::layout_override();
  const plan::MmaLayout mma = plan::choose_mma(p.qk_dim, static_cast<size_t>(smem_optin));
  const bool mma_ok =
      cc_major >= 8 && mma.stages > 0 && plan::mma_shapes_fit(p.qk_dim, p.v_dim, alias, elem, k_vec);
  bool use_mma = false;
  plan::TileLayout tile{};
  switch (forced) {
    case plan::Layout::automatic:
      use_mma = mma_ok;
      if (!use_mma) tile = plan::choose_tile(p.qk_dim, p.v_dim, alias, static_cast<size_t>(smem_optin), elem);
      break;
    case plan::Layout::mma:
      if (!mma_ok)
        throw Error("cuda::attention",
                    "layout mma forced, but it needs sm_80+, a bf16 or f16 cache, v aliasing k (MLA absorbed), "
                    "qk_dim % 16 == 0, v_dim % 32 == 0 and 16-byte aligned rows; got qk_dim " +
                        std::to_string(p.qk_dim) + ", v_dim " + std::to_string(p.v_dim));
      use_mma = true;
      break;
    case plan::Layout::warp: break;
    default:
      tile = plan::forced_tile(forced, p.qk_dim, p.v_dim, alias, elem);
      if (tile.bytes() > static_cast<size_t>(smem_optin))
        throw Error("cuda::attention", std::string("layout ") + layout_name(forced) + " forced, but it needs " +
                                           std::to_string(tile.bytes()) +
                                           " bytes of shared memory and the device has " + std::to_string(smem_optin));
      break;
  }

  const int64_t first_dim = use_mma     ? plan::ceil_div(p.n_tokens * group, int64_t{plan::kMmaQueryRows})
                            : tile.rows ? plan::query_tiles(p.n_tokens, group)
                                        : plan::ceil_div(p.n_tokens * p.n_heads, int64_t{kThreads / 32});
  if (first_dim > 0x7fffffff) throw Error("cuda::attention", "too many tokens for one launch");
  const bool per_kv_head = use_mma || tile.rows;
  // The MMA kernel holds one block per multiprocessor; ask for half as many blocks per split.
  const plan::Splits splits = plan::plan_splits(
      p.max_len, per_kv_head ? first_dim * p.n_kv_heads * (use_mma ? plan::kBlocksPerSm : 1) : first_dim, sm_count);

  // One workspace request for all partials (none with one split).
  float* part_o = nullptr;
  float* part_ml = nullptr;
  if (splits.n_splits > 1) {
    part_o = static_cast<float*>(ctx.workspace(plan::workspace_bytes(splits, p.n_tokens, p.n_heads, p.v_dim)));
    part_ml = part_o + plan::partial_out_floats(splits, p.n_tokens, p.n_heads, p.v_dim);
  }

  Args a{};
  a.out = p.out, a.q = p.q, a.k = p.k, a.v = p.v, a.positions = p.positions, a.part_o = part_o, a.part_ml = part_ml;
  a.n_tokens = p.n_tokens, a.n_heads = p.n_heads, a.group = group, a.qk_dim = p.qk_dim, a.v_dim = p.v_dim;
  a.max_len = p.max_len;
  a.q_token_stride = p.q_token_stride, a.q_head_stride = p.q_head_stride;
  a.k_pos_stride = p.k_pos_stride, a.k_head_stride = p.k_head_stride;
  a.v_pos_stride = p.v_pos_stride, a.v_head_stride = p.v_head_stride;
  a.scale = p.scale;
  a.n_splits = splits.n_splits;
  a.v_aliases_k = alias;
  a.k_vec = k_vec, a.v_vec = v_vec;

  const dim3 grid(static_cast<unsigned>(first_dim), per_kv_head ? static_cast<unsigned>(p.n_kv_heads) : 1u,
                  static_cast<unsigned>(splits.n_splits));
  switch (p.kv_type) {
    case KvType::bf16: launch<Kv::bf16>(a, tile, mma, use_mma, grid, smem_optin, ctx); break;
    case KvType::f16: launch<Kv::f16>(a, tile, mma, use_mma, grid, smem_optin, ctx); break;
    default: launch<Kv::f32>(a, tile, mma, use_mma, grid, smem_optin, ctx); break;
  }
  MOERUN_CUDA_CHECK(cudaGetLastError());
  if (splits.n_splits > 1) {
    const size_t combine_smem = static_cast<size_t>(2 * splits.n_splits) * sizeof(float);
    launch_kernel(combine_kernel, static_cast<unsigned>(p.n_tokens * p.n_heads), kCombineThreads, combine_smem,
                  ctx.stream(), a);
    MOERUN_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace moerun::cuda
