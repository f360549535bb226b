#include "support/writer.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

namespace moerun::testing {
namespace {

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

uint16_t to_f16(float f) {  // small normal values only, which is all the tests write
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000;
  const int32_t exp = static_cast<int32_t>((u >> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | ((u >> 13) & 0x3ff));
}

std::string random_bytes(DType dtype, int64_t numel, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-0.1f, 0.1f);
  std::string out(static_cast<size_t>(numel) * dtype_size(dtype), '\0');
  char* p = out.data();
  for (int64_t i = 0; i < numel; ++i) {
    const float v = dist(rng);
    switch (dtype) {
      case DType::f32: std::memcpy(p + 4 * i, &v, 4); break;
      case DType::bf16: { const uint16_t b = to_bf16(v); std::memcpy(p + 2 * i, &b, 2); break; }
      case DType::f16: { const uint16_t b = to_f16(v); std::memcpy(p + 2 * i, &b, 2); break; }
      case DType::f8_e4m3: p[i] = static_cast<char>(rng() & 0x76); break;  // never the NaN pattern
      default: p[i * static_cast<int64_t>(dtype_size(dtype))] = static_cast<char>(rng() & 0x7f); break;
    }
  }
  return out;
}

uint64_t name_seed(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

}  // namespace

std::string raw_safetensors(const std::string& header, const std::string& data, std::optional<uint64_t> length) {
  const uint64_t n = length.value_or(header.size());
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string safetensors_bytes(const std::vector<TensorSpec>& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string data;
  for (const TensorSpec& t : tensors) {
    const std::string bytes = t.data.empty() ? random_bytes(t.dtype, numel(t.shape), name_seed(t.name)) : t.data;
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + bytes.size()}}};
    data += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // as the reference writer: data starts 8-aligned
  return raw_safetensors(text, data);
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

fs::path fresh_dir(const std::string& name) {
  // ctest runs tests as parallel processes: the pid keeps their directories apart.
  const fs::path dir = fs::path(::testing::TempDir()) / ("moerun_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<std::string> tiny_config_names() {
  return {"llama", "llama_tied", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
          "deepseek_v2_lite", "deepseek_v2", "deepseek_v3", "deepseek_v3_fp8"};
}

Json tiny_config(const std::string& name) {
  Json base = {{"vocab_size", 512}, {"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
               {"num_key_value_heads", 2}, {"max_position_embeddings", 512}, {"rms_norm_eps", 1e-5},
               {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}, {"torch_dtype", "bfloat16"}};
  auto with = [&](Json extra) {
    Json c = base;
    c.update(extra);
    return c;
  };
  if (name == "llama")
    return with({{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"intermediate_size", 128},
                 {"rope_theta", 10000.0}, {"rope_scaling", nullptr}, {"attention_bias", false}, {"mlp_bias", false}});
  if (name == "llama_tied")
    return with({{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"intermediate_size", 128},
                 {"rope_theta", 500000.0}, {"tie_word_embeddings", true},
                 {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                   {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}}});
  if (name == "mixtral")
    return with({{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"}, {"intermediate_size", 96},
                 {"num_local_experts", 4}, {"num_experts_per_tok", 2}, {"rope_theta", 1e6}, {"sliding_window", nullptr}});
  if (name == "qwen2_moe")
    return with({{"architectures", {"Qwen2MoeForCausalLM"}}, {"model_type", "qwen2_moe"}, {"num_hidden_layers", 3},
                 {"intermediate_size", 128}, {"moe_intermediate_size", 32}, {"shared_expert_intermediate_size", 64},
                 {"num_experts", 8}, {"num_experts_per_tok", 2}, {"norm_topk_prob", false}, {"decoder_sparse_step", 1},
                 {"mlp_only_layers", {1}}, {"rope_theta", 1e6}, {"rms_norm_eps", 1e-6}});
  if (name == "qwen3_moe")
    return with({{"architectures", {"Qwen3MoeForCausalLM"}}, {"model_type", "qwen3_moe"}, {"head_dim", 32},
                 {"intermediate_size", 128}, {"moe_intermediate_size", 32}, {"num_experts", 8},
                 {"num_experts_per_tok", 2}, {"norm_topk_prob", true}, {"decoder_sparse_step", 1},
                 {"mlp_only_layers", Json::array()}, {"attention_bias", false}, {"rope_theta", 1e6}, {"rms_norm_eps", 1e-6}});
  if (name == "olmoe")
    return with({{"architectures", {"OlmoeForCausalLM"}}, {"model_type", "olmoe"}, {"num_key_value_heads", 4},
                 {"intermediate_size", 32}, {"num_experts", 8}, {"num_experts_per_tok", 2}, {"norm_topk_prob", false},
                 {"clip_qkv", nullptr}, {"rope_theta", 10000.0}});
  Json mla = {{"kv_lora_rank", 32}, {"qk_nope_head_dim", 16}, {"qk_rope_head_dim", 8}, {"v_head_dim", 16},
              {"intermediate_size", 128}, {"moe_intermediate_size", 32}, {"n_shared_experts", 1},
              {"first_k_dense_replace", 1}, {"moe_layer_freq", 1}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
              {"num_key_value_heads", 4}, {"attention_bias", false}};
  if (name == "deepseek_v2_lite") {
    Json c = with(mla);
    c.update({{"architectures", {"DeepseekV2ForCausalLM"}}, {"model_type", "deepseek_v2"}, {"q_lora_rank", nullptr},
              {"n_routed_experts", 8}, {"num_experts_per_tok", 2}, {"topk_method", "greedy"}, {"n_group", 1},
              {"topk_group", 1}, {"scoring_func", "softmax"}, {"routed_scaling_factor", 1.5}, {"norm_topk_prob", false},
              {"rope_scaling", nullptr}});
    return c;
  }
  Json yarn = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64}, {"beta_fast", 32},
               {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
  if (name == "deepseek_v2") {
    Json c = with(mla);
    Json y = yarn;
    y["mscale"] = y["mscale_all_dim"] = 0.707;
    c.update({{"architectures", {"DeepseekV2ForCausalLM"}}, {"model_type", "deepseek_v2"}, {"q_lora_rank", 32},
              {"n_routed_experts", 8}, {"num_experts_per_tok", 2}, {"topk_method", "group_limited_greedy"},
              {"n_group", 4}, {"topk_group", 2}, {"scoring_func", "softmax"}, {"routed_scaling_factor", 16.0},
              {"norm_topk_prob", false}, {"rope_scaling", y}, {"max_position_embeddings", 256}});
    return c;
  }
  if (name == "deepseek_v3" || name == "deepseek_v3_fp8") {
    Json c = with(mla);
    c.update({{"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "deepseek_v3"}, {"q_lora_rank", 32},
              {"n_routed_experts", 16}, {"num_experts_per_tok", 4}, {"topk_method", "noaux_tc"}, {"n_group", 4},
              {"topk_group", 2}, {"scoring_func", "sigmoid"}, {"routed_scaling_factor", 2.5}, {"norm_topk_prob", true},
              {"rope_scaling", yarn}, {"max_position_embeddings", 256}});
    if (name == "deepseek_v3_fp8") {
      // Dimensions that are not multiples of 128 so that partial scale blocks occur (MODELS.md §9.3).
      c.update({{"hidden_size", 256}, {"q_lora_rank", 160}, {"kv_lora_rank", 64}, {"qk_rope_head_dim", 32},
                {"intermediate_size", 320}, {"moe_intermediate_size", 96},
                {"quantization_config", {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                                         {"weight_block_size", {128, 128}}}}});
    }
    return c;
  }
  throw std::invalid_argument("no tiny config named " + name);
}

std::vector<TensorSpec> expected_tensors(const Json& c, const ModelDirOptions& opt) {
  const std::string type = c.at("model_type");
  const int64_t V = c.at("vocab_size"), D = c.at("hidden_size"), L = c.at("num_hidden_layers");
  const int64_t H = c.at("num_attention_heads");
  const int64_t Hkv = c.value("num_key_value_heads", H);
  const int64_t dh = c.contains("head_dim") && !c["head_dim"].is_null() ? c["head_dim"].get<int64_t>() : D / H;
  const bool fp8 = c.contains("quantization_config");
  const bool deepseek = type == "deepseek_v2" || type == "deepseek_v3";
  const DType wt = opt.dtype;

  std::vector<TensorSpec> out;
  auto vec = [&](const std::string& name, Shape s, DType dt) { out.push_back({name, dt, std::move(s), {}}); };
  auto linear = [&](const std::string& prefix, int64_t o, int64_t i) {
    if (fp8) {
      vec(prefix + ".weight", {o, i}, DType::f8_e4m3);
      vec(prefix + ".weight_scale_inv", {(o + 127) / 128, (i + 127) / 128}, DType::f32);
    } else {
      vec(prefix + ".weight", {o, i}, wt);
    }
  };
  auto mlp = [&](const std::string& prefix, const std::string& g, const std::string& u, const std::string& d, int64_t I) {
    linear(prefix + "." + g, I, D);
    linear(prefix + "." + u, I, D);
    linear(prefix + "." + d, D, I);
  };

  vec("model.embed_tokens.weight", {V, D}, wt);
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    vec(p + "input_layernorm.weight", {D}, wt);
    vec(p + "post_attention_layernorm.weight", {D}, wt);
    if (deepseek) {
      const int64_t dn = c.at("qk_nope_head_dim"), dr = c.at("qk_rope_head_dim"), dv = c.at("v_head_dim");
      const int64_t rkv = c.at("kv_lora_rank");
      if (c.contains("q_lora_rank") && !c["q_lora_rank"].is_null()) {
        const int64_t rq = c["q_lora_rank"];
        linear(p + "self_attn.q_a_proj", rq, D);
        vec(p + "self_attn.q_a_layernorm.weight", {rq}, wt);
        linear(p + "self_attn.q_b_proj", H * (dn + dr), rq);
      } else {
        linear(p + "self_attn.q_proj", H * (dn + dr), D);
      }
      linear(p + "self_attn.kv_a_proj_with_mqa", rkv + dr, D);
      vec(p + "self_attn.kv_a_layernorm.weight", {rkv}, wt);
      linear(p + "self_attn.kv_b_proj", H * (dn + dv), rkv);
      linear(p + "self_attn.o_proj", D, H * dv);
    } else {
      linear(p + "self_attn.q_proj", H * dh, D);
      linear(p + "self_attn.k_proj", Hkv * dh, D);
      linear(p + "self_attn.v_proj", Hkv * dh, D);
      linear(p + "self_attn.o_proj", D, H * dh);
      if (type == "qwen2_moe")
        for (const char* n : {"q_proj", "k_proj", "v_proj"})
          vec(p + "self_attn." + n + ".bias", {std::string(n) == "q_proj" ? H * dh : Hkv * dh}, wt);
      if (type == "qwen3_moe") {
        vec(p + "self_attn.q_norm.weight", {dh}, wt);
        vec(p + "self_attn.k_norm.weight", {dh}, wt);
      }
      if (type == "olmoe") {
        vec(p + "self_attn.q_norm.weight", {H * dh}, wt);
        vec(p + "self_attn.k_norm.weight", {Hkv * dh}, wt);
      }
    }

    // Is layer l MoE? (docs/MODELS.md §3)
    bool moe = type != "llama";
    if (type == "qwen2_moe" || type == "qwen3_moe") {
      for (const Json& m : c.value("mlp_only_layers", Json::array())) moe &= m.get<int64_t>() != l;
      moe &= (l + 1) % c.value("decoder_sparse_step", 1) == 0;
    }
    if (deepseek) moe = l >= c.value("first_k_dense_replace", 0);
    if (!moe) {
      mlp(p + "mlp", "gate_proj", "up_proj", "down_proj", c.at("intermediate_size"));
      continue;
    }
    const bool mixtral = type == "mixtral";
    const int64_t E = mixtral ? c.at("num_local_experts").get<int64_t>()
                      : deepseek ? c.at("n_routed_experts").get<int64_t>() : c.at("num_experts").get<int64_t>();
    const int64_t Ie = (mixtral || type == "olmoe") ? c.at("intermediate_size").get<int64_t>()
                                                    : c.at("moe_intermediate_size").get<int64_t>();
    const std::string block = p + (mixtral && !opt.fused_experts ? "block_sparse_moe" : "mlp");
    vec(block + ".gate.weight", {E, D}, wt);
    if (type == "deepseek_v3") vec(block + ".gate.e_score_correction_bias", {E}, DType::f32);
    if (opt.fused_experts) {
      vec(block + ".experts.gate_up_proj", {E, 2 * Ie, D}, wt);
      vec(block + ".experts.down_proj", {E, D, Ie}, wt);
    } else {
      for (int64_t e = 0; e < E; ++e) {
        const std::string ep = block + ".experts." + std::to_string(e);
        if (mixtral) mlp(ep, "w1", "w3", "w2", Ie);
        else mlp(ep, "gate_proj", "up_proj", "down_proj", Ie);
      }
    }
    if (type == "qwen2_moe") {
      mlp(block + ".shared_expert", "gate_proj", "up_proj", "down_proj", c.at("shared_expert_intermediate_size"));
      vec(block + ".shared_expert_gate.weight", {1, D}, wt);
    }
    if (deepseek && c.value("n_shared_experts", 0) > 0)
      mlp(block + ".shared_experts", "gate_proj", "up_proj", "down_proj", Ie * c.at("n_shared_experts").get<int64_t>());
  }
  vec("model.norm.weight", {D}, wt);
  if (!c.value("tie_word_embeddings", false)) vec("lm_head.weight", {V, D}, wt);
  return out;
}

void write_model_dir(const fs::path& dir, const Json& config, const ModelDirOptions& opt,
                     std::optional<std::vector<TensorSpec>> tensors) {
  fs::create_directories(dir);
  write_file(dir / "config.json", config.dump(2));
  const std::vector<TensorSpec> all = tensors ? *tensors : expected_tensors(config, opt);
  if (opt.shards <= 1) {
    write_file(dir / "model.safetensors", safetensors_bytes(all, {{"format", "pt"}}));
  } else {
    Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", Json::object()}};
    uint64_t total = 0;
    const size_t per = (all.size() + static_cast<size_t>(opt.shards) - 1) / static_cast<size_t>(opt.shards);
    for (int s = 0; s < opt.shards; ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, opt.shards);
      std::vector<TensorSpec> part;
      for (size_t i = static_cast<size_t>(s) * per; i < all.size() && i < static_cast<size_t>(s + 1) * per; ++i) {
        part.push_back(all[i]);
        index["weight_map"][all[i].name] = name;
        total += static_cast<uint64_t>(numel(all[i].shape)) * dtype_size(all[i].dtype);
      }
      write_file(dir / name, safetensors_bytes(part, {{"format", "pt"}}));
    }
    index["metadata"]["total_size"] = total;
    write_file(dir / "model.safetensors.index.json", index.dump(2));
  }
  if (opt.tokenizer) {
    write_file(dir / "tokenizer.json", R"({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}})");
    write_file(dir / "tokenizer_config.json",
               R"({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"})");
    write_file(dir / "generation_config.json", R"({"bos_token_id": 1, "eos_token_id": [2]})");
  }
}

}  // namespace moerun::testing
