// Loading whole model directories: every family binds, sharded and fused layouts, FP8 pairing, and
// every kind of broken directory is reported with the file and tensor names.

#include <gtest/gtest.h>

#include <algorithm>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "support/writer.h"

namespace moerun {
namespace {

using testing::ModelDirOptions;
using testing::TensorSpec;

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Load `dir`, expecting failure; returns the message.
std::string load_error(const std::filesystem::path& dir) {
  try {
    Model::load(dir);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "loading " << dir << " succeeded but should have failed";
  return "";
}

void expect_contains(const std::string& s, std::initializer_list<std::string> parts) {
  for (const std::string& p : parts) EXPECT_NE(s.find(p), std::string::npos) << "missing '" << p << "' in: " << s;
}

std::vector<TensorSpec> without(std::vector<TensorSpec> all, const std::string& name) {
  const auto it = std::find_if(all.begin(), all.end(), [&](const TensorSpec& t) { return t.name == name; });
  EXPECT_NE(it, all.end()) << name;
  if (it != all.end()) all.erase(it);
  return all;
}

std::vector<TensorSpec> reshaped(std::vector<TensorSpec> all, const std::string& name, Shape shape, DType dtype) {
  for (TensorSpec& t : all)
    if (t.name == name) {
      t.shape = std::move(shape);
      t.dtype = dtype;
      return all;
    }
  ADD_FAILURE() << name << " not in the expected tensors";
  return all;
}

class EveryFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryFamily, LoadsAndBindsEveryTensor) {
  const testing::Json cfg = testing::tiny_config(GetParam());
  const auto dir = testing::fresh_dir("family_" + GetParam());
  testing::write_model_dir(dir, cfg);
  const Model m = Model::load(dir);
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();

  const std::vector<TensorSpec> expected = testing::expected_tensors(cfg);
  EXPECT_EQ(m.tensors().size(), expected.size());
  EXPECT_TRUE(m.warnings().empty()) << m.warnings().front();
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(c.num_hidden_layers));
  EXPECT_TRUE(w.embed_tokens && w.norm && w.lm_head);
  EXPECT_EQ(w.embed_tokens.shape(), (Shape{c.vocab_size, c.hidden_size}));

  // Parameters counted independently from the writer's list: scales are not parameters; per token
  // only k of the E routed experts count.
  int64_t total = 0;
  for (const TensorSpec& t : expected)
    if (t.name.find("_scale_inv") == std::string::npos) total += numel(t.shape);
  if (c.tie_word_embeddings) {
    EXPECT_EQ(w.lm_head.data(), w.embed_tokens.data());
  }
  EXPECT_EQ(m.total_params(), total);
  const int64_t unrouted = c.num_moe_layers() * (c.router.n_routed_experts - c.router.num_experts_per_tok) * 3 *
                           c.moe_intermediate_size * c.hidden_size;
  EXPECT_EQ(m.active_params(), total - unrouted);

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = w.layers[static_cast<size_t>(l)];
    EXPECT_TRUE(L.input_layernorm && L.post_attention_layernorm && L.o_proj.defined()) << "layer " << l;
    if (c.attention == AttentionKind::gqa) {
      EXPECT_TRUE(L.q_proj.defined() && L.k_proj.defined() && L.v_proj.defined());
      EXPECT_EQ(L.q_proj.bias.defined(), c.qkv_bias);
      EXPECT_EQ(L.q_norm.defined(), c.qk_norm != QkNorm::none);
    } else {
      EXPECT_EQ(L.q_a_proj.defined(), c.q_lora_rank.has_value());
      EXPECT_EQ(L.q_proj.defined(), !c.q_lora_rank.has_value());
      EXPECT_TRUE(L.kv_a_proj_with_mqa.defined() && L.kv_a_layernorm && L.kv_b_proj.defined());
    }
    if (c.layer_ffn[static_cast<size_t>(l)] == FfnKind::moe) {
      EXPECT_EQ(L.experts.size(), static_cast<size_t>(c.router.n_routed_experts));
      EXPECT_EQ(L.router.shape(), (Shape{c.router.n_routed_experts, c.hidden_size}));
      EXPECT_EQ(L.e_score_correction_bias.defined(), c.router.e_score_correction_bias);
      EXPECT_EQ(L.shared_expert.gate_proj.defined(), c.shared.count > 0);
      EXPECT_EQ(L.shared_expert_gate.defined(), c.shared.gated);
      EXPECT_FALSE(L.mlp.gate_proj.defined());
    } else {
      EXPECT_TRUE(L.experts.empty());
      EXPECT_EQ(L.mlp.gate_proj.weight.shape(), (Shape{c.intermediate_size, c.hidden_size}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ModelDir, EveryFamily, ::testing::ValuesIn(testing::tiny_config_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(ModelDir, ShardedCheckpointWithIndex) {
  const auto dir = testing::fresh_dir("sharded");
  testing::write_model_dir(dir, testing::tiny_config("qwen3_moe"), {.shards = 3});
  const Model m = Model::load(dir);
  ASSERT_EQ(m.files().shards.size(), 3u);
  EXPECT_EQ(m.files().shards[0].filename(), "model-00001-of-00003.safetensors");
  std::set<int> used;
  for (const TensorRecord& t : m.tensors()) used.insert(t.shard);
  EXPECT_EQ(used, (std::set<int>{0, 1, 2}));
  const ModelSummary s = summarize(m);
  EXPECT_EQ(s.num_shards, 3u);
  EXPECT_TRUE(s.files.at("model.safetensors.index.json"));
}

TEST(ModelDir, FusedExpertsAreZeroCopySlices) {
  for (const char* family : {"qwen3_moe", "mixtral", "deepseek_v3"}) {
    const auto dir = testing::fresh_dir(std::string("fused_") + family);
    testing::write_model_dir(dir, testing::tiny_config(family), {.fused_experts = true});
    const Model m = Model::load(dir);
    const ModelConfig& c = m.config();
    const int64_t i = c.moe_intermediate_size, d = c.hidden_size;
    const LayerWeights& L = m.weights().layers.back();
    ASSERT_EQ(L.experts.size(), static_cast<size_t>(c.router.n_routed_experts)) << family;
    const auto* base = static_cast<const char*>(L.experts[0].gate_proj.weight.data());
    for (size_t e = 0; e < L.experts.size(); ++e) {
      const MlpWeights& x = L.experts[e];
      EXPECT_EQ(x.gate_proj.weight.shape(), (Shape{i, d}));
      EXPECT_EQ(x.up_proj.weight.shape(), (Shape{i, d}));
      EXPECT_EQ(x.down_proj.weight.shape(), (Shape{d, i}));
      // gate rows come first in each expert's [2*I_e, D] block, then up rows (MODELS.md §1.4).
      const auto* gate = static_cast<const char*>(x.gate_proj.weight.data());
      const auto* up = static_cast<const char*>(x.up_proj.weight.data());
      EXPECT_EQ(gate - base, static_cast<std::ptrdiff_t>(e * 2 * i * d * 2)) << family << " expert " << e;
      EXPECT_EQ(up - gate, static_cast<std::ptrdiff_t>(i * d * 2));
    }
  }
}

TEST(ModelDir, Fp8WeightsArePairedWithBlockScales) {
  const auto dir = testing::fresh_dir("fp8");
  testing::write_model_dir(dir, testing::tiny_config("deepseek_v3_fp8"));
  const Model m = Model::load(dir);
  const LayerWeights& L = m.weights().layers[0];
  EXPECT_EQ(L.q_a_proj.weight.dtype(), DType::f8_e4m3);
  EXPECT_EQ(L.q_a_proj.weight_scale_inv.shape(), (Shape{2, 2}));  // [160, 256] in 128x128 blocks
  EXPECT_EQ(L.kv_a_proj_with_mqa.weight_scale_inv.shape(), (Shape{1, 2}));  // [96, 256]
  EXPECT_EQ(L.kv_a_proj_with_mqa.weight_scale_inv.dtype(), DType::f32);
  EXPECT_EQ(m.weights().layers[1].router.dtype(), DType::bf16);  // the router is not quantised

  const std::string scale = "model.layers.1.mlp.experts.3.down_proj.weight_scale_inv";
  const auto broken = testing::fresh_dir("fp8_missing_scale");
  const testing::Json cfg = testing::tiny_config("deepseek_v3_fp8");
  testing::write_model_dir(broken, cfg, {}, without(testing::expected_tensors(cfg), scale));
  expect_contains(load_error(broken), {"tensor '" + scale + "'", "missing", "[2, 1]"});  // [256, 96] in 128x128 blocks
}

TEST(ModelDir, TiedEmbeddings) {
  const testing::Json cfg = testing::tiny_config("llama_tied");
  const auto dir = testing::fresh_dir("tied");
  testing::write_model_dir(dir, cfg);
  const Model m = Model::load(dir);
  EXPECT_EQ(m.weights().lm_head.data(), m.weights().embed_tokens.data());

  // lm_head present although tied: used, with a warning (MODELS.md §1.3).
  auto tensors = testing::expected_tensors(cfg);
  tensors.push_back({"lm_head.weight", DType::bf16, {512, 64}, {}});
  const auto dir2 = testing::fresh_dir("tied_with_head");
  testing::write_model_dir(dir2, cfg, {}, tensors);
  const Model m2 = Model::load(dir2);
  EXPECT_NE(m2.weights().lm_head.data(), m2.weights().embed_tokens.data());
  ASSERT_EQ(m2.warnings().size(), 1u);
  EXPECT_NE(m2.warnings()[0].find("tie_word_embeddings"), std::string::npos);

  // Untied without lm_head: missing.
  const auto dir3 = testing::fresh_dir("untied_no_head");
  const testing::Json untied = testing::tiny_config("llama");
  testing::write_model_dir(dir3, untied, {}, without(testing::expected_tensors(untied), "lm_head.weight"));
  expect_contains(load_error(dir3), {"lm_head.weight", "missing", "[512, 64]"});
}

TEST(ModelDir, ReportsEveryMissingTensorFoldedByLayerAndExpert) {
  const testing::Json cfg = testing::tiny_config("qwen3_moe");
  auto tensors = testing::expected_tensors(cfg);
  for (int l : {0, 1})
    for (int e : {2, 3, 4})
      tensors = without(tensors, "model.layers." + std::to_string(l) + ".mlp.experts." + std::to_string(e) + ".up_proj.weight");
  tensors = without(tensors, "model.layers.1.self_attn.k_norm.weight");
  const auto dir = testing::fresh_dir("missing");
  testing::write_model_dir(dir, cfg, {}, tensors);
  const std::string msg = load_error(dir);
  expect_contains(msg, {dir.string(), "2 tensor problems", "6 tensors 'model.layers.{0-1}.mlp.experts.{2-4}.up_proj.weight': missing (expected [32, 64])",
                        "tensor 'model.layers.1.self_attn.k_norm.weight': missing (expected [32])"});
}

TEST(ModelDir, ReportsWrongShapesAndDtypesWithTheShard) {
  const testing::Json cfg = testing::tiny_config("deepseek_v2_lite");
  auto tensors = testing::expected_tensors(cfg);
  tensors = reshaped(tensors, "model.layers.1.self_attn.kv_b_proj.weight", {64, 16}, DType::bf16);
  tensors = reshaped(tensors, "model.layers.0.input_layernorm.weight", {64}, DType::i32);
  tensors = reshaped(tensors, "model.layers.1.mlp.experts.5.down_proj.weight", {64, 32}, DType::f8_e5m2);
  const auto dir = testing::fresh_dir("misshaped");
  testing::write_model_dir(dir, cfg, {.shards = 2}, tensors);
  const std::string msg = load_error(dir);
  expect_contains(msg, {"3 tensor problems",
                        "tensor 'model.layers.1.self_attn.kv_b_proj.weight': expected BF16 [128, 32], found BF16 [64, 16] (in model-0000",
                        "tensor 'model.layers.0.input_layernorm.weight': dtype I32 is not supported here",
                        "tensor 'model.layers.1.mlp.experts.5.down_proj.weight': dtype F8_E5M2"});
}

TEST(ModelDir, TensorsTransformersIgnoresAreOnlyWarnedAbout) {
  // What real checkpoints carry and transformers ignores on load: an old rotary buffer and the
  // DeepSeek-V3 multi-token-prediction layer right after the last layer (num_nextn_predict_layers 1,
  // the default). They are warned about with the reason, and are not unexpected.
  const testing::Json cfg = testing::tiny_config("deepseek_v3");
  auto tensors = testing::expected_tensors(cfg);
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::f32, {4}, {}});
  for (int e = 0; e < 16; ++e)
    tensors.push_back({"model.layers.2.mlp.experts." + std::to_string(e) + ".up_proj.weight", DType::bf16, {32, 64}, {}});
  tensors.push_back({"model.layers.2.eh_proj.weight", DType::bf16, {64, 128}, {}});
  const auto dir = testing::fresh_dir("ignorable");
  testing::write_model_dir(dir, cfg, {}, tensors);
  const Model m = Model::load(dir);
  std::string all;
  for (const std::string& w : m.warnings()) all += w + "\n";
  expect_contains(all, {"tensor 'model.layers.0.self_attn.rotary_emb.inv_freq': rotary inv_freq buffer",
                        "16 tensors 'model.layers.2.mlp.experts.{0-15}.up_proj.weight': multi-token-prediction layer",
                        "tensor 'model.layers.2.eh_proj.weight': multi-token-prediction layer"});
  EXPECT_EQ(all.find("unexpected"), std::string::npos) << all;
  EXPECT_EQ(m.warnings().size(), 3u);
  EXPECT_TRUE(m.unexpected_tensors().empty());
  EXPECT_EQ(m.unexpected_tensor_count(), 0u);
  EXPECT_NO_THROW(Engine::load(dir, {.backend = BackendKind::cpu}));
}

// A llama checkpoint of 3 layers whose config.json says `layers`: what a cut num_hidden_layers looks like.
std::filesystem::path llama_with_layers_beyond_the_config(const std::string& name, int64_t layers) {
  testing::Json full = testing::tiny_config("llama");
  full["num_hidden_layers"] = 3;
  const auto tensors = testing::expected_tensors(full);
  testing::Json cut = full;
  cut["num_hidden_layers"] = layers;
  const auto dir = testing::fresh_dir(name);
  testing::write_model_dir(dir, cut, {}, tensors);
  return dir;
}

TEST(ModelDir, LayersBeyondNumHiddenLayersAreUnexpected) {
  const auto dir = llama_with_layers_beyond_the_config("extra_layer", 2);
  const Model m = Model::load(dir);  // info still loads it
  EXPECT_EQ(m.unexpected_tensor_count(), 9u);  // two norms, q/k/v/o, gate/up/down of layer 2
  std::string all;
  for (const std::string& u : m.unexpected_tensors()) all += u + "\n";
  expect_contains(all, {"tensor 'model.layers.2.self_attn.q_proj.weight'", "tensor 'model.layers.2.mlp.down_proj.weight'"});
  std::string warnings;
  for (const std::string& w : m.warnings()) warnings += w + "\n";
  expect_contains(warnings, {"ignoring unexpected tensor 'model.layers.2.input_layernorm.weight'"});
}

TEST(ModelDir, EngineRefusesUnexpectedTensorsUnlessAllowed) {
  // Regression: a config whose num_hidden_layers is below the checkpoint's silently ran the first
  // layers only and answered garbage; only `info` warned.
  const auto dir = llama_with_layers_beyond_the_config("extra_layer_engine", 1);
  std::string e;
  try {
    Engine::load(dir, {.backend = BackendKind::cpu});
  } catch (const Error& err) {
    e = err.what();
  }
  expect_contains(e, {dir.string() + ": 18 unexpected tensors that config.json does not use",
                      "2 tensors 'model.layers.{1-2}.input_layernorm.weight'", "(and 5 more)",
                      "num_hidden_layers 1", "--ignore-unexpected-tensors", "EngineOptions::allow_unexpected_tensors"});
  // Allowed, it runs the config's one layer: the same logits as a checkpoint of just that layer.
  const Engine allowed = Engine::load(dir, {.backend = BackendKind::cpu, .allow_unexpected_tensors = true});
  testing::Json one = testing::tiny_config("llama");
  one["num_hidden_layers"] = 1;
  testing::Json three = one;
  three["num_hidden_layers"] = 3;
  std::vector<TensorSpec> first_layer;
  for (const TensorSpec& t : testing::expected_tensors(three))
    if (t.name.find("layers.1.") == std::string::npos && t.name.find("layers.2.") == std::string::npos) first_layer.push_back(t);
  const auto exact = testing::fresh_dir("one_layer");
  testing::write_model_dir(exact, one, {}, first_layer);
  const Engine reference = Engine::load(exact, {.backend = BackendKind::cpu});
  const std::vector<int32_t> ids = {1, 5, 9};
  Session a(allowed), b(reference);
  EXPECT_EQ(a.forward(ids, true), b.forward(ids, true));
  // A synthetic model has no checkpoint, so nothing is unexpected.
  EXPECT_NO_THROW(Engine::from_model(Model::synthetic(load_model_config(exact / "config.json")), {.backend = BackendKind::cpu}));
}

TEST(ModelDir, OnlyTheConfiguredMtpLayersAreIgnored) {
  testing::Json cfg = testing::tiny_config("deepseek_v3");  // 2 layers
  testing::Json four = cfg;
  four["num_hidden_layers"] = 4;
  const auto tensors = testing::expected_tensors(four);  // layers 2 and 3 beyond the config
  const auto dir = testing::fresh_dir("mtp_layers");
  testing::write_model_dir(dir, cfg, {}, tensors);
  // One MTP layer (the default): layer 2 is ignored, layer 3 is unexpected.
  const Model one = Model::load(dir);
  ASSERT_FALSE(one.unexpected_tensors().empty());
  for (const std::string& u : one.unexpected_tensors()) EXPECT_NE(u.find("model.layers.3."), std::string::npos) << u;
  EXPECT_THROW(Engine::load(dir, {.backend = BackendKind::cpu}), Error);
  // Two: both are the model's MTP layers.
  cfg["num_nextn_predict_layers"] = 2;
  testing::write_file(dir / "config.json", cfg.dump());
  EXPECT_EQ(Model::load(dir).unexpected_tensor_count(), 0u);
  EXPECT_NO_THROW(Engine::load(dir, {.backend = BackendKind::cpu}));
  // None: layers 2 and 3 are both unexpected.
  cfg["num_nextn_predict_layers"] = 0;
  testing::write_file(dir / "config.json", cfg.dump());
  EXPECT_EQ(Model::load(dir).unexpected_tensor_count(), one.unexpected_tensor_count() * 2);
}

TEST(ModelDir, IndexProblemsAreReportedByName) {
  const testing::Json cfg = testing::tiny_config("olmoe");
  const auto dir = testing::fresh_dir("index_missing_shard");
  testing::write_model_dir(dir, cfg, {.shards = 3});
  std::filesystem::remove(dir / "model-00002-of-00003.safetensors");
  expect_contains(load_error(dir), {"model.safetensors.index.json", "1 of 3 shards missing",
                                    "shard 'model-00002-of-00003.safetensors' is listed but missing"});

  // Index listing a tensor the shard lacks, and a shard holding one the index does not list.
  const auto dir2 = testing::fresh_dir("index_mismatch");
  testing::write_model_dir(dir2, cfg, {.shards = 2});
  auto index = testing::Json::parse(testing::read_file(dir2 / "model.safetensors.index.json"));
  index["weight_map"]["model.layers.9.mlp.gate.weight"] = "model-00001-of-00002.safetensors";
  index["weight_map"].erase("model.norm.weight");
  testing::write_file(dir2 / "model.safetensors.index.json", index.dump());
  expect_contains(load_error(dir2), {"2 problems between the index and the shards",
                                     "tensor 'model.layers.9.mlp.gate.weight' is listed in shard 'model-00001-of-00002.safetensors' but not found there",
                                     "tensor 'model.norm.weight' in shard 'model-00002-of-00002.safetensors' is not listed in the index"});

  // A shard name that leaves the model directory.
  index["weight_map"]["model.norm.weight"] = "../model-00002-of-00002.safetensors";
  testing::write_file(dir2 / "model.safetensors.index.json", index.dump());
  expect_contains(load_error(dir2), {"weight_map", "not a plain file name"});

  testing::write_file(dir2 / "model.safetensors.index.json", R"({"weight_map": )");
  expect_contains(load_error(dir2), {"model.safetensors.index.json", "invalid JSON at line 1"});
  testing::write_file(dir2 / "model.safetensors.index.json", R"({"metadata": {}})");
  expect_contains(load_error(dir2), {"model.safetensors.index.json", "missing required field 'weight_map'"});
}

TEST(ModelDir, BrokenDirectoriesAndFiles) {
  expect_contains(load_error("/nonexistent/moerun/model"), {"/nonexistent/moerun/model", "no such file or directory"});

  const auto empty = testing::fresh_dir("empty_dir");
  expect_contains(load_error(empty), {empty.string(), "no *.safetensors weights found"});

  const auto no_config = testing::fresh_dir("no_config");
  testing::write_model_dir(no_config, testing::tiny_config("llama"));
  std::filesystem::remove(no_config / "config.json");
  expect_contains(load_error(no_config), {"config.json not found"});

  const auto bad_config = testing::fresh_dir("bad_config");
  testing::write_model_dir(bad_config, testing::tiny_config("llama"));
  testing::write_file(bad_config / "config.json", R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})");
  expect_contains(load_error(bad_config), {"config.json", "unsupported architecture 'GPT2LMHeadModel'", "MixtralForCausalLM"});

  // A truncated shard: the error names the shard file.
  const auto truncated = testing::fresh_dir("truncated_shard");
  testing::write_model_dir(truncated, testing::tiny_config("mixtral"), {.shards = 2});
  const auto shard = truncated / "model-00002-of-00002.safetensors";
  const std::string bytes = testing::read_file(shard);
  testing::write_file(shard, bytes.substr(0, bytes.size() - 100));
  expect_contains(load_error(truncated), {"model-00002-of-00002.safetensors", "past the data section"});

  // The same tensor in two shards (no index, so every *.safetensors is read): reported with both names.
  const auto dup = testing::fresh_dir("duplicate_tensor");
  testing::write_model_dir(dup, testing::tiny_config("llama"), {.shards = 2});
  std::filesystem::remove(dup / "model.safetensors.index.json");
  testing::write_file(dup / "extra.safetensors", testing::safetensors_bytes({{"model.norm.weight", DType::bf16, {64}, {}}}));
  expect_contains(load_error(dup), {"tensor 'model.norm.weight' is in both"});
}

TEST(ModelDir, UnindexedShardsAreAllRead) {
  const testing::Json cfg = testing::tiny_config("llama");
  const auto dir = testing::fresh_dir("unindexed");
  testing::write_model_dir(dir, cfg, {.shards = 2});
  std::filesystem::remove(dir / "model.safetensors.index.json");
  const Model m = Model::load(dir);
  EXPECT_EQ(m.files().shards.size(), 2u);
  EXPECT_TRUE(m.files().index.empty());
}

TEST(ModelSummary, JsonHasTheFactsInfoPrints) {
  const auto dir = testing::fresh_dir("summary");
  testing::write_model_dir(dir, testing::tiny_config("deepseek_v3"), {.shards = 2});
  const ModelSummary s = summarize(Model::load(dir));
  const auto j = testing::Json::parse(summary_json(s, /*with_tensors=*/true));
  EXPECT_EQ(j["architecture"], "DeepseekV3ForCausalLM");
  EXPECT_EQ(j["format"], "model_dir");
  EXPECT_EQ(j["num_hidden_layers"], 2);
  EXPECT_EQ(j["attention"]["kind"], "mla");
  EXPECT_EQ(j["attention"]["q_lora_rank"], 32);
  EXPECT_EQ(j["attention"]["latent_cache_per_token"], 40);
  EXPECT_EQ(j["rope"]["scaling"]["type"], "yarn");
  EXPECT_EQ(j["moe"]["routed_experts"], 16);
  EXPECT_EQ(j["moe"]["shared_experts"], 1);
  EXPECT_EQ(j["moe"]["active_experts"], 4);
  EXPECT_EQ(j["moe"]["router"]["topk_method"], "noaux_tc");
  EXPECT_EQ(j["parameters"]["total"], s.total_params);
  EXPECT_LT(j["parameters"]["active_per_token"].get<int64_t>(), s.total_params);
  EXPECT_EQ(j["shards"], 2);
  EXPECT_EQ(j["files"]["chat_template"], true);
  EXPECT_EQ(j["files"]["tokenizer.model"], false);
  EXPECT_GT(j["bytes_by_dtype"]["BF16"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["bytes_by_dtype"]["F32"], 16 * 4);  // the correction bias
  EXPECT_EQ(j["tensors"].size(), s.tensors.size());
  EXPECT_EQ(j["tensors"][0]["shard"].get<std::string>().rfind("model-0000", 0), 0u);

  const std::string text = summary_text(s, false);
  for (const char* part : {"DeepseekV3ForCausalLM", "MLA", "16 routed, 1 shared, 4 active", "sigmoid noaux_tc",
                           "2 of 4 groups", "yarn", "chat_template yes"})
    EXPECT_NE(text.find(part), std::string::npos) << part << " in\n" << text;
}

TEST(ModelSummary, LoneSafetensorsFile) {
  const auto dir = testing::fresh_dir("lone");
  testing::write_file(dir / "w.safetensors",
                      testing::safetensors_bytes({{"a", DType::bf16, {3, 5}, {}}, {"b", DType::f32, {7}, {}}},
                                                 {{"format", "pt"}}));
  const ModelSummary s = summarize_path(dir / "w.safetensors");
  EXPECT_FALSE(s.config.has_value());
  EXPECT_EQ(s.total_params, 22);
  EXPECT_EQ(s.total_bytes, 3u * 5 * 2 + 7 * 4);
  EXPECT_EQ(s.metadata.at("format"), "pt");
  const auto j = testing::Json::parse(summary_json(s, true));
  EXPECT_EQ(j["format"], "safetensors");
  EXPECT_EQ(j["tensors"][1]["name"], "b");
}

}  // namespace
}  // namespace moerun

namespace moerun {
namespace {

TEST(ModelDir, PrefetchReportsProgressUpToTheTotal) {
  const auto dir = testing::fresh_dir("prefetch");
  testing::write_model_dir(dir, testing::tiny_config("qwen3_moe"), {.shards = 2});
  const Model m = Model::load(dir);
  uint64_t total_bytes = 0;
  for (const auto& shard : m.files().shards) total_bytes += std::filesystem::file_size(shard);
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  m.prefetch([&](uint64_t done, uint64_t total) { calls.emplace_back(done, total); });
  ASSERT_GE(calls.size(), 2u);
  for (size_t i = 1; i < calls.size(); ++i) EXPECT_LE(calls[i - 1].first, calls[i].first);
  EXPECT_EQ(calls.back().first, total_bytes);
  EXPECT_EQ(calls.back().second, total_bytes);
}

}  // namespace
}  // namespace moerun
