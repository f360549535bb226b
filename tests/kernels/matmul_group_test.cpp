// matmul_group: several matmuls of the same rows in one pass over the pool give exactly what each
// matmul gives on its own (every weight dtype, different output sizes, shared activations, with and
// without a pool); and cpu::moe, whose one-token path is built on it.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/dtype.h"
#include "moerun/error.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

std::vector<float> random_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.05f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = (rng() & 1) ? u(rng) : -u(rng);  // never zero
  return v;
}

// One weight matrix [out, in] of `dtype` made from random floats.
std::vector<uint8_t> weights(DType dtype, int64_t out, int64_t in, uint64_t seed) {
  const std::vector<float> f = random_floats(static_cast<size_t>(out * in), seed);
  std::vector<uint8_t> bytes(dtype_bytes(dtype, out * in) + 64);
  if (dtype == DType::f32) {
    std::memcpy(bytes.data(), f.data(), f.size() * sizeof(float));
  } else if (dtype == DType::bf16) {
    for (size_t i = 0; i < f.size(); ++i) {
      const uint16_t h = cpu::f32_to_bf16(f[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  } else {
    const size_t row = dtype_bytes(dtype, in);
    for (int64_t o = 0; o < out; ++o) cpu::quantize_row(dtype, f.data() + o * in, in, bytes.data() + static_cast<size_t>(o) * row);
  }
  return bytes;
}

TEST(MatmulGroup, EqualsEachMatmulAloneBitForBit) {
  const int64_t in = 96;
  for (int64_t n : {1, 3, 17}) {
    const std::vector<float> x = random_floats(static_cast<size_t>(n * in), 7 + static_cast<uint64_t>(n));
    const DType dtypes[] = {DType::bf16, DType::q8_0, DType::f32, DType::q4_0};
    const int64_t outs[] = {40, 17, 160, 33};
    std::vector<std::vector<uint8_t>> w;
    std::vector<std::vector<float>> alone(4), grouped(4);
    std::vector<MatmulParams> ps;
    cpu::Context alone_ctx;
    for (size_t i = 0; i < 4; ++i) {
      w.push_back(weights(dtypes[i], outs[i], in, 100 + i));
      alone[i].assign(static_cast<size_t>(n * outs[i]), 0.0f);
      grouped[i].assign(static_cast<size_t>(n * outs[i]), -1.0f);
      MatmulParams p{.out = alone[i].data(), .x = x.data(), .weight = w[i].data(), .weight_dtype = dtypes[i], .n = n,
                     .in_features = in, .out_features = outs[i]};
      cpu::matmul(p, alone_ctx);
      p.out = grouped[i].data();
      ps.push_back(p);
    }
    for (int threads : {1, 2, 3}) {
      cpu::ThreadPool pool(threads);
      cpu::Context ctx(threads == 1 ? nullptr : &pool);
      cpu::matmul_group(ps.data(), ps.size(), ctx);
      for (size_t i = 0; i < 4; ++i) EXPECT_EQ(grouped[i], alone[i]) << "entry " << i << " n " << n << " threads " << threads;
    }
  }
}

TEST(MatmulGroup, EmptyEntriesAndTooManyEntries) {
  const std::vector<float> x = random_floats(64, 1);
  const std::vector<uint8_t> w = weights(DType::f32, 8, 64, 2);
  std::vector<float> out(8, -1.0f);
  const MatmulParams ok{.out = out.data(), .x = x.data(), .weight = w.data(), .n = 1, .in_features = 64, .out_features = 8};
  MatmulParams none = ok;
  none.n = 0;  // nothing to compute: skipped
  const MatmulParams two[] = {none, ok};
  cpu::Context ctx;
  cpu::matmul_group(two, 2, ctx);
  EXPECT_NE(out[7], -1.0f);
  std::vector<MatmulParams> many(cpu::kMatmulGroupMax + 1, ok);
  EXPECT_NO_THROW(cpu::matmul_group(many.data(), cpu::kMatmulGroupMax, ctx));
  EXPECT_THROW(cpu::matmul_group(many.data(), many.size(), ctx), Error);
}

TEST(MatmulGroup, EntriesSharingActivationsStayExact) {
  // Entries with the same x, dtype and token count share one preparation; a different x, or the
  // same x read as another dtype, must not pick it up.
  const int64_t in = 96;
  for (int64_t n : {1, 3, 17}) {
    const std::vector<float> x = random_floats(static_cast<size_t>(n * in), 30 + static_cast<uint64_t>(n));
    const std::vector<float> x2 = random_floats(static_cast<size_t>(n * in), 60 + static_cast<uint64_t>(n));
    struct Entry {
      DType dtype;
      int64_t out;
      const float* x;
    };
    const Entry entries[] = {{DType::bf16, 40, x.data()},  {DType::bf16, 17, x.data()}, {DType::q8_0, 33, x.data()},
                             {DType::bf16, 24, x2.data()}, {DType::q8_0, 64, x.data()}, {DType::q4_0, 32, x.data()},
                             {DType::bf16, 8, x.data()}};
    std::vector<std::vector<uint8_t>> w;
    std::vector<std::vector<float>> alone, grouped;
    std::vector<MatmulParams> ps;
    cpu::Context alone_ctx;
    for (size_t i = 0; i < std::size(entries); ++i) {
      const Entry& e = entries[i];
      w.push_back(weights(e.dtype, e.out, in, 200 + i));
      const int64_t os = e.out + 3;  // padded output rows
      alone.emplace_back(static_cast<size_t>(n * os), 0.0f);
      grouped.emplace_back(static_cast<size_t>(n * os), 0.0f);
      MatmulParams p{.out = alone[i].data(), .x = e.x, .weight = w[i].data(), .weight_dtype = e.dtype, .n = n,
                     .in_features = in, .out_features = e.out, .out_stride = os};
      cpu::matmul(p, alone_ctx);
      p.out = grouped[i].data();
      ps.push_back(p);
    }
    cpu::ThreadPool pool(2);
    cpu::Context ctx(&pool);
    cpu::matmul_group(ps.data(), ps.size(), ctx);
    for (size_t i = 0; i < std::size(entries); ++i) EXPECT_EQ(grouped[i], alone[i]) << "entry " << i << " n " << n;
  }
}

// cpu::moe for one token takes a grouped path (every selected expert's gate/up in one matmul_group,
// the downs in another). It must give the batched path's bits (the same token twice goes through
// the batched path, whose per-token arithmetic is the same), and, in float weights, the formula.
TEST(MoeCpu, OneTokenGroupedPathEqualsBatchedPathAndFormula) {
  const int64_t D = 64, I = 64, E = 10;
  cpu::ThreadPool pool(2);
  cpu::Context alone, threaded(&pool);
  for (DType dt : {DType::f32, DType::bf16, DType::q8_0})
    for (int64_t top_k : {1, 4, 8}) {
      std::vector<std::vector<uint8_t>> gate, up, down;
      std::vector<const void*> gp, upp, dp;
      for (int64_t e = 0; e < E; ++e) {
        gate.push_back(weights(dt, I, D, 300 + static_cast<uint64_t>(e)));
        up.push_back(weights(dt, I, D, 400 + static_cast<uint64_t>(e)));
        down.push_back(weights(dt, D, I, 500 + static_cast<uint64_t>(e)));
      }
      for (int64_t e = 0; e < E; ++e) {
        gp.push_back(gate[static_cast<size_t>(e)].data());
        upp.push_back(up[static_cast<size_t>(e)].data());
        dp.push_back(down[static_cast<size_t>(e)].data());
      }
      std::vector<float> x = random_floats(static_cast<size_t>(D), 600 + static_cast<uint64_t>(top_k));
      for (float& v : x) v *= 0.1f;
      std::vector<int32_t> ids;  // distinct, not sorted
      for (int64_t j = 0; j < top_k; ++j) ids.push_back(static_cast<int32_t>((7 * j + 3) % E));
      std::vector<float> wts = random_floats(static_cast<size_t>(top_k), 700);
      for (cpu::Context* ctx : {&alone, &threaded}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " top_k " << top_k << " pool " << (ctx->pool() != nullptr));
        std::vector<float> one(static_cast<size_t>(D), -1.0f);
        MoeParams p{.out = one.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = wts.data(),
                    .gate = gp.data(), .up = upp.data(), .down = dp.data(), .weight_dtype = dt, .n_tokens = 1,
                    .top_k = top_k, .n_experts = E, .hidden = D, .intermediate = I};
        cpu::moe(p, *ctx);
        std::vector<float> x2 = x, ids_w = wts, two(static_cast<size_t>(2 * D), -1.0f);
        x2.insert(x2.end(), x.begin(), x.end());
        std::vector<int32_t> ids2 = ids;
        ids2.insert(ids2.end(), ids.begin(), ids.end());
        ids_w.insert(ids_w.end(), wts.begin(), wts.end());
        MoeParams b = p;
        b.out = two.data();
        b.x = x2.data();
        b.expert_ids = ids2.data();
        b.expert_weights = ids_w.data();
        b.n_tokens = 2;
        cpu::moe(b, *ctx);
        EXPECT_TRUE(std::equal(one.begin(), one.end(), two.begin())) << "token 0 of the batch";
        EXPECT_TRUE(std::equal(one.begin(), one.end(), two.begin() + D)) << "token 1 of the batch";
        if (dt == DType::q8_0) continue;  // quantized activations: the formula holds to their rounding only
        const testing::Tolerance tol = testing::tolerance(testing::Op::moe, testing::Check::reference, dt);
        for (int64_t d = 0; d < D; ++d) {
          double want = 0.0, mag = 0.0;
          for (int64_t j = 0; j < top_k; ++j) {
            const int32_t e = ids[static_cast<size_t>(j)];
            double dot = 0.0;
            for (int64_t i = 0; i < I; ++i) {
              double g = 0.0, u = 0.0;
              for (int64_t c = 0; c < D; ++c) {
                g += static_cast<double>(cpu::load_f32(gp[static_cast<size_t>(e)], dt, i * D + c)) * x[static_cast<size_t>(c)];
                u += static_cast<double>(cpu::load_f32(upp[static_cast<size_t>(e)], dt, i * D + c)) * x[static_cast<size_t>(c)];
              }
              const double h = g / (1.0 + std::exp(-g)) * u;
              dot += static_cast<double>(cpu::load_f32(dp[static_cast<size_t>(e)], dt, d * I + i)) * h;
            }
            want += wts[static_cast<size_t>(j)] * dot;
            mag += std::fabs(wts[static_cast<size_t>(j)] * dot);
          }
          EXPECT_NEAR(one[static_cast<size_t>(d)], want, tol.at(want, mag)) << "d " << d;
        }
      }
    }
}

// Expert parallel: a rank's tables hold only its experts (null entries for the others'). The moe op
// skips the others' pairs, on the one-token path and the batched one, and the ranks' outputs add up
// to the whole layer's.
TEST(MoeCpu, NullExpertsAreOtherRanksAndTheRanksSumToTheWhole) {
  const int64_t D = 48, I = 32, E = 10, K = 4;
  cpu::Context ctx;
  std::vector<std::vector<uint8_t>> gate, up, down;
  for (int64_t e = 0; e < E; ++e) {
    gate.push_back(weights(DType::f32, I, D, 800 + static_cast<uint64_t>(e)));
    up.push_back(weights(DType::f32, I, D, 900 + static_cast<uint64_t>(e)));
    down.push_back(weights(DType::f32, D, I, 1000 + static_cast<uint64_t>(e)));
  }
  auto tables = [&](int64_t first, int64_t last, std::vector<const void*>& g, std::vector<const void*>& u, std::vector<const void*>& d) {
    g.assign(static_cast<size_t>(E), nullptr), u.assign(static_cast<size_t>(E), nullptr), d.assign(static_cast<size_t>(E), nullptr);
    for (int64_t e = first; e < last; ++e) {
      g[static_cast<size_t>(e)] = gate[static_cast<size_t>(e)].data();
      u[static_cast<size_t>(e)] = up[static_cast<size_t>(e)].data();
      d[static_cast<size_t>(e)] = down[static_cast<size_t>(e)].data();
    }
  };
  for (int64_t n : {1, 3}) {
    SCOPED_TRACE(::testing::Message() << n << " tokens");
    std::vector<float> x = random_floats(static_cast<size_t>(n * D), 1100 + static_cast<uint64_t>(n));
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < K; ++j) ids.push_back(static_cast<int32_t>((3 * j + 2 * t + 1) % E));
    std::vector<float> wts = random_floats(static_cast<size_t>(n * K), 1200);
    std::vector<const void*> g, u, d;
    auto run = [&](std::vector<float>& out) {
      cpu::moe({.out = out.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = wts.data(), .gate = g.data(), .up = u.data(),
                .down = d.data(), .weight_dtype = DType::f32, .n_tokens = n, .top_k = K, .n_experts = E, .hidden = D, .intermediate = I},
               ctx);
    };
    std::vector<float> whole(static_cast<size_t>(n * D), -1.0f), sum(static_cast<size_t>(n * D), 0.0f);
    tables(0, E, g, u, d);
    run(whole);
    for (const auto& [first, last] : {std::pair<int64_t, int64_t>{0, 4}, {4, 7}, {7, 10}}) {
      std::vector<float> part(static_cast<size_t>(n * D), -1.0f);
      tables(first, last, g, u, d);
      run(part);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
    }
    for (size_t i = 0; i < sum.size(); ++i) EXPECT_NEAR(sum[i], whole[i], 1e-5f * (1.0f + std::fabs(whole[i]))) << i;
    // A rank holding none of a token's experts gives zeros for it.
    tables(0, 0, g, u, d);
    std::vector<float> none(static_cast<size_t>(n * D), -1.0f);
    run(none);
    for (float v : none) EXPECT_EQ(v, 0.0f);
  }
}

}  // namespace
}  // namespace moerun
