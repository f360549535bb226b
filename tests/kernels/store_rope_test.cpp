// store_rows with the fused RoPE (StoreRowsParams::rope_*): the cache must hold exactly the bytes of
// cpu::rope on a copy of the rows followed by the plain cpu::store_rows, for every KvType (f32, f16,
// bf16, q8_0), both rotation styles, GQA-like rows (several heads of 64 or 128 dims, whole and partial
// rotary) and MLA's latent row (one head, 64 dims at offset 512 of 576), n = 1, 5 and 33 rows at
// unordered positions up to a few thousand, padded source and cache strides, attention factor 1 and a
// YaRN-like 1.3. Also: src is not written, cache rows nobody stores stay as they were, a single thread
// and a pool agree, and bad rotation shapes throw. Inputs are random and never zero.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/kv.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun {
namespace {

std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) {
    do x = dist(rng);
    while (x == 0.0f);
  }
  return v;
}

struct Shape {
  const char* name;
  int64_t cols, heads, head_stride, offset, dim;
};

// Cache bytes of `rows` rows of `stride` elements of type t, filled with a pattern store_rows must keep
// outside the rows it writes.
std::vector<uint8_t> filled_cache(KvType t, int64_t rows, int64_t stride) {
  std::vector<uint8_t> c(static_cast<size_t>(cpu::kv_offset(t, rows * stride)));
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<uint8_t>(0x5a ^ (i * 131u));
  return c;
}

TEST(StoreRope, FusedEqualsRopeThenStoreBitForBit) {
  const std::vector<Shape> shapes = {
      {"gqa 4x64", 256, 4, 64, 0, 64},       {"gqa 2x128", 256, 2, 128, 0, 128},
      {"gqa 3x128 partial", 384, 3, 128, 0, 64},  // partial rotary: the first half of each head
      {"mla 576", 576, 1, 0, 512, 64},
  };
  cpu::ThreadPool pool(3);
  for (KvType kv : {KvType::f32, KvType::f16, KvType::bf16, KvType::q8_0}) {
    for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) {
      for (const Shape& s : shapes) {
        for (int64_t n : {1, 5, 33}) {
          for (float factor : {1.0f, 1.3f}) {
            const uint32_t seed = static_cast<uint32_t>(n * 7919 + s.cols * 31 + static_cast<int>(kv) * 7 +
                                                        (style == RopeStyle::neox ? 1 : 2));
            const int64_t src_stride = s.cols + 3, cache_stride = s.cols + 32, capacity = 4099;
            const std::vector<float> src = random_floats(static_cast<size_t>(n * src_stride), -2.0f, 2.0f, seed);
            std::vector<float> inv_freq(static_cast<size_t>(s.dim / 2));
            for (size_t i = 0; i < inv_freq.size(); ++i)
              inv_freq[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(s.dim));
            std::vector<int64_t> positions;
            for (int64_t t = 0; t < n; ++t) positions.push_back((t * 977 + 4000) % capacity);  // distinct, unordered
            const std::vector<uint8_t> cache0 = filled_cache(kv, capacity, cache_stride);

            // Reference: rope on a copy, then the plain store.
            std::vector<float> roped = src;
            cpu::Context ref_ctx;
            cpu::rope({.x = roped.data(),
                       .n_tokens = n,
                       .n_heads = s.heads,
                       .token_stride = src_stride,
                       .head_stride = s.head_stride,
                       .rot_offset = s.offset,
                       .rot_dim = s.dim,
                       .positions = positions.data(),
                       .inv_freq = inv_freq.data(),
                       .attention_factor = factor,
                       .style = style},
                      ref_ctx);
            std::vector<uint8_t> want = cache0;
            cpu::store_rows({.cache = want.data(),
                             .cache_type = kv,
                             .src = roped.data(),
                             .positions = positions.data(),
                             .n = n,
                             .cols = s.cols,
                             .src_stride = src_stride,
                             .cache_stride = cache_stride},
                            ref_ctx);
            ASSERT_NE(want, cache0);

            for (bool use_pool : {false, true}) {
              cpu::Context ctx(use_pool ? &pool : nullptr);
              std::vector<uint8_t> got = cache0;
              std::vector<float> src_copy = src;
              cpu::store_rows({.cache = got.data(),
                               .cache_type = kv,
                               .src = src_copy.data(),
                               .positions = positions.data(),
                               .n = n,
                               .cols = s.cols,
                               .src_stride = src_stride,
                               .cache_stride = cache_stride,
                               .rope_inv_freq = inv_freq.data(),
                               .rope_heads = s.heads,
                               .rope_head_stride = s.head_stride,
                               .rope_offset = s.offset,
                               .rope_dim = s.dim,
                               .rope_attention_factor = factor,
                               .rope_style = style},
                              ctx);
              ASSERT_TRUE(got == want) << kv_type_name(kv) << " " << s.name << " n=" << n << " factor=" << factor
                                       << (style == RopeStyle::neox ? " neox" : " interleaved")
                                       << (use_pool ? " pool" : " one thread");
              ASSERT_TRUE(src_copy == src) << "src was written: " << s.name;
            }
          }
        }
      }
    }
  }
}

// The rotation really happens: with rope off, the same call stores the unrotated rows, which differ.
TEST(StoreRope, RotationChangesTheStoredRows) {
  const int64_t cols = 128, n = 3;
  const std::vector<float> src = random_floats(static_cast<size_t>(n * cols), -1.0f, 1.0f, 11);
  const std::vector<float> inv_freq = random_floats(32, 0.01f, 1.0f, 12);
  const std::vector<int64_t> positions = {5, 1, 9};
  std::vector<float> plain(static_cast<size_t>(10 * cols), 0.5f), fused = plain;
  cpu::Context ctx;
  StoreRowsParams p{.cache = plain.data(), .src = src.data(), .positions = positions.data(), .n = n, .cols = cols,
                    .src_stride = cols, .cache_stride = cols};
  cpu::store_rows(p, ctx);
  p.cache = fused.data();
  p.rope_inv_freq = inv_freq.data();
  p.rope_heads = 2;
  p.rope_head_stride = 64;
  p.rope_dim = 64;
  cpu::store_rows(p, ctx);
  int64_t changed = 0;
  for (size_t i = 0; i < plain.size(); ++i) changed += plain[i] != fused[i];
  EXPECT_GT(changed, n * cols / 2);
}

TEST(StoreRope, BadRotationShapesThrow) {
  const int64_t cols = 128;
  const std::vector<float> src = random_floats(static_cast<size_t>(cols), -1.0f, 1.0f, 3);
  const std::vector<float> inv_freq = random_floats(64, 0.01f, 1.0f, 4);
  const std::vector<int64_t> positions = {0};
  std::vector<float> cache(static_cast<size_t>(cols));
  cpu::Context ctx;
  auto params = [&] {
    return StoreRowsParams{.cache = cache.data(), .src = src.data(), .positions = positions.data(), .n = 1,
                           .cols = cols, .src_stride = cols, .cache_stride = cols, .rope_inv_freq = inv_freq.data(),
                           .rope_heads = 2, .rope_head_stride = 64, .rope_offset = 0, .rope_dim = 64};
  };
  EXPECT_NO_THROW(cpu::store_rows(params(), ctx));
  StoreRowsParams odd = params();
  odd.rope_dim = 63;
  EXPECT_THROW(cpu::store_rows(odd, ctx), Error);
  StoreRowsParams past_cols = params();
  past_cols.rope_offset = 2;  // the second head's region ends at 130 > cols
  EXPECT_THROW(cpu::store_rows(past_cols, ctx), Error);
  StoreRowsParams overlapping = params();
  overlapping.rope_head_stride = 32;  // regions overlap their neighbours
  overlapping.rope_dim = 32;
  overlapping.rope_offset = 16;
  EXPECT_THROW(cpu::store_rows(overlapping, ctx), Error);
  StoreRowsParams no_heads = params();
  no_heads.rope_heads = 0;
  EXPECT_THROW(cpu::store_rows(no_heads, ctx), Error);
}

}  // namespace
}  // namespace moerun
