// AVX-512 attention for a tile of queries that share one KV head: a few consecutive tokens times
// the query heads of one KV head (GQA's group, or MLA's absorbed heads over the one latent row).
//   scores  per block of 16 keys, loaded once for the whole tile: one accumulator per key over the
//           query's dims, then the 16 sums come out of a transposing reduction tree as one vector
//           (no horizontal sum per key);
//   softmax the row max, exp (polynomial, below) and sum, vectorised over the scores;
//   values  up to 6 queries x 64 dims of output stay in registers while every value row is loaded
//           once for all of them; the 1 / sum is applied at the end. The value rows go in blocks that
//           stay in L2 while every query of the tile passes over them.
// Every dimension may be any size (masked tails); rows past the token's position are never read.
// An f32 cache is read in place. f16, bf16 and q8_0 caches are widened a block at a time into the
// worker's kv_rows (16 key rows for the scores, a value block for the values), converted in registers
// (vcvtph2ps; bf16 shifted into the high half; q8_0 int8 sign-extended, converted, times its block's
// scale): each element is widened once per tile however many queries read it, and the loops that
// follow are the f32 ones. Widening is exact (kernels/cpu/kv.h), so a tile gives bit for bit what the
// f32 cache of the widened values gives.

// GCC 12's AVX-512 headers build their "undefined" vectors as self-initialised variables, which
// -Wuninitialized reports once inlined into a target-attributed function (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/avx512_util.h"
#include "kernels/cpu/kv.h"

#define MOERUN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi,bmi2")))

namespace moerun::cpu::detail {
namespace {

constexpr int kValueVecs = 4;   // 64 output dims per pass
constexpr int kValueHeads = 6;  // x 6 queries = 24 accumulators
constexpr int64_t kValueBlockBytes = 256 << 10;  // value rows per block (L2)
constexpr int64_t kKeyBlock = 16;  // key rows per score block
constexpr int64_t kPrefetchRows = 16;  // how far ahead widening asks for cache rows (prefetch_row)
// Queries whose softmax rows are ready before the value pass: every value block serves all of them
// (MLA decode puts up to 128 heads in one tile); more than this take another pass over the values.
constexpr int64_t kPassQueries = 22 * kValueHeads;  // 132

// Value rows per block: as many as fit kValueBlockBytes as fp32.
int64_t value_block_rows(int64_t v_dim) {
  return std::max<int64_t>(kKeyBlock, kValueBlockBytes / (v_dim * static_cast<int64_t>(sizeof(float))));
}

// Floats of a row widened into kv_rows: whole vectors, so each row starts on a 64-byte boundary.
int64_t widened_stride(int64_t dim) { return (dim + 15) / 16 * 16; }

// dst[0, n) = cache elements [e, e + n) of a T cache widened to fp32 (q8_0: e and n multiples of 32).
template <KvType T>
MOERUN_AVX512 void widen_row(const void* cache, int64_t e, int64_t n, float* dst) {
  if constexpr (T == KvType::q8_0) {
    const auto* block = static_cast<const uint8_t*>(kv_at(cache, T, e));
    for (int64_t c = 0; c < n; c += kKvBlock, block += kKvBlockBytes) {
      uint16_t h;
      std::memcpy(&h, block, 2);
      const __m512 d = _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(h)));
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2))));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 18))));
      _mm512_storeu_ps(dst + c, _mm512_mul_ps(d, lo));
      _mm512_storeu_ps(dst + c + 16, _mm512_mul_ps(d, hi));
    }
  } else {
    const auto* src = static_cast<const uint16_t*>(kv_at(cache, T, e));
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 m = first_lanes(n - c);
      const __m256i h = _mm256_maskz_loadu_epi16(m, src + c);
      const __m512 f = T == KvType::f16 ? _mm512_cvtph_ps(h)
                                        : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      _mm512_mask_storeu_ps(dst + c, m, f);
    }
  }
}

// Asks for the cache lines of elements [e, e + n) of a T cache kPrefetchRows rows ahead of widening: one
// head's rows are short runs (256 bytes of f16 at head dim 128) between the other heads' data, which
// the hardware prefetchers follow poorly: without this, GQA decode over f16 took 30% longer,
// waiting on memory in the widening.
template <KvType T>
MOERUN_AVX512 inline void prefetch_row(const void* cache, int64_t e, int64_t n) {
  const auto* begin = static_cast<const char*>(kv_at(cache, T, e));
  const auto first = reinterpret_cast<uintptr_t>(begin) & ~uintptr_t{63};
  const auto end = reinterpret_cast<uintptr_t>(begin) + static_cast<uintptr_t>(kv_offset(T, n));
  for (uintptr_t line = first; line < end; line += 64) _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
}

// e^x for x <= 0: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in two for an exact n ln 2), e^r
// by its Taylor series to r^7 / 7! (truncation < 2e-9 relative), times 2^n. Inputs below -87.3 give
// e^-87.3 (~1e-38), which is zero next to the row's largest term, 1.
MOERUN_AVX512 __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.0f / 5040.0f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 720.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 120.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 24.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 6.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// Lane i of the result = the sum of a[i]'s 16 lanes. Halves are added pairwise so each level
// halves the vectors: 256-bit halves, then 128-bit lanes, then within lanes; the last permute
// undoes the order the in-lane steps leave (lane 4 L + m holds a[4 m + L]).
[[gnu::always_inline]] MOERUN_AVX512 inline __m512 reduce16(const __m512 a[16]) {
  __m512 w[8], x[4];
  for (int i = 0; i < 8; ++i) {  // lanes 0-7: a[2i]'s halves summed; lanes 8-15: a[2i+1]'s
    const __m512 lo = a[2 * i], hi = a[2 * i + 1];
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(lo, hi, 0x44), _mm512_shuffle_f32x4(lo, hi, 0xee));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lane L: a[4i + L]'s four partial sums
    const __m512 lo = w[2 * i], hi = w[2 * i + 1];
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(lo, hi, 0x88), _mm512_shuffle_f32x4(lo, hi, 0xdd));
  }
  const __m512 y0 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
  const __m512 y1 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y0, y1, 0x44), _mm512_shuffle_ps(y0, y1, 0xee));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), z);
}

// Scores of one query against kn <= 16 key rows (row i at keys + i * stride), scaled, into dst[0, kn).
// This, weigh_values and reduce16 are forced inline: with a tile loop per cache type GCC would
// leave them as calls, and reduce16's sixteen vectors (an array argument) would pass through memory
// once per query and key block, which cost f32 MLA decode a tenth of its time.
[[gnu::always_inline]] MOERUN_AVX512 inline void score_block(const AttentionParams& p, const float* q, const float* keys,
                                                             int64_t stride, int kn, float* dst) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t c = 0; c < p.qk_dim; c += 16) {
    const __mmask16 m = first_lanes(p.qk_dim - c);
    const __m512 qv = _mm512_maskz_loadu_ps(m, q + c);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
      if (i < kn) acc[i] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, keys + i * stride + c), acc[i]);
  }
  _mm512_mask_storeu_ps(dst, first_lanes(kn), _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(p.scale)));
}

// In place: row[s] = e^(row[s] - max); returns the sum.
MOERUN_AVX512 float softmax_numerators(float* row, int64_t len) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t s = 0; s < len; s += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, first_lanes(len - s), row + s));
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t s = 0; s < len; s += 16) {
    const __mmask16 k = first_lanes(len - s);
    const __m512 e = _mm512_maskz_mov_ps(k, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + s), m)));
    _mm512_mask_storeu_ps(row + s, k, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// out[j] for H queries (j < H) and dims [c0, c0 + 64): the sum over s in [s0, s1) of w[j][s] * v[s]
// added to out (or written, for the first rows), times inv[j] after the last rows. v[s] is at
// rows + (s - s0) * stride.
template <int H>
[[gnu::always_inline]] MOERUN_AVX512 inline void weigh_values(const AttentionParams& p, const float* rows, int64_t stride,
                                                              int64_t s0, int64_t s1, const float* const* w,
                                                              const float* inv, float* const* out, int64_t c0,
                                                              bool first, bool last) {
  __mmask16 m[kValueVecs];
#pragma GCC unroll 4
  for (int c = 0; c < kValueVecs; ++c) m[c] = first_lanes(p.v_dim - c0 - 16 * c);
  __m512 acc[H][kValueVecs];
#pragma GCC unroll 8
  for (int j = 0; j < H; ++j)
#pragma GCC unroll 4
    for (int c = 0; c < kValueVecs; ++c)
      acc[j][c] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m[c], out[j] + c0 + 16 * c);
  for (int64_t s = s0; s < s1; ++s) {
    __m512 vv[kValueVecs];
#pragma GCC unroll 4
    for (int c = 0; c < kValueVecs; ++c) vv[c] = _mm512_maskz_loadu_ps(m[c], rows + (s - s0) * stride + c0 + 16 * c);
#pragma GCC unroll 8
    for (int j = 0; j < H; ++j) {
      const __m512 ws = _mm512_set1_ps(w[j][s]);
#pragma GCC unroll 4
      for (int c = 0; c < kValueVecs; ++c) acc[j][c] = _mm512_fmadd_ps(ws, vv[c], acc[j][c]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < H; ++j)
#pragma GCC unroll 4
    for (int c = 0; c < kValueVecs; ++c) {
      const __m512 v = last ? _mm512_mul_ps(acc[j][c], _mm512_set1_ps(inv[j])) : acc[j][c];
      _mm512_mask_storeu_ps(out[j] + c0 + 16 * c, m[c], v);
    }
}

// attend_avx512 on a T cache.
template <KvType T>
MOERUN_AVX512 void attend_tile(const AttentionParams& p, int64_t t0, int64_t tokens, int64_t h0, int64_t heads,
                               float* scores, float* widened) {
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t kvh = h0 / group;
  const int64_t n = tokens * heads;  // queries, token-major
  int64_t longest = 0;
  for (int64_t i = 0; i < tokens; ++i) longest = std::max(longest, p.positions[t0 + i] + 1);
  auto len_of = [&](int64_t i) { return p.positions[t0 + i / heads] + 1; };
  auto query = [&](int64_t i) { return p.q + (t0 + i / heads) * p.q_token_stride + (h0 + i % heads) * p.q_head_stride; };
  // Scores, 16 keys at a time for every query, so each block of keys is loaded (and widened) once
  // into L1 for all.
  const int64_t ks = widened_stride(p.qk_dim);
  for (int64_t s0 = 0; s0 < longest; s0 += kKeyBlock) {
    const float* keys;
    int64_t stride;
    if constexpr (T == KvType::f32) {
      keys = static_cast<const float*>(p.k) + kvh * p.k_head_stride + s0 * p.k_pos_stride;
      stride = p.k_pos_stride;
    } else {
      const int64_t rows = std::min(kKeyBlock, longest - s0);
      for (int64_t r = 0; r < rows; ++r) {
        if (s0 + kPrefetchRows + r < longest)
          prefetch_row<T>(p.k, (s0 + kPrefetchRows + r) * p.k_pos_stride + kvh * p.k_head_stride, p.qk_dim);
        widen_row<T>(p.k, (s0 + r) * p.k_pos_stride + kvh * p.k_head_stride, p.qk_dim, widened + r * ks);
      }
      keys = widened;
      stride = ks;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t kn = std::min<int64_t>(kKeyBlock, len_of(i) - s0);
      if (kn > 0) score_block(p, query(i), keys, stride, static_cast<int>(kn), scores + i * longest + s0);
    }
  }
  // Values, for up to kPassQueries queries at a time: softmax numerators first (a row shorter than
  // its group of kValueHeads weighs the rest zero), then each block of value rows (widened once)
  // serves every group of kValueHeads queries. Where the blocks fall does not change a result: each
  // output sums its rows in order, its partial sums kept in out between blocks.
  const int64_t block = value_block_rows(p.v_dim), vs = widened_stride(p.v_dim);
  float inv[kPassQueries];
  const float* w[kPassQueries];
  float* out[kPassQueries];
  int64_t group_len[kPassQueries / kValueHeads];
  for (int64_t q0 = 0; q0 < n; q0 += kPassQueries) {
    const int64_t count = std::min(kPassQueries, n - q0);
    int64_t pass_len = 0;
    for (int64_t g = 0; g * kValueHeads < count; ++g) {
      const int64_t j0 = g * kValueHeads, j1 = std::min<int64_t>(count, j0 + kValueHeads);
      int64_t len = 0;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t i = q0 + j, li = len_of(i);
        float* row = scores + i * longest;
        inv[j] = 1.0f / softmax_numerators(row, li);
        len = std::max(len, li);
        w[j] = row;
        out[j] = p.out + ((t0 + i / heads) * p.n_heads + h0 + i % heads) * p.v_dim;
      }
      for (int64_t j = j0; j < j1; ++j) {
        float* row = scores + (q0 + j) * longest;
        std::fill(row + len_of(q0 + j), row + len, 0.0f);
      }
      group_len[g] = len;
      pass_len = std::max(pass_len, len);
    }
    for (int64_t s0 = 0; s0 < pass_len; s0 += block) {
      const float* rows;
      int64_t stride;
      if constexpr (T == KvType::f32) {
        rows = static_cast<const float*>(p.v) + kvh * p.v_head_stride + s0 * p.v_pos_stride;
        stride = p.v_pos_stride;
      } else {
        const int64_t s1 = std::min(pass_len, s0 + block);
        for (int64_t s = s0; s < s1; ++s) {
          if (s + kPrefetchRows < pass_len)
            prefetch_row<T>(p.v, (s + kPrefetchRows) * p.v_pos_stride + kvh * p.v_head_stride, p.v_dim);
          widen_row<T>(p.v, s * p.v_pos_stride + kvh * p.v_head_stride, p.v_dim, widened + (s - s0) * vs);
        }
        rows = widened;
        stride = vs;
      }
      for (int64_t g = 0; g * kValueHeads < count; ++g) {
        const int64_t len = group_len[g];
        if (s0 >= len) continue;
        const int64_t s1 = std::min(len, s0 + block), j0 = g * kValueHeads;
        const bool first = s0 == 0, last = s1 == len;
        const float* const* wg = w + j0;
        const float* ig = inv + j0;
        float* const* og = out + j0;
        for (int64_t c0 = 0; c0 < p.v_dim; c0 += 16 * kValueVecs) {
          switch (std::min<int64_t>(kValueHeads, count - j0)) {
            case 1: weigh_values<1>(p, rows, stride, s0, s1, wg, ig, og, c0, first, last); break;
            case 2: weigh_values<2>(p, rows, stride, s0, s1, wg, ig, og, c0, first, last); break;
            case 3: weigh_values<3>(p, rows, stride, s0, s1, wg, ig, og, c0, first, last); break;
            case 4: weigh_values<4>(p, rows, stride, s0, s1, wg, ig, og, c0, first, last); break;
            case 5: weigh_values<5>(p, rows, stride, s0, s1, wg, ig, og, c0, first, last); break;
            default: weigh_values<6>(p, rows, stride, s0, s1, wg, ig, og, c0, first, last); break;
          }
        }
      }
    }
  }
}

}  // namespace

int64_t attend_avx512_scratch(const AttentionParams& p) {
  if (p.kv_type == KvType::f32) return 0;
  return std::max(kKeyBlock * widened_stride(p.qk_dim), value_block_rows(p.v_dim) * widened_stride(p.v_dim));
}

MOERUN_AVX512 void attend_avx512(const AttentionParams& p, int64_t t0, int64_t tokens, int64_t h0, int64_t heads,
                                 float* scores, float* widened) {
  switch (p.kv_type) {
    case KvType::f32: attend_tile<KvType::f32>(p, t0, tokens, h0, heads, scores, widened); break;
    case KvType::f16: attend_tile<KvType::f16>(p, t0, tokens, h0, heads, scores, widened); break;
    case KvType::bf16: attend_tile<KvType::bf16>(p, t0, tokens, h0, heads, scores, widened); break;
    case KvType::q8_0: attend_tile<KvType::q8_0>(p, t0, tokens, h0, heads, scores, widened); break;
  }
}

}  // namespace moerun::cpu::detail
