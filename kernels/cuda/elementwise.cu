// Elementwise and data-movement ops on the GPU: gated_act, embed, add (optionally sigmoid-gated), clamp,
// store_rows (into f32, bf16 or f16 caches, optionally rotated first: the fused K RoPE) and copy. CPU twins:
// kernels/cpu/activations.cpp and kernels/cpu/elementwise.cpp (store_rows: kernels/cpu/kv.cpp's conversions,
// bit for bit).
// All of them are memory-bound: each thread moves 16 bytes per access (float4, or 8 halves for a bf16/f16
// embedding row) when every pointer and stride involved is 16-byte aligned, and one element otherwise.
// Row ops use grid (rows, column blocks); the column blocks loop so a single long row still spreads over
// many multiprocessors. Everything position- or id-dependent is read on the device (graph-safe).
// store_rows with the fused RoPE (StoreRowsParams::rope_*) runs its own kernel, one element per thread:
// an element in a rotated region reads its pair's two source values (cache hits: the partner lies in the
// same head, which the block's other threads read too) and computes its half of the rotation with kernels/cuda/rope.cuh,
// exactly what rope_kernel writes, so the cache holds the same bits as rope then store_rows. Each pair's
// sincosf runs twice (once per element); a decode step stores a few rows of at most a few thousand
// elements, so the launch saved is worth far more.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/context.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/rope.cuh"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cuda {
namespace {

void check_rows(const char* op, int64_t rows) {
  if (rows > 0x7fffffff) throw Error(op, "more than 2^31 - 1 rows for one launch");
}

__device__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// ------------------------------------------------------------------------------------------------
// gated_act: out = act(gate) * up (detail::act_mul, kernels/cuda/activation.cuh).

// 1-D grid-stride; V floats per step. out may equal gate, so no __restrict__ on those two.
template <int V>
__global__ void gated_act_kernel(float* out, const float* gate, const float* __restrict__ up, int64_t n,
                                 Activation act) {
  MOERUN_PDL_WAIT();
  using detail::act_mul;
  const int64_t nv = n / V;
  for (int64_t i = blockIdx.x * int64_t{kEltThreads} + threadIdx.x; i < nv; i += int64_t{gridDim.x} * kEltThreads) {
    if constexpr (V == 4) {
      const float4 g = load4(gate + 4 * i), u = load4(up + 4 * i);
      store4(out + 4 * i, make_float4(act_mul(act, g.x, u.x), act_mul(act, g.y, u.y), act_mul(act, g.z, u.z),
                                      act_mul(act, g.w, u.w)));
    } else {
      out[i] = act_mul(act, gate[i], up[i]);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// embed: out[t, :] = table[ids[t], :] widened to fp32.

template <DType D>
__device__ float widen(const void* table, int64_t i) {
  if constexpr (D == DType::f32)
    return static_cast<const float*>(table)[i];
  else if constexpr (D == DType::bf16)
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(table)[i]) << 16);
  else
    return __half2float(static_cast<const __half*>(table)[i]);
}

// Eight 16-bit values of one 16-byte load, widened.
template <DType D>
__device__ void widen8(uint4 raw, float* o) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (D == DType::bf16) {
      o[2 * k] = __uint_as_float(w[k] << 16);
      o[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    } else {
      o[2 * k] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] & 0xffffu)));
      o[2 * k + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] >> 16)));
    }
  }
}

// Grid (n_tokens, column blocks). kVec: each thread moves one 16-byte chunk of the table row (4 floats
// or 8 halves); otherwise one element.
template <DType D, bool kVec>
__global__ void embed_kernel(float* __restrict__ out,          // [n_tokens, dim]
                             const void* __restrict__ table,   // [vocab, dim] of D
                             const int32_t* __restrict__ ids,  // [n_tokens]
                             int64_t dim, int64_t first_row, int64_t rows) {
  MOERUN_PDL_WAIT();
  const int64_t t = blockIdx.x;
  const int64_t id = static_cast<int64_t>(ids[t]) - first_row;
  const int64_t row = id * dim;
  float* o = out + t * dim;
  constexpr int kPer = !kVec ? 1 : (D == DType::f32 ? 4 : 8);
  const int64_t nv = dim / kPer;
  if (rows > 0 && (id < 0 || id >= rows)) {  // another rank's row (vocabulary split): zeros
    for (int64_t j = blockIdx.y * int64_t{kEltThreads} + threadIdx.x; j < dim; j += int64_t{gridDim.y} * kEltThreads) o[j] = 0.0f;
    return;
  }
  for (int64_t j = blockIdx.y * int64_t{kEltThreads} + threadIdx.x; j < nv; j += int64_t{gridDim.y} * kEltThreads) {
    if constexpr (!kVec) {
      o[j] = widen<D>(table, row + j);
    } else if constexpr (D == DType::f32) {
      store4(o + 4 * j, load4(static_cast<const float*>(table) + row + 4 * j));
    } else {
      const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(table) + row + 8 * j);
      float v[8];
      widen8<D>(raw, v);
      store4(o + 8 * j, make_float4(v[0], v[1], v[2], v[3]));
      store4(o + 8 * j + 4, make_float4(v[4], v[5], v[6], v[7]));
    }
  }
}

template <DType D>
void launch_embed(const EmbedParams& p, cudaStream_t stream) {
  constexpr int64_t kPer = D == DType::f32 ? 4 : 8;
  const size_t bytes = D == DType::f32 ? 4 : 2;
  const bool vec = p.dim % kPer == 0 && aligned16(p.table) && aligned16(p.out) && (p.dim * bytes) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(p.n_tokens), elt_blocks(vec ? p.dim / kPer : p.dim));
  if (vec)
    launch_kernel(embed_kernel<D, true>, grid, kEltThreads, 0, stream, p.out, p.table, p.ids, p.dim, p.first_row,
                  p.rows);
  else
    launch_kernel(embed_kernel<D, false>, grid, kEltThreads, 0, stream, p.out, p.table, p.ids, p.dim, p.first_row,
                  p.rows);
}

// ------------------------------------------------------------------------------------------------
// add: out[r, :] += x[r, :], or += sigmoid(gate[r]) * x[r, :].

template <bool kVec>
__global__ void add_kernel(float* __restrict__ out,         // [rows, cols]
                           const float* __restrict__ x,     // [rows, cols]
                           const float* __restrict__ gate,  // [rows] or nullptr
                           int64_t cols) {
  MOERUN_PDL_WAIT();
  const int64_t r = blockIdx.x;
  const float g = gate ? 1.0f / (1.0f + expf(-gate[r])) : 1.0f;
  const bool gated = gate != nullptr;
  float* o = out + r * cols;
  const float* xr = x + r * cols;
  constexpr int kPer = kVec ? 4 : 1;
  const int64_t nv = cols / kPer;
  for (int64_t j = blockIdx.y * int64_t{kEltThreads} + threadIdx.x; j < nv; j += int64_t{gridDim.y} * kEltThreads) {
    if constexpr (kVec) {
      float4 a = load4(o + 4 * j);
      const float4 b = load4(xr + 4 * j);
      if (gated) {
        a.x += g * b.x, a.y += g * b.y, a.z += g * b.z, a.w += g * b.w;
      } else {
        a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
      }
      store4(o + 4 * j, a);
    } else {
      o[j] += gated ? g * xr[j] : xr[j];
    }
  }
}

// ------------------------------------------------------------------------------------------------
// clamp: x = min(max(x, -limit), limit), 1-D grid-stride.

template <int V>
__global__ void clamp_kernel(float* __restrict__ x, int64_t n, float limit) {
  MOERUN_PDL_WAIT();
  const int64_t nv = n / V;
  for (int64_t i = blockIdx.x * int64_t{kEltThreads} + threadIdx.x; i < nv; i += int64_t{gridDim.x} * kEltThreads) {
    if constexpr (V == 4) {
      float4 v = load4(x + 4 * i);
      v.x = fminf(fmaxf(v.x, -limit), limit);
      v.y = fminf(fmaxf(v.y, -limit), limit);
      v.z = fminf(fmaxf(v.z, -limit), limit);
      v.w = fminf(fmaxf(v.w, -limit), limit);
      store4(x + 4 * i, v);
    } else {
      x[i] = fminf(fmaxf(x[i], -limit), limit);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// store_rows and copy: strided row moves. dst row r is dst + dst_row(r) * dst_stride; for store_rows the
// destination row is positions[r], read here on the device.

template <bool kVec>
__global__ void move_rows_kernel(float* __restrict__ dst, const float* __restrict__ src,
                                 const int64_t* __restrict__ dst_rows,  // [rows] or nullptr: row r
                                 int64_t cols, int64_t dst_stride, int64_t src_stride) {
  MOERUN_PDL_WAIT();
  const int64_t r = blockIdx.x;
  float* d = dst + (dst_rows ? dst_rows[r] : r) * dst_stride;
  const float* s = src + r * src_stride;
  constexpr int kPer = kVec ? 4 : 1;
  const int64_t nv = cols / kPer;
  for (int64_t j = blockIdx.y * int64_t{kEltThreads} + threadIdx.x; j < nv; j += int64_t{gridDim.y} * kEltThreads) {
    if constexpr (kVec)
      store4(d + 4 * j, load4(s + 4 * j));
    else
      d[j] = s[j];
  }
}

// store_rows into a 16-bit cache: each fp32 element rounded exactly as the CPU twin's kv_from_f32 does
// (kernels/cpu/convert.cpp f32_to_bf16, kernels/cpu/quant.cpp f32_to_f16), so CPU and GPU caches hold the same
// bits: round to nearest even; bf16 keeps NaN a NaN by setting a mantissa bit; f16 NaN becomes sign | 0x7e00,
// values rounding past 65504 become inf, values below 2^-14 become subnormals. Rows are a few per step, so
// one element per thread (2-byte stores coalesce across the warp).
__device__ uint16_t to_bf16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ uint16_t to_f16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (mag >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (mag < 0x38800000u) {
    // A multiple of 2^-24: |f| * 2^24 < 1024 is exact, and __float2uint_rn rounds it to nearest even.
    return static_cast<uint16_t>(sign | __float2uint_rn(__uint_as_float(mag) * 16777216.0f));
  }
  const uint32_t r = mag + 0xfffu + ((mag >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
}

template <bool kBf16>
__global__ void store_rows16_kernel(uint16_t* __restrict__ cache, const float* __restrict__ src,
                                    const int64_t* __restrict__ positions, int64_t cols, int64_t cache_stride,
                                    int64_t src_stride) {
  MOERUN_PDL_WAIT();
  const int64_t r = blockIdx.x;
  uint16_t* d = cache + positions[r] * cache_stride;
  const float* s = src + r * src_stride;
  for (int64_t j = blockIdx.y * int64_t{kEltThreads} + threadIdx.x; j < cols; j += int64_t{gridDim.y} * kEltThreads)
    d[j] = kBf16 ? to_bf16_bits(s[j]) : to_f16_bits(s[j]);
}

// store_rows' rotation (StoreRowsParams::rope_*), by value; validated on the host (dim > 0 and even,
// regions inside cols, heads > 1 only with offset + dim <= head_stride, so head_stride > 0 there).
struct StoreRope {
  const float* inv_freq = nullptr;  // [dim / 2]
  int64_t heads = 1, head_stride = 0, offset = 0, dim = 0;
  float attention_factor = 1.0f;
  bool neox = true;
};

// Element j of source row s after the rotation at `position`: itself outside the rotated regions,
// otherwise its half of its pair's rotation, computed as rope_kernel computes it.
__device__ float rotated_element(const float* __restrict__ s, int64_t j, int64_t position, const StoreRope& r) {
  const int64_t h = r.heads > 1 ? j / r.head_stride : 0;
  const int64_t rel = j - h * r.head_stride - r.offset;  // index inside head h's rotated region
  if (h >= r.heads || rel < 0 || rel >= r.dim) return s[j];
  const int64_t half = r.dim / 2;
  // Pair i is (a, b): neox (i, i + half), interleaved (2i, 2i + 1); this element is a or b.
  const bool first = r.neox ? rel < half : (rel & 1) == 0;
  const int64_t i = r.neox ? (first ? rel : rel - half) : rel / 2;
  const int64_t a = r.neox ? i : 2 * i;
  const int64_t b = r.neox ? i + half : 2 * i + 1;
  const float* region = s + (j - rel);
  const float x0 = region[a], x1 = region[b];
  const detail::RopeCosSin cs = detail::rope_cos_sin(position, r.inv_freq[i], r.attention_factor);
  return first ? detail::rope_first(x0, x1, cs) : detail::rope_second(x0, x1, cs);
}

// Grid (n, column blocks), one element per thread: rotate, convert to T's bits, store at row positions[r].
template <KvType T>
__global__ void store_rows_rope_kernel(void* __restrict__ cache, const float* __restrict__ src,
                                       const int64_t* __restrict__ positions, int64_t cols, int64_t cache_stride,
                                       int64_t src_stride, StoreRope rot) {
  MOERUN_PDL_WAIT();
  const int64_t r = blockIdx.x;
  const int64_t position = positions[r];
  const float* s = src + r * src_stride;
  const int64_t row = position * cache_stride;
  for (int64_t j = blockIdx.y * int64_t{kEltThreads} + threadIdx.x; j < cols; j += int64_t{gridDim.y} * kEltThreads) {
    const float v = rotated_element(s, j, position, rot);
    if constexpr (T == KvType::f32)
      static_cast<float*>(cache)[row + j] = v;
    else if constexpr (T == KvType::bf16)
      static_cast<uint16_t*>(cache)[row + j] = to_bf16_bits(v);
    else
      static_cast<uint16_t*>(cache)[row + j] = to_f16_bits(v);
  }
}

void launch_move_rows(float* dst, const float* src, const int64_t* dst_rows, int64_t rows, int64_t cols,
                      int64_t dst_stride, int64_t src_stride, cudaStream_t stream) {
  const bool vec = cols % 4 == 0 && dst_stride % 4 == 0 && src_stride % 4 == 0 && aligned16(dst) && aligned16(src);
  const dim3 grid(static_cast<unsigned>(rows), elt_blocks(vec ? cols / 4 : cols));
  if (vec)
    launch_kernel(move_rows_kernel<true>, grid, kEltThreads, 0, stream, dst, src, dst_rows, cols, dst_stride,
                  src_stride);
  else
    launch_kernel(move_rows_kernel<false>, grid, kEltThreads, 0, stream, dst, src, dst_rows, cols, dst_stride,
                  src_stride);
}

}  // namespace

void gated_act(const GatedActParams& p, Context& ctx) {
  if (p.n < 0) throw Error("cuda::gated_act", "n must be >= 0");
  if (p.n == 0) return;
  // The float4 body covers n rounded down to 4; the scalar launch takes the tail (at most 3 elements).
  const bool vec = aligned16(p.out) && aligned16(p.gate) && aligned16(p.up);
  const int64_t body = vec ? p.n / 4 * 4 : 0;
  if (body > 0)
    launch_kernel(gated_act_kernel<4>, elt_blocks(body / 4), kEltThreads, 0, ctx.stream(), p.out, p.gate, p.up, body,
                  p.act);
  if (p.n > body)
    launch_kernel(gated_act_kernel<1>, elt_blocks(p.n - body), kEltThreads, 0, ctx.stream(), p.out + body,
                  p.gate + body, p.up + body, p.n - body, p.act);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

void embed(const EmbedParams& p, Context& ctx) {
  if (p.n_tokens < 0 || p.dim < 0) throw Error("cuda::embed", "n_tokens and dim must be >= 0");
  check_rows("cuda::embed", p.n_tokens);
  if (p.n_tokens == 0 || p.dim == 0) return;
  switch (p.dtype) {
    case DType::f32:
      launch_embed<DType::f32>(p, ctx.stream());
      break;
    case DType::bf16:
      launch_embed<DType::bf16>(p, ctx.stream());
      break;
    case DType::f16:
      launch_embed<DType::f16>(p, ctx.stream());
      break;
    default:
      throw Error("cuda::embed", "table dtype must be f32, bf16 or f16");
  }
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

void add(const AddParams& p, Context& ctx) {
  if (p.rows < 0 || p.cols < 0) throw Error("cuda::add", "rows and cols must be >= 0");
  check_rows("cuda::add", p.rows);
  if (p.rows == 0 || p.cols == 0) return;
  const bool vec = p.cols % 4 == 0 && aligned16(p.out) && aligned16(p.x);
  const dim3 grid(static_cast<unsigned>(p.rows), elt_blocks(vec ? p.cols / 4 : p.cols));
  if (vec)
    launch_kernel(add_kernel<true>, grid, kEltThreads, 0, ctx.stream(), p.out, p.x, p.gate, p.cols);
  else
    launch_kernel(add_kernel<false>, grid, kEltThreads, 0, ctx.stream(), p.out, p.x, p.gate, p.cols);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

void clamp(const ClampParams& p, Context& ctx) {
  if (p.n < 0) throw Error("cuda::clamp", "n must be >= 0");
  if (p.n == 0) return;
  const int64_t body = aligned16(p.x) ? p.n / 4 * 4 : 0;
  if (body > 0) launch_kernel(clamp_kernel<4>, elt_blocks(body / 4), kEltThreads, 0, ctx.stream(), p.x, body, p.limit);
  if (p.n > body)
    launch_kernel(clamp_kernel<1>, elt_blocks(p.n - body), kEltThreads, 0, ctx.stream(), p.x + body, p.n - body,
                  p.limit);
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

void store_rows(const StoreRowsParams& p, Context& ctx) {
  if (p.n < 0 || p.cols < 0) throw Error("cuda::store_rows", "n and cols must be >= 0");
  check_rows("cuda::store_rows", p.n);
  if (p.cache_type != KvType::f32 && p.cache_type != KvType::bf16 && p.cache_type != KvType::f16)
    throw Error("cuda::store_rows", std::string("a ") + std::string(kv_type_name(p.cache_type)) +
                                        " KV cache is not supported on CUDA (f32, bf16 or f16: --kv-type bf16)");
  if (p.rope_inv_freq &&
      (p.rope_heads < 1 || p.rope_dim < 0 || p.rope_dim % 2 != 0 || p.rope_offset < 0 || p.rope_head_stride < 0 ||
       (p.rope_heads - 1) * p.rope_head_stride + p.rope_offset + p.rope_dim > p.cols ||
       (p.rope_heads > 1 && p.rope_offset + p.rope_dim > p.rope_head_stride)))
    throw Error("cuda::store_rows", "the rotated dims (rope_heads " + std::to_string(p.rope_heads) +
                                        ", rope_head_stride " + std::to_string(p.rope_head_stride) + ", rope_offset " +
                                        std::to_string(p.rope_offset) + ", rope_dim " + std::to_string(p.rope_dim) +
                                        ") must be even, inside cols (" + std::to_string(p.cols) +
                                        ") and each inside its head");
  if (p.n == 0 || p.cols == 0) return;
  if (p.rope_inv_freq && p.rope_dim > 0) {
    StoreRope rot;
    rot.inv_freq = p.rope_inv_freq;
    rot.heads = p.rope_heads;
    rot.head_stride = p.rope_head_stride;
    rot.offset = p.rope_offset;
    rot.dim = p.rope_dim;
    rot.attention_factor = p.rope_attention_factor;
    rot.neox = p.rope_style == RopeStyle::neox;
    const dim3 grid(static_cast<unsigned>(p.n), elt_blocks(p.cols));
    if (p.cache_type == KvType::f32)
      launch_kernel(store_rows_rope_kernel<KvType::f32>, grid, kEltThreads, 0, ctx.stream(), p.cache, p.src,
                    p.positions, p.cols, p.cache_stride, p.src_stride, rot);
    else if (p.cache_type == KvType::bf16)
      launch_kernel(store_rows_rope_kernel<KvType::bf16>, grid, kEltThreads, 0, ctx.stream(), p.cache, p.src,
                    p.positions, p.cols, p.cache_stride, p.src_stride, rot);
    else
      launch_kernel(store_rows_rope_kernel<KvType::f16>, grid, kEltThreads, 0, ctx.stream(), p.cache, p.src,
                    p.positions, p.cols, p.cache_stride, p.src_stride, rot);
  } else if (p.cache_type == KvType::f32) {
    launch_move_rows(static_cast<float*>(p.cache), p.src, p.positions, p.n, p.cols, p.cache_stride, p.src_stride,
                     ctx.stream());
  } else {
    const dim3 grid(static_cast<unsigned>(p.n), elt_blocks(p.cols));
    auto* cache = static_cast<uint16_t*>(p.cache);
    if (p.cache_type == KvType::bf16)
      launch_kernel(store_rows16_kernel<true>, grid, kEltThreads, 0, ctx.stream(), cache, p.src, p.positions, p.cols,
                    p.cache_stride, p.src_stride);
    else
      launch_kernel(store_rows16_kernel<false>, grid, kEltThreads, 0, ctx.stream(), cache, p.src, p.positions, p.cols,
                    p.cache_stride, p.src_stride);
  }
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

void copy(const CopyParams& p, Context& ctx) {
  if (p.rows < 0 || p.cols < 0) throw Error("cuda::copy", "rows and cols must be >= 0");
  check_rows("cuda::copy", p.rows);
  if (p.rows == 0 || p.cols == 0) return;
  // The CPU twin is memmove per row; here rows run in parallel, so overlapping source and destination
  // ranges would race. Refuse them (compared as addresses only, nothing is read).
  const auto lo_d = reinterpret_cast<uintptr_t>(p.dst), lo_s = reinterpret_cast<uintptr_t>(p.src);
  const auto hi_d = lo_d + static_cast<uintptr_t>(((p.rows - 1) * p.dst_stride + p.cols) * 4);
  const auto hi_s = lo_s + static_cast<uintptr_t>(((p.rows - 1) * p.src_stride + p.cols) * 4);
  if (lo_d < hi_s && lo_s < hi_d) throw Error("cuda::copy", "source and destination overlap");
  launch_move_rows(p.dst, p.src, nullptr, p.rows, p.cols, p.dst_stride, p.src_stride, ctx.stream());
  MOERUN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moerun::cuda
