// The AVX-512 matmul kernels (F, BW, VL, DQ, VNNI; every function carries the target attribute, so
// the rest of the library stays baseline x86-64 and this file is only entered when the CPU has them).
//
// Few tokens (decode): kR = 4 weight rows stream side by side (four independent loads in flight,
// hardware prefetch plus software prefetch near and whole passes ahead, see matmul_impl.h) and each
// 64-byte weight vector is used for every token before moving on, so each weight is read exactly
// once per call. bf16 widens in registers: a 32-element vector shifted left by 16 is its even
// elements as fp32, masked with 0xffff0000 its odd ones; x was reordered to match (matmul.cpp), so
// a bf16 vector costs two integer ops.
// Many tokens (prefill): outer products on packed panels of 48 rows (gemm_rows and quant_gemm_rows):
// the rows are packed once per call into vectors of 16 rows at one k (or 4 k for int8), and each
// tile multiplies them by broadcast activations of several tokens, so no horizontal sums are needed
// and one weight load feeds 4 to 8 FMAs or vpdpbusds.
// f8_e4m3 (block-scaled): bytes widen in registers exactly, up to a power of two folded into the
// scales: through fp16 (f8x16) or, in decode, placed straight into fp32 bits (f8_widen32). Decode
// (up to kF8GemvMaxTokens = 16 tokens, in groups of 4) multiplies x by a row block's scales once per
// worker and row block, so the inner loop is the float GEMV's with a 3-op widening; prefill widens
// 16 rows x 16 weights at a time, applies the scales and packs them as an f32 panel.
// q8_0 / q4_0: activations are quantized per 32-block once per call; VNNI's vpdpbusd multiplies the
// stored unsigned quants (q + offset) by the int8 activations, the dot starting from
// -offset * sum(a), which makes it exactly sum(q * a); in decode per pair of blocks the int32 lanes
// go to fp32 and are scaled by weight scale x activation scale (8 lanes per block).

// GCC 12's AVX-512 headers build their "undefined" vectors as self-initialised variables, which
// -Wuninitialized reports once inlined into a target-attributed function (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/avx512_util.h"
#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/quant.h"

#define MOERUN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c,bmi,bmi2")))

namespace moerun::cpu::detail {
namespace {

constexpr int kR = 4;                  // weight rows per kernel pass
// From this many tokens quantized weights are repacked per call for outer products (see quant_panel).
// (Measured on 2048 x 2048: even at 5 tokens repacking costs no more than it saves.)
constexpr int64_t kQuantGemmMinTokens = 6;
constexpr int kPanelVecs = 3;  // prefill panels of 3 x 16 = 48 rows

// The lane numbers 0..15.
MOERUN_AVX512 __m512i lane_numbers() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }

// 32 weights at element i of a row as two fp32 vectors, in the order matmul.cpp prepared x for.
template <DType D>
struct W32;

template <>
struct W32<DType::f32> {
  static constexpr int64_t kBytes = 4;
  MOERUN_AVX512 static void load(const char* row, int64_t i, __mmask32 m, __m512& a, __m512& b) {
    const float* w = reinterpret_cast<const float*>(row) + i;
    a = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), w);
    b = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), w + 16);
  }
};

template <>
struct W32<DType::bf16> {
  static constexpr int64_t kBytes = 2;
  MOERUN_AVX512 static void load(const char* row, int64_t i, __mmask32 m, __m512& a, __m512& b) {
    const __m512i v = _mm512_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + i);
    a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));                                     // even elements
    b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));  // odd
  }
};

template <>
struct W32<DType::f16> {
  static constexpr int64_t kBytes = 2;
  MOERUN_AVX512 static void load(const char* row, int64_t i, __mmask32 m, __m512& a, __m512& b) {
    const __m512i v = _mm512_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + i);
    a = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
    b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
  }
};

// R rows from row o, T tokens from t0: out[t, o + r] = W[o + r] . x[t] + bias.
template <DType D, int R, int T>
MOERUN_AVX512 void gemv(const MatmulCall& c, int64_t o, int64_t t0) {
  const MatmulParams& p = *c.p;
  const int64_t in = p.in_features;
  const char* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const char*>(p.weight) + (o + r) * in * W32<D>::kBytes;
  const int64_t far = prefetch_far_offset(R * in * W32<D>::kBytes);
  __m512 acc[R][T];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < in; i += 32) {
    // Full vectors but the last (a mask of the remaining elements; masked loads cost nothing more).
    const __mmask32 m = in - i >= 32 ? ~0u : _bzhi_u32(~0u, static_cast<unsigned>(in - i));
    __m512 xa[T], xb[T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      xa[t] = _mm512_loadu_ps(c.xp + (t0 + t) * c.kp + i);  // padded with zeros to kp: no mask needed
      xb[t] = _mm512_loadu_ps(c.xp + (t0 + t) * c.kp + i + 16);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(w[r] + i * W32<D>::kBytes + kPrefetchNear, _MM_HINT_T0);
      _mm_prefetch(w[r] + i * W32<D>::kBytes + far, _MM_HINT_T1);
      __m512 a, b;
      W32<D>::load(w[r], i, m, a, b);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        acc[r][t] = _mm512_fmadd_ps(a, xa[t], acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(b, xb[t], acc[r][t]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
      p.out[(t0 + t) * c.os + o + r] = _mm512_reduce_add_ps(acc[r][t]) + (p.bias ? p.bias[o + r] : 0.0f);
}

// R rows from row o for every token, 4 tokens per pass: the rows stay in L1 for the next pass, so
// the weights are read from memory once for a batch of up to kGemvMaxTokens tokens. A token's sums
// take the same instructions in every pass and group size: its results do not depend on how many
// tokens share the call (a batched decode step gives each sequence what it gets alone).
template <DType D, int R>
MOERUN_AVX512 void gemv_tokens(const MatmulCall& c, int64_t o) {
  const int64_t n = c.p->n;
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) gemv<D, R, 4>(c, o, t);
  switch (n - t) {
    case 1: gemv<D, R, 1>(c, o, t); break;
    case 2: gemv<D, R, 2>(c, o, t); break;
    case 3: gemv<D, R, 3>(c, o, t); break;
    default: break;
  }
}

template <DType D>
MOERUN_AVX512 void gemv_dispatch(const MatmulCall& c, int64_t o0, int64_t o1) {
  int64_t o = o0;
  for (; o + kR <= o1; o += kR) gemv_tokens<D, kR>(c, o);
  for (; o < o1; ++o) gemv_tokens<D, 1>(c, o);  // the same per-row arithmetic as in the 4-row pass
}

// ---- f8_e4m3 ------------------------------------------------------------------------------------

// 16 E4M3 bytes as fp32, each times 2^-8 exactly. A byte sign-extended to 16 bits and shifted left by
// 7 has its exponent and mantissa (bits 6..0) at fp16's bits 13..7 and its sign at bits 15 and 14;
// clearing bit 14 leaves the fp16 with the byte's sign, exponent field e and mantissa m << 7, worth
// 2^(e - 15) (1 + m / 8) = fp8 * 2^-8 for normal bytes (E4M3's bias is 7) and 2^-14 m / 8 = fp8 * 2^-8
// for subnormal ones (e = 0), so vcvtph2ps yields every finite E4M3 value times 2^-8 exactly (Zen 4
// and Sapphire Rapids have no FP8 conversion of their own). Callers fold the 256 into the block scale,
// a power of two, so fp8 * scale still rounds once. E4M3's NaN bytes (0x7f, 0xff) come out finite
// (+-480): checkpoints hold none, and a check would cost a compare per vector.
MOERUN_AVX512 __m512 f8x16(__m128i bytes) {
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7),
                                     _mm256_set1_epi16(static_cast<short>(0xbf80)));
  return _mm512_cvtph_ps(h);
}

// The decode kernel's widenings of 32 E4M3 bytes, as two fp32 vectors: the even-numbered weights
// (lo) and the odd ones (hi), the order bf16 widens in (x is reordered to match, f8_scale_acts).
// Bits, the fast one: the bytes sign-extended to 16 bits, each 32-bit lane holding an even weight's
// word below an odd one's; shifted left by 20 (even) or 4 (odd), a word's sign copies land at bits
// 31..27 and its exponent and mantissa bits at 26..20, and clearing bits 30..27 and 19..0 leaves the
// fp32 with the byte's sign, exponent field e and mantissa m << 20, worth fp8 * 2^-120 for every
// finite byte (e = 0 gives an fp32 subnormal, m 2^-149 2^20 = fp8 2^-120). Five integer ops per 32
// weights and no vcvtph2ps, of which Zen 4 completes one zmm per two cycles (measured with the FMA,
// hot in L1: 2.8 cycles per 16 weights through fp16, 2.1 placing 16 bytes per vpmovsxbd, 1.9 this
// way; decode 2048 x 2048 went from 19 to 27 GB/s hot). Exact only
// while MXCSR.DAZ is clear (DAZ would read the subnormal bytes as zero): the kernels check it per
// call and fall back to Half, f8x16's fp16 (fp8 * 2^-8) in the same lanes. x is scaled by
// scale * 2^64 or scale * 2^8 to match, so every product, partial sum and result of one is the
// other's times 2^-56 exactly: both give the same bits (the partial sums stay normal unless
// |sum| < 2^-70, and x * scale overflows only past 2^64).
enum class F8Widen { half, bits };

template <F8Widen W>
MOERUN_AVX512 void f8_widen32(__m256i bytes, __m512& lo, __m512& hi) {
  const __m512i words = _mm512_cvtepi8_epi16(bytes);
  if constexpr (W == F8Widen::bits) {
    const __m512i keep = _mm512_set1_epi32(static_cast<int>(0x87f00000u));
    lo = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(words, 20), keep));
    hi = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(words, 4), keep));
  } else {
    const __m512i h = _mm512_and_si512(_mm512_slli_epi16(words, 7), _mm512_set1_epi16(static_cast<short>(0xbf80)));
    lo = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));  // the low (even) fp16 of each 32-bit lane
    hi = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16)));
  }
}

// Token t's x times row block scales `srow` times `factor` (a power of two matching the widening) at
// dst + t * kp, zero from in to kp, each 32 reordered as their even elements then their odd ones (as
// f8_widen32 widens): one rounding per activation, done once per worker and row block instead of
// once per weight.
MOERUN_AVX512 void f8_scale_acts(const MatmulCall& c, const float* srow, float factor, float* dst) {
  const MatmulParams& p = *c.p;
  const int64_t in = p.in_features, bi = p.block_in;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t t = 0; t < p.n; ++t) {
    const float* x = p.x + t * c.xs;
    float* d = dst + t * c.kp;
    for (int64_t b0 = 0; b0 < in; b0 += bi) {
      const __m512 scale = _mm512_set1_ps(srow[b0 / bi] * factor);
      const int64_t b1 = std::min(in, b0 + bi);
      for (int64_t i = b0; i < b1; i += 16) {  // masked at the block's end: blocks need not be whole vectors
        const __mmask16 m = first_lanes(b1 - i);
        _mm512_mask_storeu_ps(d + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale));
      }
    }
    std::fill(d + in, d + c.kp, 0.0f);
    for (int64_t i = 0; i < c.kp; i += 32) {
      const __m512 a = _mm512_loadu_ps(d + i), b = _mm512_loadu_ps(d + i + 16);
      _mm512_storeu_ps(d + i, _mm512_permutex2var_ps(a, even, b));
      _mm512_storeu_ps(d + i + 16, _mm512_permutex2var_ps(a, odd, b));
    }
  }
}

// R FP8 rows from row o (all in one row block, whose scales xs carries) x T tokens from t0: as gemv
// above, one 64-byte line of each row per step (prefetched as there), widened 32 weights at a time and
// used for every token; the last < 64 weights with masked loads (xs is zero padded to kp).
template <F8Widen W, int R, int T>
MOERUN_AVX512 void gemv_f8(const MatmulCall& c, const float* xs, int64_t o, int64_t t0) {
  const MatmulParams& p = *c.p;
  const int64_t in = p.in_features;
  const uint8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const uint8_t*>(p.weight) + (o + r) * in;
  const int64_t far = prefetch_far_offset(R * in);
  __m512 acc[R][T];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kF8Chunk <= in; i += kF8Chunk) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i) + kPrefetchNear, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + i) + far, _MM_HINT_T1);
    }
#pragma GCC unroll 2
    for (int h = 0; h < kF8Chunk; h += 32) {
      __m512 xa[T], xb[T];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        xa[t] = _mm512_loadu_ps(xs + (t0 + t) * c.kp + i + h);
        xb[t] = _mm512_loadu_ps(xs + (t0 + t) * c.kp + i + h + 16);
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        __m512 lo, hi;
        f8_widen32<W>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + i + h)), lo, hi);
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          acc[r][t] = _mm512_fmadd_ps(lo, xa[t], acc[r][t]);
          acc[r][t] = _mm512_fmadd_ps(hi, xb[t], acc[r][t]);
        }
      }
    }
  }
  for (; i < in; i += 32) {
    const __mmask32 m = _bzhi_u32(~0u, static_cast<unsigned>(std::min<int64_t>(32, in - i)));
    __m512 xa[T], xb[T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      xa[t] = _mm512_loadu_ps(xs + (t0 + t) * c.kp + i);
      xb[t] = _mm512_loadu_ps(xs + (t0 + t) * c.kp + i + 16);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m512 lo, hi;
      f8_widen32<W>(_mm256_maskz_loadu_epi8(m, w[r] + i), lo, hi);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        acc[r][t] = _mm512_fmadd_ps(lo, xa[t], acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(hi, xb[t], acc[r][t]);
      }
    }
  }
  constexpr float kUnscale = W == F8Widen::bits ? 0x1p56f : 1.0f;  // (2^-120 * 2^64)^-1, exact
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
      p.out[(t0 + t) * c.os + o + r] =
          _mm512_reduce_add_ps(acc[r][t]) * kUnscale + (p.bias ? p.bias[o + r] : 0.0f);
}

// R rows from o, every token in groups of up to 4 (the rows stay in L1 between groups).
template <F8Widen W, int R>
MOERUN_AVX512 void gemv_f8_tokens(const MatmulCall& c, const float* xs, int64_t o) {
  const int64_t n = c.p->n;
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) gemv_f8<W, R, 4>(c, xs, o, t);
  switch (n - t) {
    case 1: gemv_f8<W, R, 1>(c, xs, o, t); break;
    case 2: gemv_f8<W, R, 2>(c, xs, o, t); break;
    case 3: gemv_f8<W, R, 3>(c, xs, o, t); break;
    default: break;
  }
}

// Rows [o0, o1) of one row block. One or two tokens leave registers for 8 rows side by side: twice
// the streams in flight, and x loaded once per 8 rows (measured, 1 thread, one token: 2048 x 2048
// 15.5 -> 19 GB/s, 7168 x 2048 14.5 -> 19 GB/s; 16 rows gained nothing more).
template <F8Widen W>
MOERUN_AVX512 void gemv_f8_span(const MatmulCall& c, const float* xs, int64_t o0, int64_t o1) {
  int64_t o = o0;
  if (c.p->n == 1)
    for (; o + 2 * kR <= o1; o += 2 * kR) gemv_f8<W, 2 * kR, 1>(c, xs, o, 0);
  else if (c.p->n == 2)
    for (; o + 2 * kR <= o1; o += 2 * kR) gemv_f8<W, 2 * kR, 2>(c, xs, o, 0);
  for (; o + kR <= o1; o += kR) gemv_f8_tokens<W, kR>(c, xs, o);
  for (; o < o1; ++o) gemv_f8_tokens<W, 1>(c, xs, o);  // the same per-row arithmetic as in the 4-row pass
}

// Decode on FP8 weights (up to kF8GemvMaxTokens tokens): rows [o0, o1) one row block at a time, x
// scaled for each.
template <F8Widen W>
MOERUN_AVX512 void gemv_f8_rows(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  const MatmulParams& p = *c.p;
  float* xs = grow(s.f8x, p.n * c.kp);
  for (int64_t o = o0; o < o1;) {
    const int64_t end = std::min(o1, (o / p.block_out + 1) * p.block_out);
    f8_scale_acts(c, f8_scale_row(p, o), W == F8Widen::bits ? 0x1p64f : 256.0f, xs);
    gemv_f8_span<W>(c, xs, o, end);
    o = end;
  }
}

// Prefill on float weights, the same outer-product shape as the quantized one below: per panel of up
// to 48 rows and block of kKc weights, the rows are packed once into vectors of 16 rows at one k
// (transposed in registers; bf16 kept as pairs and widened in the kernel, f16 widened on the way,
// f8_e4m3 widened and scaled on the way by pack_panel_f8), and a tile of 48 rows x 8 tokens (24
// accumulators) takes one 16-row vector and one broadcast of x[t][k] per 3 x 8 FMAs. The panel block
// (at most 96 KiB) stays in L2 while every token passes over it; out holds the partial sums between
// blocks. The per-row arithmetic is the same in every lane, panel and thread split.
constexpr int64_t kKc = 512;        // weights per panel block along k
constexpr int kFloatTokens = 8;     // tokens per register tile

// In place: r[i] lane j <- r[j] lane i, a 16 x 16 transpose of 32-bit lanes.
MOERUN_AVX512 void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved per 32 bits
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then per 64 bits: each 128-bit lane holds one column of 4 rows
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4 g + c] now holds, in 128-bit lane L, column 4 L + c of rows 4 g .. 4 g + 3: gather the four
  // row groups' lanes of each column with two rounds of 128-bit shuffles.
  for (int c = 0; c < 4; ++c) {
    const __m512i a = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88), b = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
    const __m512i e = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88), f = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
    t[c] = _mm512_shuffle_i32x4(a, e, 0x88);       // column c
    t[8 + c] = _mm512_shuffle_i32x4(a, e, 0xdd);   // column 8 + c
    t[4 + c] = _mm512_shuffle_i32x4(b, f, 0x88);   // column 4 + c
    t[12 + c] = _mm512_shuffle_i32x4(b, f, 0xdd);  // column 12 + c
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// Rows [0, rows) (row stride in bytes) x k in [k0, k0 + kc) of an f32, bf16 or f16 matrix into
// dst[k - k0][vec][16 lanes] as fp32, except bf16: dst[(k - k0) / 2][vec][16 lanes x 2] as bf16
// pairs (half the bytes to write and read; widening a pair is two integer ops in the kernel). Lanes
// past `rows` are zero. Each 16 rows x 64 bytes are loaded as vectors and transposed in registers.
MOERUN_AVX512 void pack_panel(const char* base, DType dtype, int64_t stride, int rows, int64_t k0, int64_t kc,
                              float* dst) {
  const int vecs = (rows + 15) / 16;
  const int64_t size = dtype == DType::f32 ? 4 : 2, per = 64 / size;  // weights per 64 bytes
  for (int v = 0; v < vecs; ++v) {
    const int real = std::min(16, rows - 16 * v);
    for (int64_t c0 = 0; c0 < kc; c0 += per) {
      const int64_t e = std::min(per, kc - c0);
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const char* src = base + (16 * v + i) * stride + (k0 + c0) * size;
        if (i >= real) r[i] = _mm512_setzero_si512();
        else if (size == 4) r[i] = _mm512_maskz_loadu_epi32(first_lanes(e), src);
        else r[i] = _mm512_maskz_loadu_epi16(_bzhi_u32(0xffffffffu, static_cast<unsigned>(e)), src);
      }
      transpose16(r);
      float* out = dst + (c0 * vecs + v) * 16;
      if (dtype == DType::bf16) {  // kept as pairs (k, k + 1) per lane: the kernel widens them
        auto* pairs = reinterpret_cast<uint16_t*>(dst) + (c0 / 2 * vecs + v) * 32;
        for (int64_t j = 0; 2 * j < e; ++j) _mm512_storeu_si512(pairs + j * vecs * 32, r[j]);
        continue;
      }
      if (size == 4) {
        for (int64_t j = 0; j < e; ++j) _mm512_storeu_si512(out + j * vecs * 16, r[j]);
        continue;
      }
      for (int64_t j = 0; 2 * j < e; ++j) {  // r[j]: weights 2 j (low halves) and 2 j + 1 (high)
        __m512 lo, hi;
        if (dtype == DType::bf16) {
          lo = _mm512_castsi512_ps(_mm512_slli_epi32(r[j], 16));
          hi = _mm512_castsi512_ps(_mm512_and_si512(r[j], _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
        } else {
          lo = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(r[j]));
          hi = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(r[j], 16)));
        }
        _mm512_storeu_ps(out + 2 * j * vecs * 16, lo);
        if (2 * j + 1 < e) _mm512_storeu_ps(out + (2 * j + 1) * vecs * 16, hi);
      }
    }
  }
}

// pack_panel for FP8 rows [o, o + rows): dst[k - k0][vec][16 lanes] as fp32, each weight widened
// (f8x16) and multiplied by its block scale x 256, i.e. fp8 * scale rounded once: the same values as
// widen_row's, with no row buffer. 16 rows x 16 weights are widened and scaled per row (one block
// scale per row for the 16 weights unless a column block boundary falls inside them), then
// transposed in registers.
MOERUN_AVX512 void pack_panel_f8(const MatmulParams& p, int64_t o, int rows, int64_t k0, int64_t kc, float* dst) {
  const int64_t k = p.in_features, bi = p.block_in;
  const auto* weight = static_cast<const uint8_t*>(p.weight);
  const int vecs = (rows + 15) / 16;
  for (int v = 0; v < vecs; ++v) {
    const int real = std::min(16, rows - 16 * v);
    const float* srow[16];
    for (int i = 0; i < real; ++i) srow[i] = f8_scale_row(p, o + 16 * v + i);
    for (int64_t c0 = 0; c0 < kc; c0 += 16) {
      const int64_t e = std::min<int64_t>(16, kc - c0), k1 = k0 + c0, cb = k1 / bi;
      const __mmask16 m = first_lanes(e);
      const bool one_block = (k1 + e - 1) / bi == cb;
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        if (i >= real) {
          r[i] = _mm512_setzero_si512();
          continue;
        }
        const __m512 wv = f8x16(_mm_maskz_loadu_epi8(m, weight + (o + 16 * v + i) * k + k1));
        __m512 scale;
        if (one_block) {
          scale = _mm512_set1_ps(srow[i][cb] * 256.0f);
        } else {  // a block boundary inside these 16 weights (block_in not a multiple of 16): per lane
          alignas(64) float lanes[16];
          for (int64_t j = 0; j < 16; ++j) lanes[j] = srow[i][std::min(k1 + j, k - 1) / bi] * 256.0f;
          scale = _mm512_load_ps(lanes);
        }
        r[i] = _mm512_castps_si512(_mm512_mul_ps(wv, scale));
      }
      transpose16(r);
      for (int64_t j = 0; j < e; ++j) _mm512_storeu_si512(dst + ((c0 + j) * vecs + v) * 16, r[j]);
    }
  }
}

// V vectors of 16 rows from row o (rows of them real) x T tokens from t0, over k in [k0, k0 + kc):
// starts from out (or zero for the first block), adds the bias after the last block.
template <int V, int T, bool Pairs>
MOERUN_AVX512 void float_panel_tile(const MatmulCall& c, const float* w, int64_t o, int rows, int64_t t0, int64_t k0,
                                    int64_t kc, bool first, bool last) {
  const MatmulParams& p = *c.p;
  __mmask16 m[V];
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v) m[v] = first_lanes(rows - 16 * v);
  __m512 acc[V][T];
#pragma GCC unroll 32
  for (int v = 0; v < V; ++v)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t)
      acc[v][t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m[v], p.out + (t0 + t) * c.os + o + 16 * v);
  const float* x[T];
#pragma GCC unroll 32
  for (int t = 0; t < T; ++t) x[t] = p.x + (t0 + t) * c.xs + k0;
  int64_t k = 0;
  if constexpr (Pairs) {
    const auto* w16 = reinterpret_cast<const uint16_t*>(w);
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (; k < kc; k += 2) {
      __m512 lo[V], hi[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        const __m512i pair = _mm512_loadu_si512(w16 + (k / 2 * V + v) * 32);
        lo[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
        hi[v] = _mm512_castsi512_ps(_mm512_and_si512(pair, high));
      }
      const bool odd = k + 1 == kc;  // the block's last weight has no partner (zero) and x has no k + 1
#pragma GCC unroll 32
      for (int t = 0; t < T; ++t) {
        const __m512 xa = _mm512_set1_ps(x[t][k]);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[v][t] = _mm512_fmadd_ps(lo[v], xa, acc[v][t]);
        if (!odd) {
          const __m512 xb = _mm512_set1_ps(x[t][k + 1]);
#pragma GCC unroll 16
          for (int v = 0; v < V; ++v) acc[v][t] = _mm512_fmadd_ps(hi[v], xb, acc[v][t]);
        }
      }
    }
  }
  for (; k < kc; ++k) {
    __m512 wv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(w + (k * V + v) * 16);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_set1_ps(x[t][k]);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[v][t] = _mm512_fmadd_ps(wv[v], xv, acc[v][t]);
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v) {
    const __m512 bias = last && p.bias ? _mm512_maskz_loadu_ps(m[v], p.bias + o + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t)
      _mm512_mask_storeu_ps(p.out + (t0 + t) * c.os + o + 16 * v, m[v], _mm512_add_ps(acc[v][t], bias));
  }
}

template <int V, bool Pairs>
MOERUN_AVX512 void float_panel(const MatmulCall& c, const float* w, int64_t o, int rows, int64_t k0, int64_t kc,
                               bool first, bool last) {
  const int64_t n = c.p->n;
  int64_t t = 0;
  for (; t + kFloatTokens <= n; t += kFloatTokens)
    float_panel_tile<V, kFloatTokens, Pairs>(c, w, o, rows, t, k0, kc, first, last);
  switch (n - t) {
    case 1: float_panel_tile<V, 1, Pairs>(c, w, o, rows, t, k0, kc, first, last); break;
    case 2: float_panel_tile<V, 2, Pairs>(c, w, o, rows, t, k0, kc, first, last); break;
    case 3: float_panel_tile<V, 3, Pairs>(c, w, o, rows, t, k0, kc, first, last); break;
    case 4: float_panel_tile<V, 4, Pairs>(c, w, o, rows, t, k0, kc, first, last); break;
    case 5: float_panel_tile<V, 5, Pairs>(c, w, o, rows, t, k0, kc, first, last); break;
    case 6: float_panel_tile<V, 6, Pairs>(c, w, o, rows, t, k0, kc, first, last); break;
    case 7: float_panel_tile<V, 7, Pairs>(c, w, o, rows, t, k0, kc, first, last); break;
    default: break;
  }
}

MOERUN_AVX512 void gemm_rows(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  const MatmulParams& p = *c.p;
  const int64_t k = p.in_features;
  constexpr int kRows = kPanelVecs * 16;
  float* panel = grow(s.panel, kRows * kKc);
  const bool f8 = p.weight_dtype == DType::f8_e4m3;
  const DType dtype = f8 ? DType::f32 : p.weight_dtype;  // what the panel holds (FP8 packs as fp32)
  const auto stride = static_cast<int64_t>(dtype_bytes(p.weight_dtype, k));
  for (int64_t o = o0; o < o1; o += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, o1 - o));
    const char* base = static_cast<const char*>(p.weight) + o * stride;
    const int vecs = (rows + 15) / 16;
    for (int64_t k0 = 0; k0 < k; k0 += kKc) {
      const int64_t kc = std::min(kKc, k - k0);
      if (f8) pack_panel_f8(p, o, rows, k0, kc, panel);
      else pack_panel(base, dtype, stride, rows, k0, kc, panel);
      const bool first = k0 == 0, last = k0 + kc == k;
      const float* w = panel;
      if (dtype == DType::bf16) {
        switch (vecs) {
          case 1: float_panel<1, true>(c, w, o, rows, k0, kc, first, last); break;
          case 2: float_panel<2, true>(c, w, o, rows, k0, kc, first, last); break;
          default: float_panel<3, true>(c, w, o, rows, k0, kc, first, last); break;
        }
      } else {
        switch (vecs) {
          case 1: float_panel<1, false>(c, w, o, rows, k0, kc, first, last); break;
          case 2: float_panel<2, false>(c, w, o, rows, k0, kc, first, last); break;
          default: float_panel<3, false>(c, w, o, rows, k0, kc, first, last); break;
        }
      }
    }
  }
}

// ---- q8_0 / q4_0 --------------------------------------------------------------------------------

// Decode on quantized weights: one 64-byte load is a unit of blocks, two for q8_0 and four for q4_0
// (16 bytes each: the low nibbles are the blocks' first halves, the high nibbles their second halves,
// and matmul.cpp reordered q4 activations per unit to match, so unpacking is a mask and a shift).
// The int32 lanes of a unit's vpdpbusd belong to its blocks (8 or 4 lanes each) and are scaled by
// weight scale x activation scale per lane.
template <DType D, int R, int T>
MOERUN_AVX512 void gemv_quant(const MatmulCall& c, int64_t o, int64_t t0) {
  constexpr bool kQ8 = D == DType::q8_0;
  constexpr int64_t kUnit = kQ8 ? 2 : 4;  // blocks per 64-byte load
  const MatmulParams& p = *c.p;
  const int64_t qb = quant_block_bytes(D);
  const size_t row_bytes = dtype_bytes(D, p.in_features);
  const uint8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const uint8_t*>(p.weight) + static_cast<size_t>(o + r) * row_bytes;
  const int64_t far = prefetch_far_offset(R * static_cast<int64_t>(row_bytes));
  __m512 acc[R][T];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  // Lane -> block within the unit.
  const __m512i lane_block = kQ8 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                                 : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  for (int64_t g = 0; g * kQuantGroupBlocks < c.nb; ++g) {
    const int64_t first = g * kQuantGroupBlocks, count = std::min(kQuantGroupBlocks, c.nb - first);
    const int64_t base = quant_group_offset(D, g);
    __m512 sw[R];  // the group's weight scales, 16 lanes
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const uint8_t* scales = w[r] + base + count * qb;
      // The next group's scales are the first thing it needs: ask for them a group ahead.
      _mm_prefetch(reinterpret_cast<const char*>(scales) + kQuantGroupBlocks * (qb + 2), _MM_HINT_T0);
      sw[r] = _mm512_cvtph_ps(count == kQuantGroupBlocks
                                  ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales))
                                  : _mm256_maskz_loadu_epi16(first_lanes(count), scales));
    }
    for (int64_t k = 0; kUnit * k < count; ++k) {
      const int64_t blocks = std::min(kUnit, count - kUnit * k);
      const int64_t unit = first / kUnit + k;
      const __mmask64 bytes = blocks == kUnit ? ~0ull : _bzhi_u64(~0ull, static_cast<unsigned>(blocks * qb));
      __m512i a[T], a2[T], corr[T];
      __m512 da[T];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        if constexpr (kQ8) {
          a[t] = _mm512_loadu_si512(c.xq + (t0 + t) * c.kp + (first + 2 * k) * kQuantBlock);
        } else {
          a[t] = _mm512_loadu_si512(c.xq4 + ((t0 + t) * c.nu + unit) * 128);        // first halves
          a2[t] = _mm512_loadu_si512(c.xq4 + ((t0 + t) * c.nu + unit) * 128 + 64);  // second halves
        }
        corr[t] = _mm512_loadu_si512(c.xcorr + ((t0 + t) * c.nu + unit) * 16);
        da[t] = _mm512_loadu_ps(c.xdp + ((t0 + t) * c.nu + unit) * 16);
      }
      const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(kUnit * k)), lane_block);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const uint8_t* q = w[r] + base + kUnit * k * qb;
        _mm_prefetch(reinterpret_cast<const char*>(q) + kPrefetchNear, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(q) + far, _MM_HINT_T1);
        const __m512i wv = _mm512_maskz_loadu_epi8(bytes, q);
        const __m512 s = _mm512_permutexvar_ps(idx, sw[r]);
        __m512i lo = wv, hi = wv;
        if constexpr (!kQ8) {
          lo = _mm512_and_si512(wv, nibble);
          hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), nibble);
        }
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          __m512i dot = _mm512_dpbusd_epi32(corr[t], lo, a[t]);
          if constexpr (!kQ8) dot = _mm512_dpbusd_epi32(dot, hi, a2[t]);
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s, da[t]), acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
      p.out[(t0 + t) * c.os + o + r] = _mm512_reduce_add_ps(acc[r][t]) + (p.bias ? p.bias[o + r] : 0.0f);
}

// Prefill on quantized weights: panels of up to kPanelVecs x 16 rows are gathered once per call
// into a per-thread buffer (L2-sized) where each 64-byte vector holds four consecutive quants of 16
// rows (lane j = row j's bytes k..k+3), q4_0 unpacked to one byte per weight, and the scales widened
// to fp32, 16 rows per block. A token's 4 activation bytes broadcast to every lane, so one vpdpbusd
// advances 16 rows x 4 weights for that token; each block's int32 sums start from -offset * sum(a)
// (exactly sum(q * a)) and are scaled once per block (16 weight scales x the token's activation scale),
// not once per 64-byte product as in the decode kernel. The per-row arithmetic is the same in every
// lane and panel, so a row's result does not depend on how rows are split across threads.
constexpr int kPanelTokens = 4;

struct QuantPanel {
  const uint8_t* q = nullptr;  // [block][k quad 0..7][vec][16 lanes x 4 bytes]
  const float* scale = nullptr;  // [block][vec][16 lanes]
  int vecs = 0;
};

template <DType D>
MOERUN_AVX512 QuantPanel repack_panel(const MatmulCall& c, int64_t o, int rows, std::vector<uint8_t>& qbuf,
                                      std::vector<float>& sbuf) {
  const MatmulParams& p = *c.p;
  const int64_t qb = quant_block_bytes(D), nb = c.nb;
  const auto row_bytes = static_cast<int32_t>(dtype_bytes(D, p.in_features));
  const int vecs = (rows + 15) / 16;
  const size_t qsize = static_cast<size_t>(nb * 8 * vecs * 64), ssize = static_cast<size_t>(nb * vecs * 16);
  if (qbuf.size() < qsize) qbuf.resize(qsize);
  if (sbuf.size() < ssize) sbuf.resize(ssize);
  const auto* panel = static_cast<const uint8_t*>(p.weight) + static_cast<size_t>(o) * static_cast<size_t>(row_bytes);
  for (int v = 0; v < vecs; ++v) {
    // Lane j gathers from row 16 v + j; lanes past the panel's rows stay zero (weights and scales).
    const __mmask16 m = first_lanes(rows - 16 * v);
    const __m512i rowoff =
        _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(16 * v), lane_numbers()), _mm512_set1_epi32(row_bytes));
    for (int64_t g = 0; g * kQuantGroupBlocks < nb; ++g) {
      const int64_t first = g * kQuantGroupBlocks, count = std::min(kQuantGroupBlocks, nb - first);
      const uint8_t* quants = panel + quant_group_offset(D, g);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t b = first + j;
        uint8_t* dst = qbuf.data() + (b * 8 * vecs + v) * 64;
        const uint8_t* src = quants + j * qb;
        if constexpr (D == DType::q8_0) {
          for (int quad = 0; quad < 8; ++quad)
            _mm512_storeu_si512(dst + quad * vecs * 64,
                                _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rowoff, src + 4 * quad, 1));
        } else {
          // Byte i holds weight i (low nibble) and weight i + 16 (high nibble).
          const __m512i low = _mm512_set1_epi8(0x0f);
          for (int quad = 0; quad < 4; ++quad) {
            const __m512i g4 = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rowoff, src + 4 * quad, 1);
            _mm512_storeu_si512(dst + quad * vecs * 64, _mm512_and_si512(g4, low));
            _mm512_storeu_si512(dst + (quad + 4) * vecs * 64, _mm512_and_si512(_mm512_srli_epi16(g4, 4), low));
          }
        }
        // The fp16 scale is the high half of the 4 bytes ending at it (the bytes before it are the
        // group's quants, so the read stays inside the row).
        const __m512i sc =
            _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rowoff, quants + count * qb + 2 * j - 2, 1);
        _mm512_storeu_ps(sbuf.data() + (b * vecs + v) * 16,
                         _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(sc, 16))));
      }
    }
  }
  return {qbuf.data(), sbuf.data(), vecs};
}

// V vectors of 16 rows from row o (rows of them real) x T tokens from t0, over every block.
template <int V, int T>
MOERUN_AVX512 void quant_panel_tile(const MatmulCall& c, const QuantPanel& w, int32_t offset, int64_t o, int rows,
                                    int64_t t0) {
  const MatmulParams& p = *c.p;
  __m512 acc[V][T];
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[v][t] = _mm512_setzero_ps();
  const int8_t* x[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) x[t] = c.xq + (t0 + t) * c.kp;
  for (int64_t b = 0; b < c.nb; ++b) {
    __m512i dot[V][T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const __m512i start = _mm512_set1_epi32(-offset * c.xsum[(t0 + t) * c.nb + b]);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) dot[v][t] = start;
    }
    const uint8_t* wb = w.q + b * 8 * V * 64;
#pragma GCC unroll 8
    for (int quad = 0; quad < 8; ++quad) {
      __m512i wv[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_si512(wb + (quad * V + v) * 64);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        int32_t four;
        std::memcpy(&four, x[t] + b * kQuantBlock + 4 * quad, 4);
        const __m512i xv = _mm512_set1_epi32(four);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) dot[v][t] = _mm512_dpbusd_epi32(dot[v][t], wv[v], xv);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const __m512 sw = _mm512_loadu_ps(w.scale + (b * V + v) * 16);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t)
        acc[v][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[v][t]),
                                    _mm512_mul_ps(sw, _mm512_set1_ps(c.xd[(t0 + t) * c.nb + b])), acc[v][t]);
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < V; ++v) {
    const __mmask16 m = first_lanes(rows - 16 * v);
    const __m512 bias = p.bias ? _mm512_maskz_loadu_ps(m, p.bias + o + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
      _mm512_mask_storeu_ps(p.out + (t0 + t) * c.os + o + 16 * v, m, _mm512_add_ps(acc[v][t], bias));
  }
}

template <int V>
MOERUN_AVX512 void quant_panel(const MatmulCall& c, const QuantPanel& w, int32_t offset, int64_t o, int rows) {
  const int64_t n = c.p->n;
  int64_t t = 0;
  for (; t + kPanelTokens <= n; t += kPanelTokens) quant_panel_tile<V, kPanelTokens>(c, w, offset, o, rows, t);
  switch (n - t) {
    case 1: quant_panel_tile<V, 1>(c, w, offset, o, rows, t); break;
    case 2: quant_panel_tile<V, 2>(c, w, offset, o, rows, t); break;
    case 3: quant_panel_tile<V, 3>(c, w, offset, o, rows, t); break;
    default: break;
  }
}

template <DType D>
MOERUN_AVX512 void quant_gemm_rows(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  const int32_t offset = D == DType::q8_0 ? 128 : 8;
  for (int64_t o = o0; o < o1; o += kPanelVecs * 16) {
    const int rows = static_cast<int>(std::min<int64_t>(kPanelVecs * 16, o1 - o));
    const QuantPanel w = repack_panel<D>(c, o, rows, s.qpanel, s.qscales);
    switch (w.vecs) {
      case 1: quant_panel<1>(c, w, offset, o, rows); break;
      case 2: quant_panel<2>(c, w, offset, o, rows); break;
      default: quant_panel<3>(c, w, offset, o, rows); break;
    }
  }
}

template <DType D>
MOERUN_AVX512 void quant_rows(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  const int64_t n = c.p->n;
  if (n >= kQuantGemmMinTokens) {
    quant_gemm_rows<D>(c, o0, o1, s);
    return;
  }
  for (int64_t o = o0; o < o1; o += kR) {
    const bool four = o + kR <= o1;
    for (int64_t t = 0; t < n; t += 2) {
      if (t + 2 <= n) {
        if (four) gemv_quant<D, kR, 2>(c, o, t);
        else for (int64_t r = o; r < o1; ++r) gemv_quant<D, 1, 2>(c, r, t);
      } else {
        if (four) gemv_quant<D, kR, 1>(c, o, t);
        else for (int64_t r = o; r < o1; ++r) gemv_quant<D, 1, 1>(c, r, t);
      }
    }
  }
}

}  // namespace

MOERUN_AVX512 void quantize_acts_avx512(const float* x, int64_t xs, int64_t n, int64_t k, int64_t kp, int8_t* q,
                                        float* d, int32_t* sum) {
  const int64_t nb = k / kQuantBlock;
  for (int64_t t = 0; t < n; ++t) {
    std::fill(q + t * kp + k, q + (t + 1) * kp, int8_t{0});
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * xs + b * kQuantBlock;
      const __m512 lo = _mm512_loadu_ps(xb), hi = _mm512_loadu_ps(xb + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
      const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      // cvtps rounds to nearest even under the default MXCSR, as nearbyint does in the scalar twin.
      const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv)), qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + t * kp + b * kQuantBlock), _mm512_cvtsepi32_epi8(qlo));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + t * kp + b * kQuantBlock + 16), _mm512_cvtsepi32_epi8(qhi));
      d[t * nb + b] = amax / 127.0f;
      sum[t * nb + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
    }
  }
}

MOERUN_AVX512 void rows_avx512(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  switch (c.p->weight_dtype) {
    case DType::q8_0: quant_rows<DType::q8_0>(c, o0, o1, s); return;
    case DType::q4_0: quant_rows<DType::q4_0>(c, o0, o1, s); return;
    case DType::f8_e4m3:
      if (c.p->n <= kF8GemvMaxTokens) {
        // MXCSR of this thread: bit 6 is DAZ, under which the bits widening would lose the subnormal bytes.
        if (_mm_getcsr() & 0x40) gemv_f8_rows<F8Widen::half>(c, o0, o1, s);
        else gemv_f8_rows<F8Widen::bits>(c, o0, o1, s);
        return;
      }
      break;
    default: break;
  }
  if (c.xp) {  // few tokens, prepared by matmul.cpp
    switch (c.p->weight_dtype) {
      case DType::bf16: gemv_dispatch<DType::bf16>(c, o0, o1); return;
      case DType::f16: gemv_dispatch<DType::f16>(c, o0, o1); return;
      default: gemv_dispatch<DType::f32>(c, o0, o1); return;
    }
  }
  gemm_rows(c, o0, o1, s);
}

MOERUN_AVX512 void axpy_f8_avx512(float* out, float alpha, const uint8_t* w, const float* scale, int64_t n,
                                  int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const __m512 a = _mm512_set1_ps(alpha * scale[b0 / block] * 256.0f);  // x 256: see f8x16
    const int64_t b1 = std::min(n, b0 + block);
    int64_t j = b0;
    for (; j + 16 <= b1; j += 16)
      _mm512_storeu_ps(out + j, _mm512_fmadd_ps(f8x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j))), a,
                                                _mm512_loadu_ps(out + j)));
    if (j < b1) {
      const __mmask16 m = first_lanes(b1 - j);
      const __m512 wv = f8x16(_mm_maskz_loadu_epi8(m, w + j));
      _mm512_mask_storeu_ps(out + j, m, _mm512_fmadd_ps(wv, a, _mm512_maskz_loadu_ps(m, out + j)));
    }
  }
}

}  // namespace moerun::cpu::detail
