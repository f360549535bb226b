// y = x W^T + b on the CPU: the dispatcher and the scalar kernels. The call's activations are
// prepared once by the calling thread (padded and reordered for float weights, quantized per
// 32-block for q8_0 / q4_0) into the context's call scratch, then output rows are split across the
// context's pool in slices of 16 so each thread streams its own contiguous weight rows. The kernels
// themselves live per instruction set (matmul_avx512.cpp, matmul_avx2.cpp) and are picked at run
// time; this file's scalar kernels are the fallback and the readable reference. Accumulation is fp32
// everywhere; activations stay fp32 for float weights (bf16 weights are widened, never the
// activations narrowed). FP8 (e4m3) weights carry fp32 block scales: the GEMM paths widen them to
// fp32 with the scales applied, the vector decode paths multiply x by one row block's scales instead
// (per worker) and widen the bytes in registers, so the weights are read once and the scales cost
// nothing per weight. The fused RMSNorm and residual add (MatmulParams::norm_weight, accumulate) run
// as the unfused ops would, through scratch (redirect_fused), so their bits are the unfused ones.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/vec.h"
#include "moerun/error.h"

namespace moerun::cpu {
namespace detail {
namespace {

bool quantized(DType t) { return t == DType::q8_0 || t == DType::q4_0; }

void check(const MatmulParams& p) {
  switch (p.weight_dtype) {
    case DType::f32: case DType::bf16: case DType::f16: return;
    case DType::f8_e4m3:
      if (!p.weight_scale) throw Error("cpu::matmul", "F8_E4M3 weights need their block scales");
      if (p.block_out <= 0 || p.block_in <= 0) throw Error("cpu::matmul", "F8_E4M3 block sizes must be positive");
      return;
    case DType::q8_0: case DType::q4_0:
      if (p.in_features % kQuantBlock != 0)
        throw Error("cpu::matmul", "quantized weights need in_features to be a multiple of 32");
      return;
    default:
      throw Error("cpu::matmul", std::string("unsupported weight dtype ") + std::string(dtype_name(p.weight_dtype)));
  }
}

// Scalar dot of a quantized row with token t's quantized activations: exact int32 per block.
float dot_quant(const MatmulCall& c, const uint8_t* row, int64_t t) {
  const DType dt = c.p->weight_dtype;
  const int64_t qb = quant_block_bytes(dt);
  const int8_t* a = c.xq + t * c.kp;
  float acc = 0.0f;
  for (int64_t g = 0; g * kQuantGroupBlocks < c.nb; ++g) {
    const int64_t first = g * kQuantGroupBlocks, count = std::min(kQuantGroupBlocks, c.nb - first);
    const uint8_t* quants = row + quant_group_offset(dt, g);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t b = first + j;
      const uint8_t* q = quants + j * qb;
      const int8_t* ab = a + b * kQuantBlock;
      int32_t dot = 0;
      if (dt == DType::q8_0) {
        for (int i = 0; i < kQuantBlock; ++i) dot += (static_cast<int32_t>(q[i]) - 128) * ab[i];
      } else {
        for (int i = 0; i < kQuantBlock / 2; ++i)
          dot += (static_cast<int32_t>(q[i] & 15) - 8) * ab[i] + (static_cast<int32_t>(q[i] >> 4) - 8) * ab[i + 16];
      }
      uint16_t h;
      std::memcpy(&h, quants + count * qb + 2 * j, 2);
      acc += static_cast<float>(dot) * (f16_to_f32(h) * c.xd[t * c.nb + b]);
    }
  }
  return acc;
}

}  // namespace

void widen_row(const MatmulParams& p, int64_t o, float* dst) {
  const int64_t in = p.in_features;
  switch (p.weight_dtype) {
    case DType::f32:
      std::memcpy(dst, static_cast<const float*>(p.weight) + o * in, static_cast<size_t>(in) * sizeof(float));
      return;
    case DType::f8_e4m3: {
      // Element (o, i) is fp8 * scale[o / block_out, i / block_in] (DeepSeek's weight_scale_inv): the
      // exact fp8 value times the fp32 scale, rounded once.
      const auto* q = static_cast<const uint8_t*>(p.weight) + o * in;
      const float* s = f8_scale_row(p, o);
      const float* value = f8_e4m3_values();
      for (int64_t b0 = 0; b0 < in; b0 += p.block_in) {
        const float scale = s[b0 / p.block_in];
        for (int64_t i = b0; i < std::min(in, b0 + p.block_in); ++i) dst[i] = value[q[i]] * scale;
      }
      return;
    }
    default:
      for (int64_t i = 0; i < in; ++i) dst[i] = load_f32(p.weight, p.weight_dtype, o * in + i);
  }
}

void axpy_f8_scalar(float* out, float alpha, const uint8_t* w, const float* scale, int64_t n, int64_t block) {
  const float* value = f8_e4m3_values();
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const float a = alpha * scale[b0 / block];
    for (int64_t j = b0; j < std::min(n, b0 + block); ++j) out[j] += a * value[w[j]];
  }
}

void axpy_f8(Isa isa, float* out, float alpha, const uint8_t* w, const float* scale, int64_t n, int64_t block) {
  switch (isa) {
    case Isa::avx512: axpy_f8_avx512(out, alpha, w, scale, n, block); break;
    case Isa::avx2: axpy_f8_avx2(out, alpha, w, scale, n, block); break;
    default: axpy_f8_scalar(out, alpha, w, scale, n, block);
  }
}

void quantize_acts_scalar(const float* x, int64_t xs, int64_t n, int64_t k, int64_t kp, int8_t* q, float* d,
                          int32_t* sum) {
  const int64_t nb = k / kQuantBlock;
  for (int64_t t = 0; t < n; ++t) {
    std::fill(q + t * kp + k, q + (t + 1) * kp, int8_t{0});
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * xs + b * kQuantBlock;
      float amax = 0.0f;
      for (int i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t s = 0;
      for (int i = 0; i < kQuantBlock; ++i) {
        const auto v = static_cast<int8_t>(std::nearbyint(xb[i] * inv));
        q[t * kp + b * kQuantBlock + i] = v;
        s += v;
      }
      d[t * nb + b] = amax / 127.0f;
      sum[t * nb + b] = s;
    }
  }
}

void rows_scalar(const MatmulCall& c, int64_t o0, int64_t o1, WorkerScratch& s) {
  const MatmulParams& p = *c.p;
  const int64_t in = p.in_features;
  if (quantized(p.weight_dtype)) {
    const size_t row_bytes = dtype_bytes(p.weight_dtype, in);
    for (int64_t o = o0; o < o1; ++o) {
      const auto* row = static_cast<const uint8_t*>(p.weight) + static_cast<size_t>(o) * row_bytes;
      for (int64_t t = 0; t < p.n; ++t) p.out[t * c.os + o] = dot_quant(c, row, t) + (p.bias ? p.bias[o] : 0.0f);
    }
    return;
  }
  float* w = grow(s.rows, in);
  for (int64_t o = o0; o < o1; ++o) {
    widen_row(p, o, w);
    for (int64_t t = 0; t < p.n; ++t) {
      const float* x = p.x + t * c.xs;
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) acc += x[i] * w[i];
      p.out[t * c.os + o] = acc + (p.bias ? p.bias[o] : 0.0f);
    }
  }
}

namespace {

// Everything a call does once before its rows are split: x reordered, padded or quantized into the
// scratch `s` (which must live until the rows are done).
MatmulCall prepare_call(const MatmulParams& p, Isa isa, MatmulActs& s) {
  MatmulCall c;
  c.p = &p;
  c.xs = p.x_stride ? p.x_stride : p.in_features;
  c.os = p.out_stride ? p.out_stride : p.out_features;
  const int64_t in = p.in_features;
  if (quantized(p.weight_dtype)) {
    c.nb = in / kQuantBlock;
    c.kp = (in + 63) / 64 * 64;
    c.xq = grow(s.xq, p.n * c.kp);
    c.xd = grow(s.xd, p.n * c.nb);
    c.xsum = grow(s.xsum, p.n * c.nb);
    auto* q = const_cast<int8_t*>(c.xq);
    auto* d = const_cast<float*>(c.xd);
    auto* sum = const_cast<int32_t*>(c.xsum);
    if (isa == Isa::avx512) {
      quantize_acts_avx512(p.x, c.xs, p.n, in, c.kp, q, d, sum);
      // The VNNI kernel takes the weights as the unsigned operand (quants stored + offset), so each
      // block's dot starts from -offset * sum(a); and it loads a unit of 2 (q8_0) or 4 (q4_0)
      // blocks at a time, whose lanes it scales per block.
      const bool q8 = p.weight_dtype == DType::q8_0;
      const int32_t offset = q8 ? 128 : 8;
      const int64_t unit = q8 ? 2 : 4, lanes = 16 / unit;
      c.nu = (c.nb + unit - 1) / unit;
      int32_t* corr = grow(s.xcorr, p.n * c.nu * 16);
      float* dp = grow(s.xdp, p.n * c.nu * 16);
      for (int64_t t = 0; t < p.n; ++t)
        for (int64_t j = 0; j < c.nu; ++j) {
          int32_t* cv = corr + (t * c.nu + j) * 16;
          float* dv = dp + (t * c.nu + j) * 16;
          std::fill(cv, cv + 16, 0);
          for (int64_t h = 0; h < unit; ++h) {
            const int64_t b = unit * j + h;
            const bool real = b < c.nb;
            cv[lanes * h] = real ? -offset * sum[t * c.nb + b] : 0;
            std::fill(dv + lanes * h, dv + lanes * (h + 1), real ? d[t * c.nb + b] : 0.0f);
          }
        }
      if (!q8) {  // first halves of the unit's 4 blocks, then their second halves
        int8_t* q4 = grow(s.xq4, p.n * c.nu * 128);
        for (int64_t t = 0; t < p.n; ++t)
          for (int64_t j = 0; j < c.nu; ++j)
            for (int64_t h = 0; h < unit; ++h) {
              const int64_t b = unit * j + h;
              int8_t* dst = q4 + (t * c.nu + j) * 128 + 16 * h;
              if (b < c.nb) {
                std::memcpy(dst, q + t * c.kp + b * kQuantBlock, 16);
                std::memcpy(dst + 64, q + t * c.kp + b * kQuantBlock + 16, 16);
              } else {
                std::fill(dst, dst + 16, int8_t{0});
                std::fill(dst + 64, dst + 80, int8_t{0});
              }
            }
        c.xq4 = q4;
      }
      c.xcorr = corr;
      c.xdp = dp;
    } else {
      quantize_acts_scalar(p.x, c.xs, p.n, in, c.kp, q, d, sum);
    }
  } else if (isa != Isa::scalar && p.n <= kF8GemvMaxTokens && p.weight_dtype == DType::f8_e4m3) {
    // x is scaled per row block by the workers (the scales differ per block of rows, and a worker's
    // rows span few blocks); here only the padded length they all use.
    c.kp = (in + kF8Chunk - 1) / kF8Chunk * kF8Chunk;
  } else if (isa != Isa::scalar && p.n <= kGemvMaxTokens) {
    const int64_t chunk = isa == Isa::avx512 ? 32 : 16;
    c.kp = (in + chunk - 1) / chunk * chunk;
    float* xp = grow(s.xp, p.n * c.kp);
    for (int64_t t = 0; t < p.n; ++t) {
      float* dst = xp + t * c.kp;
      const float* x = p.x + t * c.xs;
      std::fill(dst + in, dst + c.kp, 0.0f);
      if (p.weight_dtype == DType::bf16) {
        // A vector of bf16 widens as its even elements (shifted left) and its odd ones (masked):
        // reorder x to match once here instead of shuffling every weight vector.
        for (int64_t base = 0; base < in; base += chunk)
          for (int64_t j = 0; j < chunk && base + j < in; ++j) dst[base + (j & 1) * (chunk / 2) + j / 2] = x[base + j];
      } else {
        std::memcpy(dst, x, static_cast<size_t>(in) * sizeof(float));
      }
    }
    c.xp = xp;
  }
  return c;
}

// Whether prepare_call would make the same activations for a and b.
bool shares_activations(const MatmulParams& a, const MatmulParams& b) {
  const int64_t as = a.x_stride ? a.x_stride : a.in_features, bs = b.x_stride ? b.x_stride : b.in_features;
  return a.x == b.x && as == bs && a.n == b.n && a.in_features == b.in_features && a.weight_dtype == b.weight_dtype;
}

// The fusions in their simplest exact form, so results are bit-identical to the unfused ops: fused[i]
// is ps[i] with a normalized x (cpu::rms_norm itself writes it into scratch, once per set of entries
// sharing x and the norm) and, for an accumulating entry, its output redirected to scratch at
// acc_off[i] (the returned base), which the caller adds into out as cpu::add does. The scratch is the
// calling worker's MatmulActs: they serve only matmul_alone (head_matmul's workers), never running
// during a group. Costs over the unfused ops: nothing (the same passes, without their dispatches).
const float* redirect_fused(const MatmulParams* ps, size_t count, std::array<MatmulParams, kMatmulGroupMax>& fused,
                            std::array<int64_t, kMatmulGroupMax>& acc_off, Context& ctx) {
  std::array<int64_t, kMatmulGroupMax> norm_off{};
  std::array<size_t, kMatmulGroupMax> norm_owner{};
  int64_t norm_floats = 0, acc_floats = 0;
  for (size_t i = 0; i < count; ++i) {
    const MatmulParams& p = ps[i];
    fused[i] = p;
    fused[i].norm_weight = nullptr;
    fused[i].accumulate = false;
    if (p.n <= 0 || p.out_features <= 0) continue;
    const int64_t xs = p.x_stride ? p.x_stride : p.in_features;
    if (p.norm_weight) {
      norm_owner[i] = i;
      for (size_t j = 0; j < i && norm_owner[i] == i; ++j) {
        const MatmulParams& q = ps[j];
        if (q.norm_weight == p.norm_weight && q.norm_eps == p.norm_eps && q.x == p.x && q.n == p.n &&
            q.in_features == p.in_features && (q.x_stride ? q.x_stride : q.in_features) == xs &&
            q.out_features > 0)
          norm_owner[i] = norm_owner[j];
      }
      if (norm_owner[i] == i) {
        norm_off[i] = norm_floats;
        norm_floats += p.n * xs;  // rms_norm keeps x's row stride
      }
    }
    if (p.accumulate) {
      acc_off[i] = acc_floats;
      acc_floats += p.n * p.out_features;
    }
  }
  CallScratch& s = ctx.call();
  float* norm_base = grow(s.fused_x, norm_floats);
  float* acc_base = grow(s.fused_out, acc_floats);
  for (size_t i = 0; i < count; ++i) {
    const MatmulParams& p = ps[i];
    if (p.n <= 0 || p.out_features <= 0) continue;
    if (p.norm_weight) {
      const size_t owner = norm_owner[i];
      fused[i].x = norm_base + norm_off[owner];
      if (owner == i) {
        RmsNormParams r;
        r.out = norm_base + norm_off[i];
        r.x = p.x;
        r.weight = p.norm_weight;
        r.rows = p.n;
        r.cols = p.in_features;
        r.eps = p.norm_eps;
        r.stride = p.x_stride ? p.x_stride : p.in_features;
        rms_norm(r, ctx);
      }
    }
    if (p.accumulate) {
      fused[i].out = acc_base + acc_off[i];
      fused[i].out_stride = 0;
    }
  }
  return acc_base;
}

void run_rows(const MatmulCall& c, Isa isa, int64_t o0, int64_t o1, WorkerScratch& s) {
  switch (isa) {
    case Isa::avx512: rows_avx512(c, o0, o1, s); break;
    case Isa::avx2: rows_avx2(c, o0, o1, s); break;
    default: rows_scalar(c, o0, o1, s);
  }
}

}  // namespace

void matmul_isa(const MatmulParams& p, Context& ctx, Isa isa) { matmul_group_isa(&p, 1, ctx, isa); }

void matmul_alone(const MatmulParams& p, WorkerScratch& s, Isa isa) {
  check(p);
  if (p.norm_weight || p.accumulate) throw Error("cpu::matmul", "matmul_alone runs no fused norm or accumulate");
  if (p.n <= 0 || p.out_features <= 0) return;
  run_rows(prepare_call(p, isa, s.acts), isa, 0, p.out_features, s);
}

void matmul_group_isa(const MatmulParams* ps, size_t count, Context& ctx, Isa isa) {
  constexpr size_t kMax = kMatmulGroupMax;
  if (count > kMax) throw Error("matmul_group", "at most 32 matmuls per group");
  const MatmulParams* const orig = ps;
  std::array<MatmulActs, kMax>& acts = ctx.call().matmul;
  std::array<MatmulParams, kMax> fused;  // entries with a norm or accumulate, redirected to scratch
  const float* acc_base = nullptr;       // accumulating entries' products, added into out at the end
  std::array<int64_t, kMax> acc_off{};
  for (size_t i = 0; i < count; ++i) check(ps[i]);  // before any entry's norm runs
  for (size_t i = 0; i < count; ++i)
    if (ps[i].norm_weight || ps[i].accumulate) {
      acc_base = redirect_fused(ps, count, fused, acc_off, ctx);
      ps = fused.data();
      break;
    }
  std::array<MatmulCall, kMax> calls;
  std::array<int64_t, kMax + 1> first{};  // entry i owns rows [first[i], first[i + 1]) of the union
  for (size_t i = 0; i < count; ++i) {
    check(ps[i]);
    const bool empty = ps[i].n <= 0 || ps[i].out_features <= 0;
    first[i + 1] = first[i] + (empty ? 0 : ps[i].out_features);
    if (empty) continue;
    // Entries that read the same activations the same way (q/k/v, gate/up, a decode step's experts)
    // share one preparation: only the weights and the output differ.
    size_t same = i;
    for (size_t j = 0; j < i && same == i; ++j)
      if (calls[j].p && shares_activations(ps[i], ps[j])) same = j;
    if (same == i) {
      calls[i] = prepare_call(ps[i], isa, acts[i]);
    } else {
      calls[i] = calls[same];
      calls[i].p = &ps[i];
      calls[i].os = ps[i].out_stride ? ps[i].out_stride : ps[i].out_features;
    }
  }
  auto rows = [&](int64_t g0, int64_t g1, int worker) {
    WorkerScratch& s = ctx.worker(worker);
    for (size_t i = 0; i < count; ++i) {
      const int64_t lo = std::max(g0, first[i]), hi = std::min(g1, first[i + 1]);
      if (lo < hi) run_rows(calls[i], isa, lo - first[i], hi - first[i], s);
    }
  };
  ctx.parallel_for(first[count], rows, /*align=*/16);
  if (!acc_base) return;
  for (size_t i = 0; i < count; ++i) {
    const MatmulParams& p = orig[i];
    if (!p.accumulate || p.n <= 0 || p.out_features <= 0) continue;
    const int64_t os = p.out_stride ? p.out_stride : p.out_features;
    // cpu::add's arithmetic (vec::add per row), with out's own row stride.
    for (int64_t t = 0; t < p.n; ++t) vec::add(p.out + t * os, acc_base + acc_off[i] + t * p.out_features, p.out_features);
  }
}

}  // namespace detail

void matmul(const MatmulParams& p, Context& ctx) { detail::matmul_isa(p, ctx, detail::best_isa()); }

void matmul_group(const MatmulParams* ps, size_t count, Context& ctx) {
  detail::matmul_group_isa(ps, count, ctx, detail::best_isa());
}

}  // namespace moerun::cpu
