#pragma once
// Loading a Hugging Face model directory: config.json -> ModelConfig, every safetensors shard mapped
// (zero-copy), and every tensor bound to its role and checked against the shape the config implies.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moerun/config.h"
#include "moerun/weights.h"

namespace moerun {

// The files of a model directory; a path is empty when the file is absent.
struct ModelFiles {
  std::filesystem::path dir;
  std::filesystem::path config;             // config.json
  std::filesystem::path index;              // model.safetensors.index.json
  std::vector<std::filesystem::path> shards;  // *.safetensors, in index or name order
  std::filesystem::path tokenizer_json;     // tokenizer.json
  std::filesystem::path tokenizer_model;    // tokenizer.model (SentencePiece)
  std::filesystem::path tokenizer_config;   // tokenizer_config.json
  std::filesystem::path generation_config;  // generation_config.json
  std::filesystem::path chat_template_file; // chat_template.jinja or chat_template.json
  bool has_chat_template = false;           // in tokenizer_config.json or a chat_template file
};

// One tensor as stored on disk.
struct TensorRecord {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t nbytes = 0;
  int shard = 0;  // index into ModelFiles::shards
};

// Finds config, shards and tokenizer files in `dir`; reads and checks the shard index.
// Throws Error when the directory or a required file is missing or the index is broken.
ModelFiles discover_model_files(const std::filesystem::path& dir);

class Model {
 public:
  // Maps every shard, validates every header, parses config.json and binds all tensors.
  // Throws one Error listing every missing, mis-shaped or wrongly typed tensor.
  static Model load(const std::filesystem::path& dir);
  // A model with `config`'s shapes and seeded random weights made in memory (bf16 matrices, f32
  // vectors), for benchmarking an architecture without its checkpoint.
  // `lazy`: the memory is reserved but filled only as materialize() asks (a rank of a distributed
  // run fills only its share, so its resident memory is its share's).
  // `mtp`: with the config's multi-token-prediction layers (num_nextn_predict_layers), for drafting.
  static Model synthetic(const ModelConfig& config, uint64_t seed = 0, bool lazy = false, bool mtp = false);

  // A lazily made synthetic model: fills the elements of `view` (a tensor of its weights or rows of
  // one) with their seeded random values, the same whatever else was filled. No-op otherwise.
  void materialize(const Tensor& view) const;
  // Returns the physical pages wholly inside `t` to the system (MADV_DONTNEED): mapped file pages
  // are read again from the page cache if touched, a synthetic tensor is then refilled by
  // materialize(). For weights a rank copied its share from and no longer reads.
  void release(const Tensor& t) const;

  // Reads every mapped page once, so the first forward pass does not wait on the disk; `progress`
  // is called with bytes done and the total (about every 1%).
  void prefetch(const std::function<void(uint64_t done, uint64_t total)>& progress) const;

  const ModelConfig& config() const noexcept;
  const ModelWeights& weights() const noexcept;
  const ModelFiles& files() const noexcept;
  // DeepSeek-V3's multi-token-prediction layers (views of the checkpoint), for EngineOptions::mtp.
  // Throws Error saying why when there are none to load (the config declares none, or a tensor is
  // missing or mis-shaped: the message lists them).
  const std::vector<MtpWeights>& mtp_weights() const;
  const std::vector<TensorRecord>& tensors() const noexcept;  // every tensor of every shard
  const std::vector<std::string>& warnings() const noexcept;  // e.g. unused tensors, ignored
  // Tensors no role of the config uses and that transformers would not ignore either (its MTP-layer
  // and rotary-buffer rules, docs/MODELS.md §1.1), folded by name pattern ("4 tensors
  // 'model.layers.{2-5}.mlp.gate.weight'"), and how many. A config with fewer layers than the
  // checkpoint, or another model's weights, shows here; Engine refuses such a model unless
  // EngineOptions::allow_unexpected_tensors.
  const std::vector<std::string>& unexpected_tensors() const noexcept;
  size_t unexpected_tensor_count() const noexcept;
  int64_t total_params() const noexcept;   // every bound weight (FP8 scales excluded, a tied head once)
  int64_t active_params() const noexcept;  // per token: all but the routed experts not selected

 private:
  struct Impl;
  explicit Model(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

// What `moerun info` shows: facts about a model directory or a single .safetensors file.
struct ModelSummary {
  std::string path;
  std::optional<ModelConfig> config;  // absent for a lone .safetensors file
  int64_t total_params = 0;           // every bound weight (scales excluded)
  int64_t active_params = 0;          // per token: everything but the unrouted experts
  std::map<std::string, uint64_t> bytes_by_dtype;  // tensor bytes per safetensors dtype
  uint64_t total_bytes = 0;
  size_t num_shards = 0;
  std::vector<TensorRecord> tensors;
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> metadata;  // __metadata__ of a lone file
  std::map<std::string, bool> files;            // "tokenizer.json" -> present, ...
  std::vector<std::string> warnings;
};

ModelSummary summarize(const Model& model);
ModelSummary summarize_safetensors(const std::filesystem::path& file);  // validates the header
// Either of the above, by what `path` is.
ModelSummary summarize_path(const std::filesystem::path& path);

std::string summary_json(const ModelSummary& s, bool with_tensors);  // one JSON object
std::string summary_text(const ModelSummary& s, bool with_tensors);  // for people

}  // namespace moerun
