// Per-head matmuls over one shared weight (MLA's absorbed query and output projections). Heads are
// split across the context's pool; each reads only its own block of weight rows.

#include <algorithm>

#include "kernels/cpu/context.h"
#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/vec.h"
#include "kernels/ops.h"

namespace moerun::cpu {

void head_matmul(const HeadMatmulParams& p, Context& ctx) {
  const detail::Isa isa = detail::best_isa();
  ctx.reserve_each(&WorkerScratch::head_row, p.row_len);
  auto heads = [&](int64_t h0, int64_t h1, int worker) {
    WorkerScratch& s = ctx.worker(worker);
    float* row = s.head_row.data();
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t first = h * p.head_rows + p.row_offset;
      for (int64_t t = 0; t < p.n_tokens; ++t) {
        const float* x = p.x + t * p.x_token_stride + h * p.x_head_stride;
        float* out = p.out + t * p.out_token_stride + h * p.out_head_stride;
        if (!p.transposed) {
          // out[o] = W[first + o, :] . x: one matmul row per output, on this thread.
          const void* w = static_cast<const char*>(p.weight) + first * p.row_len * static_cast<int64_t>(dtype_size(p.weight_dtype));
          detail::matmul_alone({.out = out, .x = x, .weight = w, .weight_dtype = p.weight_dtype, .n = 1,
                                .in_features = p.in_dim, .out_features = p.out_dim},
                               s, isa);
        } else {
          // out = sum_i x[i] * W[first + i, :]: accumulate weight rows.
          std::fill(out, out + p.out_dim, 0.0f);
          for (int64_t i = 0; i < p.in_dim; ++i) {
            const float xi = x[i];
            const int64_t base = (first + i) * p.row_len;
            if (p.weight_dtype == DType::f32) {
              vec::axpy(out, xi, static_cast<const float*>(p.weight) + base, p.out_dim);
            } else if (p.weight_dtype == DType::bf16) {
              vec::axpy_bf16(out, xi, static_cast<const uint16_t*>(p.weight) + base, p.out_dim);  // widened in registers
            } else {
              for (int64_t o = 0; o < p.out_dim; ++o) row[o] = load_f32(p.weight, p.weight_dtype, base + o);
              for (int64_t o = 0; o < p.out_dim; ++o) out[o] += xi * row[o];
            }
          }
        }
      }
    }
  };
  ctx.parallel_for(p.n_heads, heads);
}

}  // namespace moerun::cpu
