// The AVX-512 matmul kernels (F, BW, VL, DQ, VNNI; every function carries the target attribute, so
// the rest of the library stays baseline x86-64 and this file is only entered when the CPU has them).
//
// Few tokens (decode): kR = 4 weight rows stream side by side (four independent loads in flight,
// hardware prefetch plus software prefetch near and whole passes ahead, see matmul_impl.h) and each 64-byte weight vector is used for every
// token before moving on, so each weight is read exactly once per call. bf16 widens in registers:
// a 32-element vector shifted left by 16 is its even elements as fp32, masked with 0xffff0000 its
// odd ones; x was reordered to match (matmul.cpp), so a bf16 vector costs two integer ops.
// Many tokens (prefill): per tile of tokens whose x fits in L2, four weight rows are widened to fp32
// once into an L1 buffer and a 4-row x 6-token register tile (24 accumulators) runs over them, so one
// weight load and one x load feed four or six FMAs.
// q8_0 / q4_0: activations are quantized per 32-block once per call; VNNI's vpdpbusd multiplies the
// stored unsigned quants (q + offset) by the int8 activations, the dot starting from
// -offset * sum(a), which makes it exactly sum(q * a); per pair of blocks the int32 lanes go to fp32
// and are scaled by weight scale x activation scale (8 lanes per block).

// GCC 12's AVX-512 headers build their "undefined" vectors as self-initialised variables, which
// -Wuninitialized reports once inlined into a target-attributed function (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/quant.h"

#define MOERUN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c,bmi,bmi2")))

namespace moerun::cpu::detail {
namespace {

constexpr int kR = 4;                  // weight rows per kernel pass
constexpr int kTileTokens = 6;         // tokens per prefill register tile (4 x 6 = 24 accumulators)
constexpr int64_t kTileBytes = 192 << 10;  // x of a token tile stays in L2 while the rows pass over it

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

// R rows from row o, T tokens: out[t, o + r] = W[o + r] . x[t] + bias.
template <DType D, int R, int T>
MOERUN_AVX512 void gemv(const MatmulCall& c, int64_t o) {
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
      xa[t] = _mm512_loadu_ps(c.xp + t * c.kp + i);  // padded with zeros to kp: no mask needed
      xb[t] = _mm512_loadu_ps(c.xp + t * c.kp + i + 16);
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
      p.out[t * c.os + o + r] = _mm512_reduce_add_ps(acc[r][t]) + (p.bias ? p.bias[o + r] : 0.0f);
}

template <DType D, int T>
MOERUN_AVX512 void gemv_rows(const MatmulCall& c, int64_t o0, int64_t o1) {
  int64_t o = o0;
  for (; o + kR <= o1; o += kR) gemv<D, kR, T>(c, o);
  for (; o < o1; ++o) gemv<D, 1, T>(c, o);  // the same per-row arithmetic as in the 4-row pass
}

template <DType D>
MOERUN_AVX512 void gemv_dispatch(const MatmulCall& c, int64_t o0, int64_t o1) {
  switch (c.p->n) {
    case 1: gemv_rows<D, 1>(c, o0, o1); break;
    case 2: gemv_rows<D, 2>(c, o0, o1); break;
    case 3: gemv_rows<D, 3>(c, o0, o1); break;
    default: gemv_rows<D, 4>(c, o0, o1); break;
  }
}

// Prefill register tile: R widened rows w[r] (k floats) against T token rows of x (stride xs).
template <int R, int T>
MOERUN_AVX512 void tile(const float* const* w, const float* x, int64_t xs, int64_t k, float* out, int64_t os,
                        const float* bias, int64_t o) {
  __m512 acc[R][T];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 m = k - i >= 16 ? 0xffff : static_cast<__mmask16>(_bzhi_u32(0xffffu, static_cast<unsigned>(k - i)));
    __m512 wv[R];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_ps(m, w[r] + i);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * xs + i);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) out[t * os + o + r] = _mm512_reduce_add_ps(acc[r][t]) + (bias ? bias[o + r] : 0.0f);
}

template <int R>
MOERUN_AVX512 void tile_dispatch(int tokens, const float* const* w, const float* x, int64_t xs, int64_t k, float* out,
                                 int64_t os, const float* bias, int64_t o) {
  switch (tokens) {
    case 1: tile<R, 1>(w, x, xs, k, out, os, bias, o); break;
    case 2: tile<R, 2>(w, x, xs, k, out, os, bias, o); break;
    case 3: tile<R, 3>(w, x, xs, k, out, os, bias, o); break;
    case 4: tile<R, 4>(w, x, xs, k, out, os, bias, o); break;
    case 5: tile<R, 5>(w, x, xs, k, out, os, bias, o); break;
    default: tile<R, 6>(w, x, xs, k, out, os, bias, o); break;
  }
}

// Row o of a 16-bit float dtype widened to fp32 (natural order).
MOERUN_AVX512 void widen16(const MatmulParams& p, int64_t o, float* dst) {
  const int64_t k = p.in_features;
  const uint16_t* src = static_cast<const uint16_t*>(p.weight) + o * k;
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 m = k - i >= 16 ? 0xffff : static_cast<__mmask16>(_bzhi_u32(0xffffu, static_cast<unsigned>(k - i)));
    const __m256i h = _mm256_maskz_loadu_epi16(m, src + i);
    const __m512 f = p.weight_dtype == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                                   : _mm512_cvtph_ps(h);
    _mm512_mask_storeu_ps(dst + i, m, f);
  }
}

MOERUN_AVX512 void gemm_rows(const MatmulCall& c, int64_t o0, int64_t o1) {
  const MatmulParams& p = *c.p;
  const int64_t k = p.in_features, n = p.n;
  thread_local std::vector<float> buf;  // kR widened rows, reused across calls
  if (p.weight_dtype != DType::f32 && static_cast<int64_t>(buf.size()) < kR * k) buf.resize(static_cast<size_t>(kR * k));
  const int64_t tile_tokens =
      std::max<int64_t>(kTileTokens, kTileBytes / (k * static_cast<int64_t>(sizeof(float))) / kTileTokens * kTileTokens);
  for (int64_t t0 = 0; t0 < n; t0 += tile_tokens) {
    const int64_t tn = std::min(tile_tokens, n - t0);
    for (int64_t o = o0; o < o1; o += kR) {
      const int rows = static_cast<int>(std::min<int64_t>(kR, o1 - o));
      const float* w[kR];
      for (int r = 0; r < rows; ++r) {
        if (p.weight_dtype == DType::f32) {
          w[r] = static_cast<const float*>(p.weight) + (o + r) * k;
          continue;
        }
        float* dst = buf.data() + r * k;
        if (p.weight_dtype == DType::f8_e4m3) widen_row(p, o + r, dst);
        else widen16(p, o + r, dst);
        w[r] = dst;
      }
      for (int64_t t = t0; t < t0 + tn; t += kTileTokens) {
        const int tokens = static_cast<int>(std::min<int64_t>(kTileTokens, t0 + tn - t));
        const float* x = p.x + t * c.xs;
        float* out = p.out + t * c.os;
        if (rows == kR) {
          tile_dispatch<kR>(tokens, w, x, c.xs, k, out, c.os, p.bias, o);
        } else {
          for (int r = 0; r < rows; ++r) tile_dispatch<1>(tokens, w + r, x, c.xs, k, out, c.os, p.bias, o + r);
        }
      }
    }
  }
}

// ---- q8_0 / q4_0 --------------------------------------------------------------------------------

// The quants of a pair of blocks (or one, the last of an odd group) as 64 unsigned bytes in element
// order: lanes 0-31 block 2k, 32-63 block 2k + 1.
template <DType D>
MOERUN_AVX512 __m512i load_pair(const uint8_t* q, bool full) {
  if constexpr (D == DType::q8_0) {
    return full ? _mm512_loadu_si512(q) : _mm512_maskz_loadu_epi8(0xffffffffull, q);
  } else {
    // 16 bytes per block, low nibbles = first half, high nibbles = second half: put each block's
    // bytes in two 128-bit lanes, shift the second lane of each right by 4, keep 4 bits.
    const __m256i v = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)) : _mm256_maskz_loadu_epi8(0xffff, q);
    const __m512i dup = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), _mm512_castsi256_si512(v));
    const long long four = 0x0004000400040004ll;
    const __m512i shifted = _mm512_srlv_epi16(dup, _mm512_setr_epi64(0, 0, four, four, 0, 0, four, four));
    return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0f));
  }
}

template <DType D, int R, int T>
MOERUN_AVX512 void gemv_quant(const MatmulCall& c, int64_t o, int64_t t0) {
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
  const __m512i second = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
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
                                  : _mm256_maskz_loadu_epi16(static_cast<__mmask16>(_bzhi_u32(0xffffu, static_cast<unsigned>(count))),
                                                             scales));
    }
    for (int64_t k = 0; 2 * k < count; ++k) {
      const bool full = 2 * k + 1 < count;
      const int64_t pair = first / 2 + k;
      __m512i a[T], corr[T];
      __m512 da[T];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        a[t] = _mm512_loadu_si512(c.xq + (t0 + t) * c.kp + (first + 2 * k) * kQuantBlock);
        corr[t] = _mm512_loadu_si512(c.xcorr + ((t0 + t) * c.np + pair) * 16);
        da[t] = _mm512_loadu_ps(c.xdp + ((t0 + t) * c.np + pair) * 16);
      }
      const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(2 * k)), second);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const uint8_t* q = w[r] + base + 2 * k * qb;
        _mm_prefetch(reinterpret_cast<const char*>(q) + kPrefetchNear, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(q) + far, _MM_HINT_T1);
        const __m512i wv = load_pair<D>(q, full);
        const __m512 s = _mm512_permutexvar_ps(idx, sw[r]);
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          const __m512i dot = _mm512_dpbusd_epi32(corr[t], wv, a[t]);
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

template <DType D>
MOERUN_AVX512 void quant_rows(const MatmulCall& c, int64_t o0, int64_t o1) {
  const int64_t n = c.p->n;
  // Per token: kp int8 activations, kp bytes of correction lanes, kp bytes of scale lanes.
  const int64_t tile_tokens = std::max<int64_t>(2, kTileBytes / (3 * c.kp) / 2 * 2);
  for (int64_t t0 = 0; t0 < n; t0 += tile_tokens) {
    const int64_t t1 = std::min(n, t0 + tile_tokens);
    for (int64_t o = o0; o < o1; o += kR) {
      const bool four = o + kR <= o1;
      for (int64_t t = t0; t < t1; t += 2) {
        if (t + 2 <= t1) {
          if (four) gemv_quant<D, kR, 2>(c, o, t);
          else for (int64_t r = o; r < o1; ++r) gemv_quant<D, 1, 2>(c, r, t);
        } else {
          if (four) gemv_quant<D, kR, 1>(c, o, t);
          else for (int64_t r = o; r < o1; ++r) gemv_quant<D, 1, 1>(c, r, t);
        }
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

MOERUN_AVX512 void rows_avx512(const MatmulCall& c, int64_t o0, int64_t o1) {
  switch (c.p->weight_dtype) {
    case DType::q8_0: quant_rows<DType::q8_0>(c, o0, o1); return;
    case DType::q4_0: quant_rows<DType::q4_0>(c, o0, o1); return;
    default: break;
  }
  if (c.xp) {  // few tokens, prepared by matmul.cpp
    switch (c.p->weight_dtype) {
      case DType::bf16: gemv_dispatch<DType::bf16>(c, o0, o1); return;
      case DType::f16: gemv_dispatch<DType::f16>(c, o0, o1); return;
      default: gemv_dispatch<DType::f32>(c, o0, o1); return;
    }
  }
  gemm_rows(c, o0, o1);
}

}  // namespace moerun::cpu::detail
