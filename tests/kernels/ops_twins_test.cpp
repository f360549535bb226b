// The CPU twins of the ops that until now were checked only through their CUDA tests: head_matmul
// (both forms, f32, bf16 and f16 weights, a row offset, strided tokens and heads, with and without a
// pool), embed (f32, bf16 and f16 tables), store_rows, copy (strided), clamp and add (with and
// without the gate). Each against a plain reference written here on random never-zero inputs, with
// sizes that are not multiples of any vector width, and guard values around every output that the op
// must leave alone. Tolerances come from tests/support/op_tolerances.h.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using testing::Check;
using testing::Op;
using testing::tolerance;

constexpr float kGuard = -7777.25f;  // around outputs; an op must leave it alone

// Magnitudes uniform in [lo, hi) with random signs: never zero (a zero hides a missed term).
class Random {
 public:
  explicit Random(uint64_t seed) : rng_(seed) {}
  float nonzero(float lo, float hi) {
    const float m = lo + (hi - lo) * static_cast<float>(static_cast<double>(rng_() >> 40) * 0x1p-24);
    return (rng_() & 1) ? -m : m;
  }
  std::vector<float> nonzero(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (float& f : v) f = nonzero(lo, hi);
    return v;
  }
  uint64_t bits() { return rng_(); }

 private:
  std::mt19937_64 rng_;
};

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Weights of a dtype as bytes and the values they hold, decoded here from the formats' definitions:
// bf16 is the high half of an fp32; f16 is sign, 5 exponent bits (bias 15), 10 mantissa bits.
struct Table {
  std::vector<unsigned char> bytes;
  std::vector<double> values;
};

Table random_table(DType dtype, int64_t count, Random& rng) {
  Table t;
  t.bytes.resize(static_cast<size_t>(count) * dtype_size(dtype));
  t.values.resize(static_cast<size_t>(count));
  for (size_t i = 0; i < t.values.size(); ++i) {
    if (dtype == DType::f32) {
      const float f = rng.nonzero(0.01f, 1.0f);
      std::memcpy(t.bytes.data() + 4 * i, &f, 4);
      t.values[i] = f;
    } else if (dtype == DType::bf16) {
      const auto h = static_cast<uint16_t>(bits_of(rng.nonzero(0.01f, 1.0f)) >> 16);  // truncated: still nonzero
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
      const uint32_t u = static_cast<uint32_t>(h) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      t.values[i] = f;
    } else {  // f16: exponents 2^-8 .. 2^0, every mantissa
      const uint64_t r = rng.bits();
      const int e = 7 + static_cast<int>((r >> 1) % 9), m = static_cast<int>((r >> 8) & 0x3ff);
      const auto h = static_cast<uint16_t>(((r & 1) << 15) | (static_cast<uint64_t>(e) << 10) | static_cast<uint64_t>(m));
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
      t.values[i] = ((r & 1) ? -1.0 : 1.0) * std::ldexp(1.0 + m / 1024.0, e - 15);
    }
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// head_matmul

struct HeadShape {
  int64_t n_tokens, n_heads, in_dim, out_dim, head_rows, row_offset;
  bool transposed;
};

void check_head_matmul(const HeadShape& s, DType dtype, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << (s.transposed ? " transposed" : " plain") << " tokens "
                                    << s.n_tokens << " heads " << s.n_heads << " in " << s.in_dim << " out " << s.out_dim
                                    << " head_rows " << s.head_rows << " offset " << s.row_offset);
  Random rng(seed);
  const int64_t row_len = s.transposed ? s.out_dim : s.in_dim;
  const Table w = random_table(dtype, s.n_heads * s.head_rows * row_len, rng);
  // Heads and tokens strided with gaps: x's gaps NaN (a read poisons a row), out's gaps guarded.
  const int64_t x_hs = s.in_dim + 2, x_ts = s.n_heads * x_hs + 3, o_hs = s.out_dim + 1, o_ts = s.n_heads * o_hs + 5;
  std::vector<float> x(static_cast<size_t>(s.n_tokens * x_ts), std::nanf(""));
  for (int64_t t = 0; t < s.n_tokens; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h)
      for (int64_t i = 0; i < s.in_dim; ++i) x[static_cast<size_t>(t * x_ts + h * x_hs + i)] = rng.nonzero(0.05f, 1.0f);
  const HeadMatmulParams p{.x = x.data(), .weight = w.bytes.data(), .weight_dtype = dtype, .n_tokens = s.n_tokens,
                           .n_heads = s.n_heads, .in_dim = s.in_dim, .out_dim = s.out_dim, .head_rows = s.head_rows,
                           .row_offset = s.row_offset, .row_len = row_len, .x_token_stride = x_ts,
                           .x_head_stride = x_hs, .out_token_stride = o_ts, .out_head_stride = o_hs,
                           .transposed = s.transposed};

  std::vector<float> alone(static_cast<size_t>(s.n_tokens * o_ts), kGuard), threaded = alone;
  cpu::Context single;
  HeadMatmulParams q = p;
  q.out = alone.data();
  cpu::head_matmul(q, single);
  cpu::ThreadPool pool(3);
  cpu::Context pooled(&pool);
  q.out = threaded.data();
  cpu::head_matmul(q, pooled);
  ASSERT_EQ(std::memcmp(alone.data(), threaded.data(), alone.size() * sizeof(float)), 0) << "pooled differs";

  const testing::Tolerance tol = tolerance(Op::head_matmul, Check::reference, dtype);
  std::vector<bool> written(alone.size(), false);
  for (int64_t t = 0; t < s.n_tokens; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h)
      for (int64_t o = 0; o < s.out_dim; ++o) {
        double want = 0.0, mag = 0.0;
        for (int64_t i = 0; i < s.in_dim; ++i) {
          const int64_t row = h * s.head_rows + s.row_offset + (s.transposed ? i : o);
          const double prod = w.values[static_cast<size_t>(row * row_len + (s.transposed ? o : i))] *
                              x[static_cast<size_t>(t * x_ts + h * x_hs + i)];
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

TEST(HeadMatmulCpu, BothFormsEveryWeightDtypeMatchTheFormula) {
  // MLA's absorption in miniature: head h owns rows [h * head_rows, (h + 1) * head_rows); the query
  // side reads the first rows of each head transposed, the output side the rows after row_offset.
  const HeadShape shapes[] = {
      {1, 1, 1, 1, 1, 0, false},   {1, 1, 1, 1, 1, 0, true},     // the smallest
      {3, 5, 17, 13, 31, 11, true}, {3, 5, 13, 17, 31, 11, false},  // odd everything, an offset
      {2, 3, 33, 67, 70, 0, true},  {2, 3, 67, 33, 70, 37, false},  // longer rows, tails of 1 and 3
      {4, 2, 129, 7, 140, 9, true}, {4, 2, 7, 129, 140, 9, false},
  };
  uint64_t seed = 10;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16})
    for (const HeadShape& s : shapes) check_head_matmul(s, dtype, ++seed);
}

// ---------------------------------------------------------------------------------------------
// embed

TEST(EmbedCpu, EveryTableDtypeWidensExactly) {
  Random rng(20);
  const int64_t vocab = 11;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16})
    for (int64_t dim : {1, 7, 33, 67}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << " dim " << dim);
      const Table table = random_table(dtype, vocab * dim, rng);
      const std::vector<int32_t> ids = {0, 10, 4, 4, 7};  // first, last, a repeat
      const auto n = static_cast<int64_t>(ids.size());
      std::vector<float> out(static_cast<size_t>(n * dim + 3), kGuard);
      cpu::Context ctx;
      cpu::embed({.out = out.data(), .table = table.bytes.data(), .dtype = dtype, .ids = ids.data(), .n_tokens = n,
                  .dim = dim},
                 ctx);
      const testing::Tolerance tol = tolerance(Op::embed, Check::reference, dtype);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t d = 0; d < dim; ++d) {
          const double want = table.values[static_cast<size_t>(ids[static_cast<size_t>(t)] * dim + d)];
          EXPECT_LE(std::fabs(out[static_cast<size_t>(t * dim + d)] - want), tol.at(want)) << "t " << t << " d " << d;
        }
      for (size_t k = static_cast<size_t>(n * dim); k < out.size(); ++k) EXPECT_EQ(out[k], kGuard) << "wrote past the rows";
    }
}

// A rank's share of a vocabulary-split table: rows [first_row, first_row + rows) of the
// vocabulary; other ids give zero rows, so the ranks' lookups sum to the whole table's.
TEST(EmbedCpu, VocabularyShareLooksUpItsRowsAndZerosElsewhere) {
  Random rng(21);
  const int64_t vocab = 11, dim = 9;
  const Table table = random_table(DType::bf16, vocab * dim, rng);
  const std::vector<int32_t> ids = {0, 10, 4, 5, 7};
  const auto n = static_cast<int64_t>(ids.size());
  cpu::Context ctx;
  std::vector<float> whole(static_cast<size_t>(n * dim)), sum(static_cast<size_t>(n * dim), 0.0f);
  cpu::embed({.out = whole.data(), .table = table.bytes.data(), .dtype = DType::bf16, .ids = ids.data(), .n_tokens = n, .dim = dim}, ctx);
  for (const auto& [first, rows] : {std::pair<int64_t, int64_t>{0, 5}, {5, 3}, {8, 3}}) {
    std::vector<float> part(static_cast<size_t>(n * dim), kGuard);
    const auto* base = reinterpret_cast<const uint16_t*>(table.bytes.data()) + first * dim;  // the share's own rows
    cpu::embed({.out = part.data(), .table = base, .dtype = DType::bf16, .ids = ids.data(), .n_tokens = n, .dim = dim,
                .first_row = first, .rows = rows},
               ctx);
    for (int64_t t = 0; t < n; ++t) {
      const bool mine = ids[static_cast<size_t>(t)] >= first && ids[static_cast<size_t>(t)] < first + rows;
      for (int64_t d = 0; d < dim; ++d) {
        const float v = part[static_cast<size_t>(t * dim + d)];
        EXPECT_EQ(v, mine ? whole[static_cast<size_t>(t * dim + d)] : 0.0f) << "share " << first << " t " << t;
        sum[static_cast<size_t>(t * dim + d)] += v;
      }
    }
  }
  EXPECT_EQ(sum, whole);
}

// ---------------------------------------------------------------------------------------------
// store_rows and copy

TEST(StoreRowsCpu, WritesEachRowAtItsPositionOnly) {
  Random rng(30);
  struct Case {
    int64_t n, cols, src_stride, cache_stride, capacity;
  };
  for (const Case& c : {Case{1, 1, 1, 1, 3}, Case{3, 7, 9, 8, 10}, Case{5, 33, 35, 40, 13}, Case{4, 67, 67, 69, 9}}) {
    SCOPED_TRACE(::testing::Message() << "n " << c.n << " cols " << c.cols);
    const std::vector<float> cache0 = rng.nonzero(static_cast<size_t>(c.capacity * c.cache_stride), 0.1f, 1.0f);
    const std::vector<float> src = rng.nonzero(static_cast<size_t>(c.n * c.src_stride), 0.1f, 1.0f);
    std::vector<int64_t> positions;
    for (int64_t t = 0; t < c.n; ++t) positions.push_back((t * 5 + 2) % c.capacity);  // distinct, unordered
    std::vector<float> want = cache0;
    for (int64_t t = 0; t < c.n; ++t)
      for (int64_t j = 0; j < c.cols; ++j)
        want[static_cast<size_t>(positions[static_cast<size_t>(t)] * c.cache_stride + j)] = src[static_cast<size_t>(t * c.src_stride + j)];
    std::vector<float> cache = cache0;
    cpu::Context ctx;
    cpu::store_rows({.cache = cache.data(), .src = src.data(), .positions = positions.data(), .n = c.n, .cols = c.cols,
                     .src_stride = c.src_stride, .cache_stride = c.cache_stride},
                    ctx);
    const testing::Tolerance tol = tolerance(Op::store_rows, Check::reference);
    for (size_t k = 0; k < cache.size(); ++k) ASSERT_LE(std::fabs(cache[k] - want[k]), tol.at(want[k])) << "element " << k;
  }
}

TEST(CopyCpu, StridedRowsLeaveTheGapsAlone) {
  Random rng(40);
  struct Case {
    int64_t rows, cols, dst_stride, src_stride;
  };
  for (const Case& c : {Case{1, 1, 1, 1}, Case{3, 7, 9, 7}, Case{5, 33, 33, 40}, Case{2, 67, 70, 69}}) {
    SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " cols " << c.cols);
    const std::vector<float> src = rng.nonzero(static_cast<size_t>(c.rows * c.src_stride), 0.1f, 1.0f);
    std::vector<float> dst(static_cast<size_t>(c.rows * c.dst_stride + 2), kGuard), want = dst;
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t j = 0; j < c.cols; ++j)
        want[static_cast<size_t>(r * c.dst_stride + j)] = src[static_cast<size_t>(r * c.src_stride + j)];
    cpu::Context ctx;
    cpu::copy({.dst = dst.data(), .src = src.data(), .rows = c.rows, .cols = c.cols, .dst_stride = c.dst_stride,
               .src_stride = c.src_stride},
              ctx);
    const testing::Tolerance tol = tolerance(Op::copy, Check::reference);
    for (size_t k = 0; k < dst.size(); ++k) ASSERT_LE(std::fabs(dst[k] - want[k]), tol.at(want[k])) << "element " << k;
  }
}

// ---------------------------------------------------------------------------------------------
// clamp and add

TEST(ClampCpu, LimitsBothSidesAndKeepsTheRest) {
  Random rng(50);
  for (int64_t n : {1, 7, 33, 1001}) {
    std::vector<float> x = rng.nonzero(static_cast<size_t>(n), 0.5f, 12.0f);
    x[0] = 8.0f;  // at the limit: unchanged
    std::vector<float> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = x[i] > 8.0f ? 8.0f : x[i] < -8.0f ? -8.0f : x[i];
    x.push_back(kGuard);
    cpu::Context ctx;
    cpu::clamp({.x = x.data(), .n = n, .limit = 8.0f}, ctx);
    const testing::Tolerance tol = tolerance(Op::clamp, Check::reference);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_LE(std::fabs(x[i] - want[i]), tol.at(want[i])) << "n " << n << " i " << i;
    EXPECT_EQ(x.back(), kGuard) << "wrote past n";
  }
}

TEST(AddCpu, PlainAndSigmoidGated) {
  Random rng(60);
  for (bool gated : {false, true})
    for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 7}, {2, 33}, {5, 67}, {1, 1031}}) {
      SCOPED_TRACE(::testing::Message() << (gated ? "gated" : "plain") << " rows " << rows << " cols " << cols);
      const size_t n = static_cast<size_t>(rows * cols);
      const std::vector<float> out0 = rng.nonzero(n, 0.1f, 2.0f), x = rng.nonzero(n, 0.1f, 2.0f);
      const std::vector<float> gate = rng.nonzero(static_cast<size_t>(rows), 0.1f, 6.0f);
      std::vector<float> out = out0;
      out.push_back(kGuard);
      cpu::Context ctx;
      cpu::add({.out = out.data(), .x = x.data(), .gate = gated ? gate.data() : nullptr, .rows = rows, .cols = cols}, ctx);
      const testing::Tolerance tol = tolerance(gated ? Op::add_gated : Op::add, Check::reference);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
          const size_t k = static_cast<size_t>(r * cols + j);
          // Plain: the one fp32 add itself, so the result must be its exact bits.
          const double want = gated ? out0[k] + x[k] / (1.0 + std::exp(-static_cast<double>(gate[static_cast<size_t>(r)])))
                                    : static_cast<double>(out0[k] + x[k]);
          EXPECT_LE(std::fabs(out[k] - want), tol.at(want, std::fabs(x[k]))) << "r " << r << " j " << j;
        }
      EXPECT_EQ(out.back(), kGuard) << "wrote past the rows";
    }
}

// ---------------------------------------------------------------------------------------------
// The tolerance table itself

TEST(OpTolerances, OneRowPerOpCheckAndDtypeNoneNegative) {
  const auto& rows = testing::kOpTolerances;
  for (size_t i = 0; i < std::size(rows); ++i) {
    EXPECT_GE(rows[i].tol.abs, 0.0) << "row " << i;
    EXPECT_GE(rows[i].tol.rel, 0.0) << "row " << i;
    EXPECT_GE(rows[i].tol.mag, 0.0) << "row " << i;
    for (size_t j = 0; j < i; ++j)
      EXPECT_FALSE(rows[i].op == rows[j].op && rows[i].check == rows[j].check && rows[i].dtype == rows[j].dtype)
          << "rows " << j << " and " << i << " have the same key";
  }
  EXPECT_THROW(tolerance(Op::clamp, Check::cuda_tensor), std::logic_error);
}

}  // namespace
}  // namespace moerun
