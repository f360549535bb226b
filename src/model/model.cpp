#include <algorithm>
#include <cmath>

#include "io/weight_store.h"
#include "kernels/ops.h"
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

namespace {

uint64_t name_hash(const std::string& s) {  // FNV-1a
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

// Random weights at HF-like scales: matrices uniform with variance 1/in (bf16), norm weights near 1
// and other vectors small (f32). xorshift64*: fast enough for GBs of weights.
Tensor random_tensor(const std::string& name, const Shape& shape, uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const DType dtype = model::synthetic_dtype(name, shape);
  const bool matrix = dtype == DType::bf16;
  auto buf = std::shared_ptr<std::byte[]>(new std::byte[static_cast<size_t>(n) * dtype_size(dtype) + 1]);
  uint64_t x = (name_hash(name) ^ (seed * 0x9e3779b97f4a7c15ull)) | 1;
  auto next = [&x] {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return static_cast<float>(((x * 0x2545f4914f6cdd1dull) >> 40) * 0x1.0p-24) * 2.0f - 1.0f;  // [-1, 1)
  };
  if (matrix) {
    const float a = std::sqrt(3.0f / static_cast<float>(shape.back()));
    auto* out = reinterpret_cast<uint16_t*>(buf.get());
    for (int64_t i = 0; i < n; ++i) out[i] = cpu::f32_to_bf16(a * next());
  } else {
    const bool norm = name.find("norm") != std::string::npos;
    auto* out = reinterpret_cast<float*>(buf.get());
    for (int64_t i = 0; i < n; ++i) out[i] = norm ? 1.0f + 0.1f * next() : (shape.size() >= 2 ? 0.3f : 0.02f) * next();
  }
  return Tensor(dtype, shape, buf.get(), std::shared_ptr<const void>(buf, buf.get()));
}

}  // namespace

DType model::synthetic_dtype(const std::string& name, const Shape& shape) {
  return shape.size() >= 2 && name.find("gate.weight") == std::string::npos ? DType::bf16 : DType::f32;
}

Model Model::synthetic(const ModelConfig& config, uint64_t seed) {
  auto impl = std::make_shared<Impl>();
  impl->files.dir = std::string("synthetic ") + family_name(config.family);
  impl->config = config;
  impl->binding = model::bind_weights(config, impl->store, impl->files.dir.string(),
                                      [seed](const std::string& name, const Shape& shape, bool) { return random_tensor(name, shape, seed); });
  return Model(std::move(impl));
}

void Model::prefetch(const std::function<void(uint64_t, uint64_t)>& progress) const {
  uint64_t total = 0, done = 0;
  for (const auto& shard : impl_->store.shards()) total += shard->bytes().size();
  const uint64_t step = std::max<uint64_t>(total / 100, 1);
  uint64_t next_report = 0;
  volatile unsigned char sink = 0;
  for (const auto& shard : impl_->store.shards()) {
    const std::span<const std::byte> b = shard->bytes();
    for (size_t i = 0; i < b.size(); i += 4096) {  // one byte per page faults the page in
      sink = sink ^ static_cast<unsigned char>(b[i]);
      done = std::min<uint64_t>(done + 4096, total);
      if (progress && done >= next_report) {
        progress(done, total);
        next_report = done + step;
      }
    }
  }
  if (progress) progress(total, total);
}

const ModelConfig& Model::config() const noexcept { return impl_->config; }
const ModelWeights& Model::weights() const noexcept { return impl_->binding.weights; }
const ModelFiles& Model::files() const noexcept { return impl_->files; }
const std::vector<TensorRecord>& Model::tensors() const noexcept { return impl_->tensors; }
const std::vector<std::string>& Model::warnings() const noexcept { return impl_->binding.warnings; }
const std::vector<std::string>& Model::unexpected_tensors() const noexcept { return impl_->binding.unexpected; }
size_t Model::unexpected_tensor_count() const noexcept { return impl_->binding.unexpected_count; }
int64_t Model::total_params() const noexcept { return impl_->binding.total_params; }
int64_t Model::active_params() const noexcept { return impl_->binding.active_params; }

}  // namespace moerun
