#pragma once
// Test helpers that write safetensors files and whole Hugging Face-style model directories.
// The tensor-name lists here are written from docs/MODELS.md independently of src/model/binding.cpp,
// so the binder is checked against a second reading of the spec, not against itself.

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moerun/dtype.h"
#include "moerun/tensor.h"

namespace moerun::testing {

namespace fs = std::filesystem;
using Json = nlohmann::json;

struct TensorSpec {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::string data;  // raw bytes; empty: seeded random values of the dtype
};

// A valid safetensors image: header padded with spaces to a multiple of 8, tensors in order.
std::string safetensors_bytes(const std::vector<TensorSpec>& tensors, const std::map<std::string, std::string>& metadata = {});
// An image from raw parts: 8-byte little-endian length (override to lie), header text, data.
std::string raw_safetensors(const std::string& header, const std::string& data, std::optional<uint64_t> length = std::nullopt);

void write_file(const fs::path& path, const std::string& bytes);
std::string read_file(const fs::path& path);
// A fresh empty directory under the test temp dir.
fs::path fresh_dir(const std::string& name);

// Tiny, real-shaped configs (docs/MODELS.md §9.3) for "llama", "llama_tied", "mixtral", "qwen2_moe",
// "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v2", "deepseek_v3", "deepseek_v3_fp8".
Json tiny_config(const std::string& name);
std::vector<std::string> tiny_config_names();

struct ModelDirOptions {
  int shards = 1;               // > 1: model-0000i-of-0000n.safetensors + index
  bool fused_experts = false;   // HF v5 gate_up_proj / down_proj per layer
  DType dtype = DType::bf16;    // of weights and norms
  bool tokenizer = true;        // tokenizer.json, tokenizer_config.json (with chat template), generation_config.json
};

// Every tensor a checkpoint of `config` holds, with shapes (FP8 scales included when
// quantization_config is set).
std::vector<TensorSpec> expected_tensors(const Json& config, const ModelDirOptions& opt = {});
// Writes config.json, the shard(s) and the tokenizer files; `tensors` defaults to expected_tensors.
void write_model_dir(const fs::path& dir, const Json& config, const ModelDirOptions& opt = {},
                     std::optional<std::vector<TensorSpec>> tensors = std::nullopt);

}  // namespace moerun::testing
