// The routed experts of a MoE layer on the GPU; the CPU twin is kernels/cpu/moe.cpp.
//   out[t, :] = sum_k w[t, k] * down_e(act(gate_e x[t]) * up_e x[t]),  e = ids[t, k]   (act: hidden_act)
//
// Decode (n_tokens <= kDecodeMaxTokens): runs inside the captured decode graph, so nothing goes to the
// host: kernels read the expert ids and the weight-pointer tables on the device. Three launches:
//   1. gate_up: per (token, k) pair, R rows of gate_e and the same R rows of up_e streamed in one
//      pass over x[t] (the GEMV blocks of kernels/cuda/gemv.cuh), h = act(gate) * up   -> [pairs, I]
//   2. down: per pair, R rows of down_e times h[pair]                                   -> [pairs, D]
//   3. combine: out[t, d] = sum over k, in k order, of w[t, k] * partial[t, k, d]
// Only the selected experts' weights are read; the sum has a fixed order (no atomics), so a replayed
// graph gives identical bits. A pair whose id is out of range contributes nothing here (the device
// cannot report it); the prefill path checks ids and throws.
//
// Prefill (more tokens; never captured): the ids come to the host (one stream sync), the pairs are
// counting-sorted by expert (kernels/moe_plan.h, shared with the CPU twin), each expert's tokens are
// gathered into contiguous rows already rounded to the weights' dtype, every selected expert runs its
// gate and up GEMMs (cuBLAS, fp32 accumulation) over all its rows at once, one kernel applies
// act(gate) * up for all rows, each expert runs its down GEMM, and a combine kernel sums every token's k
// weighted rows in k order (deterministic, no atomics).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/context.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/moe_plan.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

using ::moerun::detail::cat;

constexpr int64_t kDecodeMaxTokens = 4;  // beyond this, grouping pairs by expert pays for the host sync
constexpr int kRows = 4;                 // weight rows per decode block (gate_up streams 2 x kRows rows)

struct DecodeArgs {
  float* h;                 // [pairs, I]  act(gate x) * up x
  float* partial;           // [pairs, D]  down_e h, unweighted
  const float* x;           // [n_tokens, D]
  const int32_t* ids;       // [pairs]
  const void* const* gate;  // [n_experts] device pointers
  const void* const* up;
  const void* const* down;
  int64_t top_k, n_experts, hidden, intermediate, elem_bytes;
  bool x_vec, h_vec;  // x rows / h rows 16-byte aligned
  Activation act;
};

// Grid: (ceil(I / kRows), pairs); block: gemv::threads_for(hidden). Block (b, pair) computes
// h[pair, b*R .. b*R+R) for expert ids[pair]: the R gate rows and R up rows are 2R rows of one GEMV
// block, so x[t] is read once for both and both matrices stream in the same pass.
template <class W>
__global__ void __launch_bounds__(gemv::kMaxThreads) moe_gate_up_kernel(const DecodeArgs a) {
  constexpr int R = kRows;
  const int64_t pair = blockIdx.y, t = pair / a.top_k, I = a.intermediate;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * R;
  const int32_t e = a.ids[pair];
  // Out of range, or another rank's expert (a null entry: expert parallel). Block-uniform: no
  // barrier is skipped by part of the block.
  if (e < 0 || e >= a.n_experts || a.gate[e] == nullptr) {
    if (threadIdx.x < R && i0 + threadIdx.x < I) a.h[pair * I + i0 + threadIdx.x] = 0.0f;
    return;
  }
  gemv::Rows<2 * R> rows;
  const char* g = static_cast<const char*>(a.gate[e]);
  const char* u = static_cast<const char*>(a.up[e]);
  bool vec = true;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = i0 + r < I ? i0 + r : I - 1;  // past the end: a duplicate row, dropped
    rows.w[r] = g + i * a.hidden * a.elem_bytes;
    rows.w[R + r] = u + i * a.hidden * a.elem_bytes;
    vec = vec && aligned16(rows.w[r]) && aligned16(rows.w[R + r]);
  }
#pragma unroll
  for (int r = 0; r < 2 * R; ++r) rows.scale[r] = nullptr;
  rows.block_in = 1;

  float acc[2 * R][1] = {};
  gemv::accumulate<W, 2 * R, 1>(acc, rows, a.x + t * a.hidden, 0, 1, a.hidden, vec, a.x_vec);
  float flat[2 * R];
#pragma unroll
  for (int r = 0; r < 2 * R; ++r) flat[r] = acc[r][0];
  __shared__ float partial[gemv::kMaxWarps][2 * R];
  __shared__ float totals[2 * R];
  gemv::block_sum<2 * R>(flat, partial, totals);
  if (threadIdx.x < R && i0 + threadIdx.x < I) {
    const float gv = totals[threadIdx.x], uv = totals[R + threadIdx.x];
    a.h[pair * I + i0 + threadIdx.x] = detail::act_mul(a.act, gv, uv);  // act(g) * u, as cpu::gated_act
  }
}

// Grid: (ceil(D / kRows), pairs); block: gemv::threads_for(intermediate). Block (b, pair) computes
// partial[pair, b*R .. b*R+R) = down_e[rows] . h[pair] for expert ids[pair].
template <class W>
__global__ void __launch_bounds__(gemv::kMaxThreads) moe_down_kernel(const DecodeArgs a) {
  constexpr int R = kRows;
  const int64_t pair = blockIdx.y, D = a.hidden;
  const int64_t d0 = static_cast<int64_t>(blockIdx.x) * R;
  const int32_t e = a.ids[pair];
  if (e < 0 || e >= a.n_experts || a.down[e] == nullptr) {
    if (threadIdx.x < R && d0 + threadIdx.x < D) a.partial[pair * D + d0 + threadIdx.x] = 0.0f;
    return;
  }
  gemv::Rows<R> rows;
  const char* w = static_cast<const char*>(a.down[e]);
  bool vec = true;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t d = d0 + r < D ? d0 + r : D - 1;
    rows.w[r] = w + d * a.intermediate * a.elem_bytes;
    rows.scale[r] = nullptr;
    vec = vec && aligned16(rows.w[r]);
  }
  rows.block_in = 1;

  float acc[R][1] = {};
  gemv::accumulate<W, R, 1>(acc, rows, a.h + pair * a.intermediate, 0, 1, a.intermediate, vec, a.h_vec);
  float flat[R];
#pragma unroll
  for (int r = 0; r < R; ++r) flat[r] = acc[r][0];
  __shared__ float partial[gemv::kMaxWarps][R];
  __shared__ float totals[R];
  gemv::block_sum<R>(flat, partial, totals);
  if (threadIdx.x < R && d0 + threadIdx.x < D) a.partial[pair * D + d0 + threadIdx.x] = totals[threadIdx.x];
}

// out[t, d] = sum_k weights[t, k] * rows[row(t, k), d], k ascending; row(t, k) = row_of[t*K + k], or
// t*K + k when row_of is null (the decode partials are already pair-ordered).
__global__ void moe_combine_kernel(float* __restrict__ out, const float* __restrict__ rows,
                                   const float* __restrict__ weights, const int32_t* __restrict__ row_of,
                                   int64_t n_tokens, int64_t top_k, int64_t D) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_tokens * D;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, d = i % D;
    float s = 0.0f;
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t pair = t * top_k + k;
      const int64_t row = row_of ? row_of[pair] : pair;
      s = fmaf(weights[pair], rows[row * D + d], s);
    }
    out[i] = s;
  }
}

template <class T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return __float2half_rn(v);
  }
}

// Grid: one block per sorted row j: xg[j, :] = x[token[j], :] in the GEMM's dtype T.
template <class T>
__global__ void moe_gather_kernel(T* __restrict__ xg, const float* __restrict__ x, const int32_t* __restrict__ token,
                                  int64_t D) {
  const int64_t j = blockIdx.x;
  const float* src = x + static_cast<int64_t>(token[j]) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) xg[j * D + d] = from_float<T>(src[d]);
}

// h[i] = act(g[i]) * u[i] in the GEMM's dtype T, over all sorted rows at once.
template <class T>
__global__ void moe_act_mul_kernel(T* __restrict__ h, const float* __restrict__ g, const float* __restrict__ u,
                                   int64_t n, Activation act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    h[i] = from_float<T>(detail::act_mul(act, g[i], u[i]));
  }
}

template <class W>
void moe_decode(const MoeParams& p, Context& ctx) {
  const int64_t pairs = p.n_tokens * p.top_k, D = p.hidden, I = p.intermediate;
  const size_t h_bytes = round_up(static_cast<size_t>(pairs * I) * sizeof(float), kWorkspaceAlign);
  char* ws = static_cast<char*>(ctx.workspace(h_bytes + static_cast<size_t>(pairs * D) * sizeof(float)));
  DecodeArgs a{};
  a.h = reinterpret_cast<float*>(ws);
  a.partial = reinterpret_cast<float*>(ws + h_bytes);
  a.x = p.x;
  a.ids = p.expert_ids;
  a.gate = p.gate;
  a.up = p.up;
  a.down = p.down;
  a.top_k = p.top_k;
  a.n_experts = p.n_experts;
  a.hidden = D;
  a.intermediate = I;
  a.elem_bytes = W::kBytes;
  a.x_vec = aligned16(p.x) && D % 4 == 0;
  a.h_vec = I % 4 == 0;  // the workspace is 256-byte aligned
  a.act = p.act;
  cudaStream_t stream = ctx.stream();
  const dim3 gate_grid(static_cast<unsigned>(ceil_div(I, kRows)), static_cast<unsigned>(pairs));
  moe_gate_up_kernel<W><<<gate_grid, gemv::threads_for(D, gemv::kVec<W>), 0, stream>>>(a);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  const dim3 down_grid(static_cast<unsigned>(ceil_div(D, kRows)), static_cast<unsigned>(pairs));
  moe_down_kernel<W><<<down_grid, gemv::threads_for(I, gemv::kVec<W>), 0, stream>>>(a);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  moe_combine_kernel<<<elt_blocks(p.n_tokens * D), kEltThreads, 0, stream>>>(p.out, a.partial, p.expert_weights,
                                                                             nullptr, p.n_tokens, p.top_k, D);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

// T: the GEMM operand type for the weights' dtype (float, __nv_bfloat16 or __half).
template <class T>
void moe_prefill(const MoeParams& p, Context& ctx) {
  if (ctx.capturing())
    throw Error("cuda::moe", cat("the prefill path (", p.n_tokens,
                                 " tokens) reads expert ids on the host and "
                                 "cannot be captured; capture decode steps of at most ",
                                 kDecodeMaxTokens, " tokens"));
  const int64_t K = p.top_k, E = p.n_experts, D = p.hidden, I = p.intermediate, pairs = p.n_tokens * K;
  cudaStream_t stream = ctx.stream();

  // The routing result and the weight tables, on the host: the only sync of the layer.
  std::vector<int32_t> ids(static_cast<size_t>(pairs));
  std::vector<const void*> gate(static_cast<size_t>(E)), up(static_cast<size_t>(E)), down(static_cast<size_t>(E));
  MOERUN_CUDA_CHECK(
      cudaMemcpyAsync(ids.data(), p.expert_ids, ids.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  MOERUN_CUDA_CHECK(cudaMemcpyAsync(gate.data(), p.gate, gate.size() * sizeof(void*), cudaMemcpyDeviceToHost, stream));
  MOERUN_CUDA_CHECK(cudaMemcpyAsync(up.data(), p.up, up.size() * sizeof(void*), cudaMemcpyDeviceToHost, stream));
  MOERUN_CUDA_CHECK(cudaMemcpyAsync(down.data(), p.down, down.size() * sizeof(void*), cudaMemcpyDeviceToHost, stream));
  ctx.synchronize();
  const MoePlan plan = plan_moe(ids.data(), pairs, E);

  // index: [pairs] token of each sorted row, then [pairs] sorted row of each pair.
  std::vector<int32_t> index(static_cast<size_t>(2 * pairs));
  for (int64_t j = 0; j < pairs; ++j) {
    index[static_cast<size_t>(j)] = static_cast<int32_t>(plan.order[static_cast<size_t>(j)] / K);
    index[static_cast<size_t>(pairs + j)] = plan.row_of[static_cast<size_t>(j)];
  }

  // Workspace: index | A: gathered x [pairs, D], later h [pairs, I] (T) | B: gate and up [2, pairs, I],
  // later the expert outputs [pairs, D] (fp32). Each area's first use is finished, in stream order,
  // before its second begins.
  const size_t index_bytes = round_up(index.size() * sizeof(int32_t), kWorkspaceAlign);
  const size_t a_bytes = round_up(static_cast<size_t>(pairs * std::max(D, I)) * sizeof(T), kWorkspaceAlign);
  const size_t b_bytes = static_cast<size_t>(pairs * std::max(2 * I, D)) * sizeof(float);
  char* ws = static_cast<char*>(ctx.workspace(index_bytes + a_bytes + b_bytes));
  auto* dev_token = reinterpret_cast<int32_t*>(ws);
  auto* dev_row_of = dev_token + pairs;
  T* xg = reinterpret_cast<T*>(ws + index_bytes);
  T* h = xg;
  float* g = reinterpret_cast<float*>(ws + index_bytes + a_bytes);
  float* u = g + pairs * I;
  float* y = g;
  // Pageable source: the call returns once the data is staged, so `index` may go out of scope after.
  MOERUN_CUDA_CHECK(
      cudaMemcpyAsync(dev_token, index.data(), index.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream));

  moe_gather_kernel<T><<<static_cast<unsigned>(pairs), kEltThreads, 0, stream>>>(xg, p.x, dev_token, D);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  for (int64_t e = 0; e < E; ++e) {  // experts nobody selected own no rows and are not read
    const int64_t r0 = plan.offsets[static_cast<size_t>(e)], rows = plan.rows(e);
    if (rows == 0 || !gate[static_cast<size_t>(e)]) continue;
    detail::gemm_xwt(ctx, g + r0 * I, I, gate[static_cast<size_t>(e)], xg + r0 * D, D, p.weight_dtype, rows, D, I);
    detail::gemm_xwt(ctx, u + r0 * I, I, up[static_cast<size_t>(e)], xg + r0 * D, D, p.weight_dtype, rows, D, I);
  }
  moe_act_mul_kernel<T><<<elt_blocks(pairs * I), kEltThreads, 0, stream>>>(h, g, u, pairs * I, p.act);
  MOERUN_CUDA_CHECK(cudaGetLastError());
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = plan.offsets[static_cast<size_t>(e)], rows = plan.rows(e);
    if (rows == 0) continue;
    if (!down[static_cast<size_t>(e)]) {  // another rank's expert: its rows add nothing here
      MOERUN_CUDA_CHECK(cudaMemsetAsync(y + r0 * D, 0, static_cast<size_t>(rows * D) * sizeof(float), stream));
      continue;
    }
    detail::gemm_xwt(ctx, y + r0 * D, D, down[static_cast<size_t>(e)], h + r0 * I, I, p.weight_dtype, rows, I, D);
  }
  moe_combine_kernel<<<elt_blocks(p.n_tokens * D), kEltThreads, 0, stream>>>(p.out, y, p.expert_weights, dev_row_of,
                                                                             p.n_tokens, K, D);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void moe(const MoeParams& p, Context& ctx) {
  if (p.n_tokens < 0 || p.top_k < 1 || p.n_experts < 1 || p.hidden < 1 || p.intermediate < 1 ||
      p.n_tokens * p.top_k > 0x7fffffff)
    throw Error("cuda::moe", cat("bad shape: n_tokens ", p.n_tokens, ", top_k ", p.top_k, ", n_experts ", p.n_experts,
                                 ", hidden ", p.hidden, ", intermediate ", p.intermediate));
  const DType dt = p.weight_dtype;
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16)
    throw Error("cuda::moe", cat("expert weights of ", dtype_name(dt),
                                 " are not supported (f32, bf16, f16; FP8 experts are dequantized at load)"));
  if (p.n_tokens == 0) return;
  if (!p.out || !p.x || !p.expert_ids || !p.expert_weights || !p.gate || !p.up || !p.down)
    throw Error("cuda::moe", "out, x, expert_ids, expert_weights and the gate/up/down tables must be set");
  if (p.n_tokens <= kDecodeMaxTokens) {
    if (p.n_tokens * p.top_k > 65535 || ceil_div(p.intermediate, kRows) > 0x7fffffff ||
        ceil_div(p.hidden, kRows) > 0x7fffffff)
      throw Error("cuda::moe", cat("decode grid too large: ", p.n_tokens, " tokens x top_k ", p.top_k));
    switch (dt) {
      case DType::f32: moe_decode<gemv::F32>(p, ctx); break;
      case DType::bf16: moe_decode<gemv::BF16>(p, ctx); break;
      default: moe_decode<gemv::F16>(p, ctx); break;
    }
    return;
  }
  switch (dt) {
    case DType::f32: moe_prefill<float>(p, ctx); break;
    case DType::bf16: moe_prefill<__nv_bfloat16>(p, ctx); break;
    default: moe_prefill<__half>(p, ctx); break;
  }
}

}  // namespace moerun::cuda
