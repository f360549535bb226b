#include "io/weight_store.h"
#include "model/binding.h"
#include "moerun/error.h"
#include "moerun/model.h"

namespace moerun {

struct Model::Impl {
  ModelFiles files;
  ModelConfig config;
  io::WeightStore store;
  model::Binding binding;
  std::vector<TensorRecord> tensors;
};

Model::Model(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Model Model::load(const std::filesystem::path& dir) {
  auto impl = std::make_shared<Impl>();
  impl->files = discover_model_files(dir);
  if (impl->files.config.empty()) throw Error(dir.string(), "config.json not found (not a Hugging Face model directory?)");
  impl->config = load_model_config(impl->files.config);
  impl->store = io::WeightStore::open(impl->files);
  impl->binding = model::bind_weights(impl->config, impl->store, dir.string());
  for (const auto& [name, t] : impl->store.tensors())
    impl->tensors.push_back({name, t.entry->dtype, t.entry->shape, t.entry->end - t.entry->begin, t.shard});
  return Model(std::move(impl));
}

const ModelConfig& Model::config() const noexcept { return impl_->config; }
const ModelWeights& Model::weights() const noexcept { return impl_->binding.weights; }
const ModelFiles& Model::files() const noexcept { return impl_->files; }
const std::vector<TensorRecord>& Model::tensors() const noexcept { return impl_->tensors; }
const std::vector<std::string>& Model::warnings() const noexcept { return impl_->binding.warnings; }
int64_t Model::total_params() const noexcept { return impl_->binding.total_params; }
int64_t Model::active_params() const noexcept { return impl_->binding.active_params; }

}  // namespace moerun
