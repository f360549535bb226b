#pragma once
// On-load conversions, done once (docs/DESIGN.md rule 3): FP8 block-scaled weights dequantized to
// bf16 or f32, small vectors (norms, biases, correction bias) to f32, and any tensor whose data is
// not aligned for its dtype copied to aligned memory. Everything else stays a view of the mmap.

#include "moerun/config.h"
#include "moerun/engine.h"
#include "moerun/weights.h"

namespace moerun::model {

// W[i, j] = fp8(Q[i, j]) * S[i / block_out, j / block_in], products in fp32 (docs/MODELS.md §6).
Tensor dequantize_fp8(const Tensor& q, const Tensor& scale_inv, int64_t block_out, int64_t block_in, DType to);

ModelWeights prepare_weights(const ModelWeights& w, const ModelConfig& c, DType fp8_to, WeightQuant quant = WeightQuant::none);

}  // namespace moerun::model
