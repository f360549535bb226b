// config.json -> ModelConfig: the common keys here, each family's own keys in families.cpp.

#include <algorithm>
#include <cmath>
#include <limits>

#include "io/json_util.h"
#include "model/families.h"
#include "moerun/config.h"
#include "moerun/error.h"
#include "util/strings.h"

namespace moerun {
namespace {

using detail::cat;
using io::Json;
using io::JsonFields;

constexpr int64_t kMaxDim = int64_t{1} << 31;  // every size must fit comfortably in 32-bit indexing
constexpr int64_t kMaxLayers = 4096;

RopeType parse_rope_type(const JsonFields& f, const char* key, const std::string& name) {
  if (name == "default") return RopeType::none;
  if (name == "linear") return RopeType::linear;
  if (name == "dynamic") return RopeType::dynamic;
  if (name == "llama3") return RopeType::llama3;
  if (name == "yarn") return RopeType::yarn;
  f.fail(key, cat("unsupported rope type '", name, "' (supported: default, linear, dynamic, llama3, yarn)"));
}

// rope_scaling (legacy, "type" or "rope_type") or rope_parameters (transformers v5, holds rope_theta).
void read_rope(const JsonFields& top, ModelConfig& c, double default_theta) {
  c.rope.theta = top.f64_or("rope_theta", default_theta);
  const char* key = top.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const Json* j = top.get(key);
  if (!j) return;
  const JsonFields f(*j, top.file(), cat(key, "."));
  if (f.has("rope_theta")) c.rope.theta = f.f64("rope_theta");
  const char* type_key = f.has("rope_type") ? "rope_type" : "type";
  const std::optional<std::string> type = f.opt_str(type_key);
  if (!type) {
    if (std::string(key) == "rope_parameters") return;  // only rope_theta given
    throw Error(top.file(), cat("field '", key, "': has neither 'rope_type' nor 'type'"));
  }
  RopeScaling& s = c.rope.scaling;
  s.type = parse_rope_type(f, type_key, *type);
  switch (s.type) {
    case RopeType::none:
      break;
    case RopeType::linear:
    case RopeType::dynamic:
      s.factor = f.f64("factor");
      break;
    case RopeType::llama3:
      s.factor = f.f64("factor");
      s.low_freq_factor = f.f64("low_freq_factor");
      s.high_freq_factor = f.f64("high_freq_factor");
      s.original_max_position_embeddings = f.i64("original_max_position_embeddings");
      if (s.original_max_position_embeddings < 1)
        f.fail("original_max_position_embeddings", cat("must be positive, found ", s.original_max_position_embeddings));
      if (!(s.low_freq_factor > 0)) f.fail("low_freq_factor", cat("must be positive, found ", s.low_freq_factor));
      if (!(s.high_freq_factor > s.low_freq_factor))
        f.fail("high_freq_factor", cat("must exceed low_freq_factor (", s.low_freq_factor, "), found ", s.high_freq_factor));
      break;
    case RopeType::yarn:
      s.original_max_position_embeddings = f.i64_or("original_max_position_embeddings", 0);
      if (f.has("original_max_position_embeddings") && s.original_max_position_embeddings < 1)
        f.fail("original_max_position_embeddings", cat("must be positive, found ", s.original_max_position_embeddings));
      if (f.has("factor")) {
        s.factor = f.f64("factor");
      } else if (s.original_max_position_embeddings > 0) {  // v5 falls back to the context ratio
        s.factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(s.original_max_position_embeddings);
      } else {
        throw Error(top.file(), cat("field '", key, ".factor': missing (yarn needs it or original_max_position_embeddings)"));
      }
      if (s.original_max_position_embeddings == 0) s.original_max_position_embeddings = c.max_position_embeddings;
      s.beta_fast = f.f64_or("beta_fast", 32.0);
      s.beta_slow = f.f64_or("beta_slow", 1.0);
      s.mscale = f.f64_or("mscale", 0.0);
      s.mscale_all_dim = f.f64_or("mscale_all_dim", 0.0);
      s.attention_factor = f.opt_f64("attention_factor");
      s.truncate = f.boolean_or("truncate", true);
      if (!(s.beta_fast > 0) || !(s.beta_slow > 0))
        f.fail("beta_fast", cat("beta_fast and beta_slow must be positive, found ", s.beta_fast, " and ", s.beta_slow));
      break;
  }
  if (s.type != RopeType::none && (!(s.factor > 0) || !std::isfinite(s.factor)))
    f.fail("factor", cat("must be positive, found ", s.factor));
}

// hidden_act, with transformers' names (ACT2CLS in activations.py); anything else is refused rather
// than run as another activation.
Activation read_activation(const JsonFields& f) {
  const std::string name = f.str_or("hidden_act", "silu");
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new") return Activation::gelu_tanh;
  f.fail("hidden_act", cat("unsupported activation '", name, "' (supported: silu, swish, gelu, gelu_pytorch_tanh, gelu_new)"));
}

void read_quantization(const JsonFields& top, ModelConfig& c) {
  const Json* j = top.get("quantization_config");
  if (!j) return;
  const JsonFields f(*j, top.file(), "quantization_config.");
  const std::string method = f.str_or("quant_method", "");
  if (method != "fp8")
    f.fail("quant_method", cat("'", method, "' is not supported (only block-scaled \"fp8\" checkpoints)"));
  c.fp8.enabled = true;
  c.fp8.fmt = f.str_or("fmt", "e4m3");
  if (c.fp8.fmt != "e4m3") f.fail("fmt", cat("only e4m3 is supported, found '", c.fp8.fmt, "'"));
  c.fp8.scale_fmt = f.str_or("scale_fmt", "");
  const std::vector<int64_t> block = f.i64_list_or("weight_block_size", {128, 128});
  if (block.size() != 2 || block[0] <= 0 || block[1] <= 0)
    f.fail("weight_block_size", "expected two positive integers [out, in]");
  c.fp8.block_out = block[0];
  c.fp8.block_in = block[1];
}

void check_range(const JsonFields& f, const char* key, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) f.fail(key, cat("must be in [", lo, ", ", hi, "], found ", v));
}

void validate_and_derive(const JsonFields& f, ModelConfig& c, const model::FamilySpec& spec) {
  check_range(f, "vocab_size", c.vocab_size, 1, kMaxDim);
  check_range(f, "hidden_size", c.hidden_size, 1, kMaxDim);
  check_range(f, "num_hidden_layers", c.num_hidden_layers, 1, kMaxLayers);
  check_range(f, "num_attention_heads", c.num_attention_heads, 1, 65536);
  check_range(f, "max_position_embeddings", c.max_position_embeddings, 1, kMaxDim);
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    f.fail("rms_norm_eps", cat("must be a positive number, found ", c.rms_norm_eps));
  if (!(c.rope.theta > 0)) f.fail("rope_theta", cat("must be positive, found ", c.rope.theta));

  if (c.attention == AttentionKind::gqa) {
    check_range(f, "num_key_value_heads", c.num_key_value_heads, 1, c.num_attention_heads);
    if (c.num_attention_heads % c.num_key_value_heads != 0)
      f.fail("num_key_value_heads", cat(c.num_key_value_heads, " does not divide num_attention_heads ", c.num_attention_heads));
    check_range(f, "head_dim", c.head_dim, 2, 65536);
    if (c.head_dim % 2) f.fail("head_dim", cat("must be even for RoPE, found ", c.head_dim));
    c.rope.dim = c.head_dim;
    c.softmax_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  } else {
    if (c.q_lora_rank) check_range(f, "q_lora_rank", *c.q_lora_rank, 1, kMaxDim);
    check_range(f, "kv_lora_rank", c.kv_lora_rank, 1, kMaxDim);
    check_range(f, "qk_nope_head_dim", c.qk_nope_head_dim, 0, 65536);
    check_range(f, "qk_rope_head_dim", c.qk_rope_head_dim, 2, 65536);
    check_range(f, "v_head_dim", c.v_head_dim, 1, 65536);
    if (c.qk_rope_head_dim % 2) f.fail("qk_rope_head_dim", cat("must be even for RoPE, found ", c.qk_rope_head_dim));
    c.rope.dim = c.qk_rope_head_dim;
    // tau = (d_n + d_r)^-1/2, times m(F, mscale_all_dim)^2 under YaRN (docs/MODELS.md §3.6, §4).
    c.softmax_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    const RopeScaling& s = c.rope.scaling;
    if (s.type == RopeType::yarn && s.mscale_all_dim != 0.0) {
      const double m = yarn_mscale(s.factor, s.mscale_all_dim);
      c.softmax_scale *= m * m;
    }
  }

  if (c.has_dense_layers()) check_range(f, "intermediate_size", c.intermediate_size, 1, kMaxDim);
  const bool any_moe = std::find(c.layer_ffn.begin(), c.layer_ffn.end(), FfnKind::moe) != c.layer_ffn.end();
  if (c.is_moe() || any_moe) {
    RouterSpec& r = c.router;
    check_range(f, spec.experts_key, r.n_routed_experts, 1, 65536);
    check_range(f, "num_experts_per_tok", r.num_experts_per_tok, 1, r.n_routed_experts);
    check_range(f, spec.expert_width_key, c.moe_intermediate_size, 1, kMaxDim);
    check_range(f, "n_group", r.n_group, 1, r.n_routed_experts);
    if (r.n_routed_experts % r.n_group != 0)
      f.fail("n_group", cat(r.n_group, " groups do not divide ", r.n_routed_experts, " experts"));
    check_range(f, "topk_group", r.topk_group, 1, r.n_group);
    const int64_t per_group = r.n_routed_experts / r.n_group;
    if (r.method != TopkMethod::greedy && r.topk_group * per_group < r.num_experts_per_tok)
      f.fail("topk_group", cat(r.topk_group, " groups of ", per_group, " experts cannot hold num_experts_per_tok ",
                               r.num_experts_per_tok));
    if (r.method == TopkMethod::noaux_tc && r.n_group > 1 && per_group < 2)
      f.fail("n_group", cat("noaux_tc scores a group by its two best experts; ", per_group, " per group is too few"));
    if (!(r.routed_scaling_factor > 0) || !std::isfinite(r.routed_scaling_factor))
      f.fail("routed_scaling_factor", cat("must be positive, found ", r.routed_scaling_factor));
    if (c.shared.count > 0) check_range(f, "shared_expert_intermediate_size", c.shared.intermediate_size, 1, kMaxDim);
  }
}

}  // namespace

double yarn_mscale(double factor, double mscale) noexcept {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

bool ModelDesc::has_dense_layers() const noexcept {
  return std::find(layer_ffn.begin(), layer_ffn.end(), FfnKind::dense) != layer_ffn.end();
}

int64_t ModelDesc::num_moe_layers() const noexcept {
  int64_t n = 0;
  for (FfnKind k : layer_ffn) n += k == FfnKind::moe;
  return n;
}

int64_t ModelDesc::kv_floats_per_position() const noexcept {
  return attention == AttentionKind::gqa ? 2 * num_key_value_heads * head_dim : kv_lora_rank + qk_rope_head_dim;
}

std::string supported_architectures() {
  std::string out;
  for (const model::FamilySpec& s : model::family_table())
    for (std::string_view a : s.architectures) out += cat(out.empty() ? "" : ", ", a, " (", s.model_type, ")");
  return out;
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& file) {
  const Json j = io::parse_json_text(json_text, file);
  const JsonFields f(j, file);

  ModelConfig c;
  // Family: architectures[0] if we know it, else model_type.
  const model::FamilySpec* spec = nullptr;
  if (const Json* arch = f.get("architectures")) {
    if (!arch->is_array() || arch->empty() || !(*arch)[0].is_string())
      f.fail("architectures", cat("expected a non-empty list of strings, found ", io::brief(*arch)));
    c.architecture = (*arch)[0].get<std::string>();
    for (const model::FamilySpec& s : model::family_table())
      for (std::string_view a : s.architectures)
        if (a == c.architecture) spec = &s;
  }
  c.model_type = f.str_or("model_type", "");
  if (!spec && !c.model_type.empty())
    for (const model::FamilySpec& s : model::family_table())
      if (c.model_type == s.model_type) spec = &s;
  if (!spec) {
    if (c.architecture.empty() && c.model_type.empty())
      throw Error(file, cat("neither 'architectures' nor 'model_type' is set; supported: ", supported_architectures()));
    throw Error(file, cat("unsupported architecture '", c.architecture, "' (model_type '", c.model_type,
                          "'); supported: ", supported_architectures()));
  }
  c.family = spec->family;
  if (c.model_type.empty()) c.model_type = spec->model_type;
  if (c.architecture.empty()) c.architecture = std::string(spec->architectures.front());

  // Keys common to every family (docs/MODELS.md §0, §1.5). Defaults are the HF config classes'.
  c.vocab_size = f.i64("vocab_size");
  c.hidden_size = f.i64("hidden_size");
  c.num_hidden_layers = f.i64("num_hidden_layers");
  c.num_attention_heads = f.i64("num_attention_heads");
  c.num_key_value_heads = f.i64_or("num_key_value_heads", c.num_attention_heads);
  c.intermediate_size = f.i64_or("intermediate_size", 0);
  c.max_position_embeddings = f.i64("max_position_embeddings");
  if (c.num_attention_heads > 0) c.head_dim = f.i64_or("head_dim", c.hidden_size / c.num_attention_heads);
  c.rms_norm_eps = f.f64_or("rms_norm_eps", spec->rms_norm_eps);
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", false);
  c.hidden_act = read_activation(f);
  c.bos_token_id = f.opt_i64("bos_token_id");
  c.eos_token_ids = f.i64_or_list("eos_token_id");
  c.pad_token_id = f.opt_i64("pad_token_id");
  c.torch_dtype = f.str_or("torch_dtype", f.str_or("dtype", ""));
  c.sliding_window = f.opt_i64("sliding_window");
  if (c.num_hidden_layers < 1 || c.num_hidden_layers > kMaxLayers)
    f.fail("num_hidden_layers", cat("must be in [1, ", kMaxLayers, "], found ", c.num_hidden_layers));
  if (f.has("intermediate_size") || spec->requires_intermediate_size) c.intermediate_size = f.i64("intermediate_size");
  read_rope(f, c, spec->rope_theta);
  read_quantization(f, c);

  spec->read(f, c, *spec);
  validate_and_derive(f, c, *spec);
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& config_json) {
  return parse_model_config(io::read_text_file(config_json), config_json.string());
}

ModelConfig load_model_config(const std::filesystem::path& config_json, const ConfigOverrides& o) {
  const std::string file = config_json.string();
  Json j = io::parse_json_text(io::read_text_file(config_json), file);
  if (!j.is_object()) throw Error(file, "top level: expected a JSON object");
  if (o.num_hidden_layers) j["num_hidden_layers"] = *o.num_hidden_layers;
  if (o.max_routed_experts) {
    const int64_t e = *o.max_routed_experts;
    auto get = [&](const char* key, int64_t fallback) {
      return j.contains(key) && j[key].is_number_integer() ? j[key].get<int64_t>() : fallback;
    };
    for (const char* key : {"n_routed_experts", "num_experts", "num_local_experts"}) {
      if (get(key, 0) <= e) continue;
      j[key] = e;
      // Keep routing valid: k <= E; groups that divide E with at least two experts each (noaux_tc
      // scores a group by its best two); enough kept groups to hold k.
      const int64_t k = std::min(get("num_experts_per_tok", 1), e);
      j["num_experts_per_tok"] = k;
      if (j.contains("n_group") && j["n_group"].is_number_integer()) {
        int64_t g = std::min(get("n_group", 1), e);
        while (g > 1 && (e % g != 0 || e / g < 2)) --g;
        j["n_group"] = g;
        int64_t kept = std::min(get("topk_group", 1), g);
        while (kept < g && kept * (e / g) < k) ++kept;
        j["topk_group"] = kept;
      }
    }
  }
  return parse_model_config(j.dump(), file);
}

const char* family_name(Family f) noexcept {
  for (const model::FamilySpec& s : model::family_table())
    if (s.family == f) return s.model_type;
  return "?";
}
const char* to_string(AttentionKind v) noexcept { return v == AttentionKind::gqa ? "gqa" : "mla"; }
const char* to_string(QkNorm v) noexcept {
  return v == QkNorm::none ? "none" : v == QkNorm::per_head ? "per_head" : "full";
}
const char* to_string(RopeStyle v) noexcept { return v == RopeStyle::neox ? "neox" : "interleaved"; }
const char* to_string(RopeType v) noexcept {
  switch (v) {
    case RopeType::none: return "default";
    case RopeType::linear: return "linear";
    case RopeType::dynamic: return "dynamic";
    case RopeType::llama3: return "llama3";
    case RopeType::yarn: return "yarn";
  }
  return "?";
}
const char* to_string(ScoreFunc v) noexcept { return v == ScoreFunc::softmax ? "softmax" : "sigmoid"; }
const char* to_string(Activation v) noexcept {
  switch (v) {
    case Activation::silu: return "silu";
    case Activation::gelu: return "gelu";
    case Activation::gelu_tanh: return "gelu_tanh";
  }
  return "?";
}
const char* to_string(TopkMethod v) noexcept {
  return v == TopkMethod::greedy ? "greedy" : v == TopkMethod::group_limited_greedy ? "group_limited_greedy" : "noaux_tc";
}

}  // namespace moerun
