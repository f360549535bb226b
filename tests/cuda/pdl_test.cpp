// Programmatic dependent launch (kernels/cuda/launch.h): a chain of dependent small ops whose every
// step reads what the one before wrote (and overwrites what an earlier one read) gives the same bits
// with PDL on and off, run eagerly and captured in a graph and replayed. The chain is a decode step in
// miniature: rms_norm, a GEMV matmul with the fused norm, a plain GEMV, the residual add, rope on the
// query rows, store_rows with the fused K rope into a bf16 cache, an in-place rms_norm and an
// accumulating matmul, repeated so each round starts from the last one's output. The kernels are
// deterministic, so any difference is a race PDL let through (a kernel touching memory before its
// MOERUN_PDL_WAIT). PDL is toggled with the test override, not the environment. Skips without a GPU;
// on devices below sm_90 both modes are the plain launch and must agree trivially.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/ops.h"

namespace moerun {
namespace {

using namespace cuda::testing;

// Restores the environment's choice however the test ends.
struct OverrideGuard {
  ~OverrideGuard() { cuda::pdl_test_override(-1); }
};

constexpr int64_t kTokens = 2, kHidden = 1024, kLatent = 576, kRope = 64, kCapacity = 64, kRounds = 12;

struct Chain {
  DeviceBuffer x, h, y, z, cache, w1, w2, norm, inv_freq, positions;
};

Chain make_chain(cuda::Context& ctx) {
  Chain c;
  c.x = upload(uniform(static_cast<size_t>(kTokens * kHidden), -1.0f, 1.0f, 1), ctx);
  c.h = upload(uniform(static_cast<size_t>(kTokens * kHidden), -1.0f, 1.0f, 2), ctx);
  c.y = upload(uniform(static_cast<size_t>(kTokens * kLatent), -1.0f, 1.0f, 3), ctx);
  c.z = upload(uniform(static_cast<size_t>(kTokens * kHidden), -1.0f, 1.0f, 4), ctx);
  c.cache = upload(std::vector<uint16_t>(static_cast<size_t>(kCapacity * kLatent), 0x3c00), ctx);
  c.w1 = upload(uniform(static_cast<size_t>(kLatent * kHidden), -0.05f, 0.05f, 5), ctx);
  c.w2 = upload(uniform(static_cast<size_t>(kHidden * kHidden), -0.03f, 0.03f, 6), ctx);
  c.norm = upload(uniform(static_cast<size_t>(kHidden), 0.5f, 1.5f, 7), ctx);
  std::vector<float> freq(static_cast<size_t>(kRope / 2));
  for (size_t i = 0; i < freq.size(); ++i) freq[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / kRope);
  c.inv_freq = upload(freq, ctx);
  c.positions = upload(std::vector<int64_t>{37, 5}, ctx);
  return c;
}

// One round: every op reads the previous op's output.
void run_round(Chain& c, cuda::Context& ctx) {
  float* x = c.x.as<float>();
  float* h = c.h.as<float>();
  float* y = c.y.as<float>();
  float* z = c.z.as<float>();
  cuda::rms_norm({.out = h, .x = x, .weight = c.norm.as<float>(), .rows = kTokens, .cols = kHidden, .eps = 1e-6f}, ctx);
  // y = RMSNorm(x) W1^T (the fused norm), then z = h W2^T.
  cuda::matmul({.out = y, .x = x, .weight = c.w1.data(), .n = kTokens, .in_features = kHidden, .out_features = kLatent,
                .norm_weight = c.norm.as<float>(), .norm_eps = 1e-6f},
               ctx);
  cuda::matmul({.out = z, .x = h, .weight = c.w2.data(), .n = kTokens, .in_features = kHidden, .out_features = kHidden},
               ctx);
  cuda::add({.out = x, .x = z, .rows = kTokens, .cols = kHidden}, ctx);  // overwrites what rms_norm read
  cuda::rope({.x = y, .n_tokens = kTokens, .n_heads = 1, .token_stride = kLatent, .head_stride = 0,
              .rot_offset = 0, .rot_dim = kRope, .positions = c.positions.as<int64_t>(),
              .inv_freq = c.inv_freq.as<float>()},
             ctx);
  cuda::store_rows({.cache = c.cache.data(), .cache_type = KvType::bf16, .src = y,
                    .positions = c.positions.as<int64_t>(), .n = kTokens, .cols = kLatent, .src_stride = kLatent,
                    .cache_stride = kLatent, .rope_inv_freq = c.inv_freq.as<float>(), .rope_offset = 512,
                    .rope_dim = kRope},
                   ctx);
  cuda::rms_norm({.out = x, .x = x, .weight = c.norm.as<float>(), .rows = kTokens, .cols = kHidden, .eps = 1e-6f}, ctx);
  // x += (x W2^T) W2^T: accumulate must not alias its input, so through h.
  cuda::matmul({.out = h, .x = x, .weight = c.w2.data(), .n = kTokens, .in_features = kHidden, .out_features = kHidden},
               ctx);
  cuda::matmul({.out = x, .x = h, .weight = c.w2.data(), .n = kTokens, .in_features = kHidden,
                .out_features = kHidden, .accumulate = true},
               ctx);
}

struct Result {
  std::vector<float> x, y;
  std::vector<uint16_t> cache;
};

// kRounds rounds from the initial state, eagerly or as one captured round replayed kRounds times.
Result run_chain(bool pdl, bool graph) {
  cuda::pdl_test_override(pdl ? 1 : 0);
  cuda::Context ctx;
  if (graph) {
    {
      Chain warm = make_chain(ctx);  // sizes the workspace before capture
      run_round(warm, ctx);
      ctx.synchronize();
    }
    Chain c = make_chain(ctx);
    ctx.begin_capture();
    run_round(c, ctx);
    ctx.end_capture();
    EXPECT_GE(ctx.graph_counts().kernels, 9u);
    for (int64_t r = 0; r < kRounds; ++r) ctx.replay();
    return {download<float>(c.x, ctx), download<float>(c.y, ctx), download<uint16_t>(c.cache, ctx)};
  }
  Chain c = make_chain(ctx);
  for (int64_t r = 0; r < kRounds; ++r) run_round(c, ctx);
  return {download<float>(c.x, ctx), download<float>(c.y, ctx), download<uint16_t>(c.cache, ctx)};
}

void expect_same(const Result& a, const Result& b, const char* what) {
  ASSERT_EQ(a.x.size(), b.x.size());
  EXPECT_EQ(std::memcmp(a.x.data(), b.x.data(), a.x.size() * 4), 0) << what << ": x differs";
  EXPECT_EQ(std::memcmp(a.y.data(), b.y.data(), a.y.size() * 4), 0) << what << ": y differs";
  EXPECT_TRUE(a.cache == b.cache) << what << ": cache differs";
}

TEST(PdlCuda, ChainGivesTheSameBitsWithAndWithoutPdl) {
  MOERUN_SKIP_WITHOUT_CUDA();
  OverrideGuard guard;
  const Result off = run_chain(false, false);
  for (float v : off.x) ASSERT_TRUE(std::isfinite(v));
  const Result on = run_chain(true, false);
  expect_same(off, on, "eager, PDL on");
  expect_same(off, run_chain(false, true), "graph, PDL off");
  expect_same(off, run_chain(true, true), "graph, PDL on");
  // Repeated on, to give a race more than one chance.
  for (int i = 0; i < 3; ++i) expect_same(off, run_chain(true, i % 2 == 1), "again, PDL on");
}

TEST(PdlCuda, EnabledExactlyOnHopperAndLaterUnlessOverridden) {
  MOERUN_SKIP_WITHOUT_CUDA();
  OverrideGuard guard;
  int device = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  cuda::pdl_test_override(1);
  EXPECT_EQ(cuda::pdl_enabled(), major >= 9);
  cuda::pdl_test_override(0);
  EXPECT_FALSE(cuda::pdl_enabled());
}

}  // namespace
}  // namespace moerun
