// FP8 (E4M3 bytes with fp32 block scales, DeepSeek-V3's weight_scale_inv) consumed directly by the CPU
// matmuls: decode GEMV (n <= 4) and prefill GEMM on every instruction set this CPU has (scalar, AVX2,
// AVX-512), against double-precision references built from the exactly dequantized weights, on odd
// shapes (rows not a multiple of 4 or of the row block, in_features not a multiple of the column
// block or of a vector, block_in not a multiple of a vector), random never-zero activations and random
// bytes of every finite E4M3 value (zeros and subnormals included), strided rows with NaN gaps and
// guard values around the outputs. Also: every byte decodes exactly (with MXCSR.DAZ set too, which
// switches the decode kernels' widening), matmul_group and the pool give
// the bits of matmul alone, head_matmul in both forms (heads whose rows start inside a row block), its
// transposed row kernel per instruction set, and the errors for missing scales.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>  // MXCSR
#endif

#include "kernels/cpu/context.h"
#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/error.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using cpu::detail::Isa;
using testing::Check;
using testing::Op;
using testing::tolerance;

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
  // Any E4M3 byte but the NaNs (0x7f, 0xff).
  uint8_t f8() {
    for (;;) {
      const auto b = static_cast<uint8_t>(next());
      if ((b & 0x7f) != 0x7f) return b;
    }
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

struct Blocks {
  int64_t out, in;
};

// An FP8 weight [out, in] with its block scales [ceil(out / bo), ceil(in / bi)], and every element's
// exact value (the byte's value times its scale, in double).
struct Fp8Weight {
  int64_t out = 0, in = 0;
  Blocks blocks{128, 128};
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
  std::vector<double> value;

  int64_t scale_cols() const { return (in + blocks.in - 1) / blocks.in; }
  double at(int64_t o, int64_t i) const { return value[static_cast<size_t>(o * in + i)]; }
};

Fp8Weight make_weight(int64_t out, int64_t in, Blocks blocks, uint64_t seed) {
  Rng rng(seed);
  Fp8Weight w;
  w.out = out;
  w.in = in;
  w.blocks = blocks;
  const int64_t scale_rows = (out + blocks.out - 1) / blocks.out;
  for (int64_t i = 0; i < scale_rows * w.scale_cols(); ++i) w.scale.push_back(rng.nonzero(1e-3f, 1e-2f));
  w.bytes.resize(static_cast<size_t>(out * in));
  w.value.resize(w.bytes.size());
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      const size_t u = static_cast<size_t>(o * in + i);
      w.bytes[u] = rng.f8();
      w.value[u] = static_cast<double>(cpu::f8_e4m3_to_f32(w.bytes[u])) *
                   w.scale[static_cast<size_t>(o / blocks.out * w.scale_cols() + i / blocks.in)];
    }
  return w;
}

MatmulParams params(const Fp8Weight& w) {
  MatmulParams p;
  p.weight = w.bytes.data();
  p.weight_dtype = DType::f8_e4m3;
  p.in_features = w.in;
  p.out_features = w.out;
  p.weight_scale = w.scale.data();
  p.block_out = w.blocks.out;
  p.block_in = w.blocks.in;
  return p;
}

// n random tokens through the matmul on `isa` (x rows strided with NaN gaps, out rows with guards)
// against sum_i x[t, i] * W[o, i] + b[o] in double, within the matmul budget of
// tests/support/op_tolerances.h for fp8 weights.
void check_matmul(const Fp8Weight& w, int64_t n, Isa isa, bool bias, uint64_t seed) {
  std::ostringstream what;
  what << "isa " << cpu::detail::isa_name(isa) << " n " << n << " out " << w.out << " in " << w.in << " blocks "
       << w.blocks.out << "x" << w.blocks.in << " bias " << bias;
  SCOPED_TRACE(what.str());
  const int64_t xs = w.in + 3, os = w.out + 2;
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
  const testing::Tolerance budget = tolerance(Op::matmul, Check::reference, DType::f8_e4m3);
  const double per_512 = std::max(1.0, static_cast<double>(w.in) / 512.0);
  int failures = 0;
  for (int64_t t = 0; t < n && failures < 5; ++t) {
    for (int64_t o = 0; o < w.out && failures < 5; ++o) {
      double want = bias ? b[static_cast<size_t>(o)] : 0.0, mag = std::fabs(want);
      for (int64_t i = 0; i < w.in; ++i) {
        const double term = static_cast<double>(x[static_cast<size_t>(t * xs + i)]) * w.at(o, i);
        want += term;
        mag += std::fabs(term);
      }
      const double tol = budget.at(want, mag * per_512);
      const float got = out[static_cast<size_t>(t * os + o)];
      const bool ok = std::isfinite(got) && std::fabs(got - want) <= tol;
      EXPECT_TRUE(ok) << "t " << t << " o " << o << ": got " << got << ", want " << want << " +- " << tol;
      failures += !ok;
    }
    for (int64_t o = w.out; o < os; ++o) EXPECT_EQ(out[static_cast<size_t>(t * os + o)], kGuard) << "guard at t " << t;
  }
}

TEST(Fp8Matmul, EveryIsaMatchesTheExactlyDequantizedWeights) {
  // 7 rows: fewer than one 4-row pass; 130 and 257: a partial last row block (and a last 4-row pass
  // of 2 or 1 rows); in 200, 72, 1000: a partial last column block and tails of 8 to 40 weights past
  // the last 64-byte line. 3 x 40 blocks: row blocks that split 4-row passes, column blocks that end
  // inside a vector.
  const struct {
    int64_t out, in;
  } shapes[] = {{7, 200}, {130, 72}, {257, 1000}, {33, 17}};
  uint64_t seed = 1;
  for (Blocks blocks : {Blocks{128, 128}, Blocks{64, 32}, Blocks{3, 40}})
    for (const auto& s : shapes) {
      const Fp8Weight w = make_weight(s.out, s.in, blocks, ++seed);
      for (int64_t n : {1, 2, 3, 4, 5, 9, 16, 17, 64})  // the decode kernels take up to 16 FP8 tokens
        for (Isa isa : isas()) check_matmul(w, n, isa, (n + s.out) % 2 == 1, ++seed);
    }
}

// Row o holds byte o of the finite E4M3 values (zeros and subnormals included) and token t is one-hot
// at column j_t, so out[t, o] = fp8 * scale with a power-of-two scale: exact on every path.
TEST(Fp8Matmul, EveryFiniteByteDecodesExactly) {
  std::vector<uint8_t> values;
  for (int b = 0; b < 256; ++b)
    if ((b & 0x7f) != 0x7f) values.push_back(static_cast<uint8_t>(b));
  const auto out = static_cast<int64_t>(values.size());
  const int64_t in = 77;
  std::vector<uint8_t> bytes(static_cast<size_t>(out * in));
  for (int64_t o = 0; o < out; ++o)
    std::fill(bytes.begin() + o * in, bytes.begin() + (o + 1) * in, values[static_cast<size_t>(o)]);
  const std::vector<float> scale(static_cast<size_t>((out + 127) / 128), 0.0625f);
  for (int64_t n : {1, 4, 9, 17})
    for (Isa isa : isas()) {
      std::vector<float> x(static_cast<size_t>(n * in), 0.0f), y(static_cast<size_t>(n * out), kGuard);
      for (int64_t t = 0; t < n; ++t) x[static_cast<size_t>(t * in + (t * 13 + 5) % in)] = 1.0f;
      const MatmulParams p{.out = y.data(), .x = x.data(), .weight = bytes.data(), .weight_dtype = DType::f8_e4m3,
                           .n = n, .in_features = in, .out_features = out, .weight_scale = scale.data()};
      cpu::Context ctx;
      cpu::detail::matmul_isa(p, ctx, isa);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t o = 0; o < out; ++o) {
          const uint8_t b = values[static_cast<size_t>(o)];
          ASSERT_EQ(y[static_cast<size_t>(t * out + o)], cpu::f8_e4m3_to_f32(b) * 0.0625f)
              << "byte 0x" << std::hex << int{b} << std::dec << " isa " << cpu::detail::isa_name(isa) << " n " << n;
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
// The vector decode kernels place the bytes' bits straight into fp32 (E4M3's subnormals become fp32
// subnormals) unless MXCSR.DAZ is set, when they widen through fp16 instead: with DAZ set (as a
// -ffast-math host process may leave it) every byte must still decode exactly, and both ways must give
// the same bits.
TEST(Fp8Matmul, DenormalsAreZeroModeKeepsSubnormalBytesAndTheSameBits) {
  class Mxcsr {  // sets DAZ for its lifetime
   public:
    Mxcsr() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x40); }
    ~Mxcsr() { _mm_setcsr(saved_); }
    Mxcsr(const Mxcsr&) = delete;
    Mxcsr& operator=(const Mxcsr&) = delete;

   private:
    unsigned saved_;
  };
  const Fp8Weight w = make_weight(130, 200, {64, 32}, 31);
  // Every finite byte once per row, over and over: each row holds all subnormals.
  std::vector<uint8_t> cycle;
  for (int b = 0; b < 256; ++b)
    if ((b & 0x7f) != 0x7f) cycle.push_back(static_cast<uint8_t>(b));
  Fp8Weight all = w;
  for (size_t i = 0; i < all.bytes.size(); ++i) all.bytes[i] = cycle[(i * 7) % cycle.size()];
  Rng rng(32);
  for (int64_t n : {1, 2, 3, 4, 7})
    for (Isa isa : isas()) {
      std::vector<float> x(static_cast<size_t>(n * w.in));
      for (float& v : x) v = rng.nonzero(0.05f, 2.0f);
      for (const Fp8Weight* weight : {&w, static_cast<const Fp8Weight*>(&all)}) {
        std::vector<float> plain(static_cast<size_t>(n * w.out)), daz(plain.size());
        MatmulParams p = params(*weight);
        p.x = x.data();
        p.n = n;
        cpu::Context ctx;
        p.out = plain.data();
        cpu::detail::matmul_isa(p, ctx, isa);
        {
          const Mxcsr set_daz;
          p.out = daz.data();
          cpu::detail::matmul_isa(p, ctx, isa);
        }
        EXPECT_EQ(plain, daz) << "n " << n << " isa " << cpu::detail::isa_name(isa);
      }
    }
  // And each byte alone (one-hot x) gives exactly its value under DAZ, subnormals included.
  const std::vector<float> scale(2, 0.5f);
  const auto out = static_cast<int64_t>(cycle.size());
  std::vector<float> x(64, 0.0f), y(static_cast<size_t>(out));
  x[3] = 1.0f;
  std::vector<uint8_t> bytes(static_cast<size_t>(out * 64));
  for (int64_t o = 0; o < out; ++o)
    std::fill(bytes.begin() + o * 64, bytes.begin() + (o + 1) * 64, cycle[static_cast<size_t>(o)]);
  const MatmulParams p{.out = y.data(), .x = x.data(), .weight = bytes.data(), .weight_dtype = DType::f8_e4m3, .n = 1,
                       .in_features = 64, .out_features = out, .weight_scale = scale.data()};
  for (Isa isa : isas()) {
    cpu::Context ctx;
    const Mxcsr set_daz;
    cpu::detail::matmul_isa(p, ctx, isa);
    for (int64_t o = 0; o < out; ++o)
      ASSERT_EQ(y[static_cast<size_t>(o)], cpu::f8_e4m3_to_f32(cycle[static_cast<size_t>(o)]) * 0.5f)
          << "byte " << int{cycle[static_cast<size_t>(o)]} << " isa " << cpu::detail::isa_name(isa);
  }
}
#endif

// matmul_group over FP8 entries (different shapes and block sizes, shared and separate activations,
// a bf16 entry among them) and any pool give each entry exactly matmul()'s bits on one thread.
TEST(Fp8Matmul, GroupedAndThreadedEqualAloneBitForBit) {
  const int64_t in = 200;
  const Fp8Weight weights[] = {make_weight(130, in, {128, 128}, 11), make_weight(257, in, {64, 32}, 12),
                               make_weight(7, in, {3, 40}, 13), make_weight(96, in, {128, 128}, 14)};
  Rng rng(15);
  std::vector<uint16_t> bf16(static_cast<size_t>(40 * in));
  for (uint16_t& h : bf16) h = cpu::f32_to_bf16(rng.nonzero(0.01f, 1.0f));
  for (int64_t n : {1, 3, 4, 9, 17, 64})
    for (Isa isa : isas()) {
      SCOPED_TRACE(::testing::Message() << "n " << n << " isa " << cpu::detail::isa_name(isa));
      std::vector<float> x(static_cast<size_t>(n * in)), x2(x.size());
      for (float& v : x) v = rng.nonzero(0.05f, 2.0f);
      for (float& v : x2) v = rng.nonzero(0.05f, 2.0f);
      std::vector<MatmulParams> ps;
      for (size_t i = 0; i < std::size(weights); ++i) {
        MatmulParams p = params(weights[i]);
        p.x = i == 2 ? x2.data() : x.data();
        p.n = n;
        ps.push_back(p);
      }
      ps.push_back({.x = x.data(), .weight = bf16.data(), .weight_dtype = DType::bf16, .n = n, .in_features = in,
                    .out_features = 40});
      std::vector<std::vector<float>> alone(ps.size()), grouped(ps.size());
      cpu::Context single;
      for (size_t i = 0; i < ps.size(); ++i) {
        alone[i].assign(static_cast<size_t>(n * ps[i].out_features), 0.0f);
        ps[i].out = alone[i].data();
        cpu::detail::matmul_isa(ps[i], single, isa);
      }
      for (int threads : {1, 2, 3}) {
        cpu::ThreadPool pool(threads);
        cpu::Context ctx(threads == 1 ? nullptr : &pool);
        for (size_t i = 0; i < ps.size(); ++i) {
          grouped[i].assign(alone[i].size(), -1.0f);
          ps[i].out = grouped[i].data();
        }
        cpu::detail::matmul_group_isa(ps.data(), ps.size(), ctx, isa);
        for (size_t i = 0; i < ps.size(); ++i)
          EXPECT_EQ(grouped[i], alone[i]) << "entry " << i << " threads " << threads;
        std::vector<float> one(alone[1].size(), -1.0f);  // and a matmul of its own on the pool
        ps[1].out = one.data();
        cpu::detail::matmul_isa(ps[1], ctx, isa);
        EXPECT_EQ(one, alone[1]) << "threads " << threads;
      }
    }
}

TEST(Fp8Matmul, MissingScalesOrBadBlocksThrow) {
  const Fp8Weight w = make_weight(8, 64, {128, 128}, 21);
  std::vector<float> x(64, 1.0f), y(8);
  MatmulParams p = params(w);
  p.x = x.data();
  p.out = y.data();
  p.n = 1;
  cpu::Context ctx;
  EXPECT_NO_THROW(cpu::matmul(p, ctx));
  MatmulParams bad = p;
  bad.weight_scale = nullptr;
  EXPECT_THROW(cpu::matmul(bad, ctx), Error);
  bad = p;
  bad.block_in = 0;
  EXPECT_THROW(cpu::matmul(bad, ctx), Error);
}

// ---- head_matmul ----------------------------------------------------------------------------------

struct HeadShape {
  int64_t n_tokens, n_heads, in_dim, out_dim, head_rows, row_offset;
  bool transposed;
};

void check_head_matmul(const HeadShape& s, Blocks blocks, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << (s.transposed ? "transposed" : "plain") << " tokens " << s.n_tokens << " heads "
                                    << s.n_heads << " in " << s.in_dim << " out " << s.out_dim << " head_rows "
                                    << s.head_rows << " offset " << s.row_offset << " blocks " << blocks.out << "x"
                                    << blocks.in);
  const int64_t row_len = s.transposed ? s.out_dim : s.in_dim;
  const Fp8Weight w = make_weight(s.n_heads * s.head_rows, row_len, blocks, seed);
  Rng rng(seed + 1000);
  const int64_t x_hs = s.in_dim + 2, x_ts = s.n_heads * x_hs + 3, o_hs = s.out_dim + 1, o_ts = s.n_heads * o_hs + 5;
  std::vector<float> x(static_cast<size_t>(s.n_tokens * x_ts), std::nanf(""));
  for (int64_t t = 0; t < s.n_tokens; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h)
      for (int64_t i = 0; i < s.in_dim; ++i) x[static_cast<size_t>(t * x_ts + h * x_hs + i)] = rng.nonzero(0.05f, 1.0f);
  HeadMatmulParams p{.x = x.data(), .weight = w.bytes.data(), .weight_dtype = DType::f8_e4m3,
                     .n_tokens = s.n_tokens, .n_heads = s.n_heads, .in_dim = s.in_dim, .out_dim = s.out_dim,
                     .head_rows = s.head_rows, .row_offset = s.row_offset, .row_len = row_len,
                     .x_token_stride = x_ts, .x_head_stride = x_hs, .out_token_stride = o_ts,
                     .out_head_stride = o_hs, .transposed = s.transposed, .weight_scale = w.scale.data(),
                     .block_out = blocks.out, .block_in = blocks.in};
  std::vector<float> alone(static_cast<size_t>(s.n_tokens * o_ts), kGuard), threaded = alone;
  cpu::Context single;
  p.out = alone.data();
  cpu::head_matmul(p, single);
  cpu::ThreadPool pool(3);
  cpu::Context pooled(&pool);
  p.out = threaded.data();
  cpu::head_matmul(p, pooled);
  ASSERT_EQ(std::memcmp(alone.data(), threaded.data(), alone.size() * sizeof(float)), 0) << "pooled differs";

  const testing::Tolerance tol = tolerance(Op::head_matmul, Check::reference, DType::f8_e4m3);
  std::vector<bool> written(alone.size(), false);
  for (int64_t t = 0; t < s.n_tokens; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h)
      for (int64_t o = 0; o < s.out_dim; ++o) {
        double want = 0.0, mag = 0.0;
        for (int64_t i = 0; i < s.in_dim; ++i) {
          const int64_t row = h * s.head_rows + s.row_offset + (s.transposed ? i : o);
          const double prod = w.at(row, s.transposed ? o : i) * x[static_cast<size_t>(t * x_ts + h * x_hs + i)];
          want += prod;
          mag += std::fabs(prod);
        }
        const size_t at = static_cast<size_t>(t * o_ts + h * o_hs + o);
        written[at] = true;
        ASSERT_TRUE(std::isfinite(alone[at])) << "t " << t << " h " << h << " o " << o;
        EXPECT_LE(std::fabs(alone[at] - want), tol.at(want, mag)) << "t " << t << " h " << h << " o " << o;
      }
  for (size_t k = 0; k < alone.size(); ++k) {
    if (written[k]) continue;
    ASSERT_EQ(alone[k], kGuard) << "gap " << k << " written";
  }
}

TEST(Fp8HeadMatmul, BothFormsMatchTheFormula) {
  // MLA's absorption in miniature, with heads whose rows start inside a row block (row_offset and
  // head_rows not multiples of block_out) and rows longer than one column block.
  const HeadShape shapes[] = {
      {1, 1, 1, 1, 1, 0, false},      {1, 1, 1, 1, 1, 0, true},
      {3, 5, 17, 13, 31, 11, true},   {3, 5, 13, 17, 31, 11, false},
      {2, 3, 33, 67, 70, 0, true},    {2, 3, 67, 33, 70, 37, false},
      {2, 4, 64, 200, 140, 9, true},  {2, 4, 200, 64, 140, 9, false},
      {1, 2, 128, 512, 256, 128, true}, {1, 2, 512, 128, 256, 128, false},  // DeepSeek's kv_b_proj, aligned
  };
  uint64_t seed = 40;
  for (Blocks blocks : {Blocks{128, 128}, Blocks{16, 32}, Blocks{5, 24}})
    for (const HeadShape& s : shapes) check_head_matmul(s, blocks, ++seed);
}

// The transposed form's row kernel on every instruction set: out[j] += alpha * scale[j / block] *
// fp8(w[j]), two roundings per element at most (alpha * scale, then the FMA or product and add).
TEST(Fp8HeadMatmul, TransposedRowKernelOnEveryIsa) {
  Rng rng(50);
  for (int64_t n : {1, 15, 16, 17, 100, 513})
    for (int64_t block : {128, 40, 7, 16}) {
      std::vector<uint8_t> w(static_cast<size_t>(n));
      for (uint8_t& b : w) b = rng.f8();
      std::vector<float> scale(static_cast<size_t>((n + block - 1) / block));
      for (float& v : scale) v = rng.nonzero(1e-3f, 1e-2f);
      std::vector<float> init(static_cast<size_t>(n) + 3);
      for (float& v : init) v = rng.nonzero(0.05f, 1.0f);
      const float alpha = rng.nonzero(0.5f, 2.0f);
      for (Isa isa : isas()) {
        std::vector<float> out = init;
        cpu::detail::axpy_f8(isa, out.data(), alpha, w.data(), scale.data(), n, block);
        for (int64_t j = 0; j < n; ++j) {
          const size_t u = static_cast<size_t>(j);
          const double term =
              static_cast<double>(alpha) * scale[u / static_cast<size_t>(block)] * cpu::f8_e4m3_to_f32(w[u]);
          const double want = init[u] + term;
          EXPECT_LE(std::fabs(out[u] - want), 0x1p-22 * (std::fabs(init[u]) + std::fabs(term)))
              << "isa " << cpu::detail::isa_name(isa) << " n " << n << " block " << block << " j " << j;
        }
        for (size_t j = static_cast<size_t>(n); j < out.size(); ++j) EXPECT_EQ(out[j], init[j]) << "past the end";
      }
    }
}

TEST(Fp8HeadMatmul, MissingScalesThrow) {
  std::vector<uint8_t> w(4 * 8, 0x38);
  std::vector<float> x(8, 1.0f), out(8);
  for (bool transposed : {false, true}) {
    HeadMatmulParams p{.out = out.data(), .x = x.data(), .weight = w.data(), .weight_dtype = DType::f8_e4m3,
                       .n_tokens = 1, .n_heads = 1, .in_dim = transposed ? 4 : 8, .out_dim = transposed ? 8 : 4,
                       .head_rows = 4, .row_len = 8, .x_token_stride = 8, .x_head_stride = 8,
                       .out_token_stride = 8, .out_head_stride = 8, .transposed = transposed};
    cpu::Context ctx;
    EXPECT_THROW(cpu::head_matmul(p, ctx), Error) << "transposed " << transposed;
    const float one = 1.0f;
    p.weight_scale = &one;
    EXPECT_NO_THROW(cpu::head_matmul(p, ctx));
    EXPECT_EQ(out[0], transposed ? 4.0f : 8.0f);  // 0x38 is 1.0
  }
}

}  // namespace
}  // namespace moerun
