// CUDA attention against its CPU twin: GQA decode at short, odd and long lengths (split-K with combine),
// multi-token prefill with arbitrary positions, the MLA absorbed form (one KV head, k == v, qk 576, v 512,
// 16 and 128 heads), odd head dims with padded strides, and invariance to the cache capacity max_len.
// Cache rows past the longest attended position hold NaN, so a kernel that reads a row it must not read
// fails. Also: bitwise repeatability, and a captured decode graph replayed as positions grow on the device.
// Skips without a GPU.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using namespace cuda::testing;

// fp32 throughout: scores differ by summation order (<= 576 products, ~1e-6 after scaling), exp by a few
// ulps, and the weighted sum over up to ~4000 rows is added in a different order (tree of splits vs the
// CPU's serial loop), each error a few ulps of |v| <= 1.
const float kTolF32 = static_cast<float>(testing::tolerance(testing::Op::attention, testing::Check::cuda).abs);

struct AttnCase {
  std::string name;
  int64_t n_heads, n_kv_heads, qk_dim, v_dim;
  bool mla;                        // one cache row [qk_dim] per position; values are its first v_dim floats
  std::vector<int64_t> positions;  // [n_tokens]
  int64_t max_len;                 // cache capacity given to CUDA (>= every position + 1)
  int64_t pad = 0;                 // extra floats per cache row and per query token (unaligned strides when odd)
};

struct AttnData {
  std::vector<float> q, k, v;  // v empty for MLA
  AttentionParams params;      // host strides and sizes; pointers unset
  std::vector<float> want;     // the CPU twin's output
};

AttnData make_case(const AttnCase& c, uint64_t seed) {
  AttnData d;
  const auto n_tokens = static_cast<int64_t>(c.positions.size());
  int64_t live = 0;
  for (int64_t p : c.positions) live = std::max(live, p + 1);
  AttentionParams& p = d.params;
  p.n_tokens = n_tokens, p.n_heads = c.n_heads, p.n_kv_heads = c.n_kv_heads, p.qk_dim = c.qk_dim, p.v_dim = c.v_dim;
  p.q_token_stride = c.n_heads * c.qk_dim + c.pad, p.q_head_stride = c.qk_dim;
  p.k_pos_stride = c.n_kv_heads * c.qk_dim + c.pad, p.k_head_stride = c.mla ? 0 : c.qk_dim;
  p.v_pos_stride = c.mla ? p.k_pos_stride : c.n_kv_heads * c.v_dim + c.pad, p.v_head_stride = c.mla ? 0 : c.v_dim;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.qk_dim));
  p.max_len = c.max_len;

  d.q = uniform(static_cast<size_t>(n_tokens * p.q_token_stride), -2.0f, 2.0f, seed);
  // Rows [0, live) are the cache; rows past it are poison.
  auto cache = [&](int64_t pos_stride, uint64_t s) {
    std::vector<float> m = uniform(static_cast<size_t>(c.max_len * pos_stride), -1.0f, 1.0f, s);
    std::fill(m.begin() + static_cast<std::ptrdiff_t>(live * pos_stride), m.end(),
              std::numeric_limits<float>::quiet_NaN());
    return m;
  };
  d.k = cache(p.k_pos_stride, seed + 1);
  if (!c.mla) d.v = cache(p.v_pos_stride, seed + 2);

  d.want.resize(static_cast<size_t>(n_tokens * c.n_heads * c.v_dim));
  AttentionParams cp = p;
  cp.out = d.want.data(), cp.q = d.q.data(), cp.k = d.k.data(), cp.v = c.mla ? d.k.data() : d.v.data();
  cp.positions = c.positions.data();
  cpu::Context cpu_ctx;
  cpu::attention(cp, cpu_ctx);
  return d;
}

// Runs cuda::attention on the case with the given capacity; returns output followed by the guard floats.
std::vector<float> run_cuda(const AttnCase& c, const AttnData& d, int64_t max_len, cuda::Context& ctx) {
  DeviceBuffer dq = upload(d.q), dk = upload(d.k), dv = upload(c.mla ? std::vector<float>{} : d.v),
               dpos = upload(c.positions);
  DeviceBuffer dout = output_with_guard(d.want.size());
  AttentionParams p = d.params;
  p.out = dout.as<float>(), p.q = dq.as<float>(), p.k = dk.as<float>(), p.v = c.mla ? dk.as<float>() : dv.as<float>();
  p.positions = dpos.as<int64_t>(), p.max_len = max_len;
  cuda::attention(p, ctx);
  return download(dout);
}

void expect_matches(const AttnCase& c, uint64_t seed, cuda::Context& ctx) {
  const AttnData d = make_case(c, seed);
  const auto got = run_cuda(c, d, c.max_len, ctx);
  EXPECT_LE(max_abs_diff(got, d.want), kTolF32) << c.name << " seed=" << seed;
  EXPECT_EQ(first_bad_guard(got, d.want.size()), -1) << c.name;
}

TEST(AttentionCuda, GqaDecode) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  uint64_t seed = 1;
  // Qwen3-like 32 q / 4 kv heads of 128; the small default model's 9 / 3 heads of 64.
  for (const auto& [heads, kv, dim] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{32, 4, 128}, {9, 3, 64}})
    for (int64_t pos : {0, 1, 2, 31, 32, 33, 127, 128, 129, 1000, 3001, 4095})
      expect_matches(
          {"gqa decode h=" + std::to_string(heads) + "/" + std::to_string(kv) + " pos=" + std::to_string(pos),
           heads,
           kv,
           dim,
           dim,
           false,
           {pos},
           4096},
          seed++, ctx);
}

TEST(AttentionCuda, FewTokenDecode) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  // Speculative-style steps: consecutive positions, each token its own causal limit, across split edges.
  expect_matches({"gqa 3 tokens", 32, 4, 128, 128, false, {126, 127, 128}, 2048}, 21, ctx);
  expect_matches({"gqa 4 tokens", 9, 3, 64, 64, false, {3000, 3001, 3002, 3003}, 3500}, 22, ctx);
}

TEST(AttentionCuda, PrefillArbitraryPositions) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  std::vector<int64_t> scattered;  // unordered, with repeats, spanning several tiles
  for (int64_t t = 0; t < 37; ++t) scattered.push_back((t * 97 + 13) % 300);
  expect_matches({"prefill gqa 8/2 d72", 8, 2, 72, 72, false, scattered, 300}, 31, ctx);
  expect_matches({"prefill gqa 10/2 qk40 v24 padded", 10, 2, 40, 24, false, scattered, 300, 3}, 32, ctx);
  std::vector<int64_t> fresh(512);  // a whole prompt: enough query tiles for the one-split path on large GPUs
  for (int64_t t = 0; t < 512; ++t) fresh[static_cast<size_t>(t)] = t;
  expect_matches({"prefill 512 tokens 9/3 d64", 9, 3, 64, 64, false, fresh, 512}, 33, ctx);
  std::vector<int64_t> continued(100);  // a second turn: new tokens after 700 cached ones
  for (int64_t t = 0; t < 100; ++t) continued[static_cast<size_t>(t)] = 700 + t;
  expect_matches({"prefill continued 32/4 d128", 32, 4, 128, 128, false, continued, 1024}, 34, ctx);
}

TEST(AttentionCuda, MlaAbsorbed) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  uint64_t seed = 41;
  // DeepSeek-V2-Lite: 16 heads over the latent cache [kv_lora_rank 512 + rope 64].
  for (int64_t pos : {0, 5, 129, 3001})
    expect_matches({"mla16 decode pos=" + std::to_string(pos), 16, 1, 576, 512, true, {pos}, 4096}, seed++, ctx);
  expect_matches({"mla16 3 tokens", 16, 1, 576, 512, true, {2046, 2047, 2048}, 2100}, seed++, ctx);
  // DeepSeek-V3: 128 heads, 8 query tiles per token.
  expect_matches({"mla128 decode", 128, 1, 576, 512, true, {1999}, 2048}, seed++, ctx);
  std::vector<int64_t> prefill(20);
  for (int64_t t = 0; t < 20; ++t) prefill[static_cast<size_t>(t)] = 100 + t;
  expect_matches({"mla16 prefill", 16, 1, 576, 512, true, prefill, 256}, seed++, ctx);
  expect_matches({"mla16 padded rows", 16, 1, 576, 512, true, {777}, 1000, 5}, seed++, ctx);
}

TEST(AttentionCuda, OddHeadDims) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  expect_matches({"qk3 v5 group5", 10, 2, 3, 5, false, {0, 9, 40}, 64, 1}, 51, ctx);
  expect_matches({"qk129 v1 mha", 6, 6, 129, 1, false, {300, 2}, 400}, 52, ctx);
  expect_matches({"qk40 v72 mqa", 5, 1, 40, 72, false, {1234}, 2000, 2}, 53, ctx);
  expect_matches({"qk575 v511 mla-like", 16, 1, 575, 511, true, {600}, 700}, 54, ctx);
  expect_matches({"qk576 v512 separate k and v", 4, 1, 576, 512, false, {300, 301}, 512}, 55, ctx);
}

TEST(AttentionCuda, MaxLenDoesNotChangeTheResult) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  // The grid is sized by max_len; blocks past the token's length must leave no trace (the cache holds 8269
  // rows, of which rows past position 700 are NaN).
  for (const AttnCase& c : {AttnCase{"gqa", 32, 4, 128, 128, false, {700}, 8 * 1024 + 77},
                            AttnCase{"mla", 16, 1, 576, 512, true, {700}, 8 * 1024 + 77}}) {
    const AttnData d = make_case(c, 61);
    const auto tight = run_cuda(c, d, 701, ctx);
    const auto roomy = run_cuda(c, d, c.max_len, ctx);
    EXPECT_LE(max_abs_diff(tight, d.want), kTolF32) << c.name << " max_len=701";
    EXPECT_LE(max_abs_diff(roomy, d.want), kTolF32) << c.name << " max_len=" << c.max_len;
    EXPECT_LE(max_abs_diff(roomy, tight), kTolF32) << c.name;
  }
}

TEST(AttentionCuda, RepeatsBitwise) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const AttnCase c{"mla split decode", 16, 1, 576, 512, true, {3000}, 4096};
  const AttnData d = make_case(c, 71);
  const auto a = run_cuda(c, d, c.max_len, ctx), b = run_cuda(c, d, c.max_len, ctx);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(std::memcmp(&a[i], &b[i], sizeof(float)), 0) << "i=" << i;
}

TEST(AttentionCuda, CapturedGraphFollowsDevicePositions) {
  MOERUN_SKIP_WITHOUT_CUDA();
  // A decode step captured once, replayed with the position advanced in device memory: each replay must
  // attend exactly [0, position], as the CPU does for that position.
  const AttnCase c{"graph", 32, 4, 128, 128, false, {1000}, 1024};
  const AttnData d = make_case(c, 81);  // rows 0..1000 are live
  DeviceBuffer dq = upload(d.q), dk = upload(d.k), dv = upload(d.v), dpos = upload(c.positions);
  DeviceBuffer dout = output_with_guard(d.want.size());
  AttentionParams p = d.params;
  p.out = dout.as<float>(), p.q = dq.as<float>(), p.k = dk.as<float>(), p.v = dv.as<float>(),
  p.positions = dpos.as<int64_t>();
  cuda::Context ctx;
  cuda::attention(p, ctx);  // uncaptured first: sizes the workspace
  ctx.synchronize();
  ctx.begin_capture();
  cuda::attention(p, ctx);
  ctx.end_capture();
  for (int64_t pos : {3, 200, 513, 999, 1000}) {
    MOERUN_CUDA_CHECK(cudaMemcpyAsync(dpos.data(), &pos, sizeof pos, cudaMemcpyHostToDevice, ctx.stream()));
    ctx.replay();
    ctx.synchronize();
    AttnCase at = c;
    at.positions = {pos};
    std::vector<float> want(d.want.size());
    AttentionParams cp = d.params;
    cp.out = want.data(), cp.q = d.q.data(), cp.k = d.k.data(), cp.v = d.v.data(), cp.positions = at.positions.data();
    cpu::Context cpu_ctx;
    cpu::attention(cp, cpu_ctx);
    const auto got = download(dout);
    EXPECT_LE(max_abs_diff(got, want), kTolF32) << "replayed at position " << pos;
    EXPECT_EQ(first_bad_guard(got, want.size()), -1);
  }
}

}  // namespace
}  // namespace moerun
