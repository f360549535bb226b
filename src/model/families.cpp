#include "model/families.h"

#include <vector>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::model {
namespace {

using detail::cat;
using io::JsonFields;

void all_layers(ModelConfig& c, FfnKind kind) { c.layer_ffn.assign(static_cast<size_t>(c.num_hidden_layers), kind); }

// Qwen2/3-MoE: layer l is MoE iff l is not in mlp_only_layers, experts exist and
// (l + 1) % decoder_sparse_step == 0 (HF Qwen2MoeDecoderLayer).
void qwen_layer_kinds(const JsonFields& f, ModelConfig& c) {
  c.decoder_sparse_step = f.i64_or("decoder_sparse_step", 1);
  if (c.decoder_sparse_step < 1) f.fail("decoder_sparse_step", cat("must be at least 1, found ", c.decoder_sparse_step));
  c.mlp_only_layers = f.i64_list_or("mlp_only_layers", {});
  // One pass over the list (it may repeat layers and be long: scanning it once per layer was
  // layers x entries, 12 s for a 10 MB config).
  std::vector<bool> dense_only(static_cast<size_t>(c.num_hidden_layers), false);
  for (int64_t l : c.mlp_only_layers) {
    if (l < 0 || l >= c.num_hidden_layers)
      f.fail("mlp_only_layers", cat("layer ", l, " is outside [0, ", c.num_hidden_layers, ")"));
    dense_only[static_cast<size_t>(l)] = true;
  }
  c.layer_ffn.clear();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const bool moe = c.router.n_routed_experts > 0 && (l + 1) % c.decoder_sparse_step == 0 && !dense_only[static_cast<size_t>(l)];
    c.layer_ffn.push_back(moe ? FfnKind::moe : FfnKind::dense);
  }
}

// Expert counts: 0 means "no MoE" where the family allows it (Qwen, DeepSeek), never negative.
int64_t expert_count(const JsonFields& f, const char* key, int64_t value, bool zero_ok) {
  if (value < (zero_ok ? 0 : 1)) f.fail(key, cat("must be ", zero_ok ? "0 or more" : "at least 1", ", found ", value));
  return value;
}

// HF Qwen2/3-MoE configs keep sliding_window only when use_sliding_window is true.
void qwen_sliding_window(const JsonFields& f, ModelConfig& c) {
  if (!f.boolean_or("use_sliding_window", false)) c.sliding_window.reset();
}

void softmax_router(const JsonFields& f, ModelConfig& c, const FamilySpec& spec, bool norm_default, bool zero_ok) {
  const char* experts_key = spec.experts_key;
  c.router.score = ScoreFunc::softmax;
  c.router.method = TopkMethod::greedy;
  // transformers v5 writes Qwen3-MoE's expert count as num_local_experts (its attribute_map).
  const char* alias = std::string_view(experts_key) == "num_experts" ? "num_local_experts" : "num_experts";
  if (!f.has(experts_key) && f.has(alias)) experts_key = alias;
  c.router.n_routed_experts = expert_count(f, experts_key, f.i64(experts_key), zero_ok);
  c.router.num_experts_per_tok = f.i64("num_experts_per_tok");
  c.router.norm_topk_prob = f.boolean_or("norm_topk_prob", norm_default);
}

void read_llama(const JsonFields& f, ModelConfig& c, const FamilySpec&) {
  c.sliding_window.reset();  // LlamaAttention has no sliding window, whatever the file says
  c.qkv_bias = c.o_bias = f.boolean_or("attention_bias", false);
  if (f.boolean_or("mlp_bias", false)) f.fail("mlp_bias", "biases on MLP projections are not supported");
  all_layers(c, FfnKind::dense);
}

void read_mixtral(const JsonFields& f, ModelConfig& c, const FamilySpec& spec) {
  softmax_router(f, c, spec, true, /*zero_ok=*/false);
  c.router.norm_topk_prob = true;  // HF MixtralSparseMoeBlock always renormalises the top-k
  c.moe_intermediate_size = c.intermediate_size;  // intermediate_size is the per-expert width
  all_layers(c, FfnKind::moe);
}

void read_qwen2_moe(const JsonFields& f, ModelConfig& c, const FamilySpec& spec) {
  c.qkv_bias = f.boolean_or("qkv_bias", true);  // older configs omit it; the weights always have biases
  softmax_router(f, c, spec, false, /*zero_ok=*/true);
  c.moe_intermediate_size = f.i64("moe_intermediate_size");
  const int64_t shared = f.i64_or("shared_expert_intermediate_size", 0);
  if (shared < 0) f.fail("shared_expert_intermediate_size", cat("must be 0 (none) or more, found ", shared));
  if (shared > 0) c.shared = {.count = 1, .intermediate_size = shared, .gated = true};
  qwen_sliding_window(f, c);
  qwen_layer_kinds(f, c);
}

void read_qwen3_moe(const JsonFields& f, ModelConfig& c, const FamilySpec& spec) {
  c.qkv_bias = c.o_bias = f.boolean_or("attention_bias", false);
  c.qk_norm = QkNorm::per_head;
  softmax_router(f, c, spec, false, /*zero_ok=*/true);
  c.moe_intermediate_size = f.i64("moe_intermediate_size");
  qwen_sliding_window(f, c);
  qwen_layer_kinds(f, c);
}

void read_olmoe(const JsonFields& f, ModelConfig& c, const FamilySpec& spec) {
  c.qkv_bias = c.o_bias = f.boolean_or("attention_bias", false);
  c.qk_norm = QkNorm::full;
  c.clip_qkv = f.opt_f64("clip_qkv");
  if (c.clip_qkv && !(*c.clip_qkv > 0)) f.fail("clip_qkv", cat("must be positive, found ", *c.clip_qkv));
  softmax_router(f, c, spec, false, /*zero_ok=*/false);
  c.moe_intermediate_size = c.intermediate_size;  // per-expert width
  all_layers(c, FfnKind::moe);
  c.sliding_window.reset();  // OLMoE attends to every position
}

// Defaults of the HF config classes for keys a DeepSeek config may omit.
struct DeepseekDefaults {
  int64_t n_group, topk_group, first_k_dense_replace;
  double routed_scaling_factor;
};
constexpr DeepseekDefaults kV2Defaults{.n_group = 1, .topk_group = 1, .first_k_dense_replace = 0, .routed_scaling_factor = 1.0};
constexpr DeepseekDefaults kV3Defaults{.n_group = 8, .topk_group = 4, .first_k_dense_replace = 3, .routed_scaling_factor = 2.5};

// DeepSeek-V2 and V3 share MLA and most MoE keys (docs/MODELS.md §3.6, §3.7, §4).
void read_deepseek_common(const JsonFields& f, ModelConfig& c, const FamilySpec& spec, const DeepseekDefaults& defaults) {
  c.sliding_window.reset();  // DeepSeek attends to every position
  c.attention = AttentionKind::mla;
  c.mla_bias = f.boolean_or("attention_bias", false);
  c.q_lora_rank = f.opt_i64("q_lora_rank");
  c.kv_lora_rank = f.i64("kv_lora_rank");
  c.qk_nope_head_dim = f.i64("qk_nope_head_dim");
  c.qk_rope_head_dim = f.i64("qk_rope_head_dim");
  c.v_head_dim = f.i64("v_head_dim");
  c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  c.num_key_value_heads = c.num_attention_heads;  // irrelevant for MLA: every head has its own k, v
  c.rope.style = RopeStyle::interleaved;

  // n_routed_experts (aliases: num_experts for V2, num_local_experts for V3); null means dense.
  const char* experts_key = spec.experts_key;
  for (const char* alias : {"num_experts", "num_local_experts"})
    if (!f.has(experts_key) && f.has(alias)) experts_key = alias;
  const std::optional<int64_t> experts = f.opt_i64(experts_key);
  if (experts) expert_count(f, experts_key, *experts, /*zero_ok=*/true);
  c.first_k_dense_replace = f.i64_or("first_k_dense_replace", defaults.first_k_dense_replace);
  if (c.first_k_dense_replace < 0)
    f.fail("first_k_dense_replace", cat("must be 0 or more, found ", c.first_k_dense_replace));
  c.moe_layer_freq = f.i64_or("moe_layer_freq", 1);
  if (c.moe_layer_freq < 1) f.fail("moe_layer_freq", cat("must be at least 1, found ", c.moe_layer_freq));
  if (experts && *experts > 0) {
    c.router.n_routed_experts = *experts;
    c.router.num_experts_per_tok = f.i64("num_experts_per_tok");
    c.moe_intermediate_size = f.i64("moe_intermediate_size");
    c.router.n_group = f.i64_or("n_group", defaults.n_group);
    c.router.topk_group = f.i64_or("topk_group", defaults.topk_group);
    c.router.routed_scaling_factor = f.f64_or("routed_scaling_factor", defaults.routed_scaling_factor);
    const int64_t n_shared = f.i64_or("n_shared_experts", 0);
    if (n_shared < 0) f.fail("n_shared_experts", cat("must not be negative, found ", n_shared));
    if (n_shared > 0) c.shared = {.count = n_shared, .intermediate_size = c.moe_intermediate_size * n_shared, .gated = false};
  }
  // Authors' rule (equal to HF's l >= first_k_dense_replace for moe_layer_freq 1).
  c.layer_ffn.clear();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const bool moe = c.router.n_routed_experts > 0 && l >= c.first_k_dense_replace && l % c.moe_layer_freq == 0;
    c.layer_ffn.push_back(moe ? FfnKind::moe : FfnKind::dense);
  }
}

void read_deepseek_v2(const JsonFields& f, ModelConfig& c, const FamilySpec& spec) {
  read_deepseek_common(f, c, spec, kV2Defaults);
  // HF DeepseekV2TopkRouter never renormalises and always applies routed_scaling_factor; the
  // authors' code renormalises when norm_topk_prob is set. HF is the conformance target (equal for
  // every released V2 config, which all say false), so the key is read for validation only.
  (void)f.boolean_or("norm_topk_prob", false);
  c.router.norm_topk_prob = false;
  const std::string scoring = f.str_or("scoring_func", "softmax");
  if (scoring != "softmax") f.fail("scoring_func", cat("DeepSeek-V2 supports 'softmax', found '", scoring, "'"));
  const std::string method = f.str_or("topk_method", "greedy");
  if (method == "greedy") {
    c.router.method = TopkMethod::greedy;
  } else if (method == "group_limited_greedy") {
    c.router.method = TopkMethod::group_limited_greedy;
  } else {
    f.fail("topk_method", cat("DeepSeek-V2 supports 'greedy' and 'group_limited_greedy', found '", method, "'"));
  }
}

void read_deepseek_v3(const JsonFields& f, ModelConfig& c, const FamilySpec& spec) {
  read_deepseek_common(f, c, spec, kV3Defaults);
  c.router.norm_topk_prob = f.boolean_or("norm_topk_prob", true);
  // HF DeepseekV3TopkRouter ignores topk_method / scoring_func: always sigmoid + noaux_tc.
  c.router.score = ScoreFunc::sigmoid;
  c.router.method = TopkMethod::noaux_tc;
  c.router.e_score_correction_bias = true;
  if (!f.boolean_or("rope_interleave", true)) c.rope.style = RopeStyle::neox;
  // Released configs say num_nextn_predict_layers 1 (layer 61 after 61); HF v5 also names it
  // num_mtp_layers, default 1.
  const char* mtp_key = !f.has("num_nextn_predict_layers") && f.has("num_mtp_layers") ? "num_mtp_layers" : "num_nextn_predict_layers";
  c.num_nextn_predict_layers = f.i64_or(mtp_key, 1);
  if (c.num_nextn_predict_layers < 0 || c.num_nextn_predict_layers > 4096)
    f.fail(mtp_key, cat("must be in [0, 4096], found ", c.num_nextn_predict_layers));
  c.mtp_ffn.clear();
  for (int64_t l = c.num_hidden_layers; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l) {
    const bool moe = c.router.n_routed_experts > 0 && l >= c.first_k_dense_replace && l % c.moe_layer_freq == 0;
    c.mtp_ffn.push_back(moe ? FfnKind::moe : FfnKind::dense);
  }
}

constexpr TensorNames kStandardNames{};
constexpr TensorNames kMixtralNames{.moe_block = "block_sparse_moe", .expert_gate = "w1", .expert_up = "w3",
                                    .expert_down = "w2", .shared_expert = "shared_experts"};
constexpr TensorNames kQwen2MoeNames{.shared_expert = "shared_expert"};

}  // namespace

const std::vector<FamilySpec>& family_table() {
  static const std::vector<FamilySpec> kTable = {
      {.family = Family::llama, .model_type = "llama", .architectures = {"LlamaForCausalLM"}, .read = read_llama,
       .names = kStandardNames, .requires_intermediate_size = true},
      {.family = Family::mixtral, .model_type = "mixtral", .architectures = {"MixtralForCausalLM"}, .read = read_mixtral,
       .names = kMixtralNames, .rms_norm_eps = 1e-5, .rope_theta = 1e6, .experts_key = "num_local_experts",
       .expert_width_key = "intermediate_size", .requires_intermediate_size = true},
      {.family = Family::qwen2_moe, .model_type = "qwen2_moe", .architectures = {"Qwen2MoeForCausalLM"},
       .read = read_qwen2_moe, .names = kQwen2MoeNames},
      {.family = Family::qwen3_moe, .model_type = "qwen3_moe", .architectures = {"Qwen3MoeForCausalLM"},
       .read = read_qwen3_moe, .names = kStandardNames},
      {.family = Family::olmoe, .model_type = "olmoe", .architectures = {"OlmoeForCausalLM"}, .read = read_olmoe,
       .names = kStandardNames, .rms_norm_eps = 1e-5, .expert_width_key = "intermediate_size",
       .requires_intermediate_size = true},
      {.family = Family::deepseek_v2, .model_type = "deepseek_v2", .architectures = {"DeepseekV2ForCausalLM"},
       .read = read_deepseek_v2, .names = kStandardNames, .experts_key = "n_routed_experts"},
      {.family = Family::deepseek_v3, .model_type = "deepseek_v3", .architectures = {"DeepseekV3ForCausalLM"},
       .read = read_deepseek_v3, .names = kStandardNames, .experts_key = "n_routed_experts"},
  };
  return kTable;
}

const FamilySpec& family_spec(Family f) {
  for (const FamilySpec& s : family_table())
    if (s.family == f) return s;
  throw Error("family_spec", "unknown family");
}

}  // namespace moerun::model
