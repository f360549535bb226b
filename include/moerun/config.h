#pragma once
// ModelConfig: one description for all seven families, read from a Hugging Face config.json: the
// ModelDesc the executor runs (moerun/model_desc.h) plus the family and the reader's own keys.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "moerun/model_desc.h"

namespace moerun {

enum class Family : uint8_t { llama, mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3 };
const char* family_name(Family f) noexcept;  // the HF model_type: "qwen3_moe" (from the family table)

// A ModelDesc (what the executor runs) plus what only the reader and the user need: the family and
// architecture, config.json keys that only shape the description (first_k_dense_replace, ...), and
// informational fields.
struct ModelConfig : ModelDesc {
  std::string architecture;  // architectures[0], e.g. "Qwen3MoeForCausalLM"
  std::string model_type;    // "qwen3_moe"
  Family family = Family::llama;

  // Keys that decide layer_ffn (the description holds the result).
  int64_t first_k_dense_replace = 0;   // DeepSeek
  int64_t num_nextn_predict_layers = 0;  // DeepSeek-V3: multi-token-prediction layers stored after the
                                         // last decoder layer (model.layers.{L}...); unused, as in HF
  int64_t moe_layer_freq = 1;          // DeepSeek (authors' code)
  int64_t decoder_sparse_step = 1;     // Qwen2/3-MoE
  std::vector<int64_t> mlp_only_layers;  // Qwen2/3-MoE

  // Informational.
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;   // eos_token_id: int or list
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype;              // "torch_dtype" or "dtype"
};
// Parses config.json text; `file` is used in error messages. Throws moerun::Error naming the file
// and field on bad JSON, a missing or mistyped field, or an unsupported architecture.
ModelConfig parse_model_config(const std::string& json_text, const std::string& file);
ModelConfig load_model_config(const std::filesystem::path& config_json);

// Changes applied to config.json before parsing, to benchmark a smaller slice of a big architecture
// (`moerun bench --synthetic CONFIG --layers N --experts N`).
struct ConfigOverrides {
  std::optional<int64_t> num_hidden_layers;
  std::optional<int64_t> max_routed_experts;  // caps the routed experts (and n_group to fit)
};
ModelConfig load_model_config(const std::filesystem::path& config_json, const ConfigOverrides& overrides);

// YaRN's m(F, mu) = 0.1 * mu * ln F + 1 (1 when F <= 1): the attention factor on cos/sin and
// DeepSeek's softmax-scale correction are built from it (docs/MODELS.md §2.5).
double yarn_mscale(double factor, double mscale) noexcept;

// "LlamaForCausalLM (llama), MixtralForCausalLM (mixtral), ..." for error messages and --help.
std::string supported_architectures();

}  // namespace moerun
