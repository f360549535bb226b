// The vector matmul kernels (kernels/cpu/matmul_avx512.cpp, matmul_avx2.cpp) and the scalar one, on
// every instruction set this CPU has, against double-precision references: every weight dtype
// (f32, bf16, f16, f8_e4m3 with block scales, q8_0, q4_0), odd sizes (in_features 1, 31, 33, 257,
// 4095; tokens 1, 3, 5, 17, 64, 300), random never-zero inputs, strided rows with NaN gaps and guard
// values around the outputs. Also the q8_0 / q4_0 formats themselves (round-trip error bounds) and
// the block dtypes' sizes.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/tensor.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using cpu::detail::Isa;

constexpr float kGuard = -12345.5f;

class Rng {  // SplitMix64: the same sequence on every platform
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform magnitude in [lo, hi) with a random sign: never zero.
  float nonzero(float lo, float hi) {
    const float m = lo + (hi - lo) * static_cast<float>(static_cast<double>(next() >> 40) * 0x1p-24);
    return (next() & 1) ? -m : m;
  }

 private:
  uint64_t s_;
};

std::vector<Isa> isas() {
  std::vector<Isa> out = {Isa::scalar};
  if (cpu::detail::best_isa() != Isa::scalar) out.push_back(Isa::avx2);
  if (cpu::detail::best_isa() == Isa::avx512) out.push_back(Isa::avx512);
  return out;
}

// A weight matrix [out, in] of `dtype` and the exact value of every element (as the kernels must
// read it: quantized types as dequantized).
struct Weights {
  DType dtype;
  int64_t out, in;
  std::vector<unsigned char> raw;
  std::vector<float> scale;  // f8_e4m3 block scales
  int64_t block_out = 16, block_in = 32;
  std::vector<double> value;
};

Weights make_weights(DType dtype, int64_t out, int64_t in, uint64_t seed) {
  Rng rng(seed);
  Weights w{dtype, out, in, {}, {}, 16, 32, {}};
  w.value.resize(static_cast<size_t>(out * in));
  std::vector<float> f(static_cast<size_t>(out * in));
  for (float& v : f) v = rng.nonzero(0.01f, 1.0f);
  if (dtype == DType::q8_0 || dtype == DType::q4_0) {
    const size_t rb = dtype_bytes(dtype, in);
    w.raw.resize(rb * static_cast<size_t>(out));
    std::vector<float> back(static_cast<size_t>(in));
    for (int64_t o = 0; o < out; ++o) {
      cpu::quantize_row(dtype, f.data() + o * in, in, w.raw.data() + static_cast<size_t>(o) * rb);
      cpu::dequantize_row(dtype, w.raw.data() + static_cast<size_t>(o) * rb, in, back.data());
      for (int64_t i = 0; i < in; ++i) w.value[static_cast<size_t>(o * in + i)] = back[static_cast<size_t>(i)];
    }
    return w;
  }
  w.raw.resize(static_cast<size_t>(out * in) * dtype_size(dtype));
  if (dtype == DType::f8_e4m3) {
    const int64_t so = (out + w.block_out - 1) / w.block_out, si = (in + w.block_in - 1) / w.block_in;
    for (int64_t i = 0; i < so * si; ++i) w.scale.push_back(rng.nonzero(0.001f, 0.01f));
  }
  for (int64_t i = 0; i < out * in; ++i) {
    const size_t u = static_cast<size_t>(i);
    switch (dtype) {
      case DType::f32:
        std::memcpy(w.raw.data() + 4 * u, &f[u], 4);
        w.value[u] = f[u];
        break;
      case DType::bf16: {
        const uint16_t h = cpu::f32_to_bf16(f[u]);
        std::memcpy(w.raw.data() + 2 * u, &h, 2);
        w.value[u] = cpu::bf16_to_f32(h);
        break;
      }
      case DType::f16: {
        const uint16_t h = cpu::f32_to_f16(f[u]);
        std::memcpy(w.raw.data() + 2 * u, &h, 2);
        w.value[u] = cpu::f16_to_f32(h);
        break;
      }
      default: {  // f8_e4m3: any byte but zero and NaN
        uint8_t b;
        do b = static_cast<uint8_t>(rng.next()); while ((b & 0x7f) == 0 || (b & 0x7f) == 0x7f);
        w.raw[u] = b;
        const int64_t o = i / in, c = i % in;
        const int64_t si = (in + w.block_in - 1) / w.block_in;
        w.value[u] = static_cast<double>(cpu::f8_e4m3_to_f32(b)) *
                     w.scale[static_cast<size_t>((o / w.block_out) * si + c / w.block_in)];
      }
    }
  }
  return w;
}

MatmulParams params(const Weights& w) {
  MatmulParams p;
  p.weight = w.raw.data();
  p.weight_dtype = w.dtype;
  p.in_features = w.in;
  p.out_features = w.out;
  if (w.dtype == DType::f8_e4m3) {
    p.weight_scale = w.scale.data();
    p.block_out = w.block_out;
    p.block_in = w.block_in;
  }
  return p;
}

// Runs the matmul of n random tokens (x rows strided with NaN gaps, out rows strided with guards)
// on `isa` and checks it against `want(t, o, x_row) -> {value, sum of |products|}` (without the bias),
// within the matmul tolerance of tests/support/op_tolerances.h: fp32 accumulation of `in` products in
// 16 or 32 lanes, relative error well under in/16 * 2^-24 of the sum of |terms|.
template <class Want>
void run_and_check(const Weights& w, int64_t n, Isa isa, bool bias, uint64_t seed, Want want) {
  const int64_t xs = w.in + 3, os = w.out + 2;
  std::ostringstream what;
  what << dtype_name(w.dtype) << " isa " << cpu::detail::isa_name(isa) << " n " << n << " in " << w.in << " out "
       << w.out << " bias " << bias << " seed " << seed;
  SCOPED_TRACE(what.str());
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n * xs), std::numeric_limits<float>::quiet_NaN());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < w.in; ++i) x[static_cast<size_t>(t * xs + i)] = rng.nonzero(0.05f, 2.0f);
  std::vector<float> b(static_cast<size_t>(w.out));
  for (float& v : b) v = rng.nonzero(0.1f, 1.0f);
  std::vector<float> out(static_cast<size_t>(n * os), kGuard);
  MatmulParams p = params(w);
  p.out = out.data();
  p.x = x.data();
  p.bias = bias ? b.data() : nullptr;
  p.n = n;
  p.x_stride = xs;
  p.out_stride = os;
  cpu::Context ctx;
  cpu::detail::matmul_isa(p, ctx, isa);
  const testing::Tolerance budget = testing::tolerance(testing::Op::matmul, testing::Check::reference, w.dtype);
  const double per_512 = std::max(1.0, static_cast<double>(w.in) / 512.0);
  int failures = 0;
  for (int64_t t = 0; t < n && failures < 5; ++t) {
    for (int64_t o = 0; o < w.out && failures < 5; ++o) {
      auto [value, mag] = want(t, o, x.data() + t * xs);
      if (bias) {
        value += b[static_cast<size_t>(o)];
        mag += std::fabs(b[static_cast<size_t>(o)]);
      }
      const double tol = budget.at(value, mag * per_512);
      const float got = out[static_cast<size_t>(t * os + o)];
      const bool ok = std::isfinite(got) && std::fabs(got - value) <= tol;
      EXPECT_TRUE(ok) << "t " << t << " o " << o << ": got " << got << ", want " << value << " +- " << tol;
      failures += !ok;
    }
    for (int64_t o = w.out; o < os; ++o) EXPECT_EQ(out[static_cast<size_t>(t * os + o)], kGuard) << "guard at t " << t;
  }
}

// A batched decode step (up to kGemvMaxTokens tokens) gives every token exactly what it gets alone:
// the decode kernels sum each token the same way whatever shares the call.
TEST(MatmulFast, DecodeResultsDoNotDependOnHowManyTokensShareTheCall) {
  uint64_t seed = 500;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int64_t in : {33, 576, 1536}) {
      const Weights w = make_weights(dt, 45, in, ++seed);
      for (Isa isa : isas()) {
        if (isa == Isa::scalar) continue;
        const int64_t n = cpu::detail::kGemvMaxTokens;
        Rng rng(++seed);
        std::vector<float> x(static_cast<size_t>(n * in));
        for (float& v : x) v = rng.nonzero(0.05f, 2.0f);
        std::vector<float> all(static_cast<size_t>(n * w.out)), one(static_cast<size_t>(w.out));
        MatmulParams p = params(w);
        p.x = x.data();
        p.out = all.data();
        p.n = n;
        cpu::Context ctx;
        cpu::detail::matmul_isa(p, ctx, isa);
        for (int64_t t = 0; t < n; ++t) {
          p.x = x.data() + t * in;
          p.out = one.data();
          p.n = 1;
          cpu::detail::matmul_isa(p, ctx, isa);
          for (int64_t o = 0; o < w.out; ++o)
            ASSERT_EQ(one[static_cast<size_t>(o)], all[static_cast<size_t>(t * w.out + o)])
                << dtype_name(dt) << " isa " << cpu::detail::isa_name(isa) << " in " << in << " token " << t << " row " << o;
        }
      }
    }
}

TEST(MatmulFast, FloatDtypesMatchDoubleReferenceOnEveryIsa) {
  uint64_t seed = 1;
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3})
    for (int64_t in : {1, 31, 33, 257, 4095}) {
      const int64_t out = in > 1000 ? 21 : 37;
      const Weights w = make_weights(dt, out, in, ++seed);
      for (int64_t n : {1, 3, 5, 8, 16, 17, 64, 300}) {  // 5..16: the decode passes of 4 tokens and their tails
        if (in > 1000 && n > 64) continue;  // the double reference would dominate the suite's time
        for (Isa isa : isas())
          run_and_check(w, n, isa, n % 2 == 1, ++seed, [&](int64_t, int64_t o, const float* x) {
            double v = 0.0, mag = 0.0;
            for (int64_t i = 0; i < in; ++i) {
              v += static_cast<double>(x[i]) * w.value[static_cast<size_t>(o * in + i)];
              mag += std::fabs(static_cast<double>(x[i]) * w.value[static_cast<size_t>(o * in + i)]);
            }
            return std::pair{v, mag};
          });
      }
    }
}

// The quantized kernels compute sum_b d_w,b d_a,b sum_i q_w,i q_a,i with exact integer block dots:
// against that formula in double only the fp32 accumulation of block results differs. And against
// the unquantized activations, each activation is off by at most half its block's step d_a / 2, so
// |y - W_deq x| <= sum_b d_a,b / 2 * sum_{i in b} |w_i| (plus the same fp32 term).
TEST(MatmulFast, QuantizedMatchExactBlockFormulaAndActivationBound) {
  uint64_t seed = 1000;
  for (DType dt : {DType::q8_0, DType::q4_0})
    for (int64_t in : {32, 96, 544, 4096}) {
      const int64_t out = in > 1000 ? 21 : 37;
      const Weights w = make_weights(dt, out, in, ++seed);
      for (int64_t n : {1, 3, 5, 6, 7, 17, 64, 300}) {  // 6, 7, 17: the prefill kernel's token tails 2, 3, 1
        if (in > 1000 && n > 64) continue;
        for (Isa isa : isas()) {
          const int64_t nb = in / 32;
          run_and_check(w, n, isa, n % 2 == 0, ++seed, [&](int64_t, int64_t o, const float* x) {
            std::vector<int8_t> q(static_cast<size_t>(in));
            std::vector<float> d(static_cast<size_t>(nb));
            std::vector<int32_t> s(static_cast<size_t>(nb));
            cpu::detail::quantize_acts_scalar(x, in, 1, in, in, q.data(), d.data(), s.data());
            double exact = 0.0, mag = 0.0, real = 0.0, bound = 0.0;
            for (int64_t i = 0; i < in; ++i) {
              const double wi = w.value[static_cast<size_t>(o * in + i)];
              const double ai = static_cast<double>(d[static_cast<size_t>(i / 32)]) * q[static_cast<size_t>(i)];
              exact += wi * ai;
              mag += std::fabs(wi * ai);
              real += wi * x[i];
              bound += std::fabs(wi) * d[static_cast<size_t>(i / 32)] / 2.0;
            }
            EXPECT_LE(std::fabs(exact - real), bound * (1 + 1e-6) + 1e-9) << "the activation bound itself";
            return std::pair{exact, mag};
          });
        }
      }
    }
}

TEST(MatmulFast, ThreadedEqualsSingleThreadedBitForBit) {
  cpu::ThreadPool pool(3);
  cpu::Context alone, threaded(&pool);
  uint64_t seed = 5000;
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3, DType::q8_0, DType::q4_0}) {
    const Weights w = make_weights(dt, 133, 288, ++seed);
    for (int64_t n : {1, 2, 5, 7, 17})
      for (Isa isa : isas()) {
        Rng rng(++seed);
        std::vector<float> x(static_cast<size_t>(n * 288));
        for (float& v : x) v = rng.nonzero(0.05f, 2.0f);
        std::vector<float> one(static_cast<size_t>(n * 133)), many(one.size());
        MatmulParams p = params(w);
        p.x = x.data();
        p.n = n;
        p.out = one.data();
        cpu::detail::matmul_isa(p, alone, isa);
        p.out = many.data();
        cpu::detail::matmul_isa(p, threaded, isa);
        EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0)
            << dtype_name(dt) << " n " << n << " " << cpu::detail::isa_name(isa);
      }
  }
}

TEST(MatmulFast, ActivationQuantizationIsTheSameOnEveryIsa) {
  if (cpu::detail::best_isa() != Isa::avx512) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  Rng rng(77);
  const int64_t n = 3, k = 96, kp = 128;
  std::vector<float> x(static_cast<size_t>(n * k));
  for (float& v : x) v = rng.nonzero(0.001f, 3.0f);
  x[5] = 0.5f / 127.0f * 127.0f;  // a few values on rounding ties are covered by random data anyway
  std::vector<int8_t> q1(static_cast<size_t>(n * kp), 1), q2(q1.size(), 2);
  std::vector<float> d1(static_cast<size_t>(n * 3)), d2(d1.size());
  std::vector<int32_t> s1(d1.size()), s2(d1.size());
  cpu::detail::quantize_acts_scalar(x.data(), k, n, k, kp, q1.data(), d1.data(), s1.data());
  cpu::detail::quantize_acts_avx512(x.data(), k, n, k, kp, q2.data(), d2.data(), s2.data());
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(d1, d2);
  EXPECT_EQ(s1, s2);
}

// ---- the formats ---------------------------------------------------------------------------------

TEST(Quant, F16ConversionRoundTripsEveryPatternAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = cpu::f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(cpu::f16_to_f32(cpu::f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(cpu::f32_to_f16(f), h) << std::hex << h;
  }
  EXPECT_EQ(cpu::f32_to_f16(1.0f + 0x1p-11f), 0x3c00);               // tie: to even (1.0)
  EXPECT_EQ(cpu::f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);           // tie: to even (1 + 2^-9)
  EXPECT_EQ(cpu::f32_to_f16(65520.0f), 0x7c00);                      // rounds past the largest: inf
  EXPECT_EQ(cpu::f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(cpu::f32_to_f16(0x1p-25f), 0x0000);                      // half the smallest subnormal: to even 0
  EXPECT_EQ(cpu::f32_to_f16(0x1.8p-24f), 0x0002);                    // 1.5 subnormal steps: to even 2
  EXPECT_EQ(cpu::f32_to_f16(-0x1p-14f), 0x8400);                     // smallest normal
}

// q8_0: q = round(w / d) with d = max|w| / 127 (fp16): every weight within d / 2. q4_0: the better of
// two scales, both with every weight within one step d (the -8 end can clamp a +8); and on Gaussian-
// like data the RMS error relative to the RMS weight stays under the stated fractions.
TEST(Quant, RoundTripErrorBounds) {
  Rng rng(9);
  for (DType dt : {DType::q8_0, DType::q4_0})
    for (int64_t k : {32, 96, 544, 4096}) {
      std::vector<float> w(static_cast<size_t>(k)), back(w.size());
      for (size_t i = 0; i < w.size(); ++i) {
        // Sum of uniforms: roughly Gaussian, and every block has a different range.
        float g = 0.0f;
        for (int j = 0; j < 4; ++j) g += rng.nonzero(0.0f, 1.0f);
        w[i] = g * (1.0f + static_cast<float>(i / 32 % 7));
      }
      std::vector<unsigned char> q(dtype_bytes(dt, k));
      cpu::quantize_row(dt, w.data(), k, q.data());
      cpu::dequantize_row(dt, q.data(), k, back.data());
      double err2 = 0.0, sig2 = 0.0;
      for (int64_t b = 0; b < k / 32; ++b) {
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(w[static_cast<size_t>(b * 32 + i)]));
        const double step = dt == DType::q8_0 ? amax / 127.0 : amax / 7.0;
        for (int i = 0; i < 32; ++i) {
          const size_t u = static_cast<size_t>(b * 32 + i);
          const double e = std::fabs(static_cast<double>(w[u]) - back[u]);
          EXPECT_LE(e, (dt == DType::q8_0 ? 0.5 : 1.0) * step * 1.002) << dtype_name(dt) << " k " << k << " i " << u;
          err2 += e * e;
          sig2 += static_cast<double>(w[u]) * w[u];
        }
      }
      const double rel = std::sqrt(err2 / sig2);
      EXPECT_LT(rel, dt == DType::q8_0 ? 0.01 : 0.12) << dtype_name(dt) << " k " << k;
    }
}

TEST(Quant, ZeroBlocksStayZero) {
  for (DType dt : {DType::q8_0, DType::q4_0}) {
    std::vector<float> w(64, 0.0f), back(64, 1.0f);
    w[40] = -3.0f;  // the second block is not zero
    std::vector<unsigned char> q(dtype_bytes(dt, 64));
    cpu::quantize_row(dt, w.data(), 64, q.data());
    cpu::dequantize_row(dt, q.data(), 64, back.data());
    for (int i = 0; i < 32; ++i) EXPECT_EQ(back[static_cast<size_t>(i)], 0.0f) << dtype_name(dt);
    // The extreme of a block is its step times 127 (q8_0) or -8 (q4_0): exact but for the fp16 scale.
    EXPECT_NEAR(back[40], -3.0f, dt == DType::q8_0 ? 3.0f / 127.0f / 2.0f : 0.0f) << dtype_name(dt);
  }
}

TEST(DTypeBlocks, SizesAndNames) {
  EXPECT_EQ(dtype_block_elems(DType::q8_0), 32);
  EXPECT_EQ(dtype_block_bytes(DType::q8_0), 34u);
  EXPECT_EQ(dtype_block_bytes(DType::q4_0), 18u);
  EXPECT_EQ(dtype_bytes(DType::q8_0, 4096), 128u * 34u);
  EXPECT_EQ(dtype_bytes(DType::q4_0, 96), 3u * 18u);
  EXPECT_EQ(dtype_bytes(DType::bf16, 7), 14u);
  EXPECT_EQ(dtype_block_elems(DType::bf16), 1);
  EXPECT_TRUE(is_block(DType::q4_0));
  EXPECT_FALSE(is_block(DType::f8_e4m3));
  EXPECT_EQ(dtype_name(DType::q8_0), "Q8_0");
  EXPECT_FALSE(parse_dtype("Q8_0").has_value()) << "no safetensors file carries our block types";
  EXPECT_FALSE(parse_dtype("Q4_0").has_value());
  // A [rows, in] q8_0 tensor: nbytes and row views count whole blocks.
  std::vector<unsigned char> data(dtype_bytes(DType::q8_0, 3 * 64));
  const Tensor t(DType::q8_0, {3, 64}, data.data(), nullptr);
  EXPECT_EQ(t.nbytes(), 3u * 2u * 34u);
  EXPECT_EQ(t.index(2).data(), data.data() + 2 * 2 * 34);
  EXPECT_EQ(t.narrow(1, 2).nbytes(), 2u * 2u * 34u);
}

}  // namespace
}  // namespace moerun
