// The experts of a MoE layer on the CPU: token->expert pairs are grouped by expert, each selected
// expert runs once as a small GEMM over its tokens (its weights are read once per batch), and the
// weighted outputs are scattered back. One token (decode) takes a grouped path below. The shared
// expert (MoeParams::shared_gate) then runs over all tokens with exactly the ops the executor used
// for it when it was a separate FFN (matmul_group of gate and up, gated_act, matmul of down, add), so
// fusing it into the op changes no bit of the CPU results.
// Scratch is the context's and keeps its capacity, so a decode step allocates nothing after the first.

#include <algorithm>
#include <array>
#include <cstring>

#include "kernels/cpu/context.h"
#include "kernels/cpu/vec.h"
#include "kernels/moe_plan.h"
#include "kernels/ops.h"

namespace moerun::cpu {

namespace {

// Expert e's matrix of a table (and, for FP8 experts, its block scales) as a matmul's weight.
MatmulParams expert_matmul(const MoeParams& p, const void* const* table, const float* const* scales, int64_t e) {
  return {.weight = table[e], .weight_dtype = p.weight_dtype, .weight_scale = scales ? scales[e] : nullptr,
          .block_out = p.block_out, .block_in = p.block_in};
}

// One token (decode): every selected expert reads the same x, so all gate/up projections are one
// matmul_group (one dispatch, x prepared once) and all down projections another, instead of three
// dispatches per expert. Outputs are summed in ascending expert id, as the batched path does, so
// the result is the same bits.
void moe_one_token(const MoeParams& p, Context& ctx) {
  const int64_t D = p.hidden, I = p.intermediate;
  CallScratch& s = ctx.call();
  // Slots whose expert this rank holds (a null table entry is another rank's expert: expert
  // parallel), by ascending expert id.
  std::array<int64_t, kMatmulGroupMax / 2> order;
  int64_t k = 0;
  for (int64_t j = 0; j < p.top_k; ++j)
    if (p.gate[p.expert_ids[j]]) order[static_cast<size_t>(k++)] = j;
  std::sort(order.begin(), order.begin() + k, [&](int64_t a, int64_t b) { return p.expert_ids[a] < p.expert_ids[b]; });
  std::fill(p.out, p.out + D, 0.0f);
  if (k == 0) return;
  float* g = grow(s.moe_gate, k * I);
  float* u = grow(s.moe_up, k * I);
  float* y = grow(s.moe_down, k * D);
  std::array<MatmulParams, kMatmulGroupMax> ps;
  auto set = [](MatmulParams m, float* out, const float* x, int64_t n, int64_t in, int64_t outf) {
    m.out = out, m.x = x, m.n = n, m.in_features = in, m.out_features = outf;
    return m;
  };
  for (int64_t i = 0; i < k; ++i) {  // slot i of the scratch holds order[i]'s expert
    const int32_t e = p.expert_ids[order[static_cast<size_t>(i)]];
    ps[static_cast<size_t>(2 * i)] = set(expert_matmul(p, p.gate, p.gate_scale, e), g + i * I, p.x, 1, D, I);
    ps[static_cast<size_t>(2 * i + 1)] = set(expert_matmul(p, p.up, p.up_scale, e), u + i * I, p.x, 1, D, I);
  }
  matmul_group(ps.data(), static_cast<size_t>(2 * k), ctx);
  gated_act({.out = g, .gate = g, .up = u, .n = k * I, .act = p.act}, ctx);
  for (int64_t i = 0; i < k; ++i)
    ps[static_cast<size_t>(i)] =
        set(expert_matmul(p, p.down, p.down_scale, p.expert_ids[order[static_cast<size_t>(i)]]), y + i * D, g + i * I, 1, I, D);
  matmul_group(ps.data(), static_cast<size_t>(k), ctx);
  for (int64_t i = 0; i < k; ++i) vec::axpy(p.out, p.expert_weights[order[static_cast<size_t>(i)]], y + i * D, D);
}

// The routed experts: out = sum over each token's pairs of weight * expert(x).
void moe_routed(const MoeParams& p, Context& ctx) {
  const int64_t D = p.hidden, I = p.intermediate, pairs = p.n_tokens * p.top_k;
  if (p.n_tokens == 1 && 2 * p.top_k <= static_cast<int64_t>(kMatmulGroupMax)) {
    moe_one_token(p, ctx);
    return;
  }
  CallScratch& s = ctx.call();
  MoePlan& plan = s.moe_plan;
  plan_moe(p.expert_ids, pairs, p.n_experts, plan);
  std::fill(p.out, p.out + p.n_tokens * D, 0.0f);
  for (int64_t e = 0; e < p.n_experts; ++e) {
    const int64_t b = plan.offsets[static_cast<size_t>(e)], count = plan.rows(e);
    if (count == 0 || !p.gate[e]) continue;  // unselected, or another rank's expert (null entry)
    const float* in = p.x;
    if (p.n_tokens > 1) {  // gather this expert's tokens (decode reads x in place)
      float* xin = grow(s.moe_x, count * D);
      for (int64_t j = 0; j < count; ++j)
        std::memcpy(xin + j * D, p.x + (plan.order[static_cast<size_t>(b + j)] / p.top_k) * D,
                    static_cast<size_t>(D) * sizeof(float));
      in = xin;
    }
    float* g = grow(s.moe_gate, count * I);
    float* u = grow(s.moe_up, count * I);
    float* y = grow(s.moe_down, count * D);
    MatmulParams gate_up[] = {expert_matmul(p, p.gate, p.gate_scale, e), expert_matmul(p, p.up, p.up_scale, e)};
    gate_up[0].out = g, gate_up[1].out = u;
    for (MatmulParams& m : gate_up) m.x = in, m.n = count, m.in_features = D, m.out_features = I;
    matmul_group(gate_up, 2, ctx);  // one dispatch, x prepared once
    gated_act({.out = g, .gate = g, .up = u, .n = count * I, .act = p.act}, ctx);
    MatmulParams down = expert_matmul(p, p.down, p.down_scale, e);
    down.out = y, down.x = g, down.n = count, down.in_features = I, down.out_features = D;
    matmul(down, ctx);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t pair = plan.order[static_cast<size_t>(b + j)];
      vec::axpy(p.out + (pair / p.top_k) * D, p.expert_weights[pair], y + j * D, D);
    }
  }
}

// out += down_s(act(gate_s x) * up_s x) over all tokens: the executor's gated FFN (gate and up as one
// matmul_group, gated_act in place, down) and its residual add, op for op, into the moe scratch
// (free again once the routed experts are summed into out).
void add_shared_expert(const MoeParams& p, Context& ctx) {
  const int64_t n = p.n_tokens, D = p.hidden, I = p.intermediate;
  const bool fp8 = p.weight_dtype == DType::f8_e4m3;
  CallScratch& s = ctx.call();
  float* g = grow(s.moe_gate, n * I);
  float* u = grow(s.moe_up, n * I);
  float* y = grow(s.moe_down, n * D);
  auto shared = [&](const void* w, const float* scale, float* out, const float* x, int64_t in, int64_t outf) {
    return MatmulParams{.out = out, .x = x, .weight = w, .weight_dtype = p.weight_dtype, .n = n, .in_features = in,
                        .out_features = outf, .weight_scale = fp8 ? scale : nullptr, .block_out = p.block_out,
                        .block_in = p.block_in};
  };
  const MatmulParams gate_up[] = {shared(p.shared_gate, p.shared_gate_scale, g, p.x, D, I),
                                  shared(p.shared_up, p.shared_up_scale, u, p.x, D, I)};
  matmul_group(gate_up, 2, ctx);
  gated_act({.out = g, .gate = g, .up = u, .n = n * I, .act = p.act}, ctx);
  matmul(shared(p.shared_down, p.shared_down_scale, y, g, I, D), ctx);
  add({.out = p.out, .x = y, .rows = n, .cols = D}, ctx);
}

}  // namespace

void moe(const MoeParams& p, Context& ctx) {
  if (p.shared_gate &&
      (!p.shared_up || !p.shared_down ||
       (p.weight_dtype == DType::f8_e4m3 && (!p.shared_gate_scale || !p.shared_up_scale || !p.shared_down_scale))))
    throw Error("moe", "a shared expert (shared_gate set) needs shared_up and shared_down, and for FP8 experts "
                       "shared_gate_scale, shared_up_scale and shared_down_scale");
  moe_routed(p, ctx);
  if (p.shared_gate && p.n_tokens > 0) add_shared_expert(p, ctx);
}

}  // namespace moerun::cpu
