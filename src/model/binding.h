#pragma once
// Binding: every tensor the config implies, by role, checked for presence, dtype and shape.

#include <functional>
#include <string>
#include <vector>

#include "io/weight_store.h"
#include "moerun/config.h"
#include "moerun/weights.h"

namespace moerun::model {

struct Binding {
  ModelWeights weights;
  std::vector<std::string> warnings;  // unused tensors (ignored), lm_head despite tying
  // Unused tensors that transformers would not ignore either (a checkpoint with more layers than
  // num_hidden_layers, another model's weights), folded by name pattern, and how many there are.
  std::vector<std::string> unexpected;
  size_t unexpected_count = 0;
  int64_t total_params = 0;           // every bound weight, the tied head counted once
  int64_t active_params = 0;          // per token: total minus the experts not routed to
};

// Makes a tensor the store lacks (synthetic models: random weights at the config's shapes; memory
// plans: shapes without data). `linear`: a projection weight (which a checkpoint may store as FP8).
using TensorFactory = std::function<Tensor(const std::string& name, const Shape& shape, bool linear)>;

// The dtype Model::synthetic makes a tensor in: bf16 matrices, f32 vectors and router; for a config
// with an FP8 quantization_config, F8_E4M3 projections (`linear`) with f32 block scales, as the
// real checkpoint stores them.
DType synthetic_dtype(const ModelConfig& config, const std::string& name, const Shape& shape, bool linear);

// Throws one Error (where = `where`) that lists every missing, mis-shaped or wrongly typed tensor,
// with runs of layers and experts folded into ranges. With a factory, missing tensors are made.
Binding bind_weights(const ModelConfig& config, const io::WeightStore& store, const std::string& where,
                     const TensorFactory& factory = nullptr);

// DeepSeek-V3's multi-token-prediction layers (model.layers.{L .. L + num_nextn_predict_layers - 1}:
// embed_tokens, enorm, hnorm, eh_proj, a decoder block, shared_head.norm and .head), bound like the
// rest. Throws one Error (where = `where`) when the config declares none or a tensor is missing,
// mis-shaped or wrongly typed.
std::vector<MtpWeights> bind_mtp(const ModelConfig& config, const io::WeightStore& store, const std::string& where,
                                 const TensorFactory& factory = nullptr);

}  // namespace moerun::model
