#pragma once
// The dispatch plan of cuda::moe's prefill path (kernels/cuda/moe.cu), kept in plain C++ so it is
// unit-tested on the CPU (tests/kernels/moe_plan_test.cpp). The (token, k) pairs are counting-sorted
// by expert in the same order as the CPU twin (kernels/cpu/moe.cpp): expert by expert, and within an
// expert by pair index, i.e. by token. Each selected expert's tokens then form one contiguous block
// of rows, so the expert runs once over all of them; experts nobody selected own no rows.
// C++17 (it is compiled by nvcc as part of moe.cu).

#include <cstdint>
#include <vector>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::cuda {

struct MoePlan {
  std::vector<int64_t> offsets;  // [n_experts + 1]: expert e owns sorted rows [offsets[e], offsets[e + 1])
  std::vector<int32_t> order;    // [pairs]: sorted row j holds pair order[j] (pair = token * top_k + k)
  std::vector<int32_t> row_of;   // [pairs]: the sorted row of pair i (order's inverse)

  int64_t rows(int64_t e) const { return offsets[static_cast<size_t>(e + 1)] - offsets[static_cast<size_t>(e)]; }
};

// expert_ids: [pairs] (the router's [n_tokens, top_k], flattened). Throws Error naming the pair when
// an id is outside [0, n_experts), so a bad id never turns into a wild weight pointer on the device.
inline MoePlan plan_moe(const int32_t* expert_ids, int64_t pairs, int64_t n_experts) {
  if (pairs < 0 || pairs > 0x7fffffff || n_experts < 1)
    throw Error("cuda::moe", ::moerun::detail::cat("cannot plan ", pairs, " pairs over ", n_experts, " experts"));
  MoePlan plan;
  plan.offsets.assign(static_cast<size_t>(n_experts + 1), 0);
  for (int64_t i = 0; i < pairs; ++i) {
    const int32_t e = expert_ids[i];
    if (e < 0 || e >= n_experts)
      throw Error("cuda::moe",
                  ::moerun::detail::cat("expert id ", e, " of pair ", i, " is outside [0, ", n_experts, ")"));
    ++plan.offsets[static_cast<size_t>(e) + 1];
  }
  for (int64_t e = 0; e < n_experts; ++e)
    plan.offsets[static_cast<size_t>(e + 1)] += plan.offsets[static_cast<size_t>(e)];
  std::vector<int64_t> next(plan.offsets.begin(), plan.offsets.end() - 1);  // next free row of each expert
  plan.order.resize(static_cast<size_t>(pairs));
  plan.row_of.resize(static_cast<size_t>(pairs));
  for (int64_t i = 0; i < pairs; ++i) {  // pairs in index order: stable within an expert
    const int64_t row = next[static_cast<size_t>(expert_ids[i])]++;
    plan.order[static_cast<size_t>(row)] = static_cast<int32_t>(i);
    plan.row_of[static_cast<size_t>(i)] = static_cast<int32_t>(row);
  }
  return plan;
}

}  // namespace moerun::cuda
