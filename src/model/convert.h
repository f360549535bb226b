#pragma once
// On-load conversions, done once (docs/DESIGN.md rule 3): FP8 block-scaled weights dequantized to
// bf16 or f32, small vectors (norms, biases, correction bias) to f32, any tensor whose data is not
// aligned for its dtype copied to aligned memory, and with a WeightQuant the 2-D projections
// quantized to q8_0 / q4_0 (kernels/cpu/quant.h). Everything else stays a view of the mmap.

#include "moerun/config.h"
#include "moerun/engine.h"
#include "moerun/weights.h"

namespace moerun::model {

// W[i, j] = fp8(Q[i, j]) * S[i / block_out, j / block_in], products in fp32 (docs/MODELS.md §6).
Tensor dequantize_fp8(const Tensor& q, const Tensor& scale_inv, int64_t block_out, int64_t block_in, DType to);

// W [out, in] of any float dtype (FP8 with its scales dequantized first) as q8_0 or q4_0 rows;
// in must be a multiple of 32.
Tensor quantize_matrix(const Tensor& w, const Tensor& scale_inv, int64_t block_out, int64_t block_in, DType to);

// quant: every projection the executor runs through matmul (attention incl. MLA's q_a/q_b/kv_a,
// dense MLP, experts, shared expert, an untied lm_head) whose in_features is a multiple of 32 is
// quantized; norms, router, embeddings, kv_b_proj (read per head by head_matmul) and the shared
// expert gate stay as they are.
ModelWeights prepare_weights(const ModelWeights& w, const ModelConfig& c, DType fp8_to,
                             WeightQuant quant = WeightQuant::none);

}  // namespace moerun::model
