#include "model/binding.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <string_view>

#include "model/families.h"
#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::model {
namespace {

using detail::cat;

enum class Kind { linear, vector };  // a Linear weight [out, in] (may be FP8), or a norm/bias/router vector

// Problems and unused tensors are folded by name pattern: "model.layers.{0-2}.mlp.experts.{0-63}.w1.weight".
struct FoldedNames {
  struct Group {
    std::vector<std::set<int64_t>> numbers;  // one set per {} in the pattern
    size_t count = 0;
  };
  std::map<std::pair<std::string, std::string>, Group> groups;  // (pattern, what) -> numbers seen

  void add(const std::string& name, const std::string& what) {
    std::string pattern;
    std::vector<int64_t> nums;
    for (size_t i = 0; i < name.size();) {
      // Only numbers standing alone between dots are indices ("layers.7.", "experts.12.").
      if (std::isdigit(static_cast<unsigned char>(name[i])) && (i == 0 || name[i - 1] == '.')) {
        size_t j = i;
        while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
        if ((j == name.size() || name[j] == '.') && j - i <= 9) {
          nums.push_back(std::stoll(name.substr(i, j - i)));
          pattern += "{}";
          i = j;
          continue;
        }
      }
      pattern += name[i++];
    }
    Group& g = groups[{pattern, what}];
    g.numbers.resize(nums.size());
    for (size_t k = 0; k < nums.size(); ++k) g.numbers[k].insert(nums[k]);
    ++g.count;
  }

  static std::string ranges(const std::set<int64_t>& s) {
    std::string out;
    for (auto it = s.begin(); it != s.end();) {
      const int64_t lo = *it;
      int64_t hi = lo;
      for (++it; it != s.end() && *it == hi + 1; ++it) hi = *it;
      out += cat(out.empty() ? "" : ",", lo, hi > lo ? cat("-", hi) : std::string());
    }
    return out;
  }

  std::vector<std::string> lines() const {
    std::vector<std::string> out;
    for (const auto& [key, g] : groups) {
      std::string name;
      size_t k = 0;
      for (size_t i = 0; i < key.first.size(); ++i) {
        if (key.first.compare(i, 2, "{}") == 0) {
          const std::string r = ranges(g.numbers[k++]);
          name += r.find_first_of(",-") == std::string::npos ? r : "{" + r + "}";
          ++i;
        } else {
          name += key.first[i];
        }
      }
      out.push_back(cat(g.count > 1 ? cat(g.count, " tensors ") : std::string("tensor "), "'", name, "'",
                        key.second.empty() ? "" : ": ", key.second));
    }
    return out;
  }
};

// Tensors that real checkpoints carry and transformers ignores on load (transformers 5.24: the
// models' _keys_to_ignore_on_load_unexpected and PreTrainedModel._adjust_missing_and_unexpected_keys).
// They are not unexpected: a model directory may hold them and still run. Returns why, or nullptr.
struct IgnoredTensors {
  const char* why;
  bool (*matches)(std::string_view name, const ModelConfig& c);
};

// The layer index of "model.layers.{l}.<rest>", or -1.
int64_t layer_of(std::string_view name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (!name.starts_with(kPrefix)) return -1;
  int64_t l = 0;
  size_t i = kPrefix.size();
  for (; i < name.size() && i < kPrefix.size() + 9 && std::isdigit(static_cast<unsigned char>(name[i])); ++i)
    l = 10 * l + (name[i] - '0');
  return i > kPrefix.size() && i < name.size() && name[i] == '.' ? l : -1;
}

constexpr IgnoredTensors kIgnoredTensors[] = {
    // Older exports (Llama and others before transformers 4.3x) saved each attention's rotary
    // inv_freq buffer; transformers drops any "rotary_emb.inv_freq" of every family with rotary
    // embeddings (all of ours) and recomputes it from the config, as moerun does.
    {"rotary inv_freq buffer, recomputed from the config as transformers does",
     [](std::string_view name, const ModelConfig&) { return name.find("rotary_emb.inv_freq") != std::string_view::npos; }},
    // DeepSeek-V3/R1 store num_nextn_predict_layers multi-token-prediction layers after the last
    // decoder layer (model.layers.61.* of 61); DeepseekV3PreTrainedModel ignores r"model\.layers\.61.*".
    // Here the range follows the config, so a num_hidden_layers cut below the checkpoint's still
    // leaves real layers unexpected.
    {"multi-token-prediction layer, unused by plain generation as in transformers (--spec mtp drafts with it)",
     [](std::string_view name, const ModelConfig& c) {
       const int64_t l = layer_of(name);
       return l >= c.num_hidden_layers && l < c.num_hidden_layers + c.num_nextn_predict_layers;
     }},
};

const char* ignored_by_transformers(std::string_view name, const ModelConfig& c) {
  for (const IgnoredTensors& t : kIgnoredTensors)
    if (t.matches(name, c)) return t.why;
  return nullptr;
}

class Binder {
 public:
  Binder(const ModelConfig& c, const io::WeightStore& store, const TensorFactory& factory)
      : c_(c), store_(store), factory_(factory) {}

  bool has(const std::string& name) const { return store_.find(name) != nullptr; }

  Tensor vector(const std::string& name, const Shape& want) { return take(name, want, Kind::vector); }
  Tensor optional_vector(const std::string& name, const Shape& want) {
    return has(name) ? take(name, want, Kind::vector) : Tensor();
  }

  LinearWeight linear(const std::string& prefix, int64_t out, int64_t in, bool bias) {
    LinearWeight w;
    w.weight = take(prefix + ".weight", {out, in}, Kind::linear);
    if (w.weight && w.weight.dtype() == DType::f8_e4m3) {
      // FP8 weights carry per-block multipliers (docs/MODELS.md §6).
      const Shape scale_shape = {(out + c_.fp8.block_out - 1) / c_.fp8.block_out, (in + c_.fp8.block_in - 1) / c_.fp8.block_in};
      w.weight_scale_inv = take(prefix + ".weight_scale_inv", scale_shape, Kind::vector);
    }
    if (bias) w.bias = take(prefix + ".bias", {out}, Kind::vector);
    return w;
  }

  MlpWeights mlp(const std::string& prefix, const char* gate, const char* up, const char* down, int64_t width) {
    const int64_t d = c_.hidden_size;
    return {linear(cat(prefix, ".", gate), width, d, false), linear(cat(prefix, ".", up), width, d, false),
            linear(cat(prefix, ".", down), d, width, false)};
  }

  // Fused HF v5 experts: gate_up_proj [E, 2*I_e, D] (gate rows first) and down_proj [E, D, I_e].
  std::vector<MlpWeights> fused_experts(const std::string& prefix) {
    const int64_t e = c_.router.n_routed_experts, i = c_.moe_intermediate_size, d = c_.hidden_size;
    const Tensor gate_up = take(prefix + ".gate_up_proj", {e, 2 * i, d}, Kind::vector);
    const Tensor down = take(prefix + ".down_proj", {e, d, i}, Kind::vector);
    std::vector<MlpWeights> out;
    if (!gate_up || !down) return out;
    for (int64_t k = 0; k < e; ++k) {
      MlpWeights m;
      m.gate_proj.weight = gate_up.index(k).narrow(0, i);
      m.up_proj.weight = gate_up.index(k).narrow(i, i);
      m.down_proj.weight = down.index(k);
      out.push_back(std::move(m));
    }
    return out;
  }

  std::vector<std::string> problems() const { return problems_.lines(); }

  // Tensors in the checkpoint that no role asked for: those transformers ignores too become warnings
  // (with the reason); the rest are unexpected, folded by pattern into `unexpected`.
  void unused(Binding& out) const {
    FoldedNames ignored, unexpected;
    for (const auto& [name, t] : store_.tensors()) {
      if (used_.count(name)) continue;
      if (const char* why = ignored_by_transformers(name, c_)) {
        ignored.add(name, why);
      } else {
        unexpected.add(name, "");
        ++out.unexpected_count;
      }
    }
    out.unexpected = unexpected.lines();
    for (const std::string& line : out.unexpected) out.warnings.push_back("ignoring unexpected " + line);
    for (const std::string& line : ignored.lines()) out.warnings.push_back("ignoring " + line);
  }

 private:
  Tensor take(const std::string& name, const Shape& want, Kind kind) {
    const io::StoredTensor* t = store_.find(name);
    if (!t && factory_) return factory_(name, want, kind == Kind::linear);
    if (!t) {
      problems_.add(name, cat("missing (expected ", shape_str(want), ")"));
      return Tensor();
    }
    used_.insert(name);
    const DType dt = t->entry->dtype;
    const bool ok_dtype = dt == DType::f32 || dt == DType::bf16 || dt == DType::f16 ||
                          (kind == Kind::linear && dt == DType::f8_e4m3);
    const std::string in_shard = cat(" (in ", store_.shard_name(t->shard), ")");
    if (!ok_dtype) {
      problems_.add(name, cat("dtype ", dtype_name(dt), " is not supported here (expected F32, BF16, F16",
                              kind == Kind::linear ? " or F8_E4M3" : "", ")", in_shard));
      return Tensor();
    }
    if (t->entry->shape != want) {
      problems_.add(name, cat("expected ", dtype_name(dt), " ", shape_str(want), ", found ", dtype_name(dt), " ",
                              shape_str(t->entry->shape), in_shard));
      return Tensor();
    }
    return store_.view(*t);
  }

  const ModelConfig& c_;
  const io::WeightStore& store_;
  const TensorFactory& factory_;
  FoldedNames problems_;
  std::set<std::string, std::less<>> used_;
};

// One decoder layer's tensors, model.layers.{l}.* (a multi-token-prediction layer's block too).
LayerWeights bind_layer(Binder& b, const ModelConfig& c, int64_t l, FfnKind ffn) {
  const TensorNames& names = family_spec(c.family).names;
  const int64_t d = c.hidden_size, h = c.num_attention_heads;
  LayerWeights L;
  const std::string p = cat("model.layers.", l, ".");
  L.input_layernorm = b.vector(p + "input_layernorm.weight", {d});
  L.post_attention_layernorm = b.vector(p + "post_attention_layernorm.weight", {d});

  if (c.attention == AttentionKind::gqa) {
    const int64_t q_out = h * c.head_dim, kv_out = c.num_key_value_heads * c.head_dim;
    L.q_proj = b.linear(p + "self_attn.q_proj", q_out, d, c.qkv_bias);
    L.k_proj = b.linear(p + "self_attn.k_proj", kv_out, d, c.qkv_bias);
    L.v_proj = b.linear(p + "self_attn.v_proj", kv_out, d, c.qkv_bias);
    L.o_proj = b.linear(p + "self_attn.o_proj", d, q_out, c.o_bias);
    if (c.qk_norm != QkNorm::none) {
      const bool per_head = c.qk_norm == QkNorm::per_head;
      L.q_norm = b.vector(p + "self_attn.q_norm.weight", {per_head ? c.head_dim : q_out});
      L.k_norm = b.vector(p + "self_attn.k_norm.weight", {per_head ? c.head_dim : kv_out});
    }
  } else {
    const int64_t q_out = h * (c.qk_nope_head_dim + c.qk_rope_head_dim);
    if (c.q_lora_rank) {
      L.q_a_proj = b.linear(p + "self_attn.q_a_proj", *c.q_lora_rank, d, c.mla_bias);
      L.q_a_layernorm = b.vector(p + "self_attn.q_a_layernorm.weight", {*c.q_lora_rank});
      L.q_b_proj = b.linear(p + "self_attn.q_b_proj", q_out, *c.q_lora_rank, false);
    } else {
      L.q_proj = b.linear(p + "self_attn.q_proj", q_out, d, false);
    }
    L.kv_a_proj_with_mqa = b.linear(p + "self_attn.kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, d, c.mla_bias);
    L.kv_a_layernorm = b.vector(p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank});
    L.kv_b_proj = b.linear(p + "self_attn.kv_b_proj", h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, false);
    L.o_proj = b.linear(p + "self_attn.o_proj", d, h * c.v_head_dim, c.mla_bias);
  }

  if (ffn == FfnKind::dense) {
    L.mlp = b.mlp(p + "mlp", "gate_proj", "up_proj", "down_proj", c.intermediate_size);
    return L;
  }
  // MoE layer. HF v5 may save fused expert tensors, and renames Mixtral's block to "mlp".
  const bool fused = b.has(p + "mlp.experts.gate_up_proj") || b.has(cat(p, names.moe_block, ".experts.gate_up_proj"));
  const std::string block = p + (fused && b.has(p + "mlp.experts.gate_up_proj") ? "mlp" : names.moe_block);
  L.router = b.vector(block + ".gate.weight", {c.router.n_routed_experts, d});
  if (c.router.e_score_correction_bias)
    L.e_score_correction_bias = b.vector(block + ".gate.e_score_correction_bias", {c.router.n_routed_experts});
  if (fused) {
    L.experts = b.fused_experts(block + ".experts");
  } else {
    for (int64_t e = 0; e < c.router.n_routed_experts; ++e)
      L.experts.push_back(b.mlp(cat(block, ".experts.", e), names.expert_gate, names.expert_up, names.expert_down,
                                c.moe_intermediate_size));
  }
  if (c.shared.count > 0) {
    L.shared_expert = b.mlp(cat(block, ".", names.shared_expert), "gate_proj", "up_proj", "down_proj",
                            c.shared.intermediate_size);
    if (c.shared.gated) L.shared_expert_gate = b.vector(block + ".shared_expert_gate.weight", {1, d});
  }
  return L;
}

}  // namespace

Binding bind_weights(const ModelConfig& c, const io::WeightStore& store, const std::string& where,
                     const TensorFactory& factory) {
  Binder b(c, store, factory);
  Binding out;
  ModelWeights& w = out.weights;
  const int64_t d = c.hidden_size;

  w.embed_tokens = b.vector("model.embed_tokens.weight", {c.vocab_size, d});
  w.norm = b.vector("model.norm.weight", {d});
  if (b.has("lm_head.weight")) {
    w.lm_head = b.vector("lm_head.weight", {c.vocab_size, d});
    if (c.tie_word_embeddings)
      out.warnings.push_back("lm_head.weight is present although tie_word_embeddings is true; using lm_head.weight");
  } else if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    w.lm_head = b.vector("lm_head.weight", {c.vocab_size, d});  // missing: reported, or made by the factory
  }

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) w.layers.push_back(bind_layer(b, c, l, c.layer_ffn[static_cast<size_t>(l)]));

  const std::vector<std::string> problems = b.problems();
  if (!problems.empty())
    throw Error(where, cat(problems.size(), " tensor problem", problems.size() == 1 ? "" : "s", " for a ",
                           family_name(c.family), " model: ", detail::join_problems(problems, 1000)));
  b.unused(out);

  // Parameters: every weight once (a tied head is the embedding), FP8 scales excluded; active: less
  // the routed experts a token does not use (all experts of a layer have the same size).
  const void* embedding = w.embed_tokens.data();
  int64_t routed = 0;
  for_each_tensor(w, [&](const WeightSite& site, LinearPart part, const Tensor& t) {
    if (part == LinearPart::scale || (site.kind == WeightKind::linear && t.data() == embedding)) return;
    out.total_params += t.numel();
    if (site.routed()) routed += t.numel();
  });
  const int64_t E = c.router.n_routed_experts;
  out.active_params = out.total_params - (E > 0 ? routed / E * (E - c.router.num_experts_per_tok) : 0);
  return out;
}

std::vector<MtpWeights> bind_mtp(const ModelConfig& c, const io::WeightStore& store, const std::string& where,
                                 const TensorFactory& factory) {
  if (c.mtp_ffn.empty())
    throw Error(where, cat("a ", family_name(c.family), " model with num_nextn_predict_layers 0 has no multi-token-prediction layer"));
  Binder b(c, store, factory);
  const int64_t d = c.hidden_size, V = c.vocab_size;
  std::vector<MtpWeights> out;
  for (size_t i = 0; i < c.mtp_ffn.size(); ++i) {
    const int64_t l = c.num_hidden_layers + static_cast<int64_t>(i);
    const std::string p = cat("model.layers.", l, ".");
    MtpWeights& m = out.emplace_back();
    m.embed_tokens = b.vector(p + "embed_tokens.weight", {V, d});
    m.enorm = b.vector(p + "enorm.weight", {d});
    m.hnorm = b.vector(p + "hnorm.weight", {d});
    m.eh_proj = b.linear(p + "eh_proj", d, 2 * d, false);
    m.block = bind_layer(b, c, l, c.mtp_ffn[i]);
    m.head_norm = b.vector(p + "shared_head.norm.weight", {d});
    m.head = b.vector(p + "shared_head.head.weight", {V, d});
  }
  const std::vector<std::string> problems = b.problems();
  if (!problems.empty())
    throw Error(where, cat("the multi-token-prediction layer", out.size() == 1 ? "" : "s", " (num_nextn_predict_layers ",
                           out.size(), "): ", problems.size(), " tensor problem", problems.size() == 1 ? "" : "s", ": ",
                           detail::join_problems(problems, 1000)));
  return out;
}

}  // namespace moerun::model
