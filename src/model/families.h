#pragma once
// The seven families as data: how each maps its config.json onto ModelConfig, and the few tensor-name
// parts in which their checkpoints differ. Adding a family means adding a row to the table in
// families.cpp; the executor never sees the family (docs/DESIGN.md rule 1).

#include <string_view>
#include <vector>

#include "io/json_util.h"
#include "moerun/config.h"

namespace moerun::model {

// Tensor names are "model.layers.{L}.<moe_block>.experts.{E}.<expert_gate>.weight" and so on; the
// rest of the name map is shared by every family and lives in binding.cpp.
struct TensorNames {
  const char* moe_block = "mlp";            // Mixtral: "block_sparse_moe"
  const char* expert_gate = "gate_proj";    // Mixtral: "w1"
  const char* expert_up = "up_proj";        // Mixtral: "w3"
  const char* expert_down = "down_proj";    // Mixtral: "w2"
  const char* shared_expert = "shared_experts";  // Qwen2-MoE: "shared_expert"
};

// One row per family: its names, the defaults of its HF config class where families differ, and
// the reader of its own keys. Adding a family is one row plus its reader.
struct FamilySpec {
  Family family;
  const char* model_type;
  std::vector<std::string_view> architectures;
  // Reads the family's own keys (MoE, MLA, norms, biases) after the common ones are read.
  void (*read)(const io::JsonFields& f, ModelConfig& c, const FamilySpec& spec);
  TensorNames names;
  double rms_norm_eps = 1e-6;                        // default when config.json omits it
  double rope_theta = 10000.0;                       // default when config.json omits it
  const char* experts_key = "num_experts";           // the routed-expert count (aliases in the reader)
  const char* expert_width_key = "moe_intermediate_size";  // the key holding the expert width I_e
  bool requires_intermediate_size = false;           // intermediate_size must be given (dense or expert width)
};

const std::vector<FamilySpec>& family_table();
const FamilySpec& family_spec(Family f);

}  // namespace moerun::model
