// What `moerun info` reports, as a struct, JSON and text.

#include <cstdio>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "util/strings.h"

namespace moerun {
namespace fs = std::filesystem;
using detail::cat;
using Json = nlohmann::ordered_json;

namespace {

void count_bytes(ModelSummary& s) {
  for (const TensorRecord& t : s.tensors) {
    s.bytes_by_dtype[std::string(dtype_name(t.dtype))] += t.nbytes;
    s.total_bytes += t.nbytes;
  }
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  const double v = static_cast<double>(b);
  if (v >= 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.2f GiB", v / (1024.0 * 1024 * 1024));
  else if (v >= 1024.0 * 1024) std::snprintf(buf, sizeof buf, "%.2f MiB", v / (1024.0 * 1024));
  else if (v >= 1024.0) std::snprintf(buf, sizeof buf, "%.2f KiB", v / 1024.0);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

std::string human_count(int64_t n) {
  char buf[32];
  const double v = static_cast<double>(n);
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2f B", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2f M", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.2f K", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

Json optional_json(const std::optional<int64_t>& v) { return v ? Json(*v) : Json(nullptr); }

Json rope_json(const RopeSpec& r) {
  Json j = {{"style", to_string(r.style)}, {"theta", r.theta}, {"dim", r.dim}};
  const RopeScaling& s = r.scaling;
  Json sc = {{"type", to_string(s.type)}};
  if (s.type != RopeType::none) sc["factor"] = s.factor;
  if (s.type == RopeType::llama3) {
    sc["low_freq_factor"] = s.low_freq_factor;
    sc["high_freq_factor"] = s.high_freq_factor;
  }
  if (s.type == RopeType::llama3 || s.type == RopeType::yarn)
    sc["original_max_position_embeddings"] = s.original_max_position_embeddings;
  if (s.type == RopeType::yarn) {
    sc["beta_fast"] = s.beta_fast;
    sc["beta_slow"] = s.beta_slow;
    sc["mscale"] = s.mscale;
    sc["mscale_all_dim"] = s.mscale_all_dim;
    if (s.attention_factor) sc["attention_factor"] = *s.attention_factor;
  }
  j["scaling"] = sc;
  return j;
}

Json config_json(const ModelConfig& c) {
  Json j;
  j["architecture"] = c.architecture;
  j["model_type"] = c.model_type;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["vocab_size"] = c.vocab_size;
  j["context_length"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["hidden_act"] = to_string(c.hidden_act);
  Json a = {{"kind", to_string(c.attention)}, {"num_attention_heads", c.num_attention_heads}};
  if (c.attention == AttentionKind::gqa) {
    a["num_key_value_heads"] = c.num_key_value_heads;
    a["head_dim"] = c.head_dim;
    a["qk_norm"] = to_string(c.qk_norm);
    a["qkv_bias"] = c.qkv_bias;
    a["clip_qkv"] = c.clip_qkv ? Json(*c.clip_qkv) : Json(nullptr);
  } else {
    a["q_lora_rank"] = optional_json(c.q_lora_rank);
    a["kv_lora_rank"] = c.kv_lora_rank;
    a["qk_nope_head_dim"] = c.qk_nope_head_dim;
    a["qk_rope_head_dim"] = c.qk_rope_head_dim;
    a["v_head_dim"] = c.v_head_dim;
    a["latent_cache_per_token"] = c.kv_lora_rank + c.qk_rope_head_dim;
  }
  a["softmax_scale"] = c.softmax_scale;
  j["attention"] = a;
  j["rope"] = rope_json(c.rope);
  if (c.is_moe()) {
    const RouterSpec& r = c.router;
    j["moe"] = {
        {"routed_experts", r.n_routed_experts},
        {"shared_experts", c.shared.count},
        {"active_experts", r.num_experts_per_tok},
        {"moe_intermediate_size", c.moe_intermediate_size},
        {"shared_expert_intermediate_size", c.shared.intermediate_size},
        {"shared_expert_gated", c.shared.gated},
        {"moe_layers", c.num_moe_layers()},
        {"dense_layers", c.num_hidden_layers - c.num_moe_layers()},
        {"router",
         {{"scoring_func", to_string(r.score)},
          {"topk_method", to_string(r.method)},
          {"norm_topk_prob", r.norm_topk_prob},
          {"n_group", r.n_group},
          {"topk_group", r.topk_group},
          {"routed_scaling_factor", r.routed_scaling_factor},
          {"e_score_correction_bias", r.e_score_correction_bias}}},
    };
  } else {
    j["moe"] = nullptr;
  }
  j["fp8"] = c.fp8.enabled ? Json{{"fmt", c.fp8.fmt}, {"weight_block_size", {c.fp8.block_out, c.fp8.block_in}},
                                  {"scale_fmt", c.fp8.scale_fmt}}
                           : Json(nullptr);
  j["bos_token_id"] = optional_json(c.bos_token_id);
  j["eos_token_id"] = c.eos_token_ids;
  return j;
}

}  // namespace

ModelSummary summarize(const Model& model) {
  ModelSummary s;
  const ModelFiles& f = model.files();
  s.path = f.dir.string();
  s.config = model.config();
  s.total_params = model.total_params();
  s.active_params = model.active_params();
  s.tensors = model.tensors();
  s.num_shards = f.shards.size();
  for (const fs::path& p : f.shards) s.shard_names.push_back(p.filename().string());
  s.files = {{"config.json", !f.config.empty()},
             {"model.safetensors.index.json", !f.index.empty()},
             {"tokenizer.json", !f.tokenizer_json.empty()},
             {"tokenizer.model", !f.tokenizer_model.empty()},
             {"tokenizer_config.json", !f.tokenizer_config.empty()},
             {"generation_config.json", !f.generation_config.empty()},
             {"chat_template", f.has_chat_template}};
  s.warnings = model.warnings();
  count_bytes(s);
  return s;
}

ModelSummary summarize_safetensors(const fs::path& file) {
  const auto st = io::SafetensorsFile::open(file);
  ModelSummary s;
  s.path = file.string();
  s.num_shards = 1;
  s.shard_names.push_back(file.filename().string());
  s.metadata = st->header().metadata;
  for (const io::TensorEntry& e : st->header().tensors) {
    s.tensors.push_back({e.name, e.dtype, e.shape, e.end - e.begin, 0});
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    s.total_params += n;
  }
  std::sort(s.tensors.begin(), s.tensors.end(), [](const TensorRecord& a, const TensorRecord& b) { return a.name < b.name; });
  s.active_params = s.total_params;
  count_bytes(s);
  return s;
}

ModelSummary summarize_path(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return summarize_safetensors(path);
  return summarize(Model::load(path));
}

std::string summary_json(const ModelSummary& s, bool with_tensors) {
  Json j;
  j["path"] = s.path;
  j["format"] = s.config ? "model_dir" : "safetensors";
  if (s.config) {
    const Json c = config_json(*s.config);
    for (const auto& [k, v] : c.items()) j[k] = v;
  }
  j["parameters"] = {{"total", s.total_params}, {"active_per_token", s.active_params}};
  j["bytes_by_dtype"] = s.bytes_by_dtype;
  j["total_bytes"] = s.total_bytes;
  j["num_tensors"] = s.tensors.size();
  j["shards"] = s.num_shards;
  j["shard_files"] = s.shard_names;
  if (!s.config) j["metadata"] = s.metadata;
  if (!s.files.empty()) j["files"] = s.files;
  j["warnings"] = s.warnings;
  if (with_tensors) {
    Json list = Json::array();
    for (const TensorRecord& t : s.tensors)
      list.push_back({{"name", t.name}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape},
                      {"shard", s.shard_names.at(static_cast<size_t>(t.shard))}});
    j["tensors"] = std::move(list);
  }
  return j.dump(2) + "\n";
}

std::string summary_text(const ModelSummary& s, bool with_tensors) {
  std::string o;
  auto line = [&](const char* key, const std::string& value) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%-14s", key);
    o += buf + value + "\n";
  };
  line("path", s.path);
  if (s.config) {
    const ModelConfig& c = *s.config;
    line("architecture", cat(c.architecture, " (", c.model_type, ")"));
    line("layers", c.is_moe() ? cat(c.num_hidden_layers, " (", c.num_moe_layers(), " MoE, ",
                                    c.num_hidden_layers - c.num_moe_layers(), " dense)")
                              : cat(c.num_hidden_layers));
    line("hidden size", cat(c.hidden_size, " (dense FFN ", c.intermediate_size, ", rms_norm_eps ", c.rms_norm_eps, ")"));
    line("activation", cat(to_string(c.hidden_act), c.hidden_act == Activation::silu ? " (SwiGLU)"
                                                    : c.hidden_act == Activation::gelu ? " (GeGLU, exact erf)"
                                                                                      : " (GeGLU, tanh approximation)"));
    if (c.attention == AttentionKind::gqa) {
      std::string a = cat("GQA, ", c.num_attention_heads, " heads, ", c.num_key_value_heads, " KV heads, head_dim ", c.head_dim);
      if (c.qk_norm != QkNorm::none) a += cat(", q/k norm ", c.qk_norm == QkNorm::per_head ? "per head" : "full width");
      if (c.qkv_bias) a += ", qkv bias";
      if (c.clip_qkv) a += cat(", clip_qkv ", *c.clip_qkv);
      line("attention", a);
    } else {
      line("attention", cat("MLA, ", c.num_attention_heads, " heads, q_lora_rank ",
                            c.q_lora_rank ? std::to_string(*c.q_lora_rank) : std::string("none"), ", kv_lora_rank ",
                            c.kv_lora_rank, ", qk_nope/rope/v head dims ", c.qk_nope_head_dim, "/", c.qk_rope_head_dim,
                            "/", c.v_head_dim, ", latent cache ", c.kv_lora_rank + c.qk_rope_head_dim, " per token"));
    }
    line("softmax scale", cat(c.softmax_scale));
    std::string rope = cat(to_string(c.rope.style), ", theta ", c.rope.theta, ", ", c.rope.dim, " dims, scaling ",
                           to_string(c.rope.scaling.type));
    if (c.rope.scaling.type != RopeType::none) rope += cat(" (factor ", c.rope.scaling.factor, ")");
    line("rope", rope);
    line("context", cat(c.max_position_embeddings, " tokens"));
    if (c.is_moe()) {
      const RouterSpec& r = c.router;
      std::string e = cat(r.n_routed_experts, " routed, ", c.shared.count, " shared", c.shared.gated ? " (gated)" : "",
                          ", ", r.num_experts_per_tok, " active; width ", c.moe_intermediate_size);
      line("experts", e);
      std::string router = cat(to_string(r.score), " ", to_string(r.method));
      if (r.n_group > 1) router += cat(", ", r.topk_group, " of ", r.n_group, " groups");
      router += r.norm_topk_prob ? ", renormalised" : ", not renormalised";
      if (r.routed_scaling_factor != 1.0) router += cat(", scaled by ", r.routed_scaling_factor);
      if (r.e_score_correction_bias) router += ", correction bias";
      line("router", router);
    } else {
      line("experts", "none (dense)");
    }
    if (c.fp8.enabled) line("fp8", cat(c.fp8.fmt, " weights, ", c.fp8.block_out, "x", c.fp8.block_in, " block scales"));
    line("vocabulary", cat(c.vocab_size, c.tie_word_embeddings ? " (tied embeddings)" : ""));
    line("parameters", cat(human_count(s.total_params), " bound (", s.total_params, "), ", human_count(s.active_params),
                           " active per token"));
  } else {
    line("parameters", human_count(s.total_params));
  }
  std::string bytes = cat(human_bytes(s.total_bytes), " in ", s.tensors.size(), " tensors, ", s.num_shards,
                          s.num_shards == 1 ? " shard" : " shards", ":");
  for (const auto& [dt, n] : s.bytes_by_dtype) bytes += cat(" ", dt, " ", human_bytes(n));
  line("weights", bytes);
  if (!s.files.empty()) {
    std::string files;
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json", "chat_template"})
      files += cat(files.empty() ? "" : ", ", name, s.files.at(name) ? " yes" : " no");
    line("files", files);
  }
  for (const auto& [k, v] : s.metadata) line("metadata", cat(k, " = ", v));
  for (const std::string& w : s.warnings) line("warning", w);
  if (with_tensors) {
    o += "\n";
    for (const TensorRecord& t : s.tensors) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "  %-8s", std::string(dtype_name(t.dtype)).c_str());
      o += cat(t.name, buf, shape_str(t.shape), "  ", s.shard_names.at(static_cast<size_t>(t.shard)), "\n");
    }
  }
  return o;
}

}  // namespace moerun
