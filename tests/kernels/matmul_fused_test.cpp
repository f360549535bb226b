// The matmul's fusions (MatmulParams::norm_weight, accumulate) on the CPU: a fused matmul, alone or as
// an entry of a group, gives exactly the bits of the unfused sequence rms_norm -> matmul -> add, for
// every weight dtype, with strided x and out, entries sharing a norm and entries with other norms.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/dtype.h"
#include "moerun/error.h"

namespace moerun {
namespace {

std::vector<float> random_floats(size_t n, uint64_t seed, float lo = 0.05f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = (rng() & 1) ? u(rng) : -u(rng);  // never zero
  return v;
}

// A weight [out, in] of dtype with random, never-zero elements (FP8: plus its block scales).
struct Weight {
  DType dtype = DType::f32;
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
};

constexpr int64_t kBlockOut = 16, kBlockIn = 32;

Weight make_weight(DType dtype, int64_t out, int64_t in, uint64_t seed) {
  Weight w;
  w.dtype = dtype;
  const std::vector<float> f = random_floats(static_cast<size_t>(out * in), seed);
  w.bytes.assign(dtype_bytes(dtype, out * in) + 64, 0);
  std::mt19937_64 rng(seed + 1);
  for (size_t i = 0; i < f.size(); ++i) {
    if (dtype == DType::f32) {
      std::memcpy(w.bytes.data() + 4 * i, &f[i], 4);
    } else if (dtype == DType::bf16) {
      const uint16_t h = cpu::f32_to_bf16(f[i]);
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
    } else if (dtype == DType::f16) {
      // sign, exponent 11..14 (0.0625 .. 1), random mantissa: never zero, never special
      const auto h = static_cast<uint16_t>(((rng() & 1) << 15) | ((11 + rng() % 4) << 10) | (rng() & 0x3ff));
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
    } else if (dtype == DType::f8_e4m3) {
      // exponent 4..9 (2^-3 .. 4), random mantissa: never zero, never NaN (0x7f / 0xff)
      w.bytes[i] = static_cast<uint8_t>(((rng() & 1) << 7) | ((4 + rng() % 6) << 3) | (rng() & 7));
    }
  }
  if (dtype == DType::q8_0 || dtype == DType::q4_0) {
    const size_t row = dtype_bytes(dtype, in);
    for (int64_t o = 0; o < out; ++o)
      cpu::quantize_row(dtype, f.data() + o * in, in, w.bytes.data() + static_cast<size_t>(o) * row);
  }
  if (dtype == DType::f8_e4m3)
    w.scale = random_floats(static_cast<size_t>(((out + kBlockOut - 1) / kBlockOut) * ((in + kBlockIn - 1) / kBlockIn)),
                            seed + 2, 0.01f, 0.1f);
  for (float& s : w.scale) s = s < 0 ? -s : s;
  return w;
}

MatmulParams params(const Weight& w, float* out, const float* x, int64_t n, int64_t in, int64_t O, int64_t xs,
                    int64_t os) {
  MatmulParams p{.out = out, .x = x, .weight = w.bytes.data(), .weight_dtype = w.dtype, .n = n, .in_features = in,
                 .out_features = O, .x_stride = xs, .out_stride = os};
  if (w.dtype == DType::f8_e4m3) {
    p.weight_scale = w.scale.data();
    p.block_out = kBlockOut;
    p.block_in = kBlockIn;
  }
  return p;
}

// One fused entry and what the unfused ops give for it.
struct Case {
  Weight w;
  int64_t O = 0;
  const float* norm = nullptr;
  float eps = 0.0f;
  bool accumulate = false;
  std::vector<float> start;     // out before the call, [n, os]
  std::vector<float> expected;  // out after rms_norm -> matmul -> add, [n, os]
};

// The unfused sequence, on a context of its own: rms_norm into a copy of x (x's stride), the matmul
// into a dense product, then cpu::add of the product into out (dense rows, scattered back to os).
std::vector<float> unfused(const Case& c, const std::vector<float>& x, int64_t n, int64_t in, int64_t xs, int64_t os) {
  cpu::Context ctx;
  std::vector<float> xn = x;
  if (c.norm) {
    RmsNormParams r{.out = xn.data(), .x = x.data(), .weight = c.norm, .rows = n, .cols = in, .eps = c.eps, .stride = xs};
    cpu::rms_norm(r, ctx);
  }
  std::vector<float> y(static_cast<size_t>(n * c.O), 0.0f);
  cpu::matmul(params(c.w, y.data(), xn.data(), n, in, c.O, xs, 0), ctx);
  std::vector<float> out = c.start;
  if (c.accumulate) {
    std::vector<float> dense(static_cast<size_t>(n * c.O));
    for (int64_t t = 0; t < n; ++t)
      std::memcpy(dense.data() + t * c.O, out.data() + t * os, static_cast<size_t>(c.O) * sizeof(float));
    cpu::add(AddParams{.out = dense.data(), .x = y.data(), .rows = n, .cols = c.O}, ctx);
    y = dense;
  }
  for (int64_t t = 0; t < n; ++t)
    std::memcpy(out.data() + t * os, y.data() + t * c.O, static_cast<size_t>(c.O) * sizeof(float));
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(MatmulFused, EqualsRmsNormMatmulAddBitForBitAloneAndGrouped) {
  const int64_t in = 96, xs = in + 5;
  const DType dtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3, DType::q8_0, DType::q4_0};
  const std::vector<float> norm = random_floats(static_cast<size_t>(in), 3, 0.5f, 1.5f);
  const std::vector<float> norm2 = random_floats(static_cast<size_t>(in), 4, 0.5f, 1.5f);
  for (int64_t n : {1, 3, 17}) {
    // x of varied row magnitudes, so inv_rms differs per token
    std::vector<float> x = random_floats(static_cast<size_t>(n * xs), 10 + static_cast<uint64_t>(n));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < xs; ++i) x[static_cast<size_t>(t * xs + i)] *= static_cast<float>(1 + 3 * t);
    std::vector<Case> cases;
    uint64_t seed = 100;
    for (DType dt : dtypes) {
      // norm only, accumulate only, both; then other norms (a second weight, another eps) with accumulate
      const int64_t O = 16 + 7 * static_cast<int64_t>(cases.size() % 5);
      for (int variant = 0; variant < 3; ++variant) {
        Case c;
        c.w = make_weight(dt, O, in, seed++);
        c.O = O;
        c.norm = variant != 1 ? norm.data() : nullptr;
        c.eps = 1e-6f;
        c.accumulate = variant != 0;
        cases.push_back(std::move(c));
      }
    }
    for (int k = 0; k < 2; ++k) {
      Case c;
      c.w = make_weight(k == 0 ? DType::bf16 : DType::q8_0, 40, in, seed++);
      c.O = 40;
      c.norm = k == 0 ? norm2.data() : norm.data();
      c.eps = k == 0 ? 1e-6f : 1e-2f;
      c.accumulate = true;
      cases.push_back(std::move(c));
    }
    ASSERT_LE(cases.size(), cpu::kMatmulGroupMax);
    std::vector<int64_t> os(cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      Case& c = cases[i];
      os[i] = c.O + static_cast<int64_t>(i % 3);  // strided outputs too
      c.start = random_floats(static_cast<size_t>(n * os[i]), 1000 + i);
      c.expected = unfused(c, x, n, in, xs, os[i]);
    }
    auto fused_params = [&](size_t i, std::vector<float>& out) {
      MatmulParams p = params(cases[i].w, out.data(), x.data(), n, in, cases[i].O, xs, os[i]);
      p.norm_weight = cases[i].norm;
      p.norm_eps = cases[i].eps;
      p.accumulate = cases[i].accumulate;
      return p;
    };
    for (int threads : {1, 3}) {
      cpu::ThreadPool pool(threads);
      cpu::Context ctx(threads == 1 ? nullptr : &pool);
      const std::string where = "n " + std::to_string(n) + " threads " + std::to_string(threads);
      // alone
      for (size_t i = 0; i < cases.size(); ++i) {
        std::vector<float> out = cases[i].start;
        cpu::matmul(fused_params(i, out), ctx);
        EXPECT_TRUE(same_bits(out, cases[i].expected))
            << "alone, entry " << i << " " << dtype_name(cases[i].w.dtype) << " " << where;
      }
      // grouped: every entry in one group
      std::vector<std::vector<float>> outs;
      for (const Case& c : cases) outs.push_back(c.start);
      std::vector<MatmulParams> ps;
      for (size_t i = 0; i < cases.size(); ++i) ps.push_back(fused_params(i, outs[i]));
      cpu::matmul_group(ps.data(), ps.size(), ctx);
      for (size_t i = 0; i < cases.size(); ++i)
        EXPECT_TRUE(same_bits(outs[i], cases[i].expected))
            << "grouped, entry " << i << " " << dtype_name(cases[i].w.dtype) << " " << where;
      // x itself is never written
      std::vector<float> x_again = random_floats(static_cast<size_t>(n * xs), 10 + static_cast<uint64_t>(n));
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 0; i < xs; ++i) x_again[static_cast<size_t>(t * xs + i)] *= static_cast<float>(1 + 3 * t);
      EXPECT_TRUE(same_bits(x, x_again)) << where;
    }
  }
}

// Empty entries between fused ones change nothing, and a repeated call gives the same bits (the
// scratch is reused, never stale).
TEST(MatmulFused, EmptyEntriesAndRepeatedCalls) {
  const int64_t in = 64, n = 2, O = 24;
  const std::vector<float> x = random_floats(static_cast<size_t>(n * in), 1);
  const std::vector<float> norm = random_floats(static_cast<size_t>(in), 2);
  const Weight w = make_weight(DType::bf16, O, in, 3);
  Case c;
  c.w = w;
  c.O = O;
  c.norm = norm.data();
  c.eps = 1e-5f;
  c.accumulate = true;
  c.start = random_floats(static_cast<size_t>(n * O), 4);
  c.expected = unfused(c, x, n, in, in, O);
  cpu::Context ctx;
  for (int rep = 0; rep < 2; ++rep) {
    std::vector<float> out = c.start, unused(4, 7.0f);
    MatmulParams p = params(w, out.data(), x.data(), n, in, O, 0, 0);
    p.norm_weight = norm.data();
    p.norm_eps = 1e-5f;
    p.accumulate = true;
    MatmulParams empty = p;
    empty.out = unused.data();
    empty.n = 0;
    const MatmulParams ps[] = {empty, p, empty};
    cpu::matmul_group(ps, 3, ctx);
    EXPECT_TRUE(same_bits(out, c.expected)) << "repeat " << rep;
    EXPECT_EQ(unused, std::vector<float>(4, 7.0f));
  }
}

}  // namespace
}  // namespace moerun
