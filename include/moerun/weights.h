#pragma once
// The weights of a model by role, as the executor asks for them (`layers[i].q_proj`), never by HF
// name. Every field is a view into the mapped safetensors shards (or a converted copy made at load).
// Shapes are in HF orientation: a Linear weight is [out_features, in_features].

#include <cstdint>
#include <type_traits>
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

// DeepSeek-V3's multi-token-prediction module (model.layers.{L + i}.*; docs/MODELS.md "Multi-token
// prediction"): x = eh_proj [enorm(embed(t_next)); hnorm(h)], one decoder block, then its own head.
struct MtpWeights {
  Tensor embed_tokens;    // [V, D] (the release stores a copy of the main table)
  Tensor enorm, hnorm;    // [D]
  LinearWeight eh_proj;   // [D, 2D]: the embedding half's columns first
  LayerWeights block;     // a decoder layer, FFN kind ModelDesc::mtp_ffn[i]
  Tensor head_norm;       // shared_head.norm [D]
  Tensor head;            // shared_head.head [V, D]
};

struct ModelWeights {
  Tensor embed_tokens;               // [V, D]
  std::vector<LayerWeights> layers;  // [L]
  Tensor norm;                       // [D]
  Tensor lm_head;                    // [V, D]; the embedding when tied
  std::vector<MtpWeights> mtp;       // loaded only for drafting with them (EngineOptions::mtp)
};

// --- The walk ------------------------------------------------------------------------------------
// for_each_weight visits every weight of a ModelWeights once, in one fixed order, with where it sits
// and what it is. Binding's counts, load-time conversion, the CUDA upload, bench's bytes per token
// and the memory plan all walk through it, so a tensor added to the structs above is added here
// once and cannot be forgotten by one of them.

enum class WeightKind : uint8_t {
  linear,  // a projection run through matmul: [out, in], may be FP8 (with block scales) or quantized
  table,   // the token embedding [V, D]: rows looked up by id
  plain,   // norms, the router [E, D], gates, the correction bias: never FP8 and never quantized
};

struct WeightSite {
  const char* role = "";  // the field name: "q_proj", "input_layernorm", "gate_proj", "lm_head", ...
  WeightKind kind = WeightKind::plain;
  int64_t layer = -1;     // -1: outside the layers (embedding, final norm, LM head)
  int64_t expert = -1;    // a routed expert's index; -1 otherwise
  bool shared_expert = false;
  bool per_head = false;  // read per head, element by element (MLA's kv_b_proj): never quantized
  bool mtp = false;       // of a multi-token-prediction layer (layer L + i): a drafter's, not a decode step's
  bool f32_at_run_time = false;  // a vector the kernels read as f32 (norms, correction bias)
  bool routed() const noexcept { return expert >= 0; }
};

// `visit(site, LinearWeight&)` for every projection and `visit(site, Tensor&)` for every other
// tensor, skipping those a model does not have (undefined). W is ModelWeights or const ModelWeights.
template <class W, class Visit>
  requires std::is_same_v<std::remove_const_t<W>, ModelWeights>
void for_each_weight(W& w, Visit&& visit) {
  // Projections (LinearWeight) and tensors alike: visited when the model has them.
  auto one = [&](const WeightSite& s, auto& x) {
    if (x.defined()) visit(s, x);
  };
  auto mlp = [&](WeightSite s, auto& m) {
    s.kind = WeightKind::linear;
    s.role = "gate_proj";
    one(s, m.gate_proj);
    s.role = "up_proj";
    one(s, m.up_proj);
    s.role = "down_proj";
    one(s, m.down_proj);
  };
  const auto norm = [](const char* role, int64_t layer) {
    return WeightSite{.role = role, .kind = WeightKind::plain, .layer = layer, .f32_at_run_time = true};
  };
  const auto proj = [](const char* role, int64_t layer) { return WeightSite{.role = role, .kind = WeightKind::linear, .layer = layer}; };
  one(WeightSite{.role = "embed_tokens", .kind = WeightKind::table}, w.embed_tokens);
  // A site of layer l (a multi-token-prediction layer's when `mtp`).
  const auto at = [](WeightSite s, int64_t l, bool mtp) {
    s.layer = l;
    s.mtp = mtp;
    return s;
  };
  auto layer = [&](auto& L, int64_t l, bool mtp_layer) {
    auto norm_at = [&](const char* role) { return at(norm(role, l), l, mtp_layer); };
    auto proj_at = [&](const char* role) { return at(proj(role, l), l, mtp_layer); };
    auto site_at = [&](WeightSite s) { return at(s, l, mtp_layer); };
    one(norm_at("input_layernorm"), L.input_layernorm);
    one(norm_at("post_attention_layernorm"), L.post_attention_layernorm);
    one(proj_at("q_proj"), L.q_proj);
    one(proj_at("k_proj"), L.k_proj);
    one(proj_at("v_proj"), L.v_proj);
    one(proj_at("o_proj"), L.o_proj);
    one(norm_at("q_norm"), L.q_norm);
    one(norm_at("k_norm"), L.k_norm);
    one(proj_at("q_a_proj"), L.q_a_proj);
    one(norm_at("q_a_layernorm"), L.q_a_layernorm);
    one(proj_at("q_b_proj"), L.q_b_proj);
    one(proj_at("kv_a_proj_with_mqa"), L.kv_a_proj_with_mqa);
    one(norm_at("kv_a_layernorm"), L.kv_a_layernorm);
    one(site_at({.role = "kv_b_proj", .kind = WeightKind::linear, .per_head = true}), L.kv_b_proj);
    mlp(site_at({}), L.mlp);
    one(site_at({.role = "router", .kind = WeightKind::plain}), L.router);
    one(norm_at("e_score_correction_bias"), L.e_score_correction_bias);
    for (size_t e = 0; e < L.experts.size(); ++e) mlp(site_at({.expert = static_cast<int64_t>(e)}), L.experts[e]);
    mlp(site_at({.shared_expert = true}), L.shared_expert);
    one(site_at({.role = "shared_expert_gate", .kind = WeightKind::plain}), L.shared_expert_gate);
  };
  for (size_t i = 0; i < w.layers.size(); ++i) layer(w.layers[i], static_cast<int64_t>(i), false);
  // The multi-token-prediction layers after the last decoder layer (their sites say mtp).
  for (size_t i = 0; i < w.mtp.size(); ++i) {
    auto& M = w.mtp[i];
    const auto l = static_cast<int64_t>(w.layers.size() + i);
    one(at({.role = "mtp_embed_tokens", .kind = WeightKind::table}, l, true), M.embed_tokens);
    one(at(norm("enorm", l), l, true), M.enorm);
    one(at(norm("hnorm", l), l, true), M.hnorm);
    one(at(proj("eh_proj", l), l, true), M.eh_proj);
    layer(M.block, l, true);
    one(at(norm("shared_head_norm", l), l, true), M.head_norm);
    one(at(proj("shared_head", l), l, true), M.head);
  }
  one(norm("norm", -1), w.norm);
  // The LM head is a projection even when tied (it is then the embedding's tensor: walkers that count
  // bytes see the same data pointer twice).
  one(WeightSite{.role = "lm_head", .kind = WeightKind::linear}, w.lm_head);
}

// The parts of a projection, for walks over tensors.
enum class LinearPart : uint8_t { weight, scale, bias, whole };

// `visit(site, part, Tensor&)` for every tensor: a projection's weight, block scales and bias one by
// one (part says which; other tensors come with LinearPart::whole).
template <class W, class Visit>
void for_each_tensor(W& w, Visit&& visit) {
  for_each_weight(w, [&](const WeightSite& s, auto& x) {
    if constexpr (std::is_same_v<std::remove_const_t<std::remove_reference_t<decltype(x)>>, LinearWeight>) {
      visit(s, LinearPart::weight, x.weight);
      if (x.weight_scale_inv) visit(s, LinearPart::scale, x.weight_scale_inv);
      if (x.bias) visit(s, LinearPart::bias, x.bias);
    } else {
      visit(s, s.kind == WeightKind::linear ? LinearPart::weight : LinearPart::whole, x);  // lm_head
    }
  });
}

}  // namespace moerun
