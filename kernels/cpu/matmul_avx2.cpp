// The AVX2 + FMA + F16C matmul kernels: the fallback for x86-64 CPUs without AVX-512 VNNI. The same
// shapes as matmul_avx512.cpp at half the width and with half the registers: few tokens stream four
// weight rows with bf16 widened in registers (x reordered per 16-chunk into even then odd elements),
// two tokens per pass; many tokens widen four rows once and run a 4-row x 2-token tile. Quantized
// weights use vpmaddubsw (no VNNI here): q8_0 as |w| x sign(a, w) so the 16-bit pair sums cannot
// saturate (2 * 127 * 127 < 2^15); q4_0's unsigned nibbles (q + 8 <= 15) need no such care, and the
// + 8 comes back off as 8 * sum(a) per block. FP8 (e4m3) widens through fp16 as in matmul_avx512.cpp
// (f8x16 there): decode (up to kF8GemvMaxTokens tokens, in pairs) scales x per row block and streams
// the bytes; prefill widens rows with their scales applied (widen_row_f8_avx2).

#include <immintrin.h>

#include <algorithm>
#include <cstring>
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

// ---- f8_e4m3 ------------------------------------------------------------------------------------

// 16 E4M3 bytes as two fp32 vectors, each weight times 2^-8 exactly: the fp16 built from the
// sign-extended byte, as matmul_avx512.cpp's f8x16 explains (NaN bytes read as finite +-480).
MOERUN_AVX2 void f8x16(__m128i bytes, __m256& lo, __m256& hi) {
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7),
                                     _mm256_set1_epi16(static_cast<short>(0xbf80)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

// The decode kernel's faster widening, as matmul_avx512.cpp's f8_widen32 (bits) explains: the byte's
// bits placed in an fp32 (sign-extended, shifted left by 20, sign copies at bits 30..27 cleared),
// worth fp8 * 2^-120 (fp32 subnormals for E4M3's), exact while MXCSR.DAZ is clear.
MOERUN_AVX2 __m256 f8x8_bits(__m128i bytes) {
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(_mm256_cvtepi8_epi32(bytes), 20),
                                              _mm256_set1_epi32(static_cast<int>(0x87f00000u))));
}

// As matmul_avx512.cpp: half = f8x16 (fp8 * 2^-8, x scaled by scale * 2^8), bits = f8x8_bits (fp8 *
// 2^-120, x scaled by scale * 2^64), the same bits either way; bits unless MXCSR.DAZ is set. Here in
// natural order (no reordering of x: vpmovsxbd of 8 bytes is one 256-bit op).
enum class F8Widen { half, bits };

// min(count, 16) bytes from p, the rest zero (AVX2 has no byte-masked load).
MOERUN_AVX2 __m128i load_bytes(const uint8_t* p, int64_t count) {
  if (count >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) uint8_t tmp[16] = {};
  std::memcpy(tmp, p, static_cast<size_t>(count));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}

// 16 weights from p (only the first `count` there when count < 16; the rest read as zero).
template <F8Widen W>
MOERUN_AVX2 void f8_widen(const uint8_t* p, int64_t count, __m256& lo, __m256& hi) {
  if constexpr (W == F8Widen::bits) {
    if (count >= 16) {  // two 8-byte loads, each folded into its vpmovsxbd
      lo = f8x8_bits(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
      hi = f8x8_bits(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
    } else {
      const __m128i bytes = load_bytes(p, count);
      lo = f8x8_bits(bytes);
      hi = f8x8_bits(_mm_unpackhi_epi64(bytes, bytes));
    }
  } else {
    f8x16(load_bytes(p, count), lo, hi);
  }
}

// Token t's x times row block scales `srow` times `factor` (a power of two matching the widening) at
// dst + t * kp, zero from in to kp.
MOERUN_AVX2 void f8_scale_acts(const MatmulCall& c, const float* srow, float factor, float* dst) {
  const MatmulParams& p = *c.p;
  const int64_t in = p.in_features, bi = p.block_in;
  for (int64_t t = 0; t < p.n; ++t) {
    const float* x = p.x + t * c.xs;
    float* d = dst + t * c.kp;
    for (int64_t b0 = 0; b0 < in; b0 += bi) {
      const __m256 scale = _mm256_set1_ps(srow[b0 / bi] * factor);
      const int64_t b1 = std::min(in, b0 + bi);
      for (int64_t i = b0; i < b1; i += 8) {
        if (b1 - i >= 8) {
          _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), scale));
        } else {
          const __m256i m = lane_mask(b1 - i);
          _mm256_maskstore_ps(d + i, m, _mm256_mul_ps(_mm256_maskload_ps(x + i, m), scale));
        }
      }
    }
    std::fill(d + in, d + c.kp, 0.0f);
  }
}

// 16 weights at i of R FP8 rows against T tokens from t0 of xs (full: all 16 bytes there; else the
// row's last in - i).
template <F8Widen W, int R, int T>
MOERUN_AVX2 __attribute__((always_inline)) inline void gemv_f8_step(const MatmulCall& c, const float* xs,
                                                                     const uint8_t* const* w, int64_t i, int64_t t0,
                                                                     bool full, __m256 (&acc)[R][T]) {
  __m256 xa[T], xb[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    xa[t] = _mm256_loadu_ps(xs + (t0 + t) * c.kp + i);
    xb[t] = _mm256_loadu_ps(xs + (t0 + t) * c.kp + i + 8);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m256 a, b;
    f8_widen<W>(w[r] + i, full ? 16 : c.p->in_features - i, a, b);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[r][t] = _mm256_fmadd_ps(a, xa[t], acc[r][t]);
      acc[r][t] = _mm256_fmadd_ps(b, xb[t], acc[r][t]);
    }
  }
}

// R FP8 rows from row o (one row block, whose scales xs carries) x T tokens from t0: one 64-byte line
// of each row per step, prefetched as in gemv; the tail through load_bytes (xs is zero padded).
template <F8Widen W, int R, int T>
MOERUN_AVX2 void gemv_f8(const MatmulCall& c, const float* xs, int64_t o, int64_t t0) {
  const MatmulParams& p = *c.p;
  const int64_t in = p.in_features;
  const uint8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const uint8_t*>(p.weight) + (o + r) * in;
  const int64_t far = prefetch_far_offset(R * in);
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kF8Chunk <= in; i += kF8Chunk) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i) + kPrefetchNear, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i) + far, _MM_HINT_T1);
    }
#pragma GCC unroll 4
    for (int64_t h = 0; h < kF8Chunk; h += 16) gemv_f8_step<W, R, T>(c, xs, w, i + h, t0, true, acc);
  }
  for (; i < in; i += 16) gemv_f8_step<W, R, T>(c, xs, w, i, t0, false, acc);
  constexpr float kUnscale = W == F8Widen::bits ? 0x1p56f : 1.0f;  // (2^-120 * 2^64)^-1, exact
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
      p.out[(t0 + t) * c.os + o + r] = hsum(acc[r][t]) * kUnscale + (p.bias ? p.bias[o + r] : 0.0f);
}

// Decode on FP8 weights: rows [o0, o1) one row block at a time, x scaled for each; four rows and two
// tokens per pass as gemv_rows.
template <F8Widen W>
MOERUN_AVX2 void gemv_f8_rows(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  const MatmulParams& p = *c.p;
  const int64_t n = p.n;
  float* xs = grow(s.f8x, n * c.kp);
  for (int64_t b = o0; b < o1;) {
    const int64_t end = std::min(o1, (b / p.block_out + 1) * p.block_out);
    f8_scale_acts(c, f8_scale_row(p, b), W == F8Widen::bits ? 0x1p64f : 256.0f, xs);
    for (int64_t o = b; o < end; o += kR) {
      const bool four = o + kR <= end;
      for (int64_t t = 0; t < n; t += 2) {
        const bool two = t + 2 <= n;
        if (four) {
          if (two) gemv_f8<W, kR, 2>(c, xs, o, t);
          else gemv_f8<W, kR, 1>(c, xs, o, t);
        } else {
          for (int64_t r = o; r < end; ++r) {
            if (two) gemv_f8<W, 1, 2>(c, xs, r, t);
            else gemv_f8<W, 1, 1>(c, xs, r, t);
          }
        }
      }
    }
    b = end;
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
          if (p.weight_dtype == DType::f8_e4m3) widen_row_f8_avx2(p, o + r, buf + r * k);
          else widen_row(p, o + r, buf + r * k);
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
    case DType::f8_e4m3:
      if (c.p->n <= kF8GemvMaxTokens) {
        // MXCSR of this thread: bit 6 is DAZ, under which f8x8_bits would lose the subnormal bytes.
        if (_mm_getcsr() & 0x40) gemv_f8_rows<F8Widen::half>(c, o0, o1, s);
        else gemv_f8_rows<F8Widen::bits>(c, o0, o1, s);
        return;
      }
      break;
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

// widen_row's FP8 case in vectors: the same values (fp8 * 2^-8 exact, times scale * 256: rounded once).
MOERUN_AVX2 void widen_row_f8_avx2(const MatmulParams& p, int64_t o, float* dst) {
  const int64_t in = p.in_features, bi = p.block_in;
  const uint8_t* q = static_cast<const uint8_t*>(p.weight) + o * in;
  const float* srow = f8_scale_row(p, o);
  for (int64_t b0 = 0; b0 < in; b0 += bi) {
    const __m256 scale = _mm256_set1_ps(srow[b0 / bi] * 256.0f);
    const int64_t b1 = std::min(in, b0 + bi);
    for (int64_t i = b0; i < b1; i += 16) {
      __m256 a, b;
      f8x16(load_bytes(q + i, b1 - i), a, b);
      a = _mm256_mul_ps(a, scale);
      b = _mm256_mul_ps(b, scale);
      if (b1 - i >= 16) {
        _mm256_storeu_ps(dst + i, a);
        _mm256_storeu_ps(dst + i + 8, b);
      } else {
        _mm256_maskstore_ps(dst + i, lane_mask(b1 - i), a);
        _mm256_maskstore_ps(dst + i + 8, lane_mask(b1 - i - 8), b);
      }
    }
  }
}

MOERUN_AVX2 void axpy_f8_avx2(float* out, float alpha, const uint8_t* w, const float* scale, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const __m256 s = _mm256_set1_ps(alpha * scale[b0 / block] * 256.0f);  // x 256: see f8x16
    const int64_t b1 = std::min(n, b0 + block);
    for (int64_t j = b0; j < b1; j += 16) {
      __m256 a, b;
      f8x16(load_bytes(w + j, b1 - j), a, b);
      if (b1 - j >= 16) {
        _mm256_storeu_ps(out + j, _mm256_fmadd_ps(a, s, _mm256_loadu_ps(out + j)));
        _mm256_storeu_ps(out + j + 8, _mm256_fmadd_ps(b, s, _mm256_loadu_ps(out + j + 8)));
      } else {
        const __m256i ma = lane_mask(b1 - j), mb = lane_mask(b1 - j - 8);
        _mm256_maskstore_ps(out + j, ma, _mm256_fmadd_ps(a, s, _mm256_maskload_ps(out + j, ma)));
        _mm256_maskstore_ps(out + j + 8, mb, _mm256_fmadd_ps(b, s, _mm256_maskload_ps(out + j + 8, mb)));
      }
    }
  }
}

}  // namespace moerun::cpu::detail
