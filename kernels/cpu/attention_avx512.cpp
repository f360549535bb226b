// AVX-512 attention for a tile of queries that share one KV head: a few consecutive tokens times
// the query heads of one KV head (GQA's group, or MLA's absorbed heads over the one latent row).
//   scores  per block of 16 keys, loaded once for the whole tile: one accumulator per key over the
//           query's dims, then the 16 sums come out of a transposing reduction tree as one vector
//           (no horizontal sum per key);
//   softmax the row max, exp (polynomial, below) and sum, vectorised over the scores;
//   values  up to 6 queries x 64 dims of output stay in registers while every value row is loaded
//           once for all of them; the 1 / sum is applied at the end.
// Every dimension may be any size (masked tails); rows past the token's position are never read.

// GCC 12's AVX-512 headers build their "undefined" vectors as self-initialised variables, which
// -Wuninitialized reports once inlined into a target-attributed function (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/avx512_util.h"

#define MOERUN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi,bmi2")))

namespace moerun::cpu::detail {
namespace {

constexpr int kValueVecs = 4;   // 64 output dims per pass
constexpr int kValueHeads = 6;  // x 6 queries = 24 accumulators
constexpr int64_t kValueBlockBytes = 256 << 10;  // value rows per block (L2)


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
MOERUN_AVX512 __m512 reduce16(const __m512 a[16]) {
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

// Scores of one query against keys [s0, s0 + kn), kn <= 16, scaled, into dst[0, kn).
MOERUN_AVX512 void score_block(const AttentionParams& p, const float* q, const float* kbase, int64_t s0, int kn,
                               float* dst) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t c = 0; c < p.qk_dim; c += 16) {
    const __mmask16 m = first_lanes(p.qk_dim - c);
    const __m512 qv = _mm512_maskz_loadu_ps(m, q + c);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
      if (i < kn) acc[i] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kbase + (s0 + i) * p.k_pos_stride + c), acc[i]);
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
// added to out (or written, for the first rows), times inv[j] after the last rows.
template <int H>
MOERUN_AVX512 void weigh_values(const AttentionParams& p, const float* vbase, int64_t s0, int64_t s1,
                                const float* const* w, const float* inv, float* const* out, int64_t c0, bool first,
                                bool last) {
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
    for (int c = 0; c < kValueVecs; ++c) vv[c] = _mm512_maskz_loadu_ps(m[c], vbase + s * p.v_pos_stride + c0 + 16 * c);
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

}  // namespace

MOERUN_AVX512 void attend_avx512(const AttentionParams& p, int64_t t0, int64_t tokens, int64_t h0, int64_t heads,
                                 float* scores) {
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t kvh = h0 / group;
  const float* kbase = p.k + kvh * p.k_head_stride;
  const float* vbase = p.v + kvh * p.v_head_stride;
  const int64_t n = tokens * heads;  // queries, token-major
  int64_t longest = 0;
  for (int64_t i = 0; i < tokens; ++i) longest = std::max(longest, p.positions[t0 + i] + 1);
  auto len_of = [&](int64_t i) { return p.positions[t0 + i / heads] + 1; };
  auto query = [&](int64_t i) { return p.q + (t0 + i / heads) * p.q_token_stride + (h0 + i % heads) * p.q_head_stride; };
  // Scores, 16 keys at a time for every query, so each block of keys is loaded once into L1 for all.
  for (int64_t s0 = 0; s0 < longest; s0 += 16)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t kn = std::min<int64_t>(16, len_of(i) - s0);
      if (kn > 0) score_block(p, query(i), kbase, s0, static_cast<int>(kn), scores + i * longest + s0);
    }
  // Softmax numerators; a row shorter than the longest (an earlier token) weighs the rest zero.
  float inv[kValueHeads];
  const float* w[kValueHeads];
  float* out[kValueHeads];
  for (int64_t i0 = 0; i0 < n; i0 += kValueHeads) {
    const int count = static_cast<int>(std::min<int64_t>(kValueHeads, n - i0));
    int64_t len = 0;
    for (int j = 0; j < count; ++j) {
      const int64_t i = i0 + j, li = len_of(i);
      float* row = scores + i * longest;
      inv[j] = 1.0f / softmax_numerators(row, li);
      len = std::max(len, li);
      w[j] = row;
      out[j] = p.out + ((t0 + i / heads) * p.n_heads + h0 + i % heads) * p.v_dim;
    }
    for (int j = 0; j < count; ++j) {
      const int64_t li = len_of(i0 + j);
      std::fill(scores + (i0 + j) * longest + li, scores + (i0 + j) * longest + len, 0.0f);
    }
    // Rows in blocks that stay in L2 while every 64-dim slice of the output passes over them.
    const int64_t block = std::max<int64_t>(16, kValueBlockBytes / (p.v_dim * static_cast<int64_t>(sizeof(float))));
    for (int64_t s0 = 0; s0 < len; s0 += block) {
      const int64_t s1 = std::min(len, s0 + block);
      const bool first = s0 == 0, last = s1 == len;
      for (int64_t c0 = 0; c0 < p.v_dim; c0 += 16 * kValueVecs) {
        switch (count) {
          case 1: weigh_values<1>(p, vbase, s0, s1, w, inv, out, c0, first, last); break;
          case 2: weigh_values<2>(p, vbase, s0, s1, w, inv, out, c0, first, last); break;
          case 3: weigh_values<3>(p, vbase, s0, s1, w, inv, out, c0, first, last); break;
          case 4: weigh_values<4>(p, vbase, s0, s1, w, inv, out, c0, first, last); break;
          case 5: weigh_values<5>(p, vbase, s0, s1, w, inv, out, c0, first, last); break;
          default: weigh_values<6>(p, vbase, s0, s1, w, inv, out, c0, first, last); break;
        }
      }
    }
  }
}

}  // namespace moerun::cpu::detail
