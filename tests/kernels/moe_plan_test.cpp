// The MoE prefill dispatch plan (kernels/moe_plan.h) on the CPU: the counting sort of (token, k)
// pairs by expert must give the CPU twin's order (expert by expert, pairs in index order within an
// expert), per-expert offsets that skip experts nobody selected, and an exact inverse.

#include "kernels/moe_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "moerun/error.h"

namespace moerun {
namespace {


// Every invariant a plan must satisfy, whatever the ids.
void expect_consistent(const MoePlan& plan, const std::vector<int32_t>& ids, int64_t n_experts) {
  const int64_t pairs = static_cast<int64_t>(ids.size());
  ASSERT_EQ(plan.offsets.size(), static_cast<size_t>(n_experts + 1));
  ASSERT_EQ(plan.order.size(), ids.size());
  ASSERT_EQ(plan.row_of.size(), ids.size());
  EXPECT_EQ(plan.offsets.front(), 0);
  EXPECT_EQ(plan.offsets.back(), pairs);
  for (int64_t e = 0; e < n_experts; ++e) {
    ASSERT_LE(plan.offsets[static_cast<size_t>(e)], plan.offsets[static_cast<size_t>(e + 1)]) << "expert " << e;
    EXPECT_EQ(plan.rows(e), std::count(ids.begin(), ids.end(), static_cast<int32_t>(e))) << "expert " << e;
    for (int64_t row = plan.offsets[static_cast<size_t>(e)]; row < plan.offsets[static_cast<size_t>(e + 1)]; ++row) {
      const int32_t pair = plan.order[static_cast<size_t>(row)];
      EXPECT_EQ(ids[static_cast<size_t>(pair)], e) << "row " << row << " holds pair " << pair;
      if (row > plan.offsets[static_cast<size_t>(e)]) {
        EXPECT_LT(plan.order[static_cast<size_t>(row - 1)], pair) << "pairs of expert " << e << " out of index order";
      }
    }
  }
  for (int64_t i = 0; i < pairs; ++i)
    EXPECT_EQ(plan.order[static_cast<size_t>(plan.row_of[static_cast<size_t>(i)])], i);
}

TEST(MoePlan, KnownAnswer) {
  // 3 tokens, top_k 2, 4 experts; expert 2 is unused.
  const std::vector<int32_t> ids = {3, 1,   // token 0
                                    1, 0,   // token 1
                                    3, 0};  // token 2
  const MoePlan plan = plan_moe(ids.data(), 6, 4);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 2, 4, 4, 6}));
  EXPECT_EQ(plan.order, (std::vector<int32_t>{3, 5, 1, 2, 0, 4}));  // expert 0: pairs 3, 5; 1: 1, 2; 3: 0, 4
  EXPECT_EQ(plan.row_of, (std::vector<int32_t>{4, 2, 3, 0, 5, 1}));
  EXPECT_EQ(plan.rows(2), 0);
  expect_consistent(plan, ids, 4);
}

TEST(MoePlan, MatchesStableSortOnRandomIds) {
  // The CPU twin's counting sort is a stable sort of the pair indices by expert; check against one
  // written independently, with distinct experts per token as a router produces and many unused.
  std::mt19937_64 rng(20240611);
  for (const auto& [n_tokens, top_k, n_experts] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 8, 256}, {37, 2, 8}, {300, 8, 64}, {5, 6, 160}}) {
    std::vector<int32_t> ids;
    std::vector<int32_t> experts(static_cast<size_t>(n_experts));
    std::iota(experts.begin(), experts.end(), 0);
    for (int64_t t = 0; t < n_tokens; ++t) {
      // Only the first half of the experts is ever chosen, so the second half is unused.
      std::shuffle(experts.begin(), experts.begin() + n_experts / 2, rng);
      for (int64_t k = 0; k < top_k; ++k) ids.push_back(experts[static_cast<size_t>(k)]);
    }
    std::vector<int32_t> want(ids.size());
    std::iota(want.begin(), want.end(), 0);
    std::stable_sort(want.begin(), want.end(),
                     [&](int32_t a, int32_t b) { return ids[static_cast<size_t>(a)] < ids[static_cast<size_t>(b)]; });
    const MoePlan plan = plan_moe(ids.data(), static_cast<int64_t>(ids.size()), n_experts);
    EXPECT_EQ(plan.order, want) << "n_tokens " << n_tokens << " top_k " << top_k;
    for (int64_t e = n_experts / 2; e < n_experts; ++e) EXPECT_EQ(plan.rows(e), 0) << "unused expert " << e;
    expect_consistent(plan, ids, n_experts);
  }
}

TEST(MoePlan, AllPairsToOneExpert) {
  const std::vector<int32_t> ids(12, 5);
  const MoePlan plan = plan_moe(ids.data(), 12, 8);
  for (int64_t e = 0; e < 8; ++e) EXPECT_EQ(plan.rows(e), e == 5 ? 12 : 0);
  std::vector<int32_t> identity(12);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(plan.order, identity);
  EXPECT_EQ(plan.row_of, identity);
  EXPECT_EQ(plan.offsets[5], 0);
  EXPECT_EQ(plan.offsets[6], 12);
}

TEST(MoePlan, NoPairs) {
  const MoePlan plan = plan_moe(nullptr, 0, 3);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_TRUE(plan.order.empty());
  EXPECT_TRUE(plan.row_of.empty());
}

TEST(MoePlan, RejectsIdsOutOfRange) {
  for (const int32_t bad : {-1, 4, 1000}) {
    const std::vector<int32_t> ids = {0, 1, bad, 2};
    try {
      plan_moe(ids.data(), 4, 4);
      ADD_FAILURE() << "id " << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("pair 2"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(plan_moe(nullptr, 0, 0), Error);
}

}  // namespace
}  // namespace moerun
