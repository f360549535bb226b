// The experts of a MoE layer on the GPU; the CPU twin is kernels/cpu/moe.cpp.
//   out[t, :] = sum_k w[t, k] * down_e(act(gate_e x[t]) * up_e x[t]),  e = ids[t, k]   (act: hidden_act)
//             [+ down_s(act(gate_s x[t]) * up_s x[t])   with a shared expert (MoeParams::shared_gate)]
// The shared expert is one more pair of every token, of a virtual expert E = n_experts whose weight
// pointers are the shared ones: pairs n_tokens * top_k + t, after the routed pairs. It runs in the same
// launches as the routed experts (its tokens form one more group, its weights are read once per step
// for all of them), so it costs no launch of its own: it replaces the executor's separate gated FFN
// (gate+up matmul_group, gated_act, down matmul, add: 4 launches per MoE layer, 232 per DeepSeek-V3
// token over its 58 MoE layers).
// Weights: f32, bf16, f16, or f8_e4m3 with block scales (DeepSeek's weight_scale_inv: element (o, i) is
// w * scale[o / block_out, i / block_in], as cpu::matmul defines it).
//
// Nothing goes to the host on either path: the ids and the weight-pointer tables are read on the
// device, so every step can be captured in a graph. Both paths start with the same plan kernel:
//   1. plan (one block): counting-sorts the (token, k) pairs by expert (stable: within an expert by
//      pair index, i.e. by token), and cuts each expert's rows into work items of at most `tile` rows:
//      {expert, first sorted row, rows}; the shared expert's pairs sort after all routed ones, as
//      expert E. Pairs whose id is out of range or whose expert has a null table entry (another
//      rank's expert: expert parallel) get no row and contribute nothing (the device cannot report a
//      bad id). Integer counts only, so the plan is the same on every run.
// Decode (n_tokens <= kDecodeMaxTokens, and every f32 step): GEMV blocks (kernels/cuda/gemv.cuh's
// widening and reductions), one item of <= NT tokens of one expert per block row, so a weight row
// is read once for all of a step's tokens that chose its expert:
//   2. gate_up: per item, R rows of gate_e and the same R rows of up_e streamed in one pass over the
//      item's x rows, h = act(gate) * up (fp32)                                    -> h [pairs, I]
//   3. down: per item, 2R rows of down_e times the item's h rows                   -> y [pairs, D]
// Prefill (bf16, f16, FP8; more tokens): a grouped GEMM on tensor cores (mma.sync m16n8k16, fp32
// accumulation) over (item, column tile) blocks; items are kBM-row tiles of one expert, and the grid
// is sized by their upper bound ceil(pairs / kBM) + min(experts, pairs) (the shared expert counts as
// one more; blocks past the plan's count exit):
//   2. gate_up: x rows gathered through the plan and rounded to the 16-bit type while staged in
//      shared memory; gate and up tiles of the same columns; act(g) * u in the epilogue -> h (T)
//   3. down: h rows times down_e                                                      -> y [pairs, D]
//   FP8 weights are widened in shared memory to bf16(w * scale) (the rounding cuda::matmul's FP8
//   GEMM makes); x and h are rounded to the weights' 16-bit type, as on matmul's tensor-core path.
// Last, on both paths:
//   4. combine: out[t, d] = sum over k, in k order, of w[t, k] * y[row_of(t, k), d], then + the shared
//      expert's y (the order of the executor's add, (sum_k w y) + s)
// Every output element has one writer and a fixed summation order (no atomics in sums), so a rerun
// or a graph replay gives identical bits. Four launches per layer, whatever the token count.
//
// Bounds (DeepSeek-V3: D 7168, I 2048, top-8 + 1 shared expert of the same width; an expert is
// 3 x D x I = 44M weights). Decode reads each selected expert's weights once per step: at n = 1,
// 9 x 44M = 396 MB (FP8; the 128 x 128 scales add 0.1%) or 793 MB (bf16) per token per layer, 83 / 165 us
// at 4.8 TB/s; the GEMV streams at an expected ~80% of HBM, and the plan and combine launches add a few
// us. At n = 8 the distinct experts (~57 of 64 routed pairs under random routing, + the shared one)
// are read once for all their tokens. Prefill does 6 x D x I = 88 MFLOP per pair, 793 MFLOP per token
// per layer (9 pairs): 0.80 us per token at the 989 TFLOP/s bf16 peak. The
// weights of all 256 experts (11.3 GB FP8) stream in 2.35 ms, so below ~3300 tokens per step the
// grouped GEMM is bound by weight bytes (FP8 is read as FP8 and widened on chip), above by tensor
// cores; this mma.sync kernel (register-staged, no cp.async/wgmma pipeline) is expected at a
// fraction (~20-35%) of that peak: the next step if prefill dominates.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/context.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

using ::moerun::detail::cat;

// Up to 8 tokens a step is a decode (speculative verification, small batches): the GEMV blocks
// multiply all of an expert's tokens from one read of its weights. Beyond, tensor cores pay.
constexpr int64_t kDecodeMaxTokens = 8;
constexpr int kMaxExperts = 1024;  // the plan's per-warp counters live in shared memory (as cuda::route's limit)
constexpr int kPlanThreads = 256;
constexpr int kPlanWarps = kPlanThreads / 32;

// A work item: `rows` consecutive sorted rows, from `row0`, all of expert `expert`.
struct Item {
  int32_t expert, row0, rows, pad;
};

struct Plan {
  int32_t* order;    // [pairs] sorted row -> pair
  int32_t* row_of;   // [pairs] pair -> sorted row, -1 for a pair that contributes nothing
  int32_t* n_items;  // [1]
  Item* items;       // [max_items]
};

// The shared expert (MoeParams::shared_gate) is one more pair of every token: pairs [routed,
// routed + n_tokens) after the routed ones (pair routed + t is token t's), all of the virtual expert
// n_experts, whose weights are the shared pointers. The token of a pair:
__device__ __forceinline__ int64_t token_of(int32_t pair, int64_t top_k, int32_t routed) {
  return pair < routed ? pair / top_k : pair - routed;
}

// Expert e's entry of a weight or scale table, the shared expert's for e == n_experts (never read
// from the table, which has n_experts entries).
template <class P>
__device__ __forceinline__ P expert_ptr(const P* table, P shared, int32_t e, int32_t n_experts) {
  return e == n_experts ? shared : table[e];
}

// Whether expert e runs here: in range, and every matrix (and, for FP8, every scale table) present.
__device__ __forceinline__ bool expert_usable(int32_t e, int64_t n_experts, const void* const* gate,
                                              const void* const* up, const void* const* down,
                                              const float* const* gs, const float* const* us, const float* const* ds,
                                              bool fp8) {
  if (e < 0 || e >= n_experts || !gate[e] || !up[e] || !down[e]) return false;
  return !fp8 || (gs[e] && us[e] && ds[e]);
}

// Exclusive scan of one value per thread over the block (kPlanThreads), in thread order; returns
// this thread's prefix and writes the total to *total. Uses `buf` [kPlanWarps + 1].
__device__ int block_exclusive_scan(int v, int* buf, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
  for (int off = 1; off < 32; off <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += n;
  }
  if (lane == 31) buf[warp] = incl;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int w = 0; w < kPlanWarps; ++w) {
      const int c = buf[w];
      buf[w] = s;
      s += c;
    }
    buf[kPlanWarps] = s;
  }
  __syncthreads();
  const int r = buf[warp] + incl - v;
  *total = buf[kPlanWarps];
  __syncthreads();  // buf may be reused by the next scan
  return r;
}

// Grid: one block of kPlanThreads. Stable counting sort of the pairs by bucket (the expert; E for
// the shared expert's pairs, those from `routed` on; E + 1 for a pair that contributes nothing), then
// the work items. Warp w owns the contiguous pair segment w, so "earlier pair" = earlier warp, or
// same warp and earlier iteration, or same iteration and lower lane: each warp counts its segment
// per bucket (lanes with equal buckets found with match_any, the lowest of them adds), the scan turns
// the counts into per-warp starting rows, and a second pass places the pairs in order.
__global__ void __launch_bounds__(kPlanThreads)
    moe_plan_kernel(Plan plan, const int32_t* __restrict__ ids, int32_t pairs, int32_t routed, int32_t n_experts,
                    int32_t tile, const void* const* gate, const void* const* up, const void* const* down,
                    const float* const* gs, const float* const* us, const float* const* ds, bool fp8) {
  MOERUN_PDL_WAIT();
  __shared__ int cnt[kPlanWarps][kMaxExperts + 2];
  __shared__ int scan_buf[kPlanWarps + 1];
  const int E = n_experts, buckets = E + 2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < kPlanWarps * buckets; i += kPlanThreads) cnt[i / buckets][i % buckets] = 0;
  __syncthreads();
  const int seg = (pairs + kPlanWarps - 1) / kPlanWarps;
  const int s0 = min(pairs, warp * seg), s1 = min(pairs, s0 + seg);
  auto bucket = [&](int i) {
    if (i >= routed) return E;  // the shared expert (the host checked its pointers)
    const int32_t e = ids[i];
    return expert_usable(e, E, gate, up, down, gs, us, ds, fp8) ? static_cast<int>(e) : E + 1;
  };
  const unsigned lt = (1u << lane) - 1u;  // lanes below this one
  for (int b = s0; b < s1; b += 32) {     // warp-uniform trip count
    const int i = b + lane;
    const int key = i < s1 ? bucket(i) : -1;  // -1: no pair (never counted)
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    if (key >= 0 && (peers & lt) == 0) cnt[warp][key] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();
  // Bucket starts: thread j owns buckets [j * per, (j + 1) * per).
  const int per = (buckets + kPlanThreads - 1) / kPlanThreads;
  const int b0 = min(buckets, static_cast<int>(threadIdx.x) * per), b1 = min(buckets, b0 + per);
  int mine = 0;
  for (int b = b0; b < b1; ++b)
    for (int w = 0; w < kPlanWarps; ++w) mine += cnt[w][b];
  int total = 0;
  int start = block_exclusive_scan(mine, scan_buf, &total);
  // Work items of the experts among my buckets (the last bucket, E + 1, has none).
  int my_items = 0;
  for (int b = b0; b < b1 && b <= E; ++b) {
    int rows = 0;
    for (int w = 0; w < kPlanWarps; ++w) rows += cnt[w][b];
    my_items += (rows + tile - 1) / tile;
  }
  int n_items = 0;
  int item = block_exclusive_scan(my_items, scan_buf, &n_items);
  if (threadIdx.x == 0) *plan.n_items = n_items;
  for (int b = b0; b < b1; ++b) {
    int rows = 0;
    for (int w = 0; w < kPlanWarps; ++w) {  // counts -> each warp's first row in this bucket
      const int c = cnt[w][b];
      cnt[w][b] = start + rows;
      rows += c;
    }
    if (b <= E)
      for (int r = 0; r < rows; r += tile) plan.items[item++] = Item{b, start + r, min(tile, rows - r), 0};
    start += rows;
  }
  __syncthreads();
  for (int b = s0; b < s1; b += 32) {
    const int i = b + lane;
    const int key = i < s1 ? bucket(i) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    if (key >= 0) {
      const int row = cnt[warp][key] + __popc(peers & lt);
      plan.order[row] = i;
      plan.row_of[i] = key <= E ? row : -1;
    }
    __syncwarp();
    if (key >= 0 && (peers & lt) == 0) cnt[warp][key] += __popc(peers);
    __syncwarp();
  }
}

// out[t, d] = sum_k weights[t, k] * y[row_of[t*K + k], d], k ascending; pairs without a row add nothing.
// With a shared expert, its row (pair n_tokens*K + t) is then added with weight 1: (sum_k w y) + s, the
// order of the executor's add when the shared expert was a separate FFN.
__global__ void moe_combine_kernel(float* __restrict__ out, const float* __restrict__ y,
                                   const float* __restrict__ weights, const int32_t* __restrict__ row_of,
                                   int64_t n_tokens, int64_t top_k, int64_t D, bool shared) {
  MOERUN_PDL_WAIT();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_tokens * D;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, d = i % D;
    float s = 0.0f;
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t pair = t * top_k + k;
      const int32_t row = row_of[pair];
      if (row >= 0) s = fmaf(weights[pair], y[static_cast<int64_t>(row) * D + d], s);
    }
    if (shared) {
      const int32_t row = row_of[n_tokens * top_k + t];
      if (row >= 0) s += y[static_cast<int64_t>(row) * D + d];
    }
    out[i] = s;
  }
}

// ---------------------------------------------------------------------------------------------------
// Decode: GEMV blocks over the plan's items (<= NT rows of one expert each).

struct DecodeArgs {
  float* h;                 // [pairs, I] act(gate x) * up x, sorted rows
  float* y;                 // [pairs, D] down_e h, sorted rows, unweighted
  const float* x;           // [n_tokens, D]
  const int32_t* order;     // plan
  const int32_t* n_items;
  const Item* items;
  const void* const* gate;  // [n_experts] device pointers
  const void* const* up;
  const void* const* down;
  const float* const* gate_scale;  // FP8 only
  const float* const* up_scale;
  const float* const* down_scale;
  const void* shared_gate;  // the shared expert (virtual expert n_experts), or null
  const void* shared_up;
  const void* shared_down;
  const float* shared_gate_scale;  // FP8 only
  const float* shared_up_scale;
  const float* shared_down_scale;
  int32_t n_experts, routed;  // routed: n_tokens * top_k, the first shared pair
  int64_t top_k, hidden, intermediate, elem_bytes;
  int64_t block_out;
  int64_t scale_cols_d, scale_cols_i;  // FP8: scale columns of gate/up (over D) and of down (over I)
  uint32_t block_in;
  bool vec;           // FP8: block_in % 16 == 0 (16-byte weight vectors stay inside one scale block)
  bool x_vec, h_vec;  // x rows / h rows 16-byte aligned
  Activation act;
};

// Rows per matrix of a decode block (gate_up streams 2R rows, down 2R rows): fewer rows leave registers
// for more tokens and for FP8's 16 widened elements per vector.
template <class W, int NT>
inline constexpr int kDecodeRows = (NT <= 2 && W::kBytes >= 2) ? 4 : 2;

// acc[r][t] += sum over one 16-byte vector of row r at element i0 of W[r, i] * xr[t][i], for t < n. As
// gemv::fma_vector, but each token's row has its own pointer (the item's tokens are not evenly spaced).
template <class W, int R, int NT>
__device__ __forceinline__ void fma_vector_rows(float (&acc)[R][NT], const uint4 (&wv)[R], const gemv::Rows<R>& rows,
                                                const float* const (&xr)[NT], int n, int64_t i0, bool x_vec) {
  constexpr int V = gemv::kVec<W>;
  float wf[R][V];
#pragma unroll
  for (int r = 0; r < R; ++r) gemv::widen(W{}, wv[r], wf[r]);
  float scale[R];
  if constexpr (gemv::kScaled<W>) {
    const uint32_t col = static_cast<uint32_t>(i0) / rows.block_in;  // one scale block per vector (vec)
#pragma unroll
    for (int r = 0; r < R; ++r) scale[r] = __ldg(rows.scale[r] + col);
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    if (t >= n) break;
    float xv[V];
    gemv::load_x<V>(xv, xr[t] + i0, x_vec);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if constexpr (gemv::kScaled<W>) {
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

// This thread's share of the R x n dot products over [0, in), as gemv::accumulate with per-token rows.
template <class W, int R, int NT>
__device__ __forceinline__ void accumulate_rows(float (&acc)[R][NT], const gemv::Rows<R>& rows,
                                                const float* const (&xr)[NT], int n, int64_t in, bool vec,
                                                bool x_vec) {
  constexpr int V = gemv::kVec<W>;
  const int64_t step = blockDim.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t nvec = in / V;
    for (int64_t v = threadIdx.x; v < nvec; v += 2 * step) {  // two vectors per row in flight
      const int64_t v1 = v + step;
      const bool has1 = v1 < nvec;
      uint4 a[R], b[R];
#pragma unroll
      for (int r = 0; r < R; ++r) a[r] = gemv::load_stream(static_cast<const char*>(rows.w[r]) + v * 16);
#pragma unroll
      for (int r = 0; r < R; ++r)
        b[r] = has1 ? gemv::load_stream(static_cast<const char*>(rows.w[r]) + v1 * 16) : make_uint4(0u, 0u, 0u, 0u);
      fma_vector_rows<W, R, NT>(acc, a, rows, xr, n, v * V, x_vec);
      if (has1) fma_vector_rows<W, R, NT>(acc, b, rows, xr, n, v1 * V, x_vec);
    }
    tail = nvec * V;
  }
  for (int64_t i = tail + threadIdx.x; i < in; i += step) {
    float w[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      w[r] = gemv::load_elem(W{}, rows.w[r], i);
      if constexpr (gemv::kScaled<W>) w[r] *= __ldg(rows.scale[r] + static_cast<uint32_t>(i) / rows.block_in);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t >= n) break;
      const float xv = __ldg(xr[t] + i);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][t] = fmaf(w[r], xv, acc[r][t]);
    }
  }
}

// Grid: (ceil(I / R), max_items); block: gemv::threads_for(hidden). Block (b, item) computes
// h[row, b*R .. b*R+R) for the item's rows: R gate rows and R up rows are 2R rows of one GEMV block,
// so x is read once for both and both matrices stream in the same pass.
template <class W, int NT>
__global__ void __launch_bounds__(gemv::kMaxThreads) moe_gate_up_kernel(const DecodeArgs a) {
  MOERUN_PDL_WAIT();
  constexpr int R = kDecodeRows<W, NT>;
  if (static_cast<int>(blockIdx.y) >= *a.n_items) return;  // block-uniform
  const Item it = a.items[blockIdx.y];
  const int64_t I = a.intermediate, D = a.hidden, i0 = static_cast<int64_t>(blockIdx.x) * R;
  const int n = it.rows;
  const float* xr[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) xr[t] = a.x + token_of(a.order[it.row0 + min(t, n - 1)], a.top_k, a.routed) * D;
  gemv::Rows<2 * R> rows;
  const int32_t e = it.expert, E = a.n_experts;
  const char* g = static_cast<const char*>(expert_ptr(a.gate, a.shared_gate, e, E));
  const char* u = static_cast<const char*>(expert_ptr(a.up, a.shared_up, e, E));
  const float* gs = gemv::kScaled<W> ? expert_ptr(a.gate_scale, a.shared_gate_scale, e, E) : nullptr;
  const float* us = gemv::kScaled<W> ? expert_ptr(a.up_scale, a.shared_up_scale, e, E) : nullptr;
  bool vec = a.vec;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = i0 + r < I ? i0 + r : I - 1;  // past the end: a duplicate row, dropped
    rows.w[r] = g + i * D * a.elem_bytes;
    rows.w[R + r] = u + i * D * a.elem_bytes;
    rows.scale[r] = gemv::kScaled<W> ? gs + (i / a.block_out) * a.scale_cols_d : nullptr;
    rows.scale[R + r] = gemv::kScaled<W> ? us + (i / a.block_out) * a.scale_cols_d : nullptr;
    vec = vec && aligned16(rows.w[r]) && aligned16(rows.w[R + r]);
  }
  rows.block_in = a.block_in;

  float acc[2 * R][NT] = {};
  accumulate_rows<W, 2 * R, NT>(acc, rows, xr, n, D, vec, a.x_vec);
  constexpr int M = 2 * R * NT;
  float flat[M];
#pragma unroll
  for (int r = 0; r < 2 * R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) flat[r * NT + t] = acc[r][t];
  __shared__ float partial[gemv::kMaxWarps][M];
  __shared__ float totals[M];
  gemv::block_sum<M>(flat, partial, totals);
  if (threadIdx.x < R * NT) {
    const int r = static_cast<int>(threadIdx.x) / NT, t = static_cast<int>(threadIdx.x) % NT;
    if (t < n && i0 + r < I)  // act(g) * u, as cpu::gated_act
      a.h[(it.row0 + t) * I + i0 + r] = detail::act_mul(a.act, totals[r * NT + t], totals[(R + r) * NT + t]);
  }
}

// Grid: (ceil(D / 2R), max_items); block: gemv::threads_for(intermediate). Block (b, item) computes
// y[row, b*2R .. b*2R+2R) = down_e[rows] . h[row] for the item's rows.
template <class W, int NT>
__global__ void __launch_bounds__(gemv::kMaxThreads) moe_down_kernel(const DecodeArgs a) {
  MOERUN_PDL_WAIT();
  constexpr int R = 2 * kDecodeRows<W, NT>;
  if (static_cast<int>(blockIdx.y) >= *a.n_items) return;
  const Item it = a.items[blockIdx.y];
  const int64_t D = a.hidden, I = a.intermediate, d0 = static_cast<int64_t>(blockIdx.x) * R;
  const int n = it.rows;
  const float* xr[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) xr[t] = a.h + (it.row0 + min(t, n - 1)) * I;
  gemv::Rows<R> rows;
  const char* w = static_cast<const char*>(expert_ptr(a.down, a.shared_down, it.expert, a.n_experts));
  const float* ds = gemv::kScaled<W> ? expert_ptr(a.down_scale, a.shared_down_scale, it.expert, a.n_experts) : nullptr;
  bool vec = a.vec;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t d = d0 + r < D ? d0 + r : D - 1;
    rows.w[r] = w + d * I * a.elem_bytes;
    rows.scale[r] = gemv::kScaled<W> ? ds + (d / a.block_out) * a.scale_cols_i : nullptr;
    vec = vec && aligned16(rows.w[r]);
  }
  rows.block_in = a.block_in;

  float acc[R][NT] = {};
  accumulate_rows<W, R, NT>(acc, rows, xr, n, I, vec, a.h_vec);
  constexpr int M = R * NT;
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
    if (t < n && d0 + r < D) a.y[(it.row0 + t) * D + d0 + r] = totals[threadIdx.x];
  }
}

// ---------------------------------------------------------------------------------------------------
// Prefill: the grouped tensor-core GEMM.
//
// Block tile kBM rows (one item) x kBN columns, k in steps of kBK; 8 warps as 2 (rows) x 4 (columns),
// each owning 32 x 32 outputs (2 x 4 mma tiles of 16 x 8) per matrix. Operands are staged
// global -> registers (the next k step's, while this one multiplies) -> shared memory, converted on
// the way (x to T, FP8 to bf16 with its scale). Shared rows are padded by 8 elements so the
// fragment reads (row g, 32-bit word t of a 4-word group) hit 32 distinct banks.

constexpr int kBM = 64, kBN = 128, kBK = 32, kLd = kBK + 8;
constexpr int kGemmThreads = 256;
static_assert(kBM * kBK / 4 == 2 * kGemmThreads, "the fp32 A tile is two float4 per thread");
static_assert(kBM * kBK / 8 == kGemmThreads, "the 16-bit A tile is one 16-byte vector per thread");
static_assert(kBN * kBK / 8 == 2 * kGemmThreads, "a 16-bit B tile is two 16-byte vectors per thread");
static_assert(kBN * kBK / 16 == kGemmThreads, "an FP8 B tile is one 16-byte vector per thread");

struct GemmArgs {
  const float* x;           // gate_up: [n_tokens, D] fp32, rows gathered through order / top_k
  const void* a16;          // down: h [pairs, I] of T, sorted rows
  const int32_t* order;     // plan
  const int32_t* n_items;
  const Item* items;
  const void* const* w0;    // gate (gate_up) or down
  const void* const* w1;    // up (gate_up)
  const float* const* s0;   // FP8 scales of w0 / w1
  const float* const* s1;
  const void* sw0;          // the shared expert's w0 / w1 / scales (virtual expert n_experts), or null
  const void* sw1;
  const float* ss0;
  const float* ss1;
  int32_t n_experts, routed;  // routed: n_tokens * top_k, the first shared pair
  void* out;                // gate_up: h [pairs, N] of T; down: y [pairs, N] fp32
  int64_t K, N, top_k;      // in and out features of the weights
  int64_t block_out, scale_cols;
  int32_t block_in;
  bool a_vec;               // A rows vector-aligned (x: K % 4 == 0 and 16-byte base; h: K % 8 == 0)
  Activation act;
};

template <class T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return __float2half_rn(v);
  }
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t lb, hb;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    lb = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    hb = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
  } else {
    lb = __half_as_ushort(__float2half_rn(lo));
    hb = __half_as_ushort(__float2half_rn(hi));
  }
  return lb | (hb << 16);
}

// d += a * b for one 16 x 8 x 16 tile (row-major A, column-major B, fp32 accumulators).
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  (void)d, (void)a, (void)b;
  __trap();  // the host never launches this below sm_80
#endif
}

// One k step's operands in registers, between the global loads and the shared stores.
template <class W, int NB>
struct Staged {
  float4 ax[2];          // gate_up: two float4 of x
  uint4 ah;              // down: 8 T of h
  uint4 b[NB][2];        // 16-bit weights: 2 vectors of 8; FP8: b[.][0] is 16 bytes
  float bscale[NB][16];  // FP8: the scale of each of the 16 elements (uniform when block_in % 16 == 0)
};

// Grid: (max_items, ceil(N / kBN)); block: kGemmThreads. Block (item, c) computes the item's rows x
// columns [c*kBN, c*kBN + kBN) of act(x Wg^T) * (x Wu^T) (kGateUp) or of h Wd^T.
template <class T, class W, bool kGateUp>
__global__ void __launch_bounds__(kGemmThreads) moe_mma_kernel(const GemmArgs a) {
  MOERUN_PDL_WAIT();
  constexpr int NB = kGateUp ? 2 : 1;
  constexpr bool kFp8 = W::kBytes == 1;
  static_assert(!kFp8 || std::is_same_v<T, __nv_bfloat16>, "FP8 weights widen to bf16");
  if (static_cast<int>(blockIdx.x) >= *a.n_items) return;  // block-uniform
  const Item it = a.items[blockIdx.x];
  const int64_t K = a.K, N = a.N, col0 = static_cast<int64_t>(blockIdx.y) * kBN;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, tg = lane & 3;

  __shared__ __align__(16) T As[kBM][kLd];
  __shared__ __align__(16) T Bs[NB][kBN][kLd];

  // This thread's load slots. A (gate_up): rows tid/8 and tid/8 + 32, float4 (tid % 8);
  // A (down): row tid/4, 8 elements at (tid % 4) * 8; B (16-bit): rows tid/4 and tid/4 + 64, 8
  // elements at (tid % 4) * 8; B (FP8): row tid/2, 16 elements at (tid % 2) * 16.
  const float* xrow[2] = {nullptr, nullptr};
  const T* hrow = nullptr;
  if constexpr (kGateUp) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int r = tid / 8 + 32 * j;
      if (r < it.rows) xrow[j] = a.x + token_of(a.order[it.row0 + r], a.top_k, a.routed) * K;
    }
  } else {
    const int r = tid / 4;
    if (r < it.rows) hrow = static_cast<const T*>(a.a16) + (static_cast<int64_t>(it.row0) + r) * K;
  }
  constexpr int kBRows = kFp8 ? 1 : 2;
  const char* brow[NB][kBRows];
  const float* srow[NB][kBRows];
  bool b_vec[NB];
#pragma unroll
  for (int m = 0; m < NB; ++m) {
    const int32_t e = it.expert, E = a.n_experts;
    const char* base = static_cast<const char*>(m == 0 ? expert_ptr(a.w0, a.sw0, e, E) : expert_ptr(a.w1, a.sw1, e, E));
    const float* sbase = kFp8 ? (m == 0 ? expert_ptr(a.s0, a.ss0, e, E) : expert_ptr(a.s1, a.ss1, e, E)) : nullptr;
    b_vec[m] = aligned16(base) && K % (16 / W::kBytes) == 0;
#pragma unroll
    for (int j = 0; j < kBRows; ++j) {
      const int64_t o = col0 + (kFp8 ? tid / 2 : tid / 4 + 64 * j);
      brow[m][j] = o < N ? base + o * K * W::kBytes : nullptr;
      srow[m][j] = kFp8 && o < N ? sbase + (o / a.block_out) * a.scale_cols : nullptr;
    }
  }

  (void)xrow, (void)hrow, (void)srow;  // each instantiation uses only its own operands' slots

  auto load = [&](Staged<W, NB>& s, int64_t k0) {
    if constexpr (kGateUp) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t k = k0 + (tid % 8) * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (xrow[j]) {
          if (a.a_vec && k + 3 < K) {
            v = __ldg(reinterpret_cast<const float4*>(xrow[j] + k));
          } else {
            float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int q = 0; q < 4; ++q)
              if (k + q < K) f[q] = __ldg(xrow[j] + k + q);
            v = make_float4(f[0], f[1], f[2], f[3]);
          }
        }
        s.ax[j] = v;
      }
    } else {
      const int64_t k = k0 + (tid % 4) * 8;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (hrow) {
        if (a.a_vec && k + 7 < K) {
          v = *reinterpret_cast<const uint4*>(hrow + k);
        } else {
          unsigned short e[8] = {};
          for (int q = 0; q < 8; ++q)
            if (k + q < K) e[q] = reinterpret_cast<const unsigned short*>(hrow)[k + q];
          v = make_uint4(e[0] | (uint32_t(e[1]) << 16), e[2] | (uint32_t(e[3]) << 16), e[4] | (uint32_t(e[5]) << 16),
                         e[6] | (uint32_t(e[7]) << 16));
        }
      }
      s.ah = v;
    }
#pragma unroll
    for (int m = 0; m < NB; ++m) {
#pragma unroll
      for (int j = 0; j < kBRows; ++j) {
        constexpr int V = 16 / W::kBytes;
        const int64_t k = k0 + (kFp8 ? (tid % 2) * 16 : (tid % 4) * 8);
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (brow[m][j]) {
          if (b_vec[m] && k + V - 1 < K) {
            v = gemv::load_stream(brow[m][j] + k * W::kBytes);
          } else {
            unsigned char bytes[16] = {};
            for (int q = 0; q < V; ++q)
              if (k + q < K)
                for (int c = 0; c < W::kBytes; ++c) bytes[q * W::kBytes + c] = brow[m][j][(k + q) * W::kBytes + c];
            uint32_t wd[4];
            for (int q = 0; q < 4; ++q)
              wd[q] = bytes[4 * q] | (uint32_t(bytes[4 * q + 1]) << 8) | (uint32_t(bytes[4 * q + 2]) << 16) |
                      (uint32_t(bytes[4 * q + 3]) << 24);
            v = make_uint4(wd[0], wd[1], wd[2], wd[3]);
          }
          if constexpr (kFp8) {
            if (a.block_in % 16 == 0) {  // k is a multiple of 16: one scale block for all 16
              const float sc = k < K ? __ldg(srow[m][j] + k / a.block_in) : 0.0f;
#pragma unroll
              for (int q = 0; q < 16; ++q) s.bscale[m][q] = sc;
            } else {
              for (int q = 0; q < 16; ++q) s.bscale[m][q] = k + q < K ? __ldg(srow[m][j] + (k + q) / a.block_in) : 0.0f;
            }
          }
        } else if constexpr (kFp8) {
#pragma unroll
          for (int q = 0; q < 16; ++q) s.bscale[m][q] = 0.0f;
        }
        s.b[m][j] = v;
      }
    }
  };

  auto store = [&](const Staged<W, NB>& s) {
    if constexpr (kGateUp) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float4 v = s.ax[j];
        *reinterpret_cast<uint2*>(&As[tid / 8 + 32 * j][(tid % 8) * 4]) = make_uint2(pack2<T>(v.x, v.y), pack2<T>(v.z, v.w));
      }
    } else {
      *reinterpret_cast<uint4*>(&As[tid / 4][(tid % 4) * 8]) = s.ah;
    }
#pragma unroll
    for (int m = 0; m < NB; ++m) {
      if constexpr (kFp8) {
        float f[16];
        gemv::widen(gemv::F8E4M3{}, s.b[m][0], f);
        uint32_t p[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) p[q] = pack2<T>(f[2 * q] * s.bscale[m][2 * q], f[2 * q + 1] * s.bscale[m][2 * q + 1]);
        T* dst = &Bs[m][tid / 2][(tid % 2) * 16];
        reinterpret_cast<uint4*>(dst)[0] = make_uint4(p[0], p[1], p[2], p[3]);
        reinterpret_cast<uint4*>(dst)[1] = make_uint4(p[4], p[5], p[6], p[7]);
      } else {
#pragma unroll
        for (int j = 0; j < 2; ++j) *reinterpret_cast<uint4*>(&Bs[m][tid / 4 + 64 * j][(tid % 4) * 8]) = s.b[m][j];
      }
    }
  };

  float acc[NB][2][4][4];
#pragma unroll
  for (int m = 0; m < NB; ++m)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[m][i][j][q] = 0.0f;

  Staged<W, NB> st;
  load(st, 0);
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    __syncthreads();  // the previous step's fragment reads are done
    store(st);
    __syncthreads();
    if (k0 + kBK < K) load(st, k0 + kBK);  // in flight while this step multiplies
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      uint32_t af[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = wm * 32 + i * 16 + g;
        af[i][0] = *reinterpret_cast<const uint32_t*>(&As[r][ks + 2 * tg]);
        af[i][1] = *reinterpret_cast<const uint32_t*>(&As[r + 8][ks + 2 * tg]);
        af[i][2] = *reinterpret_cast<const uint32_t*>(&As[r][ks + 2 * tg + 8]);
        af[i][3] = *reinterpret_cast<const uint32_t*>(&As[r + 8][ks + 2 * tg + 8]);
      }
#pragma unroll
      for (int m = 0; m < NB; ++m)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int c = wn * 32 + j * 8 + g;
          const uint32_t bf[2] = {*reinterpret_cast<const uint32_t*>(&Bs[m][c][ks + 2 * tg]),
                                  *reinterpret_cast<const uint32_t*>(&Bs[m][c][ks + 2 * tg + 8])};
#pragma unroll
          for (int i = 0; i < 2; ++i) mma16816<T>(acc[m][i][j], af[i], bf);
        }
    }
  }

  // Accumulator q of tile (i, j): row wm*32 + i*16 + g + 8*(q / 2), column wn*32 + j*8 + 2*tg + q % 2.
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int r = wm * 32 + i * 16 + g + 8 * (q / 2);
        const int64_t c = col0 + wn * 32 + j * 8 + 2 * tg + q % 2;
        if (r >= it.rows || c >= N) continue;
        const int64_t row = static_cast<int64_t>(it.row0) + r;
        if constexpr (kGateUp) {
          static_cast<T*>(a.out)[row * N + c] = from_float<T>(detail::act_mul(a.act, acc[0][i][j][q], acc[1][i][j][q]));
        } else {
          static_cast<float*>(a.out)[row * N + c] = acc[0][i][j][q];
        }
      }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

// The workspace of one call: the plan, then h and y. Sized from the shapes only, so a step's size
// is known before capture.
struct Layout {
  size_t order, row_of, n_items, items, h, y, total;
};

Layout layout(int64_t pairs, int64_t items, int64_t I, int64_t D, size_t h_elem) {
  Layout l{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t p = at;
    at += round_up(bytes, kWorkspaceAlign);
    return p;
  };
  l.order = take(static_cast<size_t>(pairs) * sizeof(int32_t));
  l.row_of = take(static_cast<size_t>(pairs) * sizeof(int32_t));
  l.n_items = take(sizeof(int32_t));
  l.items = take(static_cast<size_t>(items) * sizeof(Item));
  l.h = take(static_cast<size_t>(pairs * I) * h_elem);
  l.y = take(static_cast<size_t>(pairs * D) * sizeof(float));
  l.total = at;
  return l;
}

// The pairs the plan sorts: the routed ones, then (with a shared expert) one more per token.
int64_t routed_pairs(const MoeParams& p) { return p.n_tokens * p.top_k; }
int64_t plan_pairs(const MoeParams& p) { return routed_pairs(p) + (p.shared_gate ? p.n_tokens : 0); }
// An upper bound on the plan's work items of at most `tile` rows: each expert's last item may be
// partial, and only experts with pairs (at most one per pair) have items.
int64_t max_items(const MoeParams& p, int64_t tile) {
  const int64_t pairs = plan_pairs(p);
  return ceil_div(pairs, tile) + std::min(p.n_experts + (p.shared_gate ? 1 : 0), pairs);
}

void launch_plan(const MoeParams& p, const Plan& plan, int32_t tile, cudaStream_t stream) {
  launch_kernel(moe_plan_kernel, 1, kPlanThreads, 0, stream, plan, p.expert_ids, static_cast<int32_t>(plan_pairs(p)),
                static_cast<int32_t>(routed_pairs(p)), static_cast<int32_t>(p.n_experts), tile, p.gate, p.up, p.down,
                p.gate_scale, p.up_scale, p.down_scale, p.weight_dtype == DType::f8_e4m3);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

void launch_combine(const MoeParams& p, const float* y, const int32_t* row_of, cudaStream_t stream) {
  launch_kernel(moe_combine_kernel, elt_blocks(p.n_tokens * p.hidden), kEltThreads, 0, stream, p.out, y,
                p.expert_weights, row_of, p.n_tokens, p.top_k, p.hidden, p.shared_gate != nullptr);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

template <class W, int NT>
void moe_decode(const MoeParams& p, Context& ctx) {
  constexpr int R = kDecodeRows<W, NT>;
  const int64_t pairs = plan_pairs(p), D = p.hidden, I = p.intermediate;
  const int64_t items = max_items(p, NT);
  if (items > 65535 || ceil_div(I, int64_t{R}) > INT_MAX || ceil_div(D, int64_t{2 * R}) > INT_MAX)
    throw Error("cuda::moe", cat("GEMV grid too large: ", p.n_tokens, " tokens x top_k ", p.top_k, " over ",
                                 p.n_experts, " experts (", items, " items > 65535)"));
  const Layout l = layout(pairs, items, I, D, sizeof(float));
  char* ws = static_cast<char*>(ctx.workspace(l.total));
  const Plan plan{reinterpret_cast<int32_t*>(ws + l.order), reinterpret_cast<int32_t*>(ws + l.row_of),
                  reinterpret_cast<int32_t*>(ws + l.n_items), reinterpret_cast<Item*>(ws + l.items)};
  DecodeArgs a{};
  a.h = reinterpret_cast<float*>(ws + l.h);
  a.y = reinterpret_cast<float*>(ws + l.y);
  a.x = p.x;
  a.order = plan.order;
  a.n_items = plan.n_items;
  a.items = plan.items;
  a.gate = p.gate;
  a.up = p.up;
  a.down = p.down;
  a.gate_scale = p.gate_scale;
  a.up_scale = p.up_scale;
  a.down_scale = p.down_scale;
  a.shared_gate = p.shared_gate;
  a.shared_up = p.shared_up;
  a.shared_down = p.shared_down;
  a.shared_gate_scale = p.shared_gate_scale;
  a.shared_up_scale = p.shared_up_scale;
  a.shared_down_scale = p.shared_down_scale;
  a.n_experts = static_cast<int32_t>(p.n_experts);
  a.routed = static_cast<int32_t>(routed_pairs(p));
  a.top_k = p.top_k;
  a.hidden = D;
  a.intermediate = I;
  a.elem_bytes = W::kBytes;
  const bool fp8 = gemv::kScaled<W>;
  a.block_out = fp8 ? p.block_out : 1;
  a.scale_cols_d = fp8 ? ceil_div(D, p.block_in) : 0;
  a.scale_cols_i = fp8 ? ceil_div(I, p.block_in) : 0;
  a.block_in = static_cast<uint32_t>(fp8 ? p.block_in : 1);
  a.vec = !fp8 || p.block_in % 16 == 0;
  a.x_vec = aligned16(p.x) && D % 4 == 0;
  a.h_vec = I % 4 == 0;  // h starts on the workspace alignment
  a.act = p.act;
  cudaStream_t stream = ctx.stream();
  launch_plan(p, plan, NT, stream);
  const dim3 gate_grid(static_cast<unsigned>(ceil_div(I, int64_t{R})), static_cast<unsigned>(items));
  launch_kernel(moe_gate_up_kernel<W, NT>, gate_grid, gemv::threads_for(D, gemv::kVec<W>), 0, stream, a);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  const dim3 down_grid(static_cast<unsigned>(ceil_div(D, int64_t{2 * R})), static_cast<unsigned>(items));
  launch_kernel(moe_down_kernel<W, NT>, down_grid, gemv::threads_for(I, gemv::kVec<W>), 0, stream, a);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  launch_combine(p, a.y, plan.row_of, stream);
}

template <class W>
void moe_decode_tokens(const MoeParams& p, Context& ctx) {
  // Token widths round up to an instantiated one; a wider step (f32 prefill) runs items of 8 rows.
  if (p.n_tokens == 1) {
    moe_decode<W, 1>(p, ctx);
  } else if (p.n_tokens == 2) {
    moe_decode<W, 2>(p, ctx);
  } else if (p.n_tokens <= 4) {
    moe_decode<W, 4>(p, ctx);
  } else {
    moe_decode<W, 8>(p, ctx);
  }
}

// T: the 16-bit MMA operand type (bf16 for bf16 and FP8 weights, half for f16).
template <class T, class W>
void moe_prefill(const MoeParams& p, Context& ctx) {
  const int64_t pairs = plan_pairs(p), D = p.hidden, I = p.intermediate;
  const int64_t items = max_items(p, kBM);
  if (ceil_div(std::max(D, I), int64_t{kBN}) > 65535)
    throw Error("cuda::moe", cat("hidden ", D, " or intermediate ", I, " too large for the GEMM grid"));
  const Layout l = layout(pairs, items, I, D, sizeof(T));
  char* ws = static_cast<char*>(ctx.workspace(l.total));
  const Plan plan{reinterpret_cast<int32_t*>(ws + l.order), reinterpret_cast<int32_t*>(ws + l.row_of),
                  reinterpret_cast<int32_t*>(ws + l.n_items), reinterpret_cast<Item*>(ws + l.items)};
  T* h = reinterpret_cast<T*>(ws + l.h);
  float* y = reinterpret_cast<float*>(ws + l.y);
  cudaStream_t stream = ctx.stream();
  launch_plan(p, plan, kBM, stream);
  const bool fp8 = W::kBytes == 1;

  GemmArgs g{};
  g.x = p.x;
  g.order = plan.order;
  g.n_items = plan.n_items;
  g.items = plan.items;
  g.w0 = p.gate;
  g.w1 = p.up;
  g.s0 = p.gate_scale;
  g.s1 = p.up_scale;
  g.sw0 = p.shared_gate;
  g.sw1 = p.shared_up;
  g.ss0 = p.shared_gate_scale;
  g.ss1 = p.shared_up_scale;
  g.n_experts = static_cast<int32_t>(p.n_experts);
  g.routed = static_cast<int32_t>(routed_pairs(p));
  g.out = h;
  g.K = D;
  g.N = I;
  g.top_k = p.top_k;
  g.block_out = p.block_out;
  g.scale_cols = fp8 ? ceil_div(D, p.block_in) : 0;
  g.block_in = static_cast<int32_t>(fp8 ? p.block_in : 1);
  g.a_vec = aligned16(p.x) && D % 4 == 0;
  g.act = p.act;
  launch_kernel(moe_mma_kernel<T, W, true>,
                dim3(static_cast<unsigned>(items), static_cast<unsigned>(ceil_div(I, int64_t{kBN}))), kGemmThreads, 0,
                stream, g);
  MOERUN_CUDA_CHECK(cudaGetLastError());

  GemmArgs d = g;
  d.x = nullptr;
  d.a16 = h;
  d.w0 = p.down;
  d.w1 = nullptr;
  d.s0 = p.down_scale;
  d.s1 = nullptr;
  d.sw0 = p.shared_down;
  d.sw1 = nullptr;
  d.ss0 = p.shared_down_scale;
  d.ss1 = nullptr;
  d.out = y;
  d.K = I;
  d.N = D;
  d.scale_cols = fp8 ? ceil_div(I, p.block_in) : 0;
  d.a_vec = I % 8 == 0;  // h starts on the workspace alignment
  launch_kernel(moe_mma_kernel<T, W, false>,
                dim3(static_cast<unsigned>(items), static_cast<unsigned>(ceil_div(D, int64_t{kBN}))), kGemmThreads, 0,
                stream, d);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  launch_combine(p, y, plan.row_of, stream);
}

}  // namespace

void moe(const MoeParams& p, Context& ctx) {
  if (p.n_tokens < 0 || p.top_k < 1 || p.n_experts < 1 || p.hidden < 1 || p.intermediate < 1 ||
      p.n_tokens * (p.top_k + 1) > INT_MAX ||
      p.n_tokens * (p.top_k + 1) * std::max(p.hidden, p.intermediate) > INT64_MAX / 4)
    throw Error("cuda::moe", cat("bad shape: n_tokens ", p.n_tokens, ", top_k ", p.top_k, ", n_experts ", p.n_experts,
                                 ", hidden ", p.hidden, ", intermediate ", p.intermediate));
  if (p.n_experts > kMaxExperts)
    throw Error("cuda::moe", cat("n_experts ", p.n_experts, " exceeds the supported ", kMaxExperts));
  const DType dt = p.weight_dtype;
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16 && dt != DType::f8_e4m3)
    throw Error("cuda::moe", cat("expert weights of ", dtype_name(dt), " are not supported (f32, bf16, f16, f8_e4m3)"));
  const bool fp8 = dt == DType::f8_e4m3;
  if (fp8 && (!p.gate_scale || !p.up_scale || !p.down_scale || p.block_out <= 0 || p.block_in <= 0 ||
              p.block_in > INT_MAX || p.hidden > INT_MAX || p.intermediate > INT_MAX))
    throw Error("cuda::moe", cat("FP8 experts need gate_scale, up_scale and down_scale tables and positive block "
                                 "sizes (block_out ",
                                 p.block_out, ", block_in ", p.block_in, ")"));
  if (p.shared_gate && (!p.shared_up || !p.shared_down ||
                        (fp8 && (!p.shared_gate_scale || !p.shared_up_scale || !p.shared_down_scale))))
    throw Error("cuda::moe", "a shared expert (shared_gate set) needs shared_up and shared_down, and for FP8 experts "
                             "shared_gate_scale, shared_up_scale and shared_down_scale");
  if (p.n_tokens == 0) return;
  if (!p.out || !p.x || !p.expert_ids || !p.expert_weights || !p.gate || !p.up || !p.down)
    throw Error("cuda::moe", "out, x, expert_ids, expert_weights and the gate/up/down tables must be set");
  if (p.n_tokens <= kDecodeMaxTokens || dt == DType::f32) {  // f32 has no tensor-core path: GEMV items of 8 rows
    switch (dt) {
      case DType::f32: moe_decode_tokens<gemv::F32>(p, ctx); break;
      case DType::bf16: moe_decode_tokens<gemv::BF16>(p, ctx); break;
      case DType::f16: moe_decode_tokens<gemv::F16>(p, ctx); break;
      default: moe_decode_tokens<gemv::F8E4M3>(p, ctx); break;
    }
    return;
  }
  switch (dt) {
    case DType::bf16: moe_prefill<__nv_bfloat16, gemv::BF16>(p, ctx); break;
    case DType::f16: moe_prefill<__half, gemv::F16>(p, ctx); break;
    default: moe_prefill<__nv_bfloat16, gemv::F8E4M3>(p, ctx); break;
  }
}

}  // namespace moerun::cuda
