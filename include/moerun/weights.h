#pragma once
// The weights of a model by role, as the executor asks for them (`layers[i].q_proj`), never by HF
// name. Every field is a view into the mapped safetensors shards (or a converted copy made at load).
// Shapes are in HF orientation: a Linear weight is [out_features, in_features].

#include <vector>

#include "moerun/tensor.h"

namespace moerun {

struct LinearWeight {
  Tensor weight;            // [out, in]
  Tensor weight_scale_inv;  // [ceil(out/128), ceil(in/128)] f32 block scales; only for F8_E4M3 weights
  Tensor bias;              // [out]; undefined when the projection has none

  bool defined() const noexcept { return weight.defined(); }
};

struct MlpWeights {  // gated FFN: down( act(gate x) * up x ), act = hidden_act (SwiGLU for silu)
  LinearWeight gate_proj;  // [I, D]
  LinearWeight up_proj;    // [I, D]
  LinearWeight down_proj;  // [D, I]
};

struct LayerWeights {
  Tensor input_layernorm;           // [D]
  Tensor post_attention_layernorm;  // [D]

  // GQA attention.
  LinearWeight q_proj;  // [H*d_h, D]; MLA without q_lora: [H*(d_n+d_r), D]
  LinearWeight k_proj;  // [H_kv*d_h, D]
  LinearWeight v_proj;  // [H_kv*d_h, D]
  LinearWeight o_proj;  // [D, H*d_h]; MLA: [D, H*d_v]
  Tensor q_norm;        // Qwen3: [d_h]; OLMoE: [H*d_h]
  Tensor k_norm;        // Qwen3: [d_h]; OLMoE: [H_kv*d_h]

  // MLA attention (q_proj above is used when q_lora_rank is null).
  LinearWeight q_a_proj;            // [r_q, D]
  Tensor q_a_layernorm;             // [r_q]
  LinearWeight q_b_proj;            // [H*(d_n+d_r), r_q]
  LinearWeight kv_a_proj_with_mqa;  // [r_kv+d_r, D]
  Tensor kv_a_layernorm;            // [r_kv]
  LinearWeight kv_b_proj;           // [H*(d_n+d_v), r_kv]

  // Feed-forward: `mlp` for a dense layer; router + experts (+ shared expert) for a MoE layer.
  MlpWeights mlp;
  Tensor router;                       // [E, D]
  Tensor e_score_correction_bias;      // [E] (noaux_tc only)
  std::vector<MlpWeights> experts;     // E entries
  MlpWeights shared_expert;            // width shared.intermediate_size; undefined without one
  Tensor shared_expert_gate;           // [1, D] (Qwen2-MoE)
};

struct ModelWeights {
  Tensor embed_tokens;               // [V, D]
  std::vector<LayerWeights> layers;  // [L]
  Tensor norm;                       // [D]
  Tensor lm_head;                    // [V, D]; the embedding when tied
};

}  // namespace moerun
