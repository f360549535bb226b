// The routed experts of a MoE layer on the CPU: token->expert pairs are grouped by expert, each
// selected expert runs once as a small GEMM over its tokens (its weights are read once per batch),
// and the weighted outputs are scattered back. Scratch is per thread and keeps its capacity, so a
// decode step allocates nothing after the first.

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/moe_plan.h"
#include "kernels/ops.h"

namespace moerun::cpu {

void moe(const MoeParams& p) {
  const int64_t D = p.hidden, I = p.intermediate, pairs = p.n_tokens * p.top_k;
  thread_local MoePlan plan;
  thread_local std::vector<float> xin, g, u, y;
  plan_moe(p.expert_ids, pairs, p.n_experts, plan);
  std::fill(p.out, p.out + p.n_tokens * D, 0.0f);
  for (int64_t e = 0; e < p.n_experts; ++e) {
    const int64_t b = plan.offsets[static_cast<size_t>(e)], count = plan.rows(e);
    if (count == 0) continue;
    const float* in = p.x;
    if (p.n_tokens > 1) {  // gather this expert's tokens (decode reads x in place)
      if (static_cast<int64_t>(xin.size()) < count * D) xin.resize(static_cast<size_t>(count * D));
      for (int64_t j = 0; j < count; ++j)
        std::memcpy(xin.data() + j * D, p.x + (plan.order[static_cast<size_t>(b + j)] / p.top_k) * D,
                    static_cast<size_t>(D) * sizeof(float));
      in = xin.data();
    }
    if (static_cast<int64_t>(g.size()) < count * I) {
      g.resize(static_cast<size_t>(count * I));
      u.resize(static_cast<size_t>(count * I));
    }
    if (static_cast<int64_t>(y.size()) < count * D) y.resize(static_cast<size_t>(count * D));
    matmul({.out = g.data(), .x = in, .weight = p.gate[e], .weight_dtype = p.weight_dtype, .n = count,
            .in_features = D, .out_features = I, .pool = p.pool});
    matmul({.out = u.data(), .x = in, .weight = p.up[e], .weight_dtype = p.weight_dtype, .n = count,
            .in_features = D, .out_features = I, .pool = p.pool});
    silu_mul({.out = g.data(), .gate = g.data(), .up = u.data(), .n = count * I});
    matmul({.out = y.data(), .x = g.data(), .weight = p.down[e], .weight_dtype = p.weight_dtype, .n = count,
            .in_features = I, .out_features = D, .pool = p.pool});
    for (int64_t j = 0; j < count; ++j) {
      const int64_t pair = plan.order[static_cast<size_t>(b + j)];
      const float wgt = p.expert_weights[pair];
      float* dst = p.out + (pair / p.top_k) * D;
      const float* src = y.data() + j * D;
      for (int64_t d = 0; d < D; ++d) dst[d] += wgt * src[d];
    }
  }
}

}  // namespace moerun::cpu
