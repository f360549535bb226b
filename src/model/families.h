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

struct FamilySpec {
  Family family;
  const char* model_type;
  std::vector<std::string_view> architectures;
  // Reads the family's own keys (MoE, MLA, norms, biases) after the common ones are read.
  void (*read)(const io::JsonFields& f, ModelConfig& c);
  TensorNames names;
};

const std::vector<FamilySpec>& family_table();
const FamilySpec& family_spec(Family f);

}  // namespace moerun::model
