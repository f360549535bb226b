#pragma once
// The dispatch plan of the MoE op (kernels/cpu/moe.cpp; kernels/cuda/moe.cu builds the same order on
// the device, in its plan kernel, so no ids go to the host): the (token, k) pairs counting-sorted by
// expert, expert by expert and within an expert by pair index, i.e. by token. Each selected expert's tokens then form one contiguous block
// of rows, so the expert runs once over all of them; experts nobody selected own no rows.
// Plain C++17 (nvcc compiles it as part of moe.cu); unit-tested in tests/kernels/moe_plan_test.cpp.

#include <cstdint>
#include <string>
#include <vector>

#include "moerun/error.h"

namespace moerun {

struct MoePlan {
  std::vector<int64_t> offsets;  // [n_experts + 1]: expert e owns sorted rows [offsets[e], offsets[e + 1])
  std::vector<int32_t> order;    // [pairs]: sorted row j holds pair order[j] (pair = token * top_k + k)
  std::vector<int32_t> row_of;   // [pairs]: the sorted row of pair i (order's inverse)

  int64_t rows(int64_t e) const { return offsets[static_cast<size_t>(e + 1)] - offsets[static_cast<size_t>(e)]; }
};

// expert_ids: [pairs] (the router's [n_tokens, top_k], flattened). Fills `plan`, reusing its
// vectors' capacity (a decode step allocates nothing after the first). Throws Error naming the pair
// when an id is outside [0, n_experts), so a bad id never turns into a wild weight pointer.
inline void plan_moe(const int32_t* expert_ids, int64_t pairs, int64_t n_experts, MoePlan& plan) {
  if (pairs < 0 || pairs > 0x7fffffff || n_experts < 1)
    throw Error("moe", "cannot plan " + std::to_string(pairs) + " pairs over " + std::to_string(n_experts) + " experts");
  plan.offsets.assign(static_cast<size_t>(n_experts + 1), 0);
  for (int64_t i = 0; i < pairs; ++i) {
    const int32_t e = expert_ids[i];
    if (e < 0 || e >= n_experts)
      throw Error("moe", "expert id " + std::to_string(e) + " of pair " + std::to_string(i) + " is outside [0, " +
                             std::to_string(n_experts) + ")");
    ++plan.offsets[static_cast<size_t>(e) + 1];
  }
  for (int64_t e = 0; e < n_experts; ++e) plan.offsets[static_cast<size_t>(e + 1)] += plan.offsets[static_cast<size_t>(e)];
  plan.order.resize(static_cast<size_t>(pairs));
  plan.row_of.resize(static_cast<size_t>(pairs));
  // Place pairs in index order (stable within an expert), advancing each expert's start as its next
  // free row; afterwards offsets[e] holds expert e's end, so shifting by one restores the starts.
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t row = plan.offsets[static_cast<size_t>(expert_ids[i])]++;
    plan.order[static_cast<size_t>(row)] = static_cast<int32_t>(i);
    plan.row_of[static_cast<size_t>(i)] = static_cast<int32_t>(row);
  }
  for (int64_t e = n_experts; e > 0; --e) plan.offsets[static_cast<size_t>(e)] = plan.offsets[static_cast<size_t>(e - 1)];
  plan.offsets[0] = 0;
}

inline MoePlan plan_moe(const int32_t* expert_ids, int64_t pairs, int64_t n_experts) {
  MoePlan plan;
  plan_moe(expert_ids, pairs, n_experts, plan);
  return plan;
}

}  // namespace moerun
