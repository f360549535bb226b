// Per-head matmuls over one shared weight (MLA's absorbed query and output projections). Heads are
// split across the context's pool; each reads only its own block of weight rows.
// FP8 weights keep the whole weight's block scales: a head's rows start at any row, so the plain
// form runs one matmul per span of rows inside one row block (its scale row passed as the span's
// only one), and the transposed form scales each input row's columns per column block.

#include <algorithm>

#include "kernels/cpu/context.h"
#include "kernels/cpu/matmul_impl.h"
#include "kernels/cpu/vec.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun::cpu {

void head_matmul(const HeadMatmulParams& p, Context& ctx) {
  const bool f8 = p.weight_dtype == DType::f8_e4m3;
  if (f8 && !p.weight_scale) throw Error("cpu::head_matmul", "F8_E4M3 weights need their block scales");
  if (f8 && (p.block_out <= 0 || p.block_in <= 0))
    throw Error("cpu::head_matmul", "F8_E4M3 block sizes must be positive");
  const detail::Isa isa = detail::best_isa();
  const int64_t scale_cols = f8 ? (p.row_len + p.block_in - 1) / p.block_in : 0;
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
          const int64_t row_bytes = p.row_len * static_cast<int64_t>(dtype_size(p.weight_dtype));
          MatmulParams m{.x = x, .weight_dtype = p.weight_dtype, .n = 1, .in_features = p.in_dim};
          if (!f8) {
            m.out = out;
            m.weight = static_cast<const char*>(p.weight) + first * row_bytes;
            m.out_features = p.out_dim;
            detail::matmul_alone(m, s, isa);
            continue;
          }
          // MatmulParams counts row blocks from its own first row, which need not start a block
          // here: one matmul per span of rows inside one block, that block's scale row its only one.
          for (int64_t o = 0; o < p.out_dim;) {
            const int64_t global = first + o, block = global / p.block_out;
            const int64_t end = std::min(p.out_dim, (block + 1) * p.block_out - first);
            m.out = out + o;
            m.weight = static_cast<const char*>(p.weight) + global * row_bytes;
            m.out_features = end - o;
            m.weight_scale = p.weight_scale + block * scale_cols;
            m.block_out = end - o;
            m.block_in = p.block_in;
            detail::matmul_alone(m, s, isa);
            o = end;
          }
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
            } else if (f8) {  // widened in registers, scaled per column block
              detail::axpy_f8(isa, out, xi, static_cast<const uint8_t*>(p.weight) + base,
                              p.weight_scale + (first + i) / p.block_out * scale_cols, p.out_dim, p.block_in);
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
