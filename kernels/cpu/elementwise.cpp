// Data movement and elementwise ops of the executor: embedding lookup, residual add (optionally
// sigmoid-gated), clamp, cache stores (converted to the cache's KvType, optionally rotated first: the
// fused K RoPE, done by rope() on a scratch copy) and strided copies.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/context.h"
#include "kernels/cpu/kv.h"
#include "kernels/cpu/vec.h"
#include "moerun/error.h"
#include "kernels/ops.h"

namespace moerun::cpu {

void embed(const EmbedParams& p, Context&) {
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    float* dst = p.out + t * p.dim;
    const int64_t id = static_cast<int64_t>(p.ids[t]) - p.first_row;
    if (p.rows > 0 && (id < 0 || id >= p.rows)) {  // another rank's row
      std::fill(dst, dst + p.dim, 0.0f);
      continue;
    }
    const int64_t base = id * p.dim;
    if (p.dtype == DType::f32) {
      std::memcpy(dst, static_cast<const float*>(p.table) + base, static_cast<size_t>(p.dim) * sizeof(float));
    } else {
      for (int64_t d = 0; d < p.dim; ++d) dst[d] = load_f32(p.table, p.dtype, base + d);
    }
  }
}

void add(const AddParams& p, Context&) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float g = p.gate ? 1.0f / (1.0f + std::exp(-p.gate[r])) : 1.0f;
    float* o = p.out + r * p.cols;
    const float* x = p.x + r * p.cols;
    if (p.gate) {
      vec::axpy(o, g, x, p.cols);
    } else {
      vec::add(o, x, p.cols);
    }
  }
}

void clamp(const ClampParams& p, Context&) {
  for (int64_t i = 0; i < p.n; ++i) p.x[i] = std::clamp(p.x[i], -p.limit, p.limit);
}

void store_rows(const StoreRowsParams& p, Context& ctx) {
  // q8_0 quantizes whole blocks of the cache: a row that started or ended inside one would have to
  // requantize its neighbours' elements.
  if (p.cache_type == KvType::q8_0 && (p.cols % kKvBlock != 0 || p.cache_stride % kKvBlock != 0))
    throw Error("cpu::store_rows", detail::cat("a q8_0 cache needs cols (", p.cols, ") and cache_stride (",
                                               p.cache_stride, ") to be multiples of 32"));
  if (!p.rope_inv_freq) {
    for (int64_t t = 0; t < p.n; ++t)
      kv_from_f32(p.cache_type, p.src + t * p.src_stride, p.cols, kv_at(p.cache, p.cache_type, p.positions[t] * p.cache_stride));
    return;
  }
  // The fused rotation (the same checks as cuda::store_rows, which rotates each element in place of its
  // pair and so cannot allow overlapping regions).
  if (p.rope_heads < 1 || p.rope_dim < 0 || p.rope_dim % 2 != 0 || p.rope_offset < 0 || p.rope_head_stride < 0 ||
      (p.rope_heads - 1) * p.rope_head_stride + p.rope_offset + p.rope_dim > p.cols ||
      (p.rope_heads > 1 && p.rope_offset + p.rope_dim > p.rope_head_stride))
    throw Error("cpu::store_rows",
                detail::cat("the rotated dims (rope_heads ", p.rope_heads, ", rope_head_stride ", p.rope_head_stride,
                            ", rope_offset ", p.rope_offset, ", rope_dim ", p.rope_dim,
                            ") must be even, inside cols (", p.cols, ") and each inside its head"));
  // The rows are copied to the calling thread's scratch and rotated there by rope() itself, so the cache
  // holds exactly what rope on a copy followed by store_rows would store.
  float* rows = grow(ctx.worker(0).kv_rows, p.n * p.cols);
  for (int64_t t = 0; t < p.n; ++t)
    std::memcpy(rows + t * p.cols, p.src + t * p.src_stride, static_cast<size_t>(p.cols) * sizeof(float));
  rope({.x = rows,
        .n_tokens = p.n,
        .n_heads = p.rope_heads,
        .token_stride = p.cols,
        .head_stride = p.rope_head_stride,
        .rot_offset = p.rope_offset,
        .rot_dim = p.rope_dim,
        .positions = p.positions,
        .inv_freq = p.rope_inv_freq,
        .attention_factor = p.rope_attention_factor,
        .style = p.rope_style},
       ctx);
  for (int64_t t = 0; t < p.n; ++t)
    kv_from_f32(p.cache_type, rows + t * p.cols, p.cols, kv_at(p.cache, p.cache_type, p.positions[t] * p.cache_stride));
}

void copy(const CopyParams& p, Context&) {
  for (int64_t r = 0; r < p.rows; ++r)
    std::memmove(p.dst + r * p.dst_stride, p.src + r * p.src_stride, static_cast<size_t>(p.cols) * sizeof(float));
}

}  // namespace moerun::cpu
