// MoE routing on the GPU, every variant of docs/MODELS.md §3 in one kernel; the CPU twin is
// kernels/cpu/route.cpp and this kernel follows it step by step: scores (softmax or sigmoid), the
// selection-only correction bias, group-limited selection (group score = max for
// group_limited_greedy, sum of the two best for noaux_tc; dropped groups masked with 0 or -inf as
// the twin does), top-k with the twin's tie rule (larger value first, equal values: lower index
// first), optional renormalisation and the routed scaling factor. Expert ids match the CPU exactly
// unless two selection scores differ by a few ulps (exp and the softmax sum are computed in a
// different order); weights match to fp32 rounding. NaN logits are not given a defined order.

#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

using ::moerun::detail::cat;

constexpr int kMaxExperts = 1024;  // one thread per expert, one block per token
constexpr int kMaxTopK = 64;
constexpr int kMaxGroups = 64;

struct RouteArgs {
  int32_t* ids;         // [n_tokens, top_k]
  float* weights;       // [n_tokens, top_k]
  const float* logits;  // [n_tokens, n_experts]
  const float* bias;    // [n_experts] or nullptr
  int n_experts, top_k, n_group, topk_group;
  bool sigmoid, norm;
  TopkMethod method;
  float scaling;
};

// The top-k order on (value, index): a larger value wins, equal values go to the lower index (the
// CPU twin's tie rule). Index -1 is "no candidate" and loses to everything, even -inf.
__device__ __forceinline__ bool better(float v1, int i1, float v2, int i2) {
  if (i1 < 0) return false;
  if (i2 < 0) return true;
  return v1 > v2 || (v1 == v2 && i1 < i2);
}

// Shared scratch of the block reductions (one slot per warp) and their broadcast result.
struct Reduce {
  float v[kMaxExperts / 32];
  int i[kMaxExperts / 32];
  float result_v;
  int result_i;
};

// The block's best (value, index) under better(); every thread gets it. Two barriers; the shared
// slots may be reused right after (each is read before the barrier that precedes its next write).
__device__ int block_argmax(float v, int i, Reduce& red) {
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  if (lane == 0) {
    red.v[warp] = v;
    red.i[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x) >> 5;
    v = lane < warps ? red.v[lane] : 0.0f;
    i = lane < warps ? red.i[lane] : -1;
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, off);
      const int oi = __shfl_xor_sync(0xffffffffu, i, off);
      if (better(ov, oi, v, i)) {
        v = ov;
        i = oi;
      }
    }
    if (lane == 0) red.result_i = i;
  }
  __syncthreads();
  return red.result_i;
}

// Sum (max when `take_max`) over the block; every thread gets it. Two barriers, as block_argmax.
__device__ float block_reduce(float v, bool take_max, Reduce& red) {
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = take_max ? fmaxf(v, o) : v + o;
  }
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  if (lane == 0) red.v[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x) >> 5;
    v = lane < warps ? red.v[lane] : (take_max ? -INFINITY : 0.0f);
    for (int off = 16; off > 0; off >>= 1) {
      const float o = __shfl_xor_sync(0xffffffffu, v, off);
      v = take_max ? fmaxf(v, o) : v + o;
    }
    if (lane == 0) red.result_v = v;
  }
  __syncthreads();
  return red.result_v;
}

// Grid: one block per token. Block: one thread per expert (n_experts rounded up to whole warps).
// Thread e computes expert e's score; groups are scored by one thread each (serially, as the CPU);
// the top-k is k block-wide argmax rounds; thread 0 writes the k weights in the CPU's order.
__global__ void __launch_bounds__(kMaxExperts) route_kernel(const RouteArgs a) {
  MOERUN_PDL_WAIT();
  __shared__ float scores[kMaxExperts];  // unbiased scores: the weights come from these
  __shared__ float select[kMaxExperts];  // scores + correction bias, groups masked: selection uses these
  __shared__ float group_score[kMaxGroups];
  __shared__ bool group_kept[kMaxGroups];
  __shared__ int chosen[kMaxTopK];
  __shared__ Reduce red;

  const int e = static_cast<int>(threadIdx.x), E = a.n_experts;
  const bool live = e < E;
  const float z = live ? a.logits[static_cast<int64_t>(blockIdx.x) * E + e] : -INFINITY;
  float s;
  if (!a.sigmoid) {
    const float m = block_reduce(z, /*take_max=*/true, red);
    const float ex = live ? expf(z - m) : 0.0f;
    s = ex / block_reduce(ex, /*take_max=*/false, red);
  } else {
    s = 1.0f / (1.0f + expf(-z));
  }
  if (live) {
    scores[e] = s;
    select[e] = s + (a.bias ? a.bias[e] : 0.0f);
  }
  __syncthreads();

  if (a.method != TopkMethod::greedy) {
    // Group-limited: groups of per_group consecutive experts (as the CPU, experts past
    // n_group * per_group belong to no group and are never masked).
    const int per_group = E / a.n_group;
    if (e < a.n_group) {
      const float* g = select + e * per_group;
      if (a.method == TopkMethod::group_limited_greedy) {  // DeepSeek-V2: the best expert
        float best = g[0];
        for (int j = 1; j < per_group; ++j) best = fmaxf(best, g[j]);
        group_score[e] = best;
      } else {  // noaux_tc (DeepSeek-V3): the two best, picked with the top-k tie rule
        int b1 = 0;
        for (int j = 1; j < per_group; ++j)
          if (g[j] > g[b1]) b1 = j;
        int b2 = -1;
        for (int j = 0; j < per_group; ++j)
          if (j != b1 && (b2 < 0 || g[j] > g[b2])) b2 = j;
        group_score[e] = b2 < 0 ? g[b1] : g[b1] + g[b2];
      }
    }
    __syncthreads();
    if (e == 0) {  // top topk_group of at most kMaxGroups scores: serial, exactly the CPU's loop
      for (int g = 0; g < a.n_group; ++g) group_kept[g] = false;
      for (int j = 0; j < a.topk_group; ++j) {
        int best = -1;
        for (int g = 0; g < a.n_group; ++g)
          if (!group_kept[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
        group_kept[best] = true;
      }
    }
    __syncthreads();
    // HF V2 fills dropped groups with 0.0, V3 with -inf (the CPU twin's comment says when it matters).
    if (e < a.n_group * per_group && !group_kept[e / per_group])
      select[e] = a.method == TopkMethod::noaux_tc ? -INFINITY : 0.0f;
    __syncthreads();
  }

  const float v = live ? select[e] : 0.0f;
  bool taken = !live;
  for (int j = 0; j < a.top_k; ++j) {
    const int winner = block_argmax(v, taken ? -1 : e, red);
    if (e == winner) taken = true;
    if (e == 0) chosen[j] = winner;
  }
  if (e == 0) {
    int32_t* ids = a.ids + static_cast<int64_t>(blockIdx.x) * a.top_k;
    float* w = a.weights + static_cast<int64_t>(blockIdx.x) * a.top_k;
    float sum = 0.0f;
    for (int j = 0; j < a.top_k; ++j) sum += scores[chosen[j]];
    for (int j = 0; j < a.top_k; ++j) {
      float wj = scores[chosen[j]];
      if (a.norm) wj /= sum + 1e-20f;
      ids[j] = chosen[j];
      w[j] = wj * a.scaling;
    }
  }
}

}  // namespace

void route(const RouteParams& p, Context& ctx) {
  const bool grouped = p.method != TopkMethod::greedy;
  if (p.n_tokens < 0 || p.n_tokens > 0x7fffffff || p.n_experts < 1 || p.n_experts > kMaxExperts || p.top_k < 1 ||
      p.top_k > p.n_experts || p.top_k > kMaxTopK)
    throw Error("cuda::route",
                cat("unsupported shape: n_tokens ", p.n_tokens, ", n_experts ", p.n_experts, " (at most ", kMaxExperts,
                    "), top_k ", p.top_k, " (1..min(n_experts, ", kMaxTopK, "))"));
  if (grouped && (p.n_group < 1 || p.n_group > kMaxGroups || p.n_group > p.n_experts || p.topk_group < 1 ||
                  p.topk_group > p.n_group))
    throw Error("cuda::route", cat("unsupported groups: n_group ", p.n_group, " (1..", kMaxGroups, "), topk_group ",
                                   p.topk_group, " with ", p.n_experts, " experts"));
  if (p.n_tokens == 0) return;
  RouteArgs a{};
  a.ids = p.expert_ids;
  a.weights = p.expert_weights;
  a.logits = p.logits;
  a.bias = p.correction_bias;
  a.n_experts = static_cast<int>(p.n_experts);
  a.top_k = static_cast<int>(p.top_k);
  a.n_group = grouped ? static_cast<int>(p.n_group) : 1;
  a.topk_group = grouped ? static_cast<int>(p.topk_group) : 1;
  a.sigmoid = p.score == ScoreFunc::sigmoid;
  a.norm = p.norm_topk_prob;
  a.method = p.method;
  a.scaling = p.routed_scaling_factor;
  const int threads = static_cast<int>((p.n_experts + 31) / 32 * 32);
  launch_kernel(route_kernel, static_cast<unsigned>(p.n_tokens), threads, 0, ctx.stream(), a);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moerun::cuda
