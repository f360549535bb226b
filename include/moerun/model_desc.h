#pragma once
// ModelDesc: what the executor and the kernels know about a model: capabilities (attention kind,
// norms, biases, rope, per-layer FFN kind, router, experts) and dimensions, never its family
// (docs/DESIGN.md rule 1). Two models of different families with the same ModelDesc run the same
// code. ModelConfig (moerun/config.h) is a ModelDesc plus what identifies the checkpoint (family,
// architecture) and the config.json keys that only the reader needs; the executor is given the
// ModelDesc part. Field names follow the HF keys (docs/MODELS.md §0), so a grep for `kv_lora_rank`
// finds config, executor and kernels alike.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moerun {

enum class AttentionKind : uint8_t { gqa, mla };
enum class QkNorm : uint8_t { none, per_head, full };  // Qwen3: per head of d_h; OLMoE: over H*d_h
enum class RopeStyle : uint8_t { neox, interleaved };  // half-split pairs (i, i+d/2) vs (2i, 2i+1)
enum class RopeType : uint8_t { none, linear, dynamic, llama3, yarn };
enum class FfnKind : uint8_t { dense, moe };
enum class ScoreFunc : uint8_t { softmax, sigmoid };
enum class TopkMethod : uint8_t { greedy, group_limited_greedy, noaux_tc };
// hidden_act: the activation of the gated FFN, act(gate x) * up x, in every dense MLP, routed expert
// and shared expert (transformers builds all of them with ACT2FN[config.hidden_act]), exactly as
// transformers' activations.py defines it:
//   silu       x * sigmoid(x)                                    "silu", "swish"
//   gelu       x/2 * (1 + erf(x / sqrt(2)))                      "gelu"
//   gelu_tanh  x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) "gelu_pytorch_tanh", "gelu_new"
enum class Activation : uint8_t { silu, gelu, gelu_tanh };

const char* to_string(AttentionKind v) noexcept;
const char* to_string(QkNorm v) noexcept;
const char* to_string(RopeStyle v) noexcept;
const char* to_string(RopeType v) noexcept;   // "default" for none
const char* to_string(ScoreFunc v) noexcept;
const char* to_string(TopkMethod v) noexcept;
const char* to_string(Activation v) noexcept;  // "silu", "gelu", "gelu_tanh"

// rope_scaling / rope_parameters (legacy "type" and newer "rope_type" both accepted).
struct RopeScaling {
  RopeType type = RopeType::none;
  double factor = 1.0;                            // linear, dynamic, llama3, yarn
  double low_freq_factor = 1.0;                   // llama3
  double high_freq_factor = 4.0;                  // llama3
  int64_t original_max_position_embeddings = 0;  // llama3, yarn (0: absent)
  double beta_fast = 32.0;                        // yarn
  double beta_slow = 1.0;                         // yarn
  double mscale = 0.0;                            // yarn (DeepSeek); 0: absent
  double mscale_all_dim = 0.0;                    // yarn (DeepSeek); 0: absent
  std::optional<double> attention_factor;         // yarn: explicit factor on cos/sin
  bool truncate = true;                           // yarn: floor/ceil the correction range
};

struct RopeSpec {
  RopeStyle style = RopeStyle::neox;
  double theta = 10000.0;  // rope_theta
  int64_t dim = 0;         // rotary dims per head: head_dim, or qk_rope_head_dim for MLA
  RopeScaling scaling;
};

// MoE router. One spec covers softmax top-k (Mixtral, Qwen, OLMoE), DeepSeek-V2 greedy /
// group_limited_greedy and DeepSeek-V3 noaux_tc (docs/MODELS.md §3).
struct RouterSpec {
  ScoreFunc score = ScoreFunc::softmax;          // scoring_func
  TopkMethod method = TopkMethod::greedy;        // topk_method
  int64_t n_routed_experts = 0;                  // E
  int64_t num_experts_per_tok = 0;               // k
  bool norm_topk_prob = false;                   // renormalise the k selected weights
  int64_t n_group = 1;                           // expert groups for group-limited selection
  int64_t topk_group = 1;                        // groups kept
  double routed_scaling_factor = 1.0;            // applied after normalisation
  bool e_score_correction_bias = false;          // noaux_tc: bias for selection only
};

struct SharedExpertSpec {
  int64_t count = 0;               // DeepSeek n_shared_experts; 1 for Qwen2-MoE's shared_expert
  int64_t intermediate_size = 0;   // width of the one shared MLP (DeepSeek: I_e * n_shared_experts)
  bool gated = false;              // Qwen2-MoE: sigmoid(x . shared_expert_gate) scales it
};

// quantization_config of FP8 checkpoints (DeepSeek-V3 native release).
struct Fp8Spec {
  bool enabled = false;
  std::string fmt = "e4m3";
  std::string scale_fmt;                 // "ue8m0" for V3.1 (power-of-two scales); empty otherwise
  int64_t block_out = 128, block_in = 128;  // weight_block_size
};

struct ModelDesc {
  int64_t vocab_size = 0;               // V
  int64_t hidden_size = 0;              // D
  int64_t intermediate_size = 0;        // I: dense FFN width (Mixtral/OLMoE: per expert)
  int64_t num_hidden_layers = 0;        // L
  int64_t num_attention_heads = 0;      // H
  int64_t num_key_value_heads = 0;      // H_kv (GQA only)
  int64_t head_dim = 0;                 // d_h (GQA); MLA: qk_nope_head_dim + qk_rope_head_dim
  int64_t max_position_embeddings = 0;  // the context the model was trained for
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  Activation hidden_act = Activation::silu;  // every family's HF config class defaults to "silu"

  // Attention.
  AttentionKind attention = AttentionKind::gqa;
  bool qkv_bias = false;            // biases on q, k, v (Qwen2-MoE; attention_bias for Llama)
  bool o_bias = false;              // bias on o_proj (Llama attention_bias)
  bool mla_bias = false;            // MLA attention_bias: q_a_proj, kv_a_proj_with_mqa, o_proj
  QkNorm qk_norm = QkNorm::none;
  std::optional<double> clip_qkv;   // OLMoE: clamp q, k, v to [-c, c]
  double softmax_scale = 0.0;       // tau, derived (MLA includes the YaRN mscale^2)
  // Attention only over the last sliding_window positions, where transformers applies it (Mixtral
  // when set; Qwen2/3-MoE with use_sliding_window); unset for families whose HF classes ignore the
  // key. Not implemented: a session's context may not pass it (the results would differ past it).
  std::optional<int64_t> sliding_window;

  // MLA (DeepSeek-V2/V3).
  std::optional<int64_t> q_lora_rank;  // r_q; null for V2-Lite
  int64_t kv_lora_rank = 0;            // r_kv
  int64_t qk_nope_head_dim = 0;        // d_n
  int64_t qk_rope_head_dim = 0;        // d_r
  int64_t v_head_dim = 0;              // d_v

  RopeSpec rope;

  // Feed-forward: per-layer kind and the MoE description.
  std::vector<FfnKind> layer_ffn;      // [L]
  // DeepSeek-V3's multi-token-prediction layers (model.layers.{L + i}), the FFN kind of each by
  // layer_ffn's rule at its index: what a checkpoint's config declares; empty in the description an
  // engine runs unless it loaded them (EngineOptions::mtp).
  std::vector<FfnKind> mtp_ffn;
  int64_t moe_intermediate_size = 0;   // I_e
  RouterSpec router;
  SharedExpertSpec shared;

  Fp8Spec fp8;  // how FP8 checkpoint weights are scaled (their tensors carry weight_scale_inv)

  bool is_moe() const noexcept { return router.n_routed_experts > 0; }
  int64_t num_moe_layers() const noexcept;
  bool has_dense_layers() const noexcept;  // some layer has a dense FFN (intermediate_size is used)
  // Floats one position of one layer's cache holds: K and V rows (GQA, 2 * H_kv * d_h) or the MLA
  // latent row (kv_lora_rank + qk_rope_head_dim).
  int64_t kv_floats_per_position() const noexcept;
};

}  // namespace moerun
