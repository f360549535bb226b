// KV caches of every KvType (moerun/dtype.h): store_rows converting fp32 rows into each type, and the
// CPU attention reading each type directly on every instruction set this CPU has.
//   store_rows   f32 exact; f16 and bf16 within half an ulp of their type (ties to even); q8_0 the
//                exact bytes of a quantizer written here from the layout's definition, every element
//                within d / 2; rows land at their positions only, q8_0 shapes that split a block throw.
//   attention    GQA (prefill, chunked prefill, decode), MQA and MLA's absorbed shape (v inside k's
//                rows) with every stride padded by a gap the kernels must never read (NaN), against
//                the f32 attention of the same ISA over the cache widened back to fp32: widening is
//                exact, so the two may differ only by summation order (today's kernels widen before
//                the f32 loops and agree bit for bit; the tolerance leaves room to fold q8_0 scales
//                later). q8_0 with a dimension or stride off its 32-element blocks throws.
// Inputs are random and never zero; scratch is poisoned with NaN so every value read must be written.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/context.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kv.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/error.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using cpu::detail::Isa;

constexpr KvType kTypes[] = {KvType::f32, KvType::f16, KvType::bf16, KvType::q8_0};
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<Isa> isas() {
  std::vector<Isa> out = {Isa::scalar};
  if (cpu::detail::best_isa() != Isa::scalar) out.push_back(Isa::avx2);
  if (cpu::detail::best_isa() == Isa::avx512) out.push_back(Isa::avx512);
  return out;
}

// Magnitudes in [lo, hi) times 2^e for e in [-3, 3] (so q8_0 blocks get different scales), random
// signs: never zero.
class Random {
 public:
  explicit Random(uint64_t seed) : rng_(seed) {}
  float unit() { return static_cast<float>(static_cast<double>(rng_() >> 40) * 0x1p-24); }
  std::vector<float> nonzero(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) {
      if (i % 32 == 0) scale_ = std::ldexp(1.0f, static_cast<int>(rng_() % 7) - 3);
      const float m = (lo + (hi - lo) * unit()) * scale_;
      v[i] = (rng_() & 1) ? -m : m;
    }
    return v;
  }

 private:
  std::mt19937_64 rng_;
  float scale_ = 1.0f;
};

// The cache bytes of n elements, filled with 0xff: NaN in every type (f32 and f16/bf16 all-ones are
// NaN; a q8_0 block's scale 0xffff is NaN), so a read of an element never stored shows.
std::vector<uint8_t> nan_cache(KvType t, int64_t n) { return std::vector<uint8_t>(kv_bytes(t, n), 0xff); }

std::vector<float> widen(KvType t, const std::vector<uint8_t>& cache, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  cpu::kv_to_f32(t, cache.data(), n, out.data());
  return out;
}

float f16_value(uint16_t h) {  // sign, 5 exponent bits (bias 15), 10 mantissa bits
  const int e = (h >> 10) & 31, m = h & 1023;
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), -24)
                         : e == 31 ? (m ? kNaN : std::numeric_limits<float>::infinity())
                                   : std::ldexp(static_cast<float>(m + 1024), e - 25);
  return (h & 0x8000) ? -v : v;
}

// Half an ulp of x's binade in a type with `mant` explicit mantissa bits and smallest normal exponent
// emin (below it, the subnormal spacing).
double half_ulp(float x, int mant, int emin) { return std::ldexp(1.0, std::max(std::ilogb(x), emin) - mant - 1); }

// One q8_0 block as the layout defines it: d = fp16(max|x| / 127), q = round-half-even(x / d).
void reference_block(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const uint16_t h = cpu::f32_to_f16(amax / 127.0f);
  const float d = f16_value(h);
  std::memcpy(out, &h, 2);
  for (int i = 0; i < 32; ++i) {
    const float r = d == 0.0f ? 0.0f : std::nearbyint(x[i] / d);
    out[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f)));
  }
}

// ---------------------------------------------------------------------------------------------
// conversions and store_rows

TEST(KvCache, ByteOffsetsMatchKvBytes) {
  for (KvType t : kTypes)
    for (int64_t n : {0, 32, 64, 96, 4096, 32 * 1001})
      EXPECT_EQ(cpu::kv_offset(t, n), static_cast<int64_t>(kv_bytes(t, n))) << kv_type_name(t) << " " << n;
}

TEST(KvCache, F16WidensEveryBitPatternExactly) {
  std::vector<uint8_t> all(65536 * 2);
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto v = static_cast<uint16_t>(h);
    std::memcpy(all.data() + 2 * h, &v, 2);
  }
  const std::vector<float> got = widen(KvType::f16, all, 65536);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = f16_value(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got[h])) << std::hex << h;
    } else {
      EXPECT_EQ(std::memcmp(&got[h], &want, 4), 0) << std::hex << h << " " << got[h] << " vs " << want;
    }
  }
}

TEST(KvCache, HalvesRoundToNearestEven) {
  // Exact ties between two representable neighbours go to the even mantissa.
  const float f16_ties[][2] = {{1.0f + 0x1p-11f, 1.0f}, {1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-9f}, {-(2.0f + 0x1p-10f), -2.0f}};
  const float bf16_ties[][2] = {{1.0f + 0x1p-8f, 1.0f}, {1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-6f}, {-(4.0f + 0x1p-6f), -4.0f}};
  for (KvType t : {KvType::f16, KvType::bf16})
    for (const auto& tie : t == KvType::f16 ? f16_ties : bf16_ties) {
      std::vector<uint8_t> c(2);
      cpu::kv_from_f32(t, &tie[0], 1, c.data());
      EXPECT_EQ(widen(t, c, 1)[0], tie[1]) << kv_type_name(t) << " " << tie[0];
    }
}

TEST(KvCache, StoreRowsRoundTripsEachType) {
  Random rng(70);
  for (KvType t : kTypes) {
    // q8_0 needs whole blocks; the others also take odd sizes.
    const int64_t cols = t == KvType::q8_0 ? 96 : 70, cache_stride = t == KvType::q8_0 ? 160 : 77, src_stride = cols + 5;
    const int64_t capacity = 11, n = 6;
    SCOPED_TRACE(kv_type_name(t));
    const std::vector<float> src = rng.nonzero(static_cast<size_t>(n * src_stride), 0.05f, 1.0f);
    std::vector<int64_t> positions;
    for (int64_t i = 0; i < n; ++i) positions.push_back((i * 4 + 3) % capacity);  // distinct, unordered
    std::vector<uint8_t> cache = nan_cache(t, capacity * cache_stride);
    cpu::Context ctx;
    cpu::store_rows({.cache = cache.data(), .cache_type = t, .src = src.data(), .positions = positions.data(), .n = n,
                     .cols = cols, .src_stride = src_stride, .cache_stride = cache_stride},
                    ctx);
    // Bytes of rows never stored, and of each row past cols, stay as they were.
    std::vector<bool> stored(static_cast<size_t>(capacity), false);
    for (int64_t p : positions) stored[static_cast<size_t>(p)] = true;
    for (int64_t r = 0; r < capacity; ++r) {
      const int64_t b0 = cpu::kv_offset(t, r * cache_stride), b1 = cpu::kv_offset(t, (r + 1) * cache_stride);
      const int64_t from = stored[static_cast<size_t>(r)] ? cpu::kv_offset(t, r * cache_stride + cols) : b0;
      for (int64_t b = from; b < b1; ++b) ASSERT_EQ(cache[static_cast<size_t>(b)], 0xff) << "row " << r << " byte " << b - b0;
    }
    const std::vector<float> back = widen(t, cache, capacity * cache_stride);
    for (int64_t i = 0; i < n; ++i) {
      const float* x = src.data() + i * src_stride;
      const int64_t e0 = positions[static_cast<size_t>(i)] * cache_stride;
      const float* y = back.data() + e0;
      switch (t) {
        case KvType::f32:
          for (int64_t j = 0; j < cols; ++j) ASSERT_EQ(y[j], x[j]) << "row " << i << " col " << j;
          break;
        case KvType::f16:
        case KvType::bf16: {
          const int mant = t == KvType::f16 ? 10 : 7, emin = t == KvType::f16 ? -14 : -126;
          for (int64_t j = 0; j < cols; ++j)
            ASSERT_LE(std::fabs(static_cast<double>(y[j]) - x[j]), half_ulp(x[j], mant, emin)) << "row " << i << " col " << j;
          break;
        }
        case KvType::q8_0:
          for (int64_t b = 0; b < cols / 32; ++b) {
            uint8_t want[34];
            reference_block(x + b * 32, want);
            const uint8_t* got = cache.data() + cpu::kv_offset(t, e0 + b * 32);
            ASSERT_EQ(std::memcmp(got, want, 34), 0) << "row " << i << " block " << b;
            uint16_t h;
            std::memcpy(&h, got, 2);
            const float d = f16_value(h);
            for (int j = 0; j < 32; ++j) ASSERT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), d / 2) << "row " << i << " block " << b;
          }
          break;
      }
    }
  }
}

TEST(KvCache, Q8BlocksOfZerosAndNonFiniteValues) {
  std::vector<float> x(96, 0.0f);
  for (int i = 32; i < 64; ++i) x[static_cast<size_t>(i)] = 0.25f * static_cast<float>(i - 40);
  x[70] = std::numeric_limits<float>::infinity();
  x[71] = 1e-3f;
  std::vector<uint8_t> c = nan_cache(KvType::q8_0, 96);
  cpu::kv_from_f32(KvType::q8_0, x.data(), 96, c.data());
  const std::vector<float> y = widen(KvType::q8_0, c, 96);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], 0.0f) << i;  // all zero: d = 0, q = 0
  for (int i = 32; i < 64; ++i) EXPECT_NEAR(y[static_cast<size_t>(i)], x[static_cast<size_t>(i)], 0.03) << i;
  for (int i = 64; i < 96; ++i) EXPECT_TRUE(std::isnan(y[static_cast<size_t>(i)])) << i;  // an inf poisons its block
}

TEST(KvCache, StoreRowsRejectsQ8RowsOffTheBlocks) {
  const std::vector<float> src(64, 0.5f);
  const int64_t pos = 0;
  std::vector<uint8_t> cache = nan_cache(KvType::q8_0, 256);
  cpu::Context ctx;
  for (auto [cols, stride] : {std::pair<int64_t, int64_t>{48, 64}, {32, 48}})
    EXPECT_THROW(cpu::store_rows({.cache = cache.data(), .cache_type = KvType::q8_0, .src = src.data(), .positions = &pos,
                                  .n = 1, .cols = cols, .src_stride = cols, .cache_stride = stride},
                                 ctx),
                 Error)
        << cols << " " << stride;
}

// ---------------------------------------------------------------------------------------------
// attention

// q [n_tokens, n_heads, qk_dim] and a cache of `type` with K [ctx, n_kv_heads, qk_dim] and V
// [ctx, n_kv_heads, v_dim], every stride padded by `pad` elements left NaN (MLA: v the first v_dim
// of each k row, no V of its own). The cache is filled by store_rows, one head at a time.
struct KvCase {
  const char* name = "";
  int64_t n_heads = 0, n_kv_heads = 0, qk_dim = 0, v_dim = 0, pad = 0;
  std::vector<int64_t> positions;
  bool mla = false;
  float scale = 0.1f;

  int64_t ctx() const { return *std::max_element(positions.begin(), positions.end()) + 1; }
  int64_t n_tokens() const { return static_cast<int64_t>(positions.size()); }
  int64_t k_hs() const { return mla ? 0 : qk_dim + pad; }
  int64_t k_ps() const { return mla ? qk_dim + pad : n_kv_heads * k_hs() + pad; }
  int64_t v_hs() const { return mla ? 0 : v_dim + pad; }
  int64_t v_ps() const { return mla ? k_ps() : n_kv_heads * v_hs() + pad; }
  int64_t q_hs() const { return qk_dim + 3; }
  int64_t q_ts() const { return n_heads * q_hs() + 5; }
};

struct KvData {
  std::vector<float> q;
  std::vector<uint8_t> k, v;  // of the case's type (v empty for MLA)
};

KvData make_data(const KvCase& c, KvType type, uint64_t seed) {
  Random rng(seed);
  KvData d;
  d.q.assign(static_cast<size_t>(c.n_tokens() * c.q_ts()), kNaN);
  for (int64_t t = 0; t < c.n_tokens(); ++t)
    for (int64_t h = 0; h < c.n_heads; ++h) {
      const std::vector<float> row = rng.nonzero(static_cast<size_t>(c.qk_dim), 0.05f, 1.0f);
      std::copy(row.begin(), row.end(), d.q.begin() + t * c.q_ts() + h * c.q_hs());
    }
  std::vector<int64_t> all(static_cast<size_t>(c.ctx()));
  for (int64_t s = 0; s < c.ctx(); ++s) all[static_cast<size_t>(s)] = s;
  cpu::Context ctx;
  auto fill = [&](std::vector<uint8_t>& cache, int64_t ps, int64_t hs, int64_t dim) {
    cache = nan_cache(type, c.ctx() * ps);
    for (int64_t h = 0; h < c.n_kv_heads; ++h) {
      const std::vector<float> src = rng.nonzero(static_cast<size_t>(c.ctx() * dim), 0.05f, 1.0f);
      cpu::store_rows({.cache = cpu::kv_at(cache.data(), type, h * hs), .cache_type = type, .src = src.data(),
                       .positions = all.data(), .n = c.ctx(), .cols = dim, .src_stride = dim, .cache_stride = ps},
                      ctx);
    }
  };
  fill(d.k, c.k_ps(), c.k_hs(), c.qk_dim);
  if (!c.mla) fill(d.v, c.v_ps(), c.v_hs(), c.v_dim);
  return d;
}

AttentionParams params(const KvCase& c, KvType type, const float* q, const void* k, const void* v, float* out) {
  return {.out = out, .q = q, .k = k, .v = c.mla ? k : v, .kv_type = type, .positions = c.positions.data(),
          .n_tokens = c.n_tokens(), .n_heads = c.n_heads, .n_kv_heads = c.n_kv_heads, .qk_dim = c.qk_dim,
          .v_dim = c.v_dim, .q_token_stride = c.q_ts(), .q_head_stride = c.q_hs(), .k_pos_stride = c.k_ps(),
          .k_head_stride = c.k_hs(), .v_pos_stride = c.v_ps(), .v_head_stride = c.v_hs(), .scale = c.scale};
}

// Stale NaN in every worker's scratch: the op must write whatever it reads.
void poison(cpu::Context& ctx, int64_t n) {
  for (int w = 0; w < ctx.threads(); ++w) {
    ctx.worker(w).scores.assign(static_cast<size_t>(n), kNaN);
    ctx.worker(w).kv_rows.assign(static_cast<size_t>(n), kNaN);
  }
}

std::vector<KvCase> cases(bool blocks_only) {
  std::vector<int64_t> prefill(20), chunk = {100, 101, 102, 103, 104, 105, 106};
  for (int64_t t = 0; t < 20; ++t) prefill[static_cast<size_t>(t)] = t;
  std::vector<KvCase> out = {
      {.name = "gqa 8/2 x 64, prefill", .n_heads = 8, .n_kv_heads = 2, .qk_dim = 64, .v_dim = 64, .pad = 32, .positions = prefill},
      {.name = "gqa 8/2 x 128, chunked prefill", .n_heads = 8, .n_kv_heads = 2, .qk_dim = 128, .v_dim = 128, .pad = 32, .positions = chunk},
      // 600 rows of 128 cross a value block (512 rows of 128 floats)
      {.name = "gqa 8/2 x 128, decode", .n_heads = 8, .n_kv_heads = 2, .qk_dim = 128, .v_dim = 128, .pad = 32, .positions = {599}},
      {.name = "gqa 8/2 x 64, two decodes", .n_heads = 8, .n_kv_heads = 2, .qk_dim = 64, .v_dim = 64, .pad = 0, .positions = {37, 250}},
      {.name = "gqa 32/4 x 128, decode", .n_heads = 32, .n_kv_heads = 4, .qk_dim = 128, .v_dim = 128, .pad = 0, .positions = {300}},
      {.name = "mqa 4/1, 96 / 64", .n_heads = 4, .n_kv_heads = 1, .qk_dim = 96, .v_dim = 64, .pad = 32, .positions = {5, 6, 7}},
      {.name = "mqa 12/1 x 128, decode", .n_heads = 12, .n_kv_heads = 1, .qk_dim = 128, .v_dim = 128, .pad = 0, .positions = {400}},
      // DeepSeek's absorbed MLA: one latent row [c (512), k_rope (64)], v = c; 700 rows cross five
      // value blocks (128 rows of 512 floats)
      {.name = "mla 16 x 576/512, two tokens", .n_heads = 16, .n_kv_heads = 1, .qk_dim = 576, .v_dim = 512, .pad = 0,
       .positions = {299, 300}, .mla = true, .scale = 0.0722f},
      {.name = "mla 16 x 576/512, decode", .n_heads = 16, .n_kv_heads = 1, .qk_dim = 576, .v_dim = 512, .pad = 64,
       .positions = {699}, .mla = true, .scale = 0.0722f},
  };
  if (!blocks_only) {  // sizes off the vector width and the 32-element blocks (not for q8_0)
    out.push_back({.name = "odd dims 7/7, 17 / 33", .n_heads = 7, .n_kv_heads = 7, .qk_dim = 17, .v_dim = 33, .pad = 3, .positions = {0, 40}});
    out.push_back({.name = "odd dims 6/2, 80 / 72", .n_heads = 6, .n_kv_heads = 2, .qk_dim = 80, .v_dim = 72, .pad = 1, .positions = {64}});
  }
  return out;
}

TEST(KvCacheAttention, EveryTypeAndIsaMatchesF32OverTheWidenedCache) {
  cpu::ThreadPool pool(2);
  cpu::Context alone, pooled_ctx(&pool);
  uint64_t seed = 700;
  for (KvType type : kTypes)
    for (const KvCase& c : cases(type == KvType::q8_0)) {
      const KvData d = make_data(c, type, ++seed);
      // The same cache widened to fp32, gaps (NaN) and all.
      const std::vector<float> kf = widen(type, d.k, c.ctx() * c.k_ps());
      const std::vector<float> vf = c.mla ? std::vector<float>() : widen(type, d.v, c.ctx() * c.v_ps());
      const size_t n_out = static_cast<size_t>(c.n_tokens() * c.n_heads * c.v_dim);
      for (Isa isa : isas())
        for (bool pooled : {false, true}) {
          SCOPED_TRACE(::testing::Message() << kv_type_name(type) << ", " << c.name << ", isa " << cpu::detail::isa_name(isa)
                                            << (pooled ? ", pool" : ""));
          cpu::Context& ctx = pooled ? pooled_ctx : alone;
          std::vector<float> want(n_out, kNaN), got(n_out, kNaN);
          poison(ctx, 1 << 16);
          cpu::detail::attention_isa(params(c, KvType::f32, d.q.data(), kf.data(), vf.data(), want.data()), ctx, isa);
          poison(ctx, 1 << 16);
          cpu::detail::attention_isa(params(c, type, d.q.data(), d.k.data(), d.v.data(), got.data()), ctx, isa);
          for (size_t i = 0; i < n_out; ++i) {
            ASSERT_TRUE(std::isfinite(want[i])) << "element " << i;
            ASSERT_NEAR(got[i], want[i], 1e-5 * (std::fabs(want[i]) + 0.1)) << "element " << i;
          }
        }
    }
}

// attention_many (a batched step's sequences in one pass over the pool) gives every call exactly
// what attention gives it alone: all the cases of a type at once, on every ISA, one and two threads.
TEST(KvCacheAttention, ManyAtOnceEqualsEachAlone) {
  cpu::ThreadPool pool(2);
  cpu::Context alone, pooled_ctx(&pool);
  uint64_t seed = 900;
  for (KvType type : kTypes) {
    const std::vector<KvCase> cs = cases(type == KvType::q8_0);
    std::vector<KvData> data;
    for (const KvCase& c : cs) data.push_back(make_data(c, type, ++seed));
    for (Isa isa : isas())
      for (bool pooled : {false, true}) {
        SCOPED_TRACE(::testing::Message() << kv_type_name(type) << ", isa " << cpu::detail::isa_name(isa) << (pooled ? ", pool" : ""));
        cpu::Context& ctx = pooled ? pooled_ctx : alone;
        std::vector<std::vector<float>> want, got;
        std::vector<AttentionParams> ps;
        for (size_t i = 0; i < cs.size(); ++i) {
          const size_t n_out = static_cast<size_t>(cs[i].n_tokens() * cs[i].n_heads * cs[i].v_dim);
          want.emplace_back(n_out, kNaN);
          got.emplace_back(n_out, kNaN);
        }
        for (size_t i = 0; i < cs.size(); ++i) {
          poison(ctx, 1 << 16);
          cpu::detail::attention_isa(params(cs[i], type, data[i].q.data(), data[i].k.data(), data[i].v.data(), want[i].data()), ctx, isa);
          ps.push_back(params(cs[i], type, data[i].q.data(), data[i].k.data(), data[i].v.data(), got[i].data()));
        }
        poison(ctx, 1 << 16);
        cpu::detail::attention_many_isa(ps, ctx, isa);
        for (size_t i = 0; i < cs.size(); ++i)
          for (size_t e = 0; e < want[i].size(); ++e) ASSERT_EQ(got[i][e], want[i][e]) << cs[i].name << " element " << e;
      }
  }
}

// The f32 path of every ISA agrees with a double reference over the widened cache of each type, so
// the comparison above is not between two equally wrong results.
TEST(KvCacheAttention, WidenedCacheMatchesDoubleReference) {
  uint64_t seed = 900;
  for (KvType type : kTypes)
    for (const KvCase& c : cases(true)) {
      if (c.n_heads > 16 || c.ctx() > 400) continue;  // the double loop is slow; shapes above cover the rest
      const KvData d = make_data(c, type, ++seed);
      const std::vector<float> kf = widen(type, d.k, c.ctx() * c.k_ps());
      const std::vector<float> vf = c.mla ? kf : widen(type, d.v, c.ctx() * c.v_ps());
      const int64_t group = c.n_heads / c.n_kv_heads;
      std::vector<double> ref(static_cast<size_t>(c.n_tokens() * c.n_heads * c.v_dim), 0.0);
      for (int64_t t = 0; t < c.n_tokens(); ++t)
        for (int64_t h = 0; h < c.n_heads; ++h) {
          const int64_t len = c.positions[static_cast<size_t>(t)] + 1, kvh = h / group;
          std::vector<double> s(static_cast<size_t>(len));
          double mx = -INFINITY, sum = 0.0;
          for (int64_t j = 0; j < len; ++j) {
            double dot = 0.0;
            for (int64_t i = 0; i < c.qk_dim; ++i)
              dot += static_cast<double>(d.q[static_cast<size_t>(t * c.q_ts() + h * c.q_hs() + i)]) *
                     kf[static_cast<size_t>(j * c.k_ps() + kvh * c.k_hs() + i)];
            s[static_cast<size_t>(j)] = c.scale * dot;
            mx = std::max(mx, s[static_cast<size_t>(j)]);
          }
          for (double& x : s) sum += x = std::exp(x - mx);
          for (int64_t j = 0; j < len; ++j)
            for (int64_t i = 0; i < c.v_dim; ++i)
              ref[static_cast<size_t>((t * c.n_heads + h) * c.v_dim + i)] +=
                  s[static_cast<size_t>(j)] / sum * vf[static_cast<size_t>(j * c.v_ps() + kvh * c.v_hs() + i)];
        }
      for (Isa isa : isas()) {
        SCOPED_TRACE(::testing::Message() << kv_type_name(type) << ", " << c.name << ", isa " << cpu::detail::isa_name(isa));
        std::vector<float> got(ref.size(), kNaN);
        cpu::Context ctx;
        cpu::detail::attention_isa(params(c, type, d.q.data(), d.k.data(), d.v.data(), got.data()), ctx, isa);
        const testing::Tolerance tol = testing::tolerance(testing::Op::attention, testing::Check::reference);
        double vmax = 1.0;  // the tolerance is relative to the largest output, as ops_test's
        for (double w : ref) vmax = std::max(vmax, std::fabs(w));
        for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], tol.at(ref[i], vmax)) << "element " << i;
      }
    }
}

TEST(KvCacheAttention, Q8NeedsWholeBlocks) {
  // Each of these puts a row, head or slice off the 32-element blocks; the same shapes work in f16.
  struct Bad {
    const char* what;
    int64_t qk_dim, v_dim, pad;
  };
  for (const Bad& b : {Bad{"qk_dim 48", 48, 64, 0}, Bad{"v_dim 40", 64, 40, 0}, Bad{"stride gap 8", 64, 64, 8}}) {
    const KvCase c{.name = b.what, .n_heads = 4, .n_kv_heads = 2, .qk_dim = b.qk_dim, .v_dim = b.v_dim, .pad = b.pad, .positions = {3}};
    const KvData d = make_data(c, KvType::f16, 1);  // f16 bytes: store_rows would refuse q8_0 here
    std::vector<uint8_t> k(kv_bytes(KvType::q8_0, (c.ctx() * c.k_ps() + 31) / 32 * 32), 0);
    std::vector<uint8_t> v(kv_bytes(KvType::q8_0, (c.ctx() * c.v_ps() + 31) / 32 * 32), 0);
    std::vector<float> out(static_cast<size_t>(c.n_heads * c.v_dim));
    for (Isa isa : isas()) {
      cpu::Context ctx;
      EXPECT_THROW(cpu::detail::attention_isa(params(c, KvType::q8_0, d.q.data(), k.data(), v.data(), out.data()), ctx, isa), Error)
          << b.what << " isa " << cpu::detail::isa_name(isa);
      EXPECT_NO_THROW(cpu::detail::attention_isa(params(c, KvType::f16, d.q.data(), d.k.data(), d.v.data(), out.data()), ctx, isa))
          << b.what << " isa " << cpu::detail::isa_name(isa);
    }
  }
  try {
    const KvCase c{.n_heads = 4, .n_kv_heads = 2, .qk_dim = 48, .v_dim = 64, .positions = {0}};
    std::vector<float> q(static_cast<size_t>(c.q_ts()), 1.0f), out(static_cast<size_t>(4 * 64));
    std::vector<uint8_t> kv(4096, 0);
    cpu::Context ctx;
    cpu::attention(params(c, KvType::q8_0, q.data(), kv.data(), kv.data(), out.data()), ctx);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qk_dim (48)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moerun
