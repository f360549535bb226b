// The CPU reference ops (kernels/cpu/*.cpp) against double-precision formulas and hand-made answers.
// Every random input comes from a seeded SplitMix64 written here (std::*_distribution differs between
// standard libraries); sizes are awkward on purpose (1, 3, 7, 31, 33, 67: never multiples of 8 or 16);
// strided buffers have poisoned gaps so an op that reads or writes outside its rows is caught; NaN and
// Inf are checked before any error metric.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/context.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using testing::Check;
using testing::Op;
using testing::tolerance;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kGuard = -12345.5f;  // written around outputs; an op must leave it alone

// SplitMix64 (Steele, Lea, Flood 2014): tiny, and the same sequence on every platform.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi) from 24 random bits.
  float uniform(float lo, float hi) {
    const double u = static_cast<double>(next() >> 40) * 0x1p-24;
    return static_cast<float>(static_cast<double>(lo) + (static_cast<double>(hi) - lo) * u);
  }

 private:
  uint64_t state_;
};

std::vector<float> uniform(size_t n, float lo, float hi, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<float> v(n);
  for (float& f : v) f = rng.uniform(lo, hi);
  return v;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// |got - want| <= tol, with NaN/Inf reported as such first (a NaN fails every comparison silently).
::testing::AssertionResult close(double got, double want, double tol) {
  if (!std::isfinite(got)) return ::testing::AssertionFailure() << "got " << got << " (want " << want << ")";
  if (!std::isfinite(want)) return ::testing::AssertionFailure() << "reference is " << want;
  const double err = std::fabs(got - want);
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", want " << want << ", |err| " << err << " > tol " << tol;
}

// Independent decoders written from the format definitions (not by bit shifting into fp32).
double bf16_ref(uint16_t h) {
  const int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
  const double sign = s ? -1.0 : 1.0;
  if (e == 0xff) return m ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
  if (e == 0) return sign * std::ldexp(m / 128.0, -126);
  return sign * std::ldexp(1.0 + m / 128.0, e - 127);
}

double f16_ref(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double sign = s ? -1.0 : 1.0;
  if (e == 0x1f) return m ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
  if (e == 0) return sign * std::ldexp(m / 1024.0, -14);
  return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

// docs/MODELS.md §6: s = b>>7, e = (b>>3)&15, m = b&7; e = 0: 2^-6 * m/8; else 2^(e-7) * (1 + m/8);
// S.1111.111 is NaN; no infinities.
double f8_e4m3_ref(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -v : v;
}

// ---------------------------------------------------------------------------------------------
// Conversions

TEST(ConvertCpu, Bf16RoundTripsEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t b = static_cast<uint16_t>(h);
    const float f = cpu::bf16_to_f32(b);
    const double want = bf16_ref(b);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << "bf16 0x" << h;
      const uint16_t back = cpu::f32_to_bf16(f);
      EXPECT_TRUE(std::isnan(cpu::bf16_to_f32(back))) << std::hex << "bf16 0x" << h << " -> 0x" << back;
      EXPECT_EQ(back & 0x8000, b & 0x8000) << std::hex << "sign of NaN 0x" << h;
      continue;
    }
    EXPECT_EQ(static_cast<double>(f), want) << std::hex << "bf16 0x" << h;
    EXPECT_EQ(bits(f), h << 16) << std::hex << "bf16 0x" << h;  // exact: also keeps -0
    EXPECT_EQ(cpu::f32_to_bf16(f), b) << std::hex << "bf16 0x" << h;
  }
}

TEST(ConvertCpu, F32ToBf16RoundsToNearestEven) {
  struct Case {
    uint32_t f32;
    uint16_t bf16;
  };
  const Case cases[] = {
      {0x3f808000u, 0x3f80},  // 1 + 2^-8: halfway between 1 and 1 + 2^-7; even is 1
      {0x3f818000u, 0x3f82},  // halfway, odd below: rounds up to even
      {0x3f808001u, 0x3f81},  // just above halfway: up
      {0x3f807fffu, 0x3f80},  // just below halfway: down
      {0x3f81ffffu, 0x3f82},  // carries into the next mantissa
      {0xbf818000u, 0xbf82},  // negative halfway, odd below: magnitude up
      {0xbf828000u, 0xbf82},  // negative halfway, even below: stays
      {0x3fff8000u, 0x4000},  // halfway with odd below: carries into the exponent
      {0x00008000u, 0x0000},  // subnormal halfway, even below
      {0x00018000u, 0x0002},  // subnormal halfway, odd below
      {0x7f7f8000u, 0x7f80},  // halfway between the largest bf16 and 2^128: even is inf
      {0x7f7fffffu, 0x7f80},  // FLT_MAX rounds to inf
      {0x7f7f7fffu, 0x7f7f},  // below halfway: largest finite bf16
      {0x7f800000u, 0x7f80},  // +inf
      {0xff800000u, 0xff80},  // -inf
      {0x80000000u, 0x8000},  // -0
      {0x80008000u, 0x8000},  // -tiny halfway: -0
  };
  for (const Case& c : cases) {
    EXPECT_EQ(cpu::f32_to_bf16(from_bits(c.f32)), c.bf16) << std::hex << "f32 0x" << c.f32;
  }
}

TEST(ConvertCpu, F32ToBf16KeepsNaNsThatTruncationWouldTurnIntoInf) {
  // Payload only in the low 16 bits: plain truncation (or the rounding add) would give inf.
  for (uint32_t u : {0x7f800001u, 0x7f807fffu, 0xff800001u, 0x7fc00000u, 0xffc00000u, 0x7fffffffu}) {
    const uint16_t b = cpu::f32_to_bf16(from_bits(u));
    EXPECT_TRUE(std::isnan(cpu::bf16_to_f32(b))) << std::hex << "f32 0x" << u << " -> bf16 0x" << b;
    EXPECT_EQ(b >> 15, u >> 31) << std::hex << "sign of f32 0x" << u;
  }
}

TEST(ConvertCpu, F32ToBf16MatchesDoubleRoundingOnRandomValues) {
  // Nearest bf16 by search in double: ties never occur with 24 random bits below 1 ulp of bf16 except
  // on exact halfway patterns, which are excluded here and covered above.
  SplitMix64 rng(11);
  for (int n = 0; n < 20000; ++n) {
    const uint32_t u = static_cast<uint32_t>(rng.next()) & 0xfeffffffu;  // exponents up to 0xfd: finite
    if ((u & 0xffffu) == 0x8000u) continue;
    const float f = from_bits(u);
    const uint16_t lo = static_cast<uint16_t>(u >> 16);
    const uint16_t hi = static_cast<uint16_t>(lo + 1);
    const double dlo = std::fabs(bf16_ref(lo) - f), dhi = std::fabs(bf16_ref(hi) - f);
    const uint16_t want = dlo < dhi ? lo : hi;
    ASSERT_EQ(cpu::f32_to_bf16(f), want) << std::hex << "f32 0x" << u;
  }
}

TEST(ConvertCpu, F16EveryPatternMatchesFormula) {
  int normals = 0, subnormals = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t b = static_cast<uint16_t>(h);
    const float got = cpu::f16_to_f32(b);
    const double want = f16_ref(b);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << "f16 0x" << h;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), want) << std::hex << "f16 0x" << h;  // f16 values are exact in fp32
    EXPECT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << "sign of f16 0x" << h;
    const uint32_t e = (h >> 10) & 0x1f;
    normals += e != 0 && e != 0x1f;
    subnormals += e == 0 && (h & 0x3ff) != 0;
  }
  EXPECT_EQ(normals, 2 * 30 * 1024);
  EXPECT_EQ(subnormals, 2 * 1023);
}

TEST(ConvertCpu, F16SpecialValues) {
  EXPECT_EQ(cpu::f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(cpu::f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(cpu::f16_to_f32(0x7bff), 65504.0f);                    // largest finite
  EXPECT_EQ(cpu::f16_to_f32(0x0400), std::ldexp(1.0f, -14));       // smallest normal
  EXPECT_EQ(cpu::f16_to_f32(0x0001), std::ldexp(1.0f, -24));       // smallest subnormal
  EXPECT_EQ(cpu::f16_to_f32(0x83ff), -std::ldexp(1023.0f, -24));   // largest subnormal, negative
  EXPECT_EQ(bits(cpu::f16_to_f32(0x0000)), 0x00000000u);
  EXPECT_EQ(bits(cpu::f16_to_f32(0x8000)), 0x80000000u);           // -0 keeps its sign
  EXPECT_EQ(cpu::f16_to_f32(0x7c00), kInf);
  EXPECT_EQ(cpu::f16_to_f32(0xfc00), -kInf);
  EXPECT_TRUE(std::isnan(cpu::f16_to_f32(0x7c01)));
  EXPECT_TRUE(std::isnan(cpu::f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(cpu::f16_to_f32(0xffff)));
}

TEST(ConvertCpu, F8E4m3EveryByteMatchesFormula) {
  for (uint32_t b = 0; b < 256; ++b) {
    const float got = cpu::f8_e4m3_to_f32(static_cast<uint8_t>(b));
    const double want = f8_e4m3_ref(static_cast<uint8_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << "e4m3 0x" << b;
      continue;
    }
    EXPECT_FALSE(std::isinf(got)) << std::hex << "e4m3 0x" << b << ": the format has no infinities";
    EXPECT_EQ(static_cast<double>(got), want) << std::hex << "e4m3 0x" << b;
    EXPECT_EQ(std::signbit(got), b >= 0x80) << std::hex << "sign of e4m3 0x" << b;
  }
}

TEST(ConvertCpu, F8E4m3SpecialValues) {
  EXPECT_TRUE(std::isnan(cpu::f8_e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(cpu::f8_e4m3_to_f32(0xff)));
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0x7e), 448.0f);   // max finite
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0x78), 256.0f);   // e = 15 with m < 7 is a number, not inf
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0x07), std::ldexp(7.0f, -9));  // largest subnormal
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(cpu::f8_e4m3_to_f32(0xc4), -3.0f);
  EXPECT_EQ(bits(cpu::f8_e4m3_to_f32(0x00)), 0x00000000u);
  EXPECT_EQ(bits(cpu::f8_e4m3_to_f32(0x80)), 0x80000000u);
}

TEST(ConvertCpu, LoadF32ReadsEachDtypeAtAnyIndex) {
  constexpr int64_t n = 31;
  SplitMix64 rng(5);
  std::vector<float> f32(n);
  std::vector<uint16_t> bf16(n), f16(n);
  for (int64_t i = 0; i < n; ++i) {
    f32[static_cast<size_t>(i)] = rng.uniform(-3.0f, 3.0f);
    bf16[static_cast<size_t>(i)] = static_cast<uint16_t>(rng.next());
    f16[static_cast<size_t>(i)] = static_cast<uint16_t>(rng.next());
  }
  // Byte buffers starting one byte off alignment: load_f32 takes const void* and must not assume it.
  auto misaligned = [](const void* src, size_t bytes) {
    std::vector<unsigned char> buf(bytes + 1);
    std::memcpy(buf.data() + 1, src, bytes);
    return buf;
  };
  const auto f32_buf = misaligned(f32.data(), 4 * n), bf16_buf = misaligned(bf16.data(), 2 * n),
             f16_buf = misaligned(f16.data(), 2 * n);
  for (int64_t i = 0; i < n; ++i) {
    const size_t u = static_cast<size_t>(i);
    EXPECT_EQ(bits(cpu::load_f32(f32.data(), DType::f32, i)), bits(f32[u])) << "f32 i=" << i;
    EXPECT_EQ(bits(cpu::load_f32(f32_buf.data() + 1, DType::f32, i)), bits(f32[u])) << "f32 misaligned i=" << i;
    const double want_bf16 = bf16_ref(bf16[u]), want_f16 = f16_ref(f16[u]);
    for (const unsigned char* base : {reinterpret_cast<const unsigned char*>(bf16.data()), bf16_buf.data() + 1}) {
      const float got = cpu::load_f32(base, DType::bf16, i);
      if (std::isnan(want_bf16)) {
        EXPECT_TRUE(std::isnan(got)) << "bf16 i=" << i;
      } else {
        EXPECT_EQ(static_cast<double>(got), want_bf16) << "bf16 i=" << i;
      }
    }
    for (const unsigned char* base : {reinterpret_cast<const unsigned char*>(f16.data()), f16_buf.data() + 1}) {
      const float got = cpu::load_f32(base, DType::f16, i);
      if (std::isnan(want_f16)) {
        EXPECT_TRUE(std::isnan(got)) << "f16 i=" << i;
      } else {
        EXPECT_EQ(static_cast<double>(got), want_f16) << "f16 i=" << i;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// matmul

// Random weights [out, in] of `dtype` as raw bytes, and their exact values as double.
struct Weights {
  std::vector<unsigned char> raw;
  std::vector<double> value;
};

Weights random_weights(DType dtype, int64_t count, uint64_t seed) {
  SplitMix64 rng(seed);
  Weights w;
  w.value.resize(static_cast<size_t>(count));
  w.raw.resize(static_cast<size_t>(count) * (dtype == DType::f32 ? 4 : 2));
  for (int64_t i = 0; i < count; ++i) {
    const size_t u = static_cast<size_t>(i);
    const uint64_t r = rng.next();
    if (dtype == DType::f32) {
      const float f = static_cast<float>(static_cast<double>(r >> 40) * 0x1p-23 - 1.0);
      std::memcpy(w.raw.data() + 4 * u, &f, 4);
      w.value[u] = f;
    } else if (dtype == DType::bf16) {
      // Sign, exponent 2^-7 .. 2^0, all 7 mantissa bits random.
      const uint16_t h = static_cast<uint16_t>(((r & 1) << 15) | ((120 + (r >> 1) % 8) << 7) | ((r >> 8) & 0x7f));
      std::memcpy(w.raw.data() + 2 * u, &h, 2);
      w.value[u] = bf16_ref(h);
    } else {
      // Sign, exponent 0 (subnormal) .. 2^0, all 10 mantissa bits random.
      const uint64_t e = (r >> 1) % 16;
      const uint16_t h = static_cast<uint16_t>(((r & 1) << 15) | (e << 10) | ((r >> 8) & 0x3ff));
      std::memcpy(w.raw.data() + 2 * u, &h, 2);
      w.value[u] = f16_ref(h);
    }
  }
  return w;
}

struct MatmulShape {
  int64_t n, in, out;
};

void check_matmul(DType dtype, MatmulShape s, bool with_bias, int64_t x_pad, int64_t out_pad, uint64_t seed) {
  const int64_t xs = s.in + x_pad, os = s.out + out_pad;
  std::ostringstream what;
  what << "dtype " << dtype_name(dtype) << " n " << s.n << " in " << s.in << " out " << s.out << " bias " << with_bias
       << " x_stride " << xs << " out_stride " << os << " seed " << seed;
  SCOPED_TRACE(what.str());

  const Weights w = random_weights(dtype, s.in * s.out, seed);
  std::vector<float> x(static_cast<size_t>(s.n * xs), kNaN);  // gaps are NaN: reading one poisons a row
  SplitMix64 rng(seed + 1);
  for (int64_t t = 0; t < s.n; ++t)
    for (int64_t i = 0; i < s.in; ++i) x[static_cast<size_t>(t * xs + i)] = rng.uniform(-2.0f, 2.0f);
  const std::vector<float> bias = uniform(static_cast<size_t>(s.out), -1.0f, 1.0f, seed + 2);
  std::vector<float> out(static_cast<size_t>(s.n * os), kGuard);

  MatmulParams p;
  p.out = out.data();
  p.x = x.data();
  p.weight = w.raw.data();
  p.weight_dtype = dtype;
  p.bias = with_bias ? bias.data() : nullptr;
  p.n = s.n;
  p.in_features = s.in;
  p.out_features = s.out;
  p.x_stride = x_pad ? xs : 0;
  p.out_stride = out_pad ? os : 0;
  cpu::Context ctx;
  cpu::matmul(p, ctx);

  // bf16 and f16 weights decode exactly to fp32: against the double reference only the fp32
  // accumulation of in_features products differs.
  const testing::Tolerance tol = tolerance(Op::matmul, Check::reference, dtype);
  const double per_512 = std::max(1.0, static_cast<double>(s.in) / 512.0);
  for (int64_t t = 0; t < s.n; ++t) {
    for (int64_t o = 0; o < s.out; ++o) {
      double want = with_bias ? bias[static_cast<size_t>(o)] : 0.0, mag = std::fabs(want);
      for (int64_t i = 0; i < s.in; ++i) {
        const double prod = static_cast<double>(x[static_cast<size_t>(t * xs + i)]) * w.value[static_cast<size_t>(o * s.in + i)];
        want += prod;
        mag += std::fabs(prod);
      }
      EXPECT_TRUE(close(out[static_cast<size_t>(t * os + o)], want, tol.at(want, mag * per_512))) << "t " << t << " o " << o;
    }
    for (int64_t o = s.out; o < os; ++o)
      EXPECT_EQ(bits(out[static_cast<size_t>(t * os + o)]), bits(kGuard)) << "guard overwritten at t " << t << " col " << o;
  }
}

TEST(MatmulCpu, MatchesDoubleReferenceForEveryWeightDtype) {
  const MatmulShape shapes[] = {{1, 1, 1}, {1, 33, 7}, {3, 67, 31}, {7, 31, 33}, {2, 517, 3}};
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16})
    for (const MatmulShape& s : shapes)
      for (bool bias : {false, true}) check_matmul(dtype, s, bias, 0, 0, ++seed);
}

TEST(MatmulCpu, StridedRowsLeaveGapsUntouched) {
  const MatmulShape shapes[] = {{1, 7, 3}, {3, 33, 7}, {5, 31, 67}};
  uint64_t seed = 200;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16})
    for (const MatmulShape& s : shapes)
      for (bool bias : {false, true}) {
        check_matmul(dtype, s, bias, 5, 3, ++seed);  // both strides larger than the row
        check_matmul(dtype, s, bias, 1, 0, ++seed);  // only x strided
        check_matmul(dtype, s, bias, 0, 1, ++seed);  // only out strided
      }
}

TEST(MatmulCpu, KnownAnswer) {
  // x = [1, 2, 3], W = [[1, 0, -1], [0.5, 0.5, 0.5]], b = [10, -1]: y = [8, 2].
  const float x[] = {1.0f, 2.0f, 3.0f};
  const float w[] = {1.0f, 0.0f, -1.0f, 0.5f, 0.5f, 0.5f};
  const float b[] = {10.0f, -1.0f};
  float y[2] = {kGuard, kGuard};
  MatmulParams p;
  p.out = y;
  p.x = x;
  p.weight = w;
  p.bias = b;
  p.n = 1;
  p.in_features = 3;
  p.out_features = 2;
  cpu::Context ctx;
  cpu::matmul(p, ctx);
  EXPECT_EQ(y[0], 8.0f);
  EXPECT_EQ(y[1], 2.0f);
}

// ---------------------------------------------------------------------------------------------
// rms_norm

void rms_norm_ref(std::vector<double>& want, const std::vector<float>& x, const std::vector<float>& w, int64_t rows,
                  int64_t cols, int64_t stride, double eps) {
  want.assign(static_cast<size_t>(rows * cols), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int64_t i = 0; i < cols; ++i) ss += static_cast<double>(x[static_cast<size_t>(r * stride + i)]) * x[static_cast<size_t>(r * stride + i)];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(cols) + eps);
    for (int64_t i = 0; i < cols; ++i)
      want[static_cast<size_t>(r * cols + i)] = w[static_cast<size_t>(i)] * (x[static_cast<size_t>(r * stride + i)] * inv);
  }
}

TEST(RmsNormCpu, MatchesDoubleReferenceWithStride) {
  const testing::Tolerance tol = tolerance(Op::rms_norm, Check::reference);
  uint64_t seed = 300;
  for (int64_t cols : {1, 3, 7, 33, 67}) {
    for (int64_t pad : {0, 3}) {
      const int64_t rows = 5, stride = cols + pad;
      SCOPED_TRACE("cols " + std::to_string(cols) + " stride " + std::to_string(stride) + " seed " + std::to_string(seed + 1));
      SplitMix64 rng(++seed);
      std::vector<float> x(static_cast<size_t>(rows * stride), kNaN);
      // Rows of very different scales: the norm must not depend on it.
      for (int64_t r = 0; r < rows; ++r) {
        const float scale = std::ldexp(1.0f, static_cast<int>(4 * r) - 8);
        for (int64_t i = 0; i < cols; ++i) x[static_cast<size_t>(r * stride + i)] = scale * rng.uniform(-1.0f, 1.0f);
      }
      const std::vector<float> w = uniform(static_cast<size_t>(cols), -2.0f, 2.0f, seed + 1000);
      std::vector<float> out(x.size(), kGuard);
      RmsNormParams p;
      p.out = out.data();
      p.x = x.data();
      p.weight = w.data();
      p.rows = rows;
      p.cols = cols;
      p.eps = 1e-6f;
      p.stride = pad ? stride : 0;
      cpu::Context ctx;
      cpu::rms_norm(p, ctx);
      std::vector<double> want;
      rms_norm_ref(want, x, w, rows, cols, stride, 1e-6f);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < cols; ++i) {
          const double wv = want[static_cast<size_t>(r * cols + i)];
          EXPECT_TRUE(close(out[static_cast<size_t>(r * stride + i)], wv, tol.at(wv))) << "r " << r << " i " << i;
        }
        for (int64_t i = cols; i < stride; ++i)
          EXPECT_EQ(bits(out[static_cast<size_t>(r * stride + i)]), bits(kGuard)) << "gap written at r " << r << " i " << i;
      }
    }
  }
}

TEST(RmsNormCpu, InPlaceEqualsOutOfPlace) {
  const testing::Tolerance tol = tolerance(Op::rms_norm, Check::reference);
  uint64_t seed = 400;
  for (int64_t cols : {1, 7, 31, 67}) {
    const int64_t rows = 3, stride = cols + 2;
    SCOPED_TRACE("cols " + std::to_string(cols) + " seed " + std::to_string(seed + 1));
    SplitMix64 rng(++seed);
    std::vector<float> x(static_cast<size_t>(rows * stride), kGuard);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < cols; ++i) x[static_cast<size_t>(r * stride + i)] = rng.uniform(-3.0f, 3.0f);
    const std::vector<float> w = uniform(static_cast<size_t>(cols), 0.25f, 1.75f, seed + 1000);
    std::vector<double> want;
    rms_norm_ref(want, x, w, rows, cols, stride, 1e-5);
    std::vector<float> separate(x.size(), kGuard);
    RmsNormParams p;
    p.out = separate.data();
    p.x = x.data();
    p.weight = w.data();
    p.rows = rows;
    p.cols = cols;
    p.eps = 1e-5f;
    p.stride = stride;
    cpu::Context ctx;
    cpu::rms_norm(p, ctx);
    p.out = x.data();  // in place
    cpu::rms_norm(p, ctx);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < cols; ++i) {
        const size_t at = static_cast<size_t>(r * stride + i);
        EXPECT_EQ(bits(x[at]), bits(separate[at])) << "r " << r << " i " << i;
        EXPECT_TRUE(close(x[at], want[static_cast<size_t>(r * cols + i)], tol.at(want[static_cast<size_t>(r * cols + i)])));
      }
      for (int64_t i = cols; i < stride; ++i) EXPECT_EQ(bits(x[static_cast<size_t>(r * stride + i)]), bits(kGuard));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// rope

// The op takes the angle position * inv_freq in fp32 (docs/MODELS.md §2.3), so the reference does
// too and computes cos/sin and the rotation in double. What remains is fp32 cos/sin and two products:
// a few ulps of |x0| + |x1| (times the attention factor).
const testing::Tolerance kRopeTol = tolerance(Op::rope, Check::reference);

struct RopeLayout {
  int64_t n_tokens, n_heads, head_dim, rot_offset, rot_dim, head_stride, token_stride;
  size_t size() const { return static_cast<size_t>(n_tokens * token_stride); }
  size_t at(int64_t t, int64_t h, int64_t d) const { return static_cast<size_t>(t * token_stride + h * head_stride + d); }
};

// Head dims random; the gaps between heads and tokens NaN.
std::vector<float> rope_input(const RopeLayout& l, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<float> x(l.size(), kNaN);
  for (int64_t t = 0; t < l.n_tokens; ++t)
    for (int64_t h = 0; h < l.n_heads; ++h)
      for (int64_t d = 0; d < l.head_dim; ++d) x[l.at(t, h, d)] = rng.uniform(-1.0f, 1.0f);
  return x;
}

void apply_rope(std::vector<float>& x, const RopeLayout& l, const std::vector<int64_t>& positions,
                const std::vector<float>& inv_freq, float attention_factor, RopeStyle style) {
  RopeParams p;
  p.x = x.data();
  p.n_tokens = l.n_tokens;
  p.n_heads = l.n_heads;
  p.token_stride = l.token_stride;
  p.head_stride = l.head_stride;
  p.rot_offset = l.rot_offset;
  p.rot_dim = l.rot_dim;
  p.positions = positions.data();
  p.inv_freq = inv_freq.data();
  p.attention_factor = attention_factor;
  p.style = style;
  cpu::Context ctx;
  cpu::rope(p, ctx);
}

// Checks every element of x (rotated) against x0 (before): slice dims against the formula of the
// style, every other element (other dims, gaps) bit-identical.
void check_rope(const std::vector<float>& x, const std::vector<float>& x0, const RopeLayout& l,
                const std::vector<int64_t>& positions, const std::vector<float>& inv_freq, float af, RopeStyle style) {
  std::vector<bool> in_slice(x.size(), false);
  const int64_t half = l.rot_dim / 2;
  for (int64_t t = 0; t < l.n_tokens; ++t) {
    for (int64_t h = 0; h < l.n_heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[static_cast<size_t>(t)]) * inv_freq[static_cast<size_t>(i)];
        double want0, want1;
        size_t a, b;
        if (style == RopeStyle::neox) {
          // docs/MODELS.md §2.4 half-split: out_i = x_i C - x_{i+d/2} S; out_{i+d/2} = x_{i+d/2} C + x_i S.
          a = l.at(t, h, l.rot_offset + i);
          b = l.at(t, h, l.rot_offset + i + half);
          const double c = af * std::cos(static_cast<double>(angle)), s = af * std::sin(static_cast<double>(angle));
          want0 = x0[a] * c - x0[b] * s;
          want1 = x0[b] * c + x0[a] * s;
        } else {
          // Interleaved: (x_{2i} + j x_{2i+1}) * a e^{j angle}.
          a = l.at(t, h, l.rot_offset + 2 * i);
          b = l.at(t, h, l.rot_offset + 2 * i + 1);
          const std::complex<double> z =
              std::complex<double>(x0[a], x0[b]) * std::polar(static_cast<double>(af), static_cast<double>(angle));
          want0 = z.real();
          want1 = z.imag();
        }
        const double tol = kRopeTol.at(0.0, std::max(1.0f, af) * (std::fabs(x0[a]) + std::fabs(x0[b])));
        EXPECT_TRUE(close(x[a], want0, tol)) << "t " << t << " h " << h << " pair " << i << " (first)";
        EXPECT_TRUE(close(x[b], want1, tol)) << "t " << t << " h " << h << " pair " << i << " (second)";
        in_slice[a] = in_slice[b] = true;
      }
    }
  }
  int64_t slice = 0;
  for (size_t k = 0; k < x.size(); ++k) {
    if (in_slice[k]) {
      ++slice;
      continue;
    }
    EXPECT_EQ(bits(x[k]), bits(x0[k])) << "element " << k << " outside the rotated slice changed";
  }
  EXPECT_EQ(slice, l.n_tokens * l.n_heads * l.rot_dim);  // every slice element had a pair
}

TEST(RopeCpu, BothStylesMatchTheirFormulas) {
  const std::vector<int64_t> positions = {1, 7, 4095};
  uint64_t seed = 500;
  for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) {
    for (int64_t rot_dim : {2, 6, 14, 66}) {
      const RopeLayout l{3, 1, rot_dim, 0, rot_dim, rot_dim, rot_dim};
      SCOPED_TRACE(std::string(to_string(style)) + " rot_dim " + std::to_string(rot_dim) + " seed " + std::to_string(seed + 1));
      const std::vector<float> x0 = rope_input(l, ++seed);
      const std::vector<float> inv_freq = uniform(static_cast<size_t>(rot_dim / 2), 1e-4f, 1.0f, seed + 1000);
      std::vector<float> x = x0;
      apply_rope(x, l, positions, inv_freq, 1.0f, style);
      check_rope(x, x0, l, positions, inv_freq, 1.0f, style);
    }
  }
}

TEST(RopeCpu, OnlyTheRotatedSliceOfEveryHeadChanges) {
  // rot_offset > 0 (MLA rotates the trailing d_r dims), dims after the slice, padded heads and tokens.
  const std::vector<int64_t> positions = {3, 0, 31};
  uint64_t seed = 600;
  for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) {
    for (int64_t rot_offset : {1, 7}) {
      const int64_t rot_dim = 6, head_dim = rot_offset + rot_dim + 3, n_heads = 3;
      const RopeLayout l{3, n_heads, head_dim, rot_offset, rot_dim, head_dim + 2, n_heads * (head_dim + 2) + 1};
      SCOPED_TRACE(std::string(to_string(style)) + " rot_offset " + std::to_string(rot_offset) + " seed " + std::to_string(seed + 1));
      const std::vector<float> x0 = rope_input(l, ++seed);
      const std::vector<float> inv_freq = {1.0f, 0.1f, 0.01f};
      std::vector<float> x = x0;
      apply_rope(x, l, positions, inv_freq, 1.0f, style);
      check_rope(x, x0, l, positions, inv_freq, 1.0f, style);
    }
  }
}

TEST(RopeCpu, AttentionFactorScalesTheResult) {
  const RopeLayout l{2, 3, 14, 0, 14, 15, 3 * 15 + 1};
  const std::vector<int64_t> positions = {5, 67};
  const std::vector<float> inv_freq = uniform(7, 1e-3f, 1.0f, 700);
  for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) {
    SCOPED_TRACE(to_string(style));
    const std::vector<float> x0 = rope_input(l, 701);
    std::vector<float> unit = x0;
    apply_rope(unit, l, positions, inv_freq, 1.0f, style);
    for (float af : {0.5f, 1.0855f, 1.3688f}) {
      std::vector<float> scaled = x0;
      apply_rope(scaled, l, positions, inv_freq, af, style);
      check_rope(scaled, x0, l, positions, inv_freq, af, style);
      for (size_t k = 0; k < x0.size(); ++k) {
        if (std::isnan(x0[k])) continue;  // gaps: checked bit-identical above
        // Both in fp32 from the same angles: the budget of |af * unit| (and of 1, for elements near zero).
        EXPECT_TRUE(close(scaled[k], static_cast<double>(af) * unit[k], kRopeTol.at(0.0, std::fabs(af * unit[k]) + 1.0)))
            << "af " << af << " element " << k;
      }
    }
  }
}

TEST(RopeCpu, PositionZeroIsTheIdentity) {
  const RopeLayout l{3, 2, 33, 0, 32, 35, 2 * 35 + 3};
  const std::vector<int64_t> positions = {0, 0, 0};
  const std::vector<float> inv_freq = uniform(16, 1e-4f, 1.0f, 800);
  for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) {
    const std::vector<float> x0 = rope_input(l, 801);
    std::vector<float> x = x0;
    apply_rope(x, l, positions, inv_freq, 1.0f, style);
    for (size_t k = 0; k < x.size(); ++k) EXPECT_EQ(bits(x[k]), bits(x0[k])) << to_string(style) << " element " << k;
    // With a factor a, position 0 is plain scaling by a.
    x = x0;
    apply_rope(x, l, positions, inv_freq, 0.75f, style);
    for (int64_t t = 0; t < l.n_tokens; ++t)
      for (int64_t h = 0; h < l.n_heads; ++h)
        for (int64_t d = 0; d < l.head_dim; ++d) {
          const size_t k = l.at(t, h, d);
          EXPECT_EQ(x[k], d < l.rot_dim ? 0.75f * x0[k] : x0[k]) << to_string(style) << " t " << t << " h " << h << " d " << d;
        }
  }
}

TEST(RopeCpu, LayoutsGiveTheSameDotProductsAfterPermutation) {
  // docs/MODELS.md §2.4: interleaved element 2i <-> neox element i, 2i + 1 <-> i + d/2. Rotating q and k
  // in either layout gives the same q.k (and the same rotated values, permuted): MLA may store either.
  for (int64_t rot_dim : {2, 14, 66}) {
    const int64_t half = rot_dim / 2;
    const RopeLayout l{2, 1, rot_dim, 0, rot_dim, rot_dim, rot_dim};  // token 0: q, token 1: k
    const std::vector<int64_t> positions = {37, 5};
    std::vector<float> inv_freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      inv_freq[static_cast<size_t>(i)] = static_cast<float>(std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(rot_dim)));
    const std::vector<float> neox0 = rope_input(l, 900 + static_cast<uint64_t>(rot_dim));
    std::vector<float> inter0(neox0.size());
    for (int64_t t = 0; t < 2; ++t)
      for (int64_t i = 0; i < half; ++i) {
        inter0[l.at(t, 0, 2 * i)] = neox0[l.at(t, 0, i)];
        inter0[l.at(t, 0, 2 * i + 1)] = neox0[l.at(t, 0, i + half)];
      }
    std::vector<float> neox = neox0, inter = inter0;
    apply_rope(neox, l, positions, inv_freq, 1.0f, RopeStyle::neox);
    apply_rope(inter, l, positions, inv_freq, 1.0f, RopeStyle::interleaved);
    double dot_neox = 0.0, dot_inter = 0.0, mag = 0.0;
    for (int64_t d = 0; d < rot_dim; ++d) {
      dot_neox += static_cast<double>(neox[l.at(0, 0, d)]) * neox[l.at(1, 0, d)];
      dot_inter += static_cast<double>(inter[l.at(0, 0, d)]) * inter[l.at(1, 0, d)];
      mag += std::fabs(static_cast<double>(neox[l.at(0, 0, d)]) * neox[l.at(1, 0, d)]);
    }
    EXPECT_TRUE(close(dot_inter, dot_neox, kRopeTol.at(0.0, mag))) << "rot_dim " << rot_dim;
    for (int64_t t = 0; t < 2; ++t)
      for (int64_t i = 0; i < half; ++i) {
        EXPECT_FLOAT_EQ(inter[l.at(t, 0, 2 * i)], neox[l.at(t, 0, i)]) << "rot_dim " << rot_dim << " t " << t << " i " << i;
        EXPECT_FLOAT_EQ(inter[l.at(t, 0, 2 * i + 1)], neox[l.at(t, 0, i + half)]) << "rot_dim " << rot_dim << " t " << t << " i " << i;
      }
    // And the dot product depends on the position difference only (37 - 5 = 32 = 132 - 100).
    std::vector<float> shifted = neox0;
    apply_rope(shifted, l, {132, 100}, inv_freq, 1.0f, RopeStyle::neox);
    double dot_shifted = 0.0;
    for (int64_t d = 0; d < rot_dim; ++d) dot_shifted += static_cast<double>(shifted[l.at(0, 0, d)]) * shifted[l.at(1, 0, d)];
    // Other positions give other fp32 angles (rounded at 132 rad, not 37): 100 times the op's budget.
    EXPECT_TRUE(close(dot_shifted, dot_neox, 100 * kRopeTol.at(0.0, mag))) << "rot_dim " << rot_dim;
  }
}

// ---------------------------------------------------------------------------------------------
// attention

// Strided q/k/v buffers with NaN gaps, a double reference reading the same strides.
struct AttentionCase {
  int64_t n_tokens = 0, n_heads = 0, n_kv_heads = 0, qk_dim = 0, v_dim = 0, ctx = 0;
  std::vector<int64_t> positions;
  std::vector<float> q, k, v;
  int64_t q_ts = 0, q_hs = 0, k_ps = 0, k_hs = 0, v_ps = 0, v_hs = 0;
  float scale = 1.0f;
  bool shared_kv = false;  // MLA: v points into k's rows

  AttentionParams params(std::vector<float>& out) const {
    AttentionParams p;
    p.out = out.data();
    p.q = q.data();
    p.k = k.data();
    p.v = shared_kv ? k.data() : v.data();
    p.positions = positions.data();
    p.n_tokens = n_tokens;
    p.n_heads = n_heads;
    p.n_kv_heads = n_kv_heads;
    p.qk_dim = qk_dim;
    p.v_dim = v_dim;
    p.q_token_stride = q_ts;
    p.q_head_stride = q_hs;
    p.k_pos_stride = k_ps;
    p.k_head_stride = k_hs;
    p.v_pos_stride = v_ps;
    p.v_head_stride = v_hs;
    p.scale = scale;
    return p;
  }

  // Runs the op with an exactly sized output, on a context whose score scratch holds stale NaNs (the
  // op must write every score it reads).
  std::vector<float> run() const {
    std::vector<float> out(static_cast<size_t>(n_tokens * n_heads * v_dim), kGuard);
    cpu::Context context;
    poison_scores(context, n_tokens * n_heads * ctx);
    cpu::attention(params(out), context);
    return out;
  }

  static void poison_scores(cpu::Context& context, int64_t n) {
    for (int w = 0; w < context.threads(); ++w) context.worker(w).scores.assign(static_cast<size_t>(n), kNaN);
  }

  std::vector<double> reference() const {
    const int64_t group = n_heads / n_kv_heads;  // docs/MODELS.md §2.6: head h reads KV head h / group
    const float* vp = shared_kv ? k.data() : v.data();
    std::vector<double> out(static_cast<size_t>(n_tokens * n_heads * v_dim), 0.0);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const int64_t len = positions[static_cast<size_t>(t)] + 1;
      for (int64_t h = 0; h < n_heads; ++h) {
        const int64_t kvh = h / group;
        std::vector<double> score(static_cast<size_t>(len));
        double mx = -INFINITY;
        for (int64_t s = 0; s < len; ++s) {
          double dot = 0.0;
          for (int64_t i = 0; i < qk_dim; ++i)
            dot += static_cast<double>(q[static_cast<size_t>(t * q_ts + h * q_hs + i)]) * k[static_cast<size_t>(s * k_ps + kvh * k_hs + i)];
          score[static_cast<size_t>(s)] = scale * dot;
          mx = std::max(mx, score[static_cast<size_t>(s)]);
        }
        double sum = 0.0;
        for (double& sc : score) sum += sc = std::exp(sc - mx);
        for (int64_t s = 0; s < len; ++s)
          for (int64_t i = 0; i < v_dim; ++i)
            out[static_cast<size_t>((t * n_heads + h) * v_dim + i)] += score[static_cast<size_t>(s)] / sum * vp[static_cast<size_t>(s * v_ps + kvh * v_hs + i)];
      }
    }
    return out;
  }
};

// Strided GQA case: every stride larger than the data it spans, gaps NaN.
AttentionCase random_gqa(int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads, int64_t qk_dim, int64_t v_dim,
                         std::vector<int64_t> positions, uint64_t seed) {
  AttentionCase c;
  c.n_tokens = n_tokens;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.qk_dim = qk_dim;
  c.v_dim = v_dim;
  c.positions = std::move(positions);
  c.ctx = *std::max_element(c.positions.begin(), c.positions.end()) + 1;
  c.q_hs = qk_dim + 1;
  c.q_ts = n_heads * c.q_hs + 3;
  c.k_hs = qk_dim + 2;
  c.k_ps = n_kv_heads * c.k_hs + 1;
  c.v_hs = v_dim + 3;
  c.v_ps = n_kv_heads * c.v_hs + 2;
  c.scale = 1.0f / std::sqrt(static_cast<float>(qk_dim));
  SplitMix64 rng(seed);
  c.q.assign(static_cast<size_t>(n_tokens * c.q_ts), kNaN);
  c.k.assign(static_cast<size_t>(c.ctx * c.k_ps), kNaN);
  c.v.assign(static_cast<size_t>(c.ctx * c.v_ps), kNaN);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t i = 0; i < qk_dim; ++i) c.q[static_cast<size_t>(t * c.q_ts + h * c.q_hs + i)] = rng.uniform(-2.0f, 2.0f);
  for (int64_t s = 0; s < c.ctx; ++s)
    for (int64_t h = 0; h < n_kv_heads; ++h) {
      for (int64_t i = 0; i < qk_dim; ++i) c.k[static_cast<size_t>(s * c.k_ps + h * c.k_hs + i)] = rng.uniform(-2.0f, 2.0f);
      for (int64_t i = 0; i < v_dim; ++i) c.v[static_cast<size_t>(s * c.v_ps + h * c.v_hs + i)] = rng.uniform(-1.0f, 1.0f);
    }
  return c;
}

// Outputs are convex combinations of values in [-1, 1]; fp32 dot products and an fp32 softmax keep
// every output within ~1e-6 of the double reference.
void expect_matches_reference(const AttentionCase& c, const std::vector<float>& got) {
  const testing::Tolerance tol = tolerance(Op::attention, Check::reference);
  const std::vector<double> want = c.reference();
  ASSERT_EQ(got.size(), want.size());
  double vmax = 1.0;  // the tolerance is relative to the largest output (values need not be in [-1, 1])
  for (double w : want) vmax = std::max(vmax, std::fabs(w));
  for (size_t k = 0; k < got.size(); ++k) {
    const int64_t i = static_cast<int64_t>(k);
    EXPECT_TRUE(close(got[k], want[k], tol.at(want[k], vmax)))
        << "t " << i / (c.n_heads * c.v_dim) << " h " << i / c.v_dim % c.n_heads << " i " << i % c.v_dim;
  }
}

TEST(AttentionCpu, OneHotKeyWithLargeScalePicksItsValue) {
  // Keys are unit vectors e_s; the query e_2 with scale 60 gives row 2 a score 60 above the rest.
  const int64_t dim = 7, ctx = 5;
  AttentionCase c;
  c.n_tokens = 1;
  c.n_heads = 1;
  c.n_kv_heads = 1;
  c.qk_dim = dim;
  c.v_dim = 3;
  c.ctx = ctx;
  c.positions = {ctx - 1};
  c.q_ts = c.q_hs = dim;
  c.k_ps = c.k_hs = dim;
  c.v_ps = c.v_hs = 3;
  c.scale = 60.0f;
  c.q.assign(dim, 0.0f);
  c.q[2] = 1.0f;
  c.k.assign(static_cast<size_t>(ctx * dim), 0.0f);
  for (int64_t s = 0; s < ctx; ++s) c.k[static_cast<size_t>(s * dim + s)] = 1.0f;
  c.v = uniform(static_cast<size_t>(ctx * 3), -1.0f, 1.0f, 1000);
  const std::vector<float> out = c.run();
  for (int64_t i = 0; i < 3; ++i) EXPECT_TRUE(close(out[static_cast<size_t>(i)], c.v[static_cast<size_t>(2 * 3 + i)], 1e-6)) << "i " << i;
}

TEST(AttentionCpu, EqualScoresAverageTheValues) {
  // Every key row the same vector: all scores equal, so the output is the mean of rows 0..p.
  const int64_t dim = 31, v_dim = 7;
  for (int64_t pos : {0, 2, 32}) {
    AttentionCase c;
    c.n_tokens = 1;
    c.n_heads = 1;
    c.n_kv_heads = 1;
    c.qk_dim = dim;
    c.v_dim = v_dim;
    c.ctx = pos + 1;
    c.positions = {pos};
    c.q_ts = c.q_hs = dim;
    c.k_ps = c.k_hs = dim;
    c.v_ps = c.v_hs = v_dim;
    c.scale = 0.3f;
    c.q = uniform(dim, -1.0f, 1.0f, 1100);
    const std::vector<float> key = uniform(dim, -1.0f, 1.0f, 1101);
    for (int64_t s = 0; s < c.ctx; ++s) c.k.insert(c.k.end(), key.begin(), key.end());
    c.v = uniform(static_cast<size_t>(c.ctx * v_dim), -1.0f, 1.0f, 1102 + static_cast<uint64_t>(pos));
    const std::vector<float> out = c.run();
    for (int64_t i = 0; i < v_dim; ++i) {
      double mean = 0.0;
      for (int64_t s = 0; s <= pos; ++s) mean += c.v[static_cast<size_t>(s * v_dim + i)];
      mean /= static_cast<double>(pos + 1);
      EXPECT_TRUE(close(out[static_cast<size_t>(i)], mean, 1e-6)) << "pos " << pos << " i " << i;
    }
  }
}

TEST(AttentionCpu, NeverReadsRowsAfterItsPosition) {
  // One token at position p over a cache whose rows > p are NaN (keys and values): the output must
  // stay finite and equal the reference over rows 0..p.
  const int64_t ctx = 9;
  for (int64_t p : {int64_t{0}, int64_t{3}, ctx - 2}) {
    AttentionCase c = random_gqa(1, 3, 1, 7, 5, {ctx - 1}, 1200 + static_cast<uint64_t>(p));
    c.positions = {p};
    std::fill(c.k.begin() + (p + 1) * c.k_ps, c.k.end(), kNaN);
    std::fill(c.v.begin() + (p + 1) * c.v_ps, c.v.end(), kNaN);
    std::vector<float> out(static_cast<size_t>(c.n_heads * c.v_dim), kGuard);
    cpu::Context context;
    AttentionCase::poison_scores(context, 3 * ctx);  // more scratch than needed is fine
    cpu::attention(c.params(out), context);
    for (size_t k = 0; k < out.size(); ++k) EXPECT_TRUE(std::isfinite(out[k])) << "p " << p << " element " << k << " = " << out[k];
    expect_matches_reference(c, out);
  }
}

TEST(AttentionCpu, SeveralTokensEachSeeTheirOwnPrefix) {
  // Prefill-like: tokens at positions 0..4 over a 5-row cache in one call; token t must match the
  // reference over rows 0..t (a token reading later rows would differ).
  const AttentionCase c = random_gqa(5, 2, 2, 33, 7, {0, 1, 2, 3, 4}, 1300);
  expect_matches_reference(c, c.run());
}

TEST(AttentionCpu, GqaHeadReadsKvHeadDividedByGroup) {
  // Values constant per KV head (10 * (j + 1)), keys random: every output of query head h is the
  // constant of KV head h / (n_heads / n_kv_heads), whatever the softmax weights are.
  struct Shape {
    int64_t n_heads, n_kv_heads;
  };
  for (Shape s : {Shape{6, 2}, Shape{6, 3}, Shape{4, 1}, Shape{3, 3}}) {
    AttentionCase c = random_gqa(2, s.n_heads, s.n_kv_heads, 7, 3, {3, 6}, 1400 + static_cast<uint64_t>(s.n_kv_heads));
    for (int64_t pos = 0; pos < c.ctx; ++pos)
      for (int64_t j = 0; j < s.n_kv_heads; ++j)
        for (int64_t i = 0; i < c.v_dim; ++i) c.v[static_cast<size_t>(pos * c.v_ps + j * c.v_hs + i)] = 10.0f * static_cast<float>(j + 1);
    const std::vector<float> out = c.run();
    const int64_t group = s.n_heads / s.n_kv_heads;
    for (int64_t t = 0; t < c.n_tokens; ++t)
      for (int64_t h = 0; h < s.n_heads; ++h)
        for (int64_t i = 0; i < c.v_dim; ++i)
          EXPECT_TRUE(close(out[static_cast<size_t>((t * s.n_heads + h) * c.v_dim + i)], 10.0 * static_cast<double>(h / group + 1), 1e-4))
              << "heads " << s.n_heads << " kv heads " << s.n_kv_heads << " t " << t << " h " << h << " (h % n_kv_heads would read "
              << h % s.n_kv_heads << ")";
    expect_matches_reference(c, out);
  }
}

TEST(AttentionCpu, StridedGqaMatchesDoubleReference) {
  // Decode-like positions (not 0..n-1), every stride padded; GQA, MHA-of-one and MQA.
  {
    SCOPED_TRACE("seed 1501");
    const AttentionCase c = random_gqa(3, 6, 2, 33, 7, {4, 9, 10}, 1501);
    expect_matches_reference(c, c.run());
  }
  {
    SCOPED_TRACE("seed 1502");
    const AttentionCase c = random_gqa(1, 1, 1, 1, 1, {0}, 1502);
    expect_matches_reference(c, c.run());
  }
  {
    SCOPED_TRACE("seed 1503");
    const AttentionCase c = random_gqa(2, 3, 1, 67, 31, {30, 31}, 1503);
    expect_matches_reference(c, c.run());
  }
}

TEST(AttentionCpu, MlaKeysAndValuesShareCacheRows) {
  // MLA absorbed form (docs/MODELS.md §4): one KV head whose row is [c (r_kv), k_rope (d_r)]; the
  // value is the first r_kv entries of the same row. Head strides 0, v == k.
  const int64_t r_kv = 13, d_r = 5, row = r_kv + d_r + 1;  // one spare float per row, NaN
  const int64_t n_heads = 3, n_tokens = 2;
  AttentionCase c;
  c.n_tokens = n_tokens;
  c.n_heads = n_heads;
  c.n_kv_heads = 1;
  c.qk_dim = r_kv + d_r;
  c.v_dim = r_kv;
  c.positions = {5, 6};
  c.ctx = 7;
  c.q_hs = c.qk_dim;
  c.q_ts = n_heads * c.q_hs;
  c.k_ps = c.v_ps = row;
  c.k_hs = c.v_hs = 0;
  c.scale = 0.135234f;
  c.shared_kv = true;
  c.q = uniform(static_cast<size_t>(n_tokens * c.q_ts), -3.0f, 3.0f, 1600);
  SplitMix64 rng(1601);
  c.k.assign(static_cast<size_t>(c.ctx * row), kNaN);
  for (int64_t s = 0; s < c.ctx; ++s)
    for (int64_t i = 0; i < c.qk_dim; ++i) c.k[static_cast<size_t>(s * row + i)] = rng.uniform(-1.0f, 1.0f);
  const std::vector<float> out = c.run();
  for (float f : out) ASSERT_TRUE(std::isfinite(f));
  expect_matches_reference(c, out);
}

// The shapes of the models at their real sizes (16-key blocks with tails, groups of 3 to 16 heads,
// MLA's 576-dim latent rows, a few hundred cached rows), on every instruction set this CPU has and
// with and without a pool (the AVX-512 path splits a group when there are few items per thread).
TEST(AttentionCpu, EveryIsaMatchesDoubleReferenceAtModelShapes) {
  using cpu::detail::Isa;
  std::vector<Isa> isas = {Isa::scalar};
  if (cpu::detail::best_isa() == Isa::avx512) isas.push_back(Isa::avx512);
  std::vector<int64_t> prefill(40);
  for (int64_t t = 0; t < 40; ++t) prefill[static_cast<size_t>(t)] = t;
  std::vector<AttentionCase> cases = {
      random_gqa(40, 9, 3, 64, 64, prefill, 1800),          // SmolLM2: prefill, group 3
      random_gqa(2, 8, 1, 128, 128, {299, 300}, 1801),      // Qwen3-MoE's group of 8, long decode
      random_gqa(3, 16, 16, 192, 128, {17, 18, 19}, 1802),  // DeepSeek MLA without absorption (MHA)
      random_gqa(1, 7, 7, 17, 33, {0}, 1803),               // odd dims, one row
  };
  {  // MLA absorbed: 16 heads over one latent row [c (512), k_rope (64)], v = c; 301 rows are
     // three of the AVX-512 path's value blocks (128 rows of 512 floats)
    AttentionCase c;
    c.n_tokens = 2;
    c.n_heads = 16;
    c.n_kv_heads = 1;
    c.qk_dim = 576;
    c.v_dim = 512;
    c.positions = {299, 300};
    c.ctx = 301;
    c.q_hs = c.qk_dim;
    c.q_ts = c.n_heads * c.q_hs;
    c.k_ps = c.v_ps = c.qk_dim;
    c.k_hs = c.v_hs = 0;
    c.scale = 0.0722f;
    c.shared_kv = true;
    c.q = uniform(static_cast<size_t>(c.n_tokens * c.q_ts), -1.0f, 1.0f, 1804);
    c.k = uniform(static_cast<size_t>(c.ctx * c.k_ps), -1.0f, 1.0f, 1805);
    cases.push_back(c);
  }
  cpu::ThreadPool pool(2);
  cpu::Context alone, pooled_ctx(&pool);
  for (const AttentionCase& c : cases)
    for (Isa isa : isas)
      for (bool pooled : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "isa " << cpu::detail::isa_name(isa) << " pool " << pooled << " heads "
                                          << c.n_heads << "/" << c.n_kv_heads << " dims " << c.qk_dim << "/" << c.v_dim
                                          << " tokens " << c.n_tokens);
        std::vector<float> out(static_cast<size_t>(c.n_tokens * c.n_heads * c.v_dim), kGuard);
        cpu::detail::attention_isa(c.params(out), pooled ? pooled_ctx : alone, isa);
        expect_matches_reference(c, out);
      }
}

// ---------------------------------------------------------------------------------------------
// gated_act: act(gate) * up for each hidden_act, and cpu::moe applying it inside the experts

// The activations in double, written from transformers' activations.py (not from activations.cpp).
double act_ref(Activation act, double x) {
  switch (act) {
    case Activation::silu: return x / (1.0 + std::exp(-x));
    case Activation::gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Activation::gelu_tanh: return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
  }
  return kNaN;
}

// fp32 with its transcendental: a few ulps of the result, plus the cancellation in 1 + erf / 1 + tanh
// for negative x (the table's magnitude is |x|).
double act_tol(double x, double want) { return tolerance(Op::gated_act, Check::reference).at(want, std::fabs(x)); }

GatedActParams gated(std::vector<float>& out, const std::vector<float>& gate, const std::vector<float>& up, Activation act) {
  return {.out = out.data(), .gate = gate.data(), .up = up.data(), .n = static_cast<int64_t>(gate.size()), .act = act};
}

TEST(GatedActCpu, KnownValuesFromPythonMath) {
  // x, then silu, gelu and gelu_tanh of x, printed by Python (double): x / (1 + math.exp(-x)),
  // 0.5 * x * (1 + math.erf(x / math.sqrt(2))), 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))).
  struct Case {
    float x;
    double silu, gelu, gelu_tanh;
  };
  const Case cases[] = {
      {-30.0f, -2.8072868906517896e-12, -0.0, -0.0},
      {-6.0f, -0.014835738939808647, -5.919525869479969e-09, -8.43964897967453e-11},
      {-3.0f, -0.14227761953270035, -0.00404969409489031, -0.0036373920817729943},
      {-1.0f, -0.2689414213699951, -0.15865525393145707, -0.15880800939172324},
      {-0.5f, -0.1887703343990727, -0.15426876936299344, -0.15428599017485606},
      {-0.001f, -0.0004997500000208334, -0.000499601057786089, -0.000499601057786418},
      {0.001f, 0.0005002499999791667, 0.000500398942213911, 0.000500398942213582},
      {0.5f, 0.3112296656009273, 0.34573123063700656, 0.34571400982514394},
      {1.0f, 0.7310585786300049, 0.8413447460685429, 0.8411919906082768},
      {2.0f, 1.7615941559557646, 1.9544997361036416, 1.954597694087775},
      {3.0f, 2.8577223804672998, 2.99595030590511, 2.996362607918227},
      {6.0f, 5.985164261060192, 5.999999994080474, 5.9999999999156035},
      {30.0f, 29.999999999997197, 30.0, 30.0},
  };
  std::vector<float> gate;
  for (const Case& c : cases) gate.push_back(c.x);
  const std::vector<float> up(gate.size(), 1.0f);
  for (Activation act : {Activation::silu, Activation::gelu, Activation::gelu_tanh}) {
    std::vector<float> out(gate.size(), kGuard);
    cpu::Context ctx;
    cpu::gated_act(gated(out, gate, up, act), ctx);
    for (size_t i = 0; i < gate.size(); ++i) {
      const Case& c = cases[i];
      const double want = act == Activation::silu ? c.silu : act == Activation::gelu ? c.gelu : c.gelu_tanh;
      EXPECT_TRUE(close(out[i], want, act_tol(c.x, want))) << to_string(act) << "(" << c.x << ")";
    }
  }
  // The two GELUs differ by up to ~1e-3 around |x| = 2: a kernel applying the wrong one is caught.
  EXPECT_GT(std::fabs(cases[3].gelu - cases[3].gelu_tanh), 1e-4);
}

TEST(GatedActCpu, MatchesFormulaIncludingLargeGates) {
  std::vector<float> gate = uniform(67, -10.0f, 10.0f, 1700);
  gate[0] = 80.0f;
  gate[1] = -80.0f;
  gate[2] = 100.0f;
  gate[3] = -100.0f;
  gate[4] = 1e20f;   // x^3 overflows in gelu_tanh: tanh(inf) = 1, not NaN
  gate[5] = -1e20f;
  gate[30] = -89.5f;  // exp(89.5) overflows fp32: silu(-89.5) must come out as (-)0, not NaN
  const std::vector<float> up = uniform(67, -2.0f, 2.0f, 1701);
  for (Activation act : {Activation::silu, Activation::gelu, Activation::gelu_tanh}) {
    SCOPED_TRACE(to_string(act));
    std::vector<float> out(gate.size() + 1, kGuard);
    GatedActParams p = gated(out, gate, up, act);
    cpu::Context ctx;
    cpu::gated_act(p, ctx);
    for (size_t i = 0; i < gate.size(); ++i) {
      const double want = act_ref(act, gate[i]) * up[i];
      // Below 1e-30 an fp32 silu may give 0 (for gate -89.5, exp overflows and g / inf = -0 while the
      // true value is ~1e-37), as torch does.
      EXPECT_TRUE(close(out[i], want, act_tol(gate[i], want) * std::max(1.0, std::fabs(static_cast<double>(up[i])))))
          << "gate " << gate[i] << " up " << up[i];
    }
    EXPECT_EQ(out.back(), kGuard) << "wrote past n";
    // In place: out == gate.
    std::vector<float> in_place = gate;
    p.out = in_place.data();
    p.gate = in_place.data();
    cpu::gated_act(p, ctx);
    for (size_t i = 0; i < gate.size(); ++i) EXPECT_EQ(bits(in_place[i]), bits(out[i])) << "i " << i;
  }
}

// cpu::moe applies MoeParams::act inside every expert, on its one-token (grouped) path and its batched
// path, against the formula in double on random never-zero inputs.
TEST(GatedActCpu, MoeExpertsApplyTheActivation) {
  const int64_t D = 33, I = 7, E = 5, K = 2;
  std::vector<std::vector<float>> w;  // gate, up, down of each expert, f32
  std::vector<const void*> gp, upp, dp;
  for (int64_t e = 0; e < E; ++e)
    for (int m = 0; m < 3; ++m) {
      std::vector<float> v = uniform(static_cast<size_t>(D * I), 0.05f, 0.6f, 1800 + static_cast<uint64_t>(3 * e + m));
      for (size_t i = 0; i < v.size(); i += 2) v[i] = -v[i];  // never zero, both signs
      w.push_back(std::move(v));
    }
  for (int64_t e = 0; e < E; ++e) {
    gp.push_back(w[static_cast<size_t>(3 * e)].data());
    upp.push_back(w[static_cast<size_t>(3 * e + 1)].data());
    dp.push_back(w[static_cast<size_t>(3 * e + 2)].data());
  }
  for (int64_t n : {1, 5}) {
    std::vector<float> x = uniform(static_cast<size_t>(n * D), 0.05f, 0.5f, 1900 + static_cast<uint64_t>(n));
    for (size_t i = 1; i < x.size(); i += 3) x[i] = -x[i];
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < n * K; ++t) ids.push_back(static_cast<int32_t>((3 * t + 1) % E));
    const std::vector<float> wts = uniform(static_cast<size_t>(n * K), 0.2f, 1.0f, 1950);
    for (Activation act : {Activation::silu, Activation::gelu, Activation::gelu_tanh}) {
      SCOPED_TRACE(::testing::Message() << to_string(act) << " n " << n);
      std::vector<float> out(static_cast<size_t>(n * D), kGuard);
      cpu::Context ctx;
      cpu::moe({.out = out.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = wts.data(),
                .gate = gp.data(), .up = upp.data(), .down = dp.data(), .weight_dtype = DType::f32, .n_tokens = n,
                .top_k = K, .n_experts = E, .hidden = D, .intermediate = I, .act = act},
               ctx);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t d = 0; d < D; ++d) {
          double want = 0.0, mag = 0.0;
          for (int64_t k = 0; k < K; ++k) {
            const size_t e = static_cast<size_t>(ids[static_cast<size_t>(t * K + k)]);
            double dot = 0.0;
            for (int64_t i = 0; i < I; ++i) {
              double g = 0.0, u = 0.0;
              for (int64_t c = 0; c < D; ++c) {
                g += static_cast<double>(w[3 * e][static_cast<size_t>(i * D + c)]) * x[static_cast<size_t>(t * D + c)];
                u += static_cast<double>(w[3 * e + 1][static_cast<size_t>(i * D + c)]) * x[static_cast<size_t>(t * D + c)];
              }
              dot += static_cast<double>(w[3 * e + 2][static_cast<size_t>(d * I + i)]) * act_ref(act, g) * u;
            }
            want += wts[static_cast<size_t>(t * K + k)] * dot;
            mag += std::fabs(wts[static_cast<size_t>(t * K + k)] * dot);
          }
          EXPECT_TRUE(close(out[static_cast<size_t>(t * D + d)], want, tolerance(Op::moe, Check::reference).at(want, mag)))
              << "t " << t << " d " << d;
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// route

struct RouteConfig {
  int64_t n_experts, top_k;
  ScoreFunc score = ScoreFunc::softmax;
  TopkMethod method = TopkMethod::greedy;
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  std::vector<float> bias = {};  // empty: none
};

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// Runs the op with exactly sized outputs, on a context whose scratch holds stale NaNs.
Routed run_route(const RouteConfig& c, const std::vector<float>& logits) {
  const int64_t n_tokens = static_cast<int64_t>(logits.size()) / c.n_experts;
  Routed r;
  r.ids.assign(static_cast<size_t>(n_tokens * c.top_k), -7);
  r.weights.assign(static_cast<size_t>(n_tokens * c.top_k), kGuard);
  cpu::Context ctx;
  ctx.call().route.assign(static_cast<size_t>(3 * c.n_experts + c.n_group), kNaN);
  RouteParams p;
  p.expert_ids = r.ids.data();
  p.expert_weights = r.weights.data();
  p.logits = logits.data();
  p.correction_bias = c.bias.empty() ? nullptr : c.bias.data();
  p.n_tokens = n_tokens;
  p.n_experts = c.n_experts;
  p.top_k = c.top_k;
  p.score = c.score;
  p.method = c.method;
  p.n_group = c.n_group;
  p.topk_group = c.topk_group;
  p.norm_topk_prob = c.norm_topk_prob;
  p.routed_scaling_factor = c.routed_scaling_factor;
  cpu::route(p, ctx);
  return r;
}

// One token's choice as (id, weight) pairs sorted by id: ops.h does not promise an order.
std::vector<std::pair<int32_t, double>> sorted_choice(const Routed& r, int64_t t, int64_t k) {
  std::vector<std::pair<int32_t, double>> v;
  for (int64_t j = 0; j < k; ++j) v.emplace_back(r.ids[static_cast<size_t>(t * k + j)], r.weights[static_cast<size_t>(t * k + j)]);
  std::sort(v.begin(), v.end());
  return v;
}

// docs/MODELS.md §3 in double, one token. Masked groups are excluded outright (the V2 0.0 and V3 -inf
// masks only differ when too few kept experts score above zero, which these inputs avoid).
std::vector<std::pair<int32_t, double>> route_ref(const RouteConfig& c, const float* z) {
  const int64_t E = c.n_experts;
  std::vector<double> s(static_cast<size_t>(E)), sel(static_cast<size_t>(E));
  if (c.score == ScoreFunc::softmax) {
    const double m = *std::max_element(z, z + E);
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += s[static_cast<size_t>(e)] = std::exp(z[e] - m);
    for (double& v : s) v /= sum;
  } else {
    for (int64_t e = 0; e < E; ++e) s[static_cast<size_t>(e)] = 1.0 / (1.0 + std::exp(-static_cast<double>(z[e])));
  }
  for (int64_t e = 0; e < E; ++e) sel[static_cast<size_t>(e)] = s[static_cast<size_t>(e)] + (c.bias.empty() ? 0.0 : c.bias[static_cast<size_t>(e)]);
  std::vector<bool> allowed(static_cast<size_t>(E), true);
  if (c.method != TopkMethod::greedy) {
    const int64_t per = E / c.n_group;
    std::vector<std::pair<double, int64_t>> groups;
    for (int64_t g = 0; g < c.n_group; ++g) {
      std::vector<double> v(sel.begin() + g * per, sel.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      const double score = c.method == TopkMethod::group_limited_greedy ? v[0] : v[0] + (per > 1 ? v[1] : 0.0);
      groups.emplace_back(-score, g);
    }
    std::sort(groups.begin(), groups.end());
    std::fill(allowed.begin(), allowed.end(), false);
    for (int64_t j = 0; j < c.topk_group; ++j)
      for (int64_t e = 0; e < per; ++e) allowed[static_cast<size_t>(groups[static_cast<size_t>(j)].second * per + e)] = true;
  }
  std::vector<std::pair<double, int32_t>> order;
  for (int64_t e = 0; e < E; ++e)
    if (allowed[static_cast<size_t>(e)]) order.emplace_back(-sel[static_cast<size_t>(e)], static_cast<int32_t>(e));
  std::sort(order.begin(), order.end());
  std::vector<std::pair<int32_t, double>> out;
  double sum = 0.0;
  for (int64_t j = 0; j < c.top_k; ++j) {
    const int32_t e = order[static_cast<size_t>(j)].second;
    out.emplace_back(e, s[static_cast<size_t>(e)]);
    sum += s[static_cast<size_t>(e)];
  }
  for (auto& [e, w] : out) {
    if (c.norm_topk_prob) w /= sum;
    w *= c.routed_scaling_factor;
  }
  std::sort(out.begin(), out.end());
  return out;
}

// fp32 softmax/sigmoid over <= 67 experts and one normalisation: weights within ~1e-6 relative.
void expect_choice(const Routed& r, int64_t t, int64_t k, const std::vector<std::pair<int32_t, double>>& want) {
  const auto got = sorted_choice(r, t, k);
  ASSERT_EQ(got.size(), want.size());
  for (size_t j = 0; j < got.size(); ++j) {
    EXPECT_EQ(got[j].first, want[j].first) << "token " << t << " choice " << j;
    EXPECT_TRUE(close(got[j].second, want[j].second, tolerance(Op::route, Check::reference).at(want[j].second)))
        << "token " << t << " expert " << want[j].first;
  }
}

double softmax_at(const std::vector<float>& z, size_t e) {
  double sum = 0.0;
  for (float v : z) sum += std::exp(static_cast<double>(v) - z[e]);
  return 1.0 / sum;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(RouteCpu, SoftmaxTopKWithoutNormalisation) {
  // Qwen2-MoE / OLMoE: raw softmax probabilities of the top k (sum < 1).
  const std::vector<float> z = {0.5f, 2.0f, -1.0f, 1.5f, 3.0f, 0.0f, -2.0f};
  RouteConfig c{.n_experts = 7, .top_k = 3};
  const Routed r = run_route(c, z);
  expect_choice(r, 0, 3, {{1, softmax_at(z, 1)}, {3, softmax_at(z, 3)}, {4, softmax_at(z, 4)}});
  EXPECT_LT(r.weights[0] + r.weights[1] + r.weights[2], 1.0f);
}

TEST(RouteCpu, SoftmaxTopKWithNormalisationIsSoftmaxOverSelected) {
  // Mixtral (always) and Qwen3-MoE (norm_topk_prob): w_j = p_j / sum_T p = softmax over the k logits.
  const std::vector<float> z = {0.25f, -0.5f, 1.75f, 0.0f, 1.0f, -3.0f, 1.5f, 0.5f};
  RouteConfig c{.n_experts = 8, .top_k = 2, .norm_topk_prob = true};
  const Routed r = run_route(c, z);
  const double e2 = std::exp(1.75), e6 = std::exp(1.5);
  expect_choice(r, 0, 2, {{2, e2 / (e2 + e6)}, {6, e6 / (e2 + e6)}});
}

TEST(RouteCpu, ScalingFactorAppliesAfterNormalisation) {
  const std::vector<float> z = {1.0f, -1.0f, 0.5f, 2.0f, 0.0f};
  {
    RouteConfig c{.n_experts = 5, .top_k = 2, .norm_topk_prob = true, .routed_scaling_factor = 2.5f};
    const Routed r = run_route(c, z);
    const double a = std::exp(2.0), b = std::exp(1.0);
    expect_choice(r, 0, 2, {{0, 2.5 * b / (a + b)}, {3, 2.5 * a / (a + b)}});
    EXPECT_NEAR(r.weights[0] + r.weights[1], 2.5f, 1e-6f);  // normalise-then-scale sums to the factor
  }
  {
    // DeepSeek-V2 style: no normalisation, probabilities times the factor.
    RouteConfig c{.n_experts = 5, .top_k = 2, .routed_scaling_factor = 16.0f};
    const Routed r = run_route(c, z);
    expect_choice(r, 0, 2, {{0, 16.0 * softmax_at(z, 0)}, {3, 16.0 * softmax_at(z, 3)}});
  }
}

TEST(RouteCpu, GroupLimitedGreedyScoresGroupsByTheirBestExpert) {
  // DeepSeek-V2: 4 groups of 2. G0 holds the single best expert (4.5) next to a bad one; G1 has two
  // good experts (4.0, 4.0). Group score = max keeps G0 (a sum would keep G1: 2 e^4 > e^4.5), so with
  // one group kept the two picks are experts 0 and 1, even though 2 and 3 score far higher than 1.
  const std::vector<float> z = {4.5f, -5.0f, 4.0f, 4.0f, 1.0f, 0.5f, -3.0f, -3.0f};
  RouteConfig c{.n_experts = 8, .top_k = 2, .method = TopkMethod::group_limited_greedy, .n_group = 4, .topk_group = 1};
  const Routed r = run_route(c, z);
  expect_choice(r, 0, 2, {{0, softmax_at(z, 0)}, {1, softmax_at(z, 1)}});  // unmasked softmax weights

  // Two groups kept: G0 (max 4.5) and G1 (max 4.0); G2 (max 1.0) is out. Top 3 of the kept: 0, 2, 3.
  c.topk_group = 2;
  c.top_k = 3;
  c.routed_scaling_factor = 16.0f;
  const Routed r2 = run_route(c, z);
  expect_choice(r2, 0, 3, {{0, 16.0 * softmax_at(z, 0)}, {2, 16.0 * softmax_at(z, 2)}, {3, 16.0 * softmax_at(z, 3)}});
}

TEST(RouteCpu, GroupLimitedGreedyMasksGroupsEvenWhenTheirExpertsAreBetter) {
  // 3 groups of 3: the runner-up experts overall (5, 4) sit in G1 = {3, 4, 5}, whose best (5) loses to
  // G0's best (6) and G2's best (5.5) when only two groups are kept.
  const std::vector<float> z = {6.0f, 0.0f, 0.1f, 4.9f, 4.8f, 5.0f, 5.5f, -1.0f, 0.2f};
  RouteConfig c{.n_experts = 9, .top_k = 3, .method = TopkMethod::group_limited_greedy, .n_group = 3, .topk_group = 2};
  const Routed r = run_route(c, z);
  expect_choice(r, 0, 3, {{0, softmax_at(z, 0)}, {6, softmax_at(z, 6)}, {8, softmax_at(z, 8)}});
}

TEST(RouteCpu, NoauxTcHandMade) {
  // DeepSeek-V3: sigmoid scores, bias for selection only, group score = sum of the two best biased
  // scores, topk_group groups kept, weights = unbiased sigmoid, normalised, times 2.5.
  // 4 groups of 4:
  //   G0: one excellent expert (6) and nothing else: top-2 sum ~0.9975 + 0.0025 = 1.000
  //   G1: two good experts (2, 1.8):                  0.8808 + 0.8581 = 1.739
  //   G2: (1, 0.5):                                   0.7311 + 0.6225 = 1.354
  //   G3: all -6, but bias +0.9/+0.85 on 12 and 13:   0.9025 + 0.8525 = 1.755
  // Kept (2): G3, G1. A max score would keep G0 and G3 instead. Top 3 by biased score among G1 and G3:
  // 12 (0.9025), 4 (0.8808), 5 (0.8581); 13 (0.8525) just misses; expert 0 (the best sigmoid) is out.
  const std::vector<float> z = {6.0f, -6.0f, -6.0f, -6.0f, 2.0f, 1.8f, -6.0f, -6.0f,
                                1.0f, 0.5f, -6.0f, -6.0f, -6.0f, -6.0f, -6.0f, -6.0f};
  RouteConfig c{.n_experts = 16, .top_k = 3, .score = ScoreFunc::sigmoid, .method = TopkMethod::noaux_tc, .n_group = 4,
                .topk_group = 2, .norm_topk_prob = true, .routed_scaling_factor = 2.5f,
                .bias = std::vector<float>(16, 0.0f)};
  c.bias[12] = 0.9f;
  c.bias[13] = 0.85f;
  const Routed r = run_route(c, z);
  const double s12 = sigmoid(-6.0), s4 = sigmoid(2.0), s5 = sigmoid(1.8), sum = s12 + s4 + s5;
  expect_choice(r, 0, 3, {{4, 2.5 * s4 / sum}, {5, 2.5 * s5 / sum}, {12, 2.5 * s12 / sum}});
  EXPECT_NEAR(r.weights[0] + r.weights[1] + r.weights[2], 2.5f, 1e-6f);
}

TEST(RouteCpu, NoauxTcBiasSelectsButNeverWeighs) {
  // One group (plain top-k over biased scores): a -1 bias pushes the best expert (3) out, a +1 bias
  // pulls a weak one (1) in; the weights are the unbiased sigmoids, not normalised, scale 1.
  const std::vector<float> z = {0.5f, -2.0f, 0.2f, 4.0f, 1.0f, 0.0f, -1.0f};
  RouteConfig c{.n_experts = 7, .top_k = 3, .score = ScoreFunc::sigmoid, .method = TopkMethod::noaux_tc,
                .bias = {0.0f, 1.0f, 0.0f, -1.0f, 0.0f, 0.0f, 0.0f}};
  const Routed r = run_route(c, z);
  expect_choice(r, 0, 3, {{0, sigmoid(0.5)}, {1, sigmoid(-2.0)}, {4, sigmoid(1.0)}});
}

TEST(RouteCpu, NoauxTcNeverPicksExpertsOfDroppedGroups) {
  // 4 groups of 2, one kept. G0 wins on 0's large bias (2.49 - 0.5 = 1.99 vs G1's 1.25), but its second
  // expert has a negative biased score (sigmoid(0) - 1). The dropped groups are masked with -inf as in
  // the authors' reference (docs/MODELS.md §3.7 step 4), so expert 1 is still picked over every expert
  // of a dropped group. (HF's 0.0 mask would pick expert 2 here instead; real weights never get here.)
  const std::vector<float> z = {5.0f, 0.0f, 0.5f, 0.5f, 0.0f, 0.0f, -1.0f, -1.0f};
  RouteConfig c{.n_experts = 8, .top_k = 2, .score = ScoreFunc::sigmoid, .method = TopkMethod::noaux_tc, .n_group = 4,
                .topk_group = 1, .bias = {1.5f, -1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}};
  const Routed r = run_route(c, z);
  expect_choice(r, 0, 2, {{0, sigmoid(5.0)}, {1, sigmoid(0.0)}});
}

TEST(RouteCpu, TokensAreRoutedIndependently) {
  // Several tokens in one call equal one call per token, bit for bit, and match the reference.
  SplitMix64 rng(1800);
  const std::vector<RouteConfig> configs = {
      {.n_experts = 8, .top_k = 2, .norm_topk_prob = true},                                   // Mixtral
      {.n_experts = 67, .top_k = 7},                                                          // Qwen2-MoE / OLMoE
      {.n_experts = 31, .top_k = 5, .norm_topk_prob = true},                                  // Qwen3-MoE
      {.n_experts = 33, .top_k = 3, .routed_scaling_factor = 16.0f},                          // V2 greedy
      {.n_experts = 33, .top_k = 3, .method = TopkMethod::group_limited_greedy, .n_group = 3, .topk_group = 2,
       .routed_scaling_factor = 16.0f},                                                       // V2 group-limited
      {.n_experts = 42, .top_k = 5, .score = ScoreFunc::sigmoid, .method = TopkMethod::noaux_tc, .n_group = 7,
       .topk_group = 3, .norm_topk_prob = true, .routed_scaling_factor = 2.5f},               // V3 (bias set below)
  };
  int index = 0;
  for (RouteConfig c : configs) {
    SCOPED_TRACE("config " + std::to_string(index++));
    if (c.method == TopkMethod::noaux_tc) {
      c.bias.resize(static_cast<size_t>(c.n_experts));
      for (float& b : c.bias) b = rng.uniform(-0.2f, 0.2f);
    }
    const int64_t n_tokens = 7;
    std::vector<float> logits(static_cast<size_t>(n_tokens * c.n_experts));
    for (float& v : logits) v = rng.uniform(-4.0f, 4.0f);
    const Routed all = run_route(c, logits);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const std::vector<float> row(logits.begin() + t * c.n_experts, logits.begin() + (t + 1) * c.n_experts);
      const Routed one = run_route(c, row);
      for (int64_t j = 0; j < c.top_k; ++j) {
        const size_t at = static_cast<size_t>(t * c.top_k + j);
        EXPECT_EQ(all.ids[at], one.ids[static_cast<size_t>(j)]) << "token " << t << " choice " << j;
        EXPECT_EQ(bits(all.weights[at]), bits(one.weights[static_cast<size_t>(j)])) << "token " << t << " choice " << j;
      }
      expect_choice(all, t, c.top_k, route_ref(c, row.data()));
    }
  }
}

}  // namespace
}  // namespace moerun
