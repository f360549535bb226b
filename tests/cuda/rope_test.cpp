// CUDA rotary embedding against its CPU twin: both styles, partial rotation (rot_offset/rot_dim inside a
// larger head), padded strides, positions from 0 to beyond 10^5, and the YaRN attention factor.
// Skips with a reason when no GPU can be used.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using namespace cuda::testing;

// f32: the angle is the same fp32 product on both sides; CUDA's sincosf is within 2 ulps of the CPU's and
// the rotation may fuse into an FMA, so outputs (|x| <= 2, factor <= 1.2) differ by a few ulps of ~5
// (tests/support/op_tolerances.h).
const float kTolF32 = static_cast<float>(testing::tolerance(testing::Op::rope, testing::Check::cuda).abs);

struct RopeCase {
  int64_t n_tokens, n_heads, head_dim, rot_offset, rot_dim, token_pad;
  float attention_factor;
};

void check_rope(const RopeCase& c, RopeStyle style, uint64_t seed) {
  const int64_t head_stride = c.head_dim, token_stride = c.n_heads * c.head_dim + c.token_pad;
  const auto x = uniform(static_cast<size_t>(c.n_tokens * token_stride), -2.0f, 2.0f, seed);
  std::vector<int64_t> positions(static_cast<size_t>(c.n_tokens));
  const auto r = uniform(positions.size(), 0.0f, 1.0f, seed + 1);
  for (size_t t = 0; t < positions.size(); ++t) positions[t] = t == 0 ? 0 : static_cast<int64_t>(r[t] * 163840.0f);
  std::vector<float> inv_freq(static_cast<size_t>(c.rot_dim / 2));
  for (size_t i = 0; i < inv_freq.size(); ++i)
    inv_freq[i] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(c.rot_dim));

  std::vector<float> want = x;
  const RopeParams base{.n_tokens = c.n_tokens,
                        .n_heads = c.n_heads,
                        .token_stride = token_stride,
                        .head_stride = head_stride,
                        .rot_offset = c.rot_offset,
                        .rot_dim = c.rot_dim,
                        .attention_factor = c.attention_factor,
                        .style = style};
  RopeParams cpu_p = base;
  cpu_p.x = want.data(), cpu_p.positions = positions.data(), cpu_p.inv_freq = inv_freq.data();
  cpu::Context cpu_ctx;
  cpu::rope(cpu_p, cpu_ctx);

  std::vector<float> dev_x = x;
  dev_x.resize(x.size() + kGuardCount, kGuard);
  DeviceBuffer dx = upload(dev_x), dpos = upload(positions), dfreq = upload(inv_freq);
  cuda::Context ctx;
  RopeParams gpu_p = base;
  gpu_p.x = dx.as<float>(), gpu_p.positions = dpos.as<int64_t>(), gpu_p.inv_freq = dfreq.as<float>();
  cuda::rope(gpu_p, ctx);
  const std::vector<float> got = download(dx);

  const char* name = style == RopeStyle::neox ? "neox" : "interleaved";
  EXPECT_LE(max_abs_diff(got, want), kTolF32)
      << name << " tokens=" << c.n_tokens << " heads=" << c.n_heads << " head_dim=" << c.head_dim
      << " rot=" << c.rot_offset << "+" << c.rot_dim << " seed=" << seed;
  EXPECT_EQ(first_bad_guard(got, x.size()), -1) << name;
}

TEST(RopeCuda, MatchesCpuBothStyles) {
  MOERUN_SKIP_WITHOUT_CUDA();
  const std::vector<RopeCase> cases = {
      {1, 1, 2, 0, 2, 0, 1.0f},        // the smallest rotation
      {3, 5, 64, 0, 64, 7, 1.0f},      // full rotation, padded token stride
      {7, 9, 192, 128, 64, 3, 1.2f},   // MLA: rope on the last 64 dims of a 192-dim query head, YaRN factor
      {2, 1, 576, 512, 64, 0, 1.0f},   // MLA latent row: k_rope after kv_lora_rank
      {5, 3, 72, 8, 26, 1, 0.9f},      // partial rotation in the middle, odd half (13 pairs)
      {33, 32, 128, 0, 128, 0, 1.0f},  // a GQA prefill, more than one block per token
  };
  uint64_t seed = 11;
  for (const RopeCase& c : cases)
    for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) check_rope(c, style, seed++);
}

}  // namespace
}  // namespace moerun
