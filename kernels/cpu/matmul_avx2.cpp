// The AVX2 + FMA + F16C matmul kernels: the fallback for x86-64 CPUs without AVX-512 VNNI. The same
// shapes as matmul_avx512.cpp at half the width and with half the registers: few tokens stream four
// weight rows with bf16 widened in registers (x reordered per 16-chunk into even then odd elements),
// two tokens per pass; many tokens widen four rows once and run a 4-row x 2-token tile. Quantized
// weights use vpmaddubsw (no VNNI here): q8_0 as |w| x sign(a, w) so the 16-bit pair sums cannot
// saturate (2 * 127 * 127 < 2^15); q4_0's unsigned nibbles (q + 8 <= 15) need no such care, and the
// + 8 comes back off as 8 * sum(a) per block.

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/quant.h"

#define MOERUN_AVX2 __attribute__((target("avx2,fma,f16c,bmi,bmi2")))

namespace moerun::cpu::detail {
namespace {

constexpr int kR = 4;
constexpr int64_t kTileBytes = 192 << 10;

MOERUN_AVX2 float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// Lanes [0, count) set: for masked loads and stores of a tail.
MOERUN_AVX2 __m256i lane_mask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 16 weights at element i as two fp32 vectors (bf16: even then odd elements). The tail chunk copies
// the remaining elements into a zeroed buffer first (no 16-bit masked loads in AVX2).
template <DType D>
MOERUN_AVX2 void load16(const char* row, int64_t i, int64_t in, __m256& a, __m256& b) {
  if constexpr (D == DType::f32) {
    const float* w = reinterpret_cast<const float*>(row) + i;
    if (in - i >= 16) {
      a = _mm256_loadu_ps(w);
      b = _mm256_loadu_ps(w + 8);
    } else {
      a = _mm256_maskload_ps(w, lane_mask(in - i));
      b = _mm256_maskload_ps(w + 8, lane_mask(in - i - 8));
    }
  } else {
    __m256i v;
    const auto* src = reinterpret_cast<const uint16_t*>(row) + i;
    if (in - i >= 16) {
      v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    } else {
      alignas(32) uint16_t tmp[16] = {};
      std::copy(src, src + (in - i), tmp);
      v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
    }
    if constexpr (D == DType::bf16) {
      a = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      b = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
    } else {
      a = _mm256_cvtph_ps(_mm256_castsi256_si128(v));
      b = _mm256_cvtph_ps(_mm256_extracti128_si256(v, 1));
    }
  }
}

template <DType D, int R, int T>
MOERUN_AVX2 void gemv(const MatmulCall& c, int64_t o, int64_t t0) {
  const MatmulParams& p = *c.p;
  const int64_t in = p.in_features;
  constexpr int64_t kBytes = D == DType::f32 ? 4 : 2;
  const char* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const char*>(p.weight) + (o + r) * in * kBytes;
  const int64_t far = prefetch_far_offset(R * in * kBytes);
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < in; i += 16) {
    __m256 xa[T], xb[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      xa[t] = _mm256_loadu_ps(c.xp + (t0 + t) * c.kp + i);
      xb[t] = _mm256_loadu_ps(c.xp + (t0 + t) * c.kp + i + 8);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if ((i & 31) == 0) {  // once per 64 bytes of bf16 / f16 (twice for f32)
        _mm_prefetch(w[r] + i * kBytes + kPrefetchNear, _MM_HINT_T0);
        _mm_prefetch(w[r] + i * kBytes + far, _MM_HINT_T1);
      }
      __m256 a, b;
      load16<D>(w[r], i, in, a, b);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        acc[r][t] = _mm256_fmadd_ps(a, xa[t], acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(b, xb[t], acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) p.out[(t0 + t) * c.os + o + r] = hsum(acc[r][t]) + (p.bias ? p.bias[o + r] : 0.0f);
}

template <DType D>
MOERUN_AVX2 void gemv_rows(const MatmulCall& c, int64_t o0, int64_t o1) {
  const int64_t n = c.p->n;
  for (int64_t o = o0; o < o1; o += kR) {
    const bool four = o + kR <= o1;
    for (int64_t t = 0; t < n; t += 2) {
      const bool two = t + 2 <= n;
      if (four) {
        if (two) gemv<D, kR, 2>(c, o, t);
        else gemv<D, kR, 1>(c, o, t);
      } else {
        for (int64_t r = o; r < o1; ++r) {
          if (two) gemv<D, 1, 2>(c, r, t);
          else gemv<D, 1, 1>(c, r, t);
        }
      }
    }
  }
}

template <int R, int T>
MOERUN_AVX2 void tile(const float* const* w, const float* x, int64_t xs, int64_t k, float* out, int64_t os,
                      const float* bias, int64_t o) {
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += 8) {
    const bool full = k - i >= 8;
    const __m256i m = full ? _mm256_set1_epi32(-1) : lane_mask(k - i);
    __m256 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = full ? _mm256_loadu_ps(w[r] + i) : _mm256_maskload_ps(w[r] + i, m);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256 xv = full ? _mm256_loadu_ps(x + t * xs + i) : _mm256_maskload_ps(x + t * xs + i, m);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) out[t * os + o + r] = hsum(acc[r][t]) + (bias ? bias[o + r] : 0.0f);
}

MOERUN_AVX2 void gemm_rows(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  const MatmulParams& p = *c.p;
  const int64_t k = p.in_features, n = p.n;
  float* buf = p.weight_dtype != DType::f32 ? grow(s.rows, kR * k) : nullptr;
  const int64_t tile_tokens = std::max<int64_t>(2, kTileBytes / (k * static_cast<int64_t>(sizeof(float))) / 2 * 2);
  for (int64_t t0 = 0; t0 < n; t0 += tile_tokens) {
    const int64_t t1 = std::min(n, t0 + tile_tokens);
    for (int64_t o = o0; o < o1; o += kR) {
      const int rows = static_cast<int>(std::min<int64_t>(kR, o1 - o));
      const float* w[kR];
      for (int r = 0; r < rows; ++r) {
        if (p.weight_dtype == DType::f32) {
          w[r] = static_cast<const float*>(p.weight) + (o + r) * k;
        } else {
          widen_row(p, o + r, buf + r * k);
          w[r] = buf + r * k;
        }
      }
      for (int64_t t = t0; t < t1; t += 2) {
        const bool two = t + 2 <= t1;
        const float* x = p.x + t * c.xs;
        float* out = p.out + t * c.os;
        if (rows == kR) {
          if (two) tile<kR, 2>(w, x, c.xs, k, out, c.os, p.bias, o);
          else tile<kR, 1>(w, x, c.xs, k, out, c.os, p.bias, o);
        } else {
          for (int r = 0; r < rows; ++r) {
            if (two) tile<1, 2>(w + r, x, c.xs, k, out, c.os, p.bias, o + r);
            else tile<1, 1>(w + r, x, c.xs, k, out, c.os, p.bias, o + r);
          }
        }
      }
    }
  }
}

// R quantized rows from row o against token t's activations, side by side (R streams in flight,
// prefetched near and whole passes ahead as in the float GEMV); each row's arithmetic is the same
// whatever R is.
template <DType D, int R>
MOERUN_AVX2 void dot_quant(const MatmulCall& c, int64_t o, int64_t t) {
  const MatmulParams& p = *c.p;
  const int64_t qb = quant_block_bytes(D);
  const size_t row_bytes = dtype_bytes(D, p.in_features);
  const uint8_t* row[R];
  for (int r = 0; r < R; ++r) row[r] = static_cast<const uint8_t*>(p.weight) + static_cast<size_t>(o + r) * row_bytes;
  const int64_t far = prefetch_far_offset(R * static_cast<int64_t>(row_bytes));
  const int8_t* a = c.xq + t * c.kp;
  const float* da = c.xd + t * c.nb;
  const int32_t* sa = c.xsum + t * c.nb;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  float corr[R];  // q4_0: sum over blocks of scale * 8 * sum(a)
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    corr[r] = 0.0f;
  }
  for (int64_t g = 0; g * kQuantGroupBlocks < c.nb; ++g) {
    const int64_t first = g * kQuantGroupBlocks, count = std::min(kQuantGroupBlocks, c.nb - first);
    const int64_t base = quant_group_offset(D, g);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t b = first + j;
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + b * kQuantBlock));
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint8_t* quants = row[r] + base;
        if ((j * qb) % 64 == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(quants + j * qb) + kPrefetchNear, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(quants + j * qb) + far, _MM_HINT_T1);
        }
        const float s = _cvtsh_ss(reinterpret_cast<const uint16_t*>(quants + count * qb)[j]) * da[b];
        __m256i prod;
        if constexpr (D == DType::q8_0) {
          const __m256i ws = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(quants + j * qb)),
                                              _mm256_set1_epi8(static_cast<char>(0x80)));
          prod = _mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(av, ws));
        } else {
          const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(quants + j * qb)));
          const __m256i u = _mm256_and_si256(_mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                                             _mm256_set1_epi8(0x0f));
          prod = _mm256_maddubs_epi16(u, av);
          corr[r] += s * static_cast<float>(8 * sa[b]);
        }
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones)), _mm256_set1_ps(s), acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) p.out[t * c.os + o + r] = hsum(acc[r]) - corr[r] + (p.bias ? p.bias[o + r] : 0.0f);
}

template <DType D>
MOERUN_AVX2 void quant_rows(const MatmulCall& c, int64_t o0, int64_t o1) {
  // Four rows at a time; for several tokens the rows are re-read from L1, not memory.
  for (int64_t o = o0; o < o1; o += kR)
    for (int64_t t = 0; t < c.p->n; ++t) {
      if (o + kR <= o1) dot_quant<D, kR>(c, o, t);
      else for (int64_t r = o; r < o1; ++r) dot_quant<D, 1>(c, r, t);
    }
}

}  // namespace

MOERUN_AVX2 void rows_avx2(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  switch (c.p->weight_dtype) {
    case DType::q8_0: quant_rows<DType::q8_0>(c, o0, o1); return;
    case DType::q4_0: quant_rows<DType::q4_0>(c, o0, o1); return;
    default: break;
  }
  if (c.xp) {
    switch (c.p->weight_dtype) {
      case DType::bf16: gemv_rows<DType::bf16>(c, o0, o1); return;
      case DType::f16: gemv_rows<DType::f16>(c, o0, o1); return;
      default: gemv_rows<DType::f32>(c, o0, o1); return;
    }
  }
  gemm_rows(c, o0, o1, s);
}

}  // namespace moerun::cpu::detail
