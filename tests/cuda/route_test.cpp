// CUDA MoE routing against its CPU twin for every variant (docs/MODELS.md §3) at the shapes of the
// real families: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2-Lite (greedy), DeepSeek-V2
// (group_limited_greedy) and DeepSeek-V3 (sigmoid, correction bias, noaux_tc), plus odd sizes.
// Expert ids must match exactly, so the random logits are re-drawn for any token whose decisions
// (which groups survive, which experts and in which order) have a margin under kMinMargin: the GPU
// computes exp and the softmax sum in another order, which moves scores by a few ulps, and a test
// that depended on which of two near-equal experts wins would test rounding, not routing. Exact ties
// are checked separately with values both backends compute identically. Skips without a GPU.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using cuda::testing::download;
using cuda::testing::uniform;
using cuda::testing::upload;

constexpr const char* kNoDevice = "no usable CUDA device (cudaGetDeviceCount failed or found none)";

// Weights: both sides compute the same formula in fp32; expf vs std::exp and the softmax sum's order
// differ by a few ulps, and normalisation divides two such values (tests/support/op_tolerances.h).
const testing::Tolerance kTolWeight = testing::tolerance(testing::Op::route, testing::Check::cuda);
// Decision margins below this (relative to the scores compared) are re-drawn: ~100x the fp32 noise.
constexpr double kMinMargin = 1e-4;

struct Variant {
  const char* name;
  int64_t n_experts, top_k;
  ScoreFunc score;
  TopkMethod method;
  int64_t n_group, topk_group;
  bool norm, bias;
  float scaling;
};

std::string describe(const Variant& v, int64_t n_tokens) {
  std::ostringstream os;
  os << v.name << " E=" << v.n_experts << " k=" << v.top_k << " n_tokens=" << n_tokens;
  return os.str();
}

// a - b relative to the size of the numbers involved: fp32 noise on a score is relative to the score
// (plus the exact bias added to it), so gaps between small softmax scores are judged fairly.
double rel_gap(double a, double b, double bias_scale) {
  return (a - b) / (std::max(std::fabs(a), std::fabs(b)) + bias_scale + 1e-30);
}

// The smallest relative gap between consecutive values among the best `count + 1` of v.
double head_margin(std::vector<double> v, int64_t count, double bias_scale) {
  std::sort(v.begin(), v.end(), std::greater<>());
  double m = 1e9;
  for (int64_t j = 0; j + 1 < static_cast<int64_t>(v.size()) && j < count; ++j)
    m = std::min(m, rel_gap(v[static_cast<size_t>(j)], v[static_cast<size_t>(j + 1)], bias_scale));
  return m;
}

// The routing decisions of one token, in double, and the smallest relative margin any of them has: the
// order of the k selected experts, the boundary to the (k+1)-th, and for group-limited routing the
// boundary between kept and dropped groups.
double decision_margin(const float* z, const std::vector<float>& bias, const Variant& v) {
  const int64_t E = v.n_experts;
  const double bias_scale = bias.empty() ? 0.0 : 0.1;  // |bias| <= 0.1 in these tests
  std::vector<double> s(static_cast<size_t>(E));
  if (v.score == ScoreFunc::softmax) {
    const double m = *std::max_element(z, z + E);
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += s[static_cast<size_t>(e)] = std::exp(z[e] - m);
    for (double& x : s) x /= sum;
  } else {
    for (int64_t e = 0; e < E; ++e) s[static_cast<size_t>(e)] = 1.0 / (1.0 + std::exp(-static_cast<double>(z[e])));
  }
  if (!bias.empty())
    for (int64_t e = 0; e < E; ++e) s[static_cast<size_t>(e)] += bias[static_cast<size_t>(e)];
  double margin = 1e9;
  if (v.method != TopkMethod::greedy) {
    const int64_t per = E / v.n_group;
    std::vector<double> gs(static_cast<size_t>(v.n_group));
    for (int64_t g = 0; g < v.n_group; ++g) {
      // The order of a group's two best does not matter for their sum, so ties between them do not either.
      std::vector<double> grp(s.begin() + g * per, s.begin() + (g + 1) * per);
      std::sort(grp.begin(), grp.end(), std::greater<>());
      gs[static_cast<size_t>(g)] =
          v.method == TopkMethod::group_limited_greedy ? grp[0] : grp[0] + (per > 1 ? grp[1] : 0.0);
    }
    std::vector<double> sorted = gs;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const size_t last = static_cast<size_t>(v.topk_group - 1);
    if (v.topk_group < v.n_group) margin = std::min(margin, rel_gap(sorted[last], sorted[last + 1], 2 * bias_scale));
    for (int64_t g = 0; g < v.n_group; ++g)
      if (gs[static_cast<size_t>(g)] < sorted[last])
        for (int64_t e = g * per; e < (g + 1) * per; ++e)
          s[static_cast<size_t>(e)] = v.method == TopkMethod::noaux_tc ? -1e30 : 0.0;
  }
  return std::min(margin, head_margin(s, v.top_k, bias_scale));
}

// Random logits [n_tokens, E] whose every routing decision has a margin above kMinMargin.
void separated_logits(const Variant& v, int64_t n_tokens, uint64_t seed, const std::vector<float>& bias,
                      std::vector<float>& logits) {
  const int64_t E = v.n_experts;
  logits.assign(static_cast<size_t>(n_tokens * E), 0.0f);
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* z = logits.data() + t * E;
    for (uint64_t attempt = 0;; ++attempt) {
      ASSERT_LT(attempt, 1000u) << "no well-separated logits for token " << t;
      const std::vector<float> row =
          uniform(static_cast<size_t>(E), -4.0f, 4.0f, seed * 1000003 + static_cast<uint64_t>(t) * 1009 + attempt);
      std::copy(row.begin(), row.end(), z);
      if (decision_margin(z, bias, v) > kMinMargin) break;
    }
  }
}

void run_variant(const Variant& v, int64_t n_tokens, uint64_t seed, cuda::Context& ctx) {
  SCOPED_TRACE(describe(v, n_tokens) + " seed=" + std::to_string(seed));
  const int64_t E = v.n_experts, K = v.top_k;
  const std::vector<float> bias =
      v.bias ? uniform(static_cast<size_t>(E), -0.1f, 0.1f, seed + 99) : std::vector<float>{};
  std::vector<float> logits;
  separated_logits(v, n_tokens, seed, bias, logits);
  if (::testing::Test::HasFatalFailure()) return;

  std::vector<int32_t> want_ids(static_cast<size_t>(n_tokens * K));
  std::vector<float> want_w(want_ids.size());
  const RouteParams base{.logits = logits.data(),
                         .correction_bias = v.bias ? bias.data() : nullptr,
                         .n_tokens = n_tokens,
                         .n_experts = E,
                         .top_k = K,
                         .score = v.score,
                         .method = v.method,
                         .n_group = v.n_group,
                         .topk_group = v.topk_group,
                         .norm_topk_prob = v.norm,
                         .routed_scaling_factor = v.scaling};
  RouteParams cp = base;
  cp.expert_ids = want_ids.data();
  cp.expert_weights = want_w.data();
  cpu::Context cpu_ctx;
  cpu::route(cp, cpu_ctx);

  const auto dlogits = upload(logits), dbias = upload(bias);
  const auto dids = upload(std::vector<int32_t>(want_ids.size() + 16, -7));  // -7 after the output: a guard
  const auto dw = cuda::testing::output_with_guard(want_w.size());
  RouteParams gp = base;
  gp.expert_ids = dids.as<int32_t>();
  gp.expert_weights = dw.as<float>();
  gp.logits = dlogits.as<float>();
  gp.correction_bias = v.bias ? dbias.as<float>() : nullptr;
  cuda::route(gp, ctx);
  ctx.synchronize();
  std::vector<int32_t> got_ids(want_ids.size() + 16);
  ASSERT_EQ(cudaMemcpy(got_ids.data(), dids.data(), got_ids.size() * sizeof(int32_t), cudaMemcpyDeviceToHost),
            cudaSuccess);
  const std::vector<float> got_w = download(dw);

  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      const size_t i = static_cast<size_t>(t * K + j);
      ASSERT_EQ(got_ids[i], want_ids[i]) << "token " << t << " slot " << j;
      ASSERT_TRUE(std::isfinite(got_w[i])) << "token " << t << " slot " << j;
      ASSERT_LE(std::fabs(got_w[i] - want_w[i]), kTolWeight.at(want_w[i]))
          << "token " << t << " slot " << j << " got " << got_w[i] << " want " << want_w[i];
    }
  }
  for (size_t i = want_ids.size(); i < got_ids.size(); ++i) ASSERT_EQ(got_ids[i], -7) << "id guard overwritten";
  EXPECT_EQ(cuda::testing::first_bad_guard(got_w, want_w.size()), -1);
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
      {"mixtral", 8, 2, ScoreFunc::softmax, TopkMethod::greedy, 1, 1, true, false, 1.0f},
      {"qwen2_moe", 60, 4, ScoreFunc::softmax, TopkMethod::greedy, 1, 1, false, false, 1.0f},
      {"qwen3_moe", 128, 8, ScoreFunc::softmax, TopkMethod::greedy, 1, 1, true, false, 1.0f},
      {"olmoe", 64, 8, ScoreFunc::softmax, TopkMethod::greedy, 1, 1, false, false, 1.0f},
      {"deepseek_v2_lite", 64, 6, ScoreFunc::softmax, TopkMethod::greedy, 1, 1, false, false, 1.0f},
      {"deepseek_v2", 160, 6, ScoreFunc::softmax, TopkMethod::group_limited_greedy, 8, 3, false, false, 16.0f},
      {"deepseek_v3", 256, 8, ScoreFunc::sigmoid, TopkMethod::noaux_tc, 8, 4, true, true, 2.5f},
      {"sigmoid_greedy_odd", 37, 5, ScoreFunc::sigmoid, TopkMethod::greedy, 1, 1, true, true, 1.5f},
      {"noaux_one_per_group", 16, 3, ScoreFunc::sigmoid, TopkMethod::noaux_tc, 16, 5, true, true, 1.0f},
      {"grouped_softmax_norm", 96, 4, ScoreFunc::softmax, TopkMethod::group_limited_greedy, 6, 2, true, true, 1.0f},
      {"top1_of_1024", 1024, 1, ScoreFunc::softmax, TopkMethod::greedy, 1, 1, true, false, 1.0f},
  };
  return v;
}

TEST(RouteCuda, MatchesCpuEveryVariant) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 1;
  for (const Variant& v : variants()) {
    for (const int64_t n_tokens : {1, 7, 300}) {
      run_variant(v, n_tokens, seed++, ctx);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

TEST(RouteCuda, ExactTiesGoToTheLowerIndex) {
  // Equal logits give bit-identical scores on both backends (sigmoid of the same float), so the tie
  // rule itself is compared: the CPU picks the lower index first, and so must the GPU. Also groups
  // with equal scores (noaux_tc) and masked groups whose -inf entries tie.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const int64_t E = 32, K = 8;
  std::vector<float> logits(static_cast<size_t>(3 * E));
  for (int64_t e = 0; e < E; ++e) {
    logits[static_cast<size_t>(e)] = static_cast<float>(e % 4);     // four-way ties everywhere
    logits[static_cast<size_t>(E + e)] = 1.0f;                      // all equal
    logits[static_cast<size_t>(2 * E + e)] = e < 4 ? 2.0f : -1.0f;  // one group strong, rest tie
  }
  for (const TopkMethod method : {TopkMethod::greedy, TopkMethod::noaux_tc, TopkMethod::group_limited_greedy}) {
    SCOPED_TRACE(static_cast<int>(method));
    const RouteParams base{.logits = logits.data(),
                           .n_tokens = 3,
                           .n_experts = E,
                           .top_k = K,
                           .score = ScoreFunc::sigmoid,
                           .method = method,
                           .n_group = 4,
                           .topk_group = 2,
                           .norm_topk_prob = true,
                           .routed_scaling_factor = 1.0f};
    std::vector<int32_t> want_ids(static_cast<size_t>(3 * K));
    std::vector<float> want_w(want_ids.size());
    RouteParams cp = base;
    cp.expert_ids = want_ids.data();
    cp.expert_weights = want_w.data();
    cpu::Context cpu_ctx;
    cpu::route(cp, cpu_ctx);
    const auto dlogits = upload(logits), dids = upload(std::vector<int32_t>(want_ids.size())), dw = upload(want_w);
    RouteParams gp = base;
    gp.expert_ids = dids.as<int32_t>();
    gp.expert_weights = dw.as<float>();
    gp.logits = dlogits.as<float>();
    cuda::route(gp, ctx);
    ctx.synchronize();
    std::vector<int32_t> got_ids(want_ids.size());
    ASSERT_EQ(cudaMemcpy(got_ids.data(), dids.data(), got_ids.size() * sizeof(int32_t), cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(got_ids, want_ids);
  }
}

// Stream-ordered copies for the route -> moe test: both ops run on ctx's non-blocking stream.
template <class T>
cuda::DeviceBuffer upload_on(cuda::Context& ctx, const std::vector<T>& host) {
  cuda::DeviceBuffer d(std::max<size_t>(host.size(), 1) * sizeof(T), "test input");
  if (!host.empty())
    MOERUN_CUDA_CHECK(
        cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, ctx.stream()));
  ctx.synchronize();
  return d;
}

// DeepSeek-V3 routing (sigmoid scores, correction bias, noaux_tc over 8 groups, top-8 of 256, scaled
// and normalised weights) feeding the experts on the device: cuda::route's ids and weights go to
// cuda::moe as they are, against cpu::route + cpu::moe. Decode (4 and 8 tokens) and prefill (9 and 40);
// bf16 experts of a small shape, the 256 table entries sharing four weight sets.
TEST(RouteCuda, FeedsMoeOnTheDevice) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const Variant v = {"deepseek_v3", 256, 8, ScoreFunc::sigmoid, TopkMethod::noaux_tc, 8, 4, true, true, 2.5f};
  const int64_t E = v.n_experts, K = v.top_k, D = 256, I = 128, kSets = 4;
  const size_t DI = static_cast<size_t>(D * I);
  // Weight sets: gate, up, down of set q are bf16 bytes; table entry e points at set e % kSets.
  std::vector<std::vector<uint16_t>> host(3 * kSets);
  std::vector<cuda::DeviceBuffer> dev;
  for (size_t m = 0; m < host.size(); ++m) {
    const float r = m % 3 == 2 ? 2.0f / std::sqrt(static_cast<float>(I)) : 1.0f / std::sqrt(static_cast<float>(D));
    const std::vector<float> f = uniform(DI, -r, r, 77 + m);
    host[m].resize(DI);
    for (size_t i = 0; i < DI; ++i) host[m][i] = cpu::f32_to_bf16(f[i]);
    dev.push_back(upload_on(ctx, host[m]));
  }
  std::vector<const void*> htbl[3], dtbl[3];
  for (int64_t e = 0; e < E; ++e)
    for (size_t m = 0; m < 3; ++m) {
      const size_t q = static_cast<size_t>(e % kSets) * 3 + m;
      htbl[m].push_back(host[q].data());
      dtbl[m].push_back(dev[q].data());
    }
  const cuda::DeviceBuffer gate_tbl = upload_on(ctx, dtbl[0]), up_tbl = upload_on(ctx, dtbl[1]),
                           down_tbl = upload_on(ctx, dtbl[2]);
  uint64_t seed = 4000;
  for (const int64_t n : {4, 8, 9, 40}) {
    SCOPED_TRACE("n_tokens=" + std::to_string(n));
    const std::vector<float> bias = uniform(static_cast<size_t>(E), -0.1f, 0.1f, seed + 99);
    std::vector<float> logits;
    separated_logits(v, n, seed, bias, logits);
    if (::testing::Test::HasFatalFailure()) return;
    const std::vector<float> x = uniform(static_cast<size_t>(n * D), -1.0f, 1.0f, seed + 5);
    ++seed;
    const RouteParams base{.logits = logits.data(),
                           .correction_bias = bias.data(),
                           .n_tokens = n,
                           .n_experts = E,
                           .top_k = K,
                           .score = v.score,
                           .method = v.method,
                           .n_group = v.n_group,
                           .topk_group = v.topk_group,
                           .norm_topk_prob = v.norm,
                           .routed_scaling_factor = v.scaling};
    const MoeParams moe_base{.weight_dtype = DType::bf16,
                             .n_tokens = n,
                             .top_k = K,
                             .n_experts = E,
                             .hidden = D,
                             .intermediate = I};

    std::vector<int32_t> ids(static_cast<size_t>(n * K));
    std::vector<float> w(ids.size()), want(static_cast<size_t>(n * D));
    cpu::Context cpu_ctx;
    RouteParams cr = base;
    cr.expert_ids = ids.data();
    cr.expert_weights = w.data();
    cpu::route(cr, cpu_ctx);
    MoeParams cm = moe_base;
    cm.out = want.data(), cm.x = x.data(), cm.expert_ids = ids.data(), cm.expert_weights = w.data();
    cm.gate = htbl[0].data(), cm.up = htbl[1].data(), cm.down = htbl[2].data();
    cpu::moe(cm, cpu_ctx);

    const auto dlogits = upload_on(ctx, logits), dbias = upload_on(ctx, bias), dx = upload_on(ctx, x);
    const cuda::DeviceBuffer dids(ids.size() * sizeof(int32_t), "ids"), dw(w.size() * sizeof(float), "weights");
    const auto dout = upload_on(ctx, std::vector<float>(want.size(), std::nanf("")));
    RouteParams gr = base;
    gr.logits = dlogits.as<float>();
    gr.correction_bias = dbias.as<float>();
    gr.expert_ids = dids.as<int32_t>();
    gr.expert_weights = dw.as<float>();
    cuda::route(gr, ctx);
    MoeParams gm = moe_base;
    gm.out = dout.as<float>(), gm.x = dx.as<float>(), gm.expert_ids = dids.as<int32_t>();
    gm.expert_weights = dw.as<float>();
    gm.gate = gate_tbl.as<const void* const>(), gm.up = up_tbl.as<const void* const>();
    gm.down = down_tbl.as<const void* const>();
    cuda::moe(gm, ctx);  // same stream, no host round trip in between
    std::vector<float> got(want.size());
    MOERUN_CUDA_CHECK(
        cudaMemcpyAsync(got.data(), dout.data(), got.size() * sizeof(float), cudaMemcpyDeviceToHost, ctx.stream()));
    ctx.synchronize();

    // The route weights differ by ~1e-5 relative, the experts by the moe budget of their path.
    const bool tensor = n > 8;
    const double tol = testing::tolerance(testing::Op::moe, tensor ? testing::Check::cuda_tensor : testing::Check::cuda,
                                          DType::bf16)
                           .mag +
                       10 * kTolWeight.rel;
    double scale = 0.0;
    for (float f : want) scale = std::max(scale, static_cast<double>(std::fabs(f)));
    EXPECT_LE(cuda::testing::max_abs_diff(got, want) / std::max(scale, 1e-30), tol);
  }
}

TEST(RouteCuda, RejectsUnsupportedShapes) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const RouteParams ok{.n_tokens = 1, .n_experts = 8, .top_k = 2};
  RouteParams p = ok;
  p.top_k = 9;  // more than the experts
  EXPECT_THROW(cuda::route(p, ctx), Error);
  p = ok;
  p.n_experts = 2048;
  EXPECT_THROW(cuda::route(p, ctx), Error);
  p = ok;
  p.method = TopkMethod::noaux_tc;
  p.n_group = 4;
  p.topk_group = 5;
  EXPECT_THROW(cuda::route(p, ctx), Error);
}

}  // namespace
}  // namespace moerun
