#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "io/mapped_file.h"
#include "io/weight_store.h"
#include "kernels/cpu/thread_pool.h"
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

// E4M3 bytes of values uniform in [-448, 448) (the format's range), indexed by 16 random bits:
// one lookup per synthetic FP8 weight. Rounds to the nearest representable value (ties away; any
// rule will do for random weights); 0x7f / 0xff (NaN) never occur.
const std::array<uint8_t, 65536>& fp8_uniform_table() {
  static const std::array<uint8_t, 65536> table = [] {
    const float* values = cpu::f8_e4m3_values();  // bytes 0..126: every non-negative finite value, ascending
    constexpr size_t kFinite = 127;
    std::array<uint8_t, 65536> t{};
    for (int i = 0; i < 65536; ++i) {
      const float v = (static_cast<float>(i) + 0.5f) / 65536.0f * 896.0f - 448.0f, a = std::fabs(v);
      size_t k = static_cast<size_t>(std::lower_bound(values, values + kFinite, a) - values);
      if (k == kFinite || (k > 0 && a - values[k - 1] < values[k] - a)) --k;
      t[static_cast<size_t>(i)] = static_cast<uint8_t>(k | (v < 0 ? 0x80 : 0));
    }
    return t;
  }();
  return table;
}

// Random weights at HF-like scales: matrices uniform with variance 1/in (bf16, or FP8 whose block
// scales bring it to that range), norm weights near 1 and other vectors small (f32). xorshift64*
// streams of 2^20 elements each, seeded by the tensor's name, the seed and the chunk, filled on
// `pool`'s threads: fast enough for the tens of GB of a DeepSeek-V3 layer's experts, and the
// same bits whatever the thread count.
Tensor random_tensor(const ModelConfig& config, const std::string& name, const Shape& shape, bool linear, uint64_t seed,
                     cpu::ThreadPool& pool) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const DType dtype = model::synthetic_dtype(config, name, shape, linear);
  const bool scale = name.ends_with("weight_scale_inv");
  auto buf = std::shared_ptr<std::byte[]>(new std::byte[static_cast<size_t>(n) * dtype_size(dtype) + 1]);
  const float a = shape.empty() ? 0.0f : std::sqrt(3.0f / static_cast<float>(shape.back()));
  const bool norm = name.find("norm") != std::string::npos;
  // Block scales: the matrix's uniform range / 448, so fp8 * scale spans [-a_in, a_in] with a_in
  // from the projection's in_features (block_in * scale columns), jittered by up to 10%.
  const float block_a = shape.size() == 2 ? std::sqrt(3.0f / static_cast<float>(shape[1] * config.fp8.block_in)) : 0.0f;
  constexpr int64_t kChunk = int64_t{1} << 20;
  auto fill = [&](int64_t chunk) {
    uint64_t x = (name_hash(name) ^ (seed * 0x9e3779b97f4a7c15ull) ^ (static_cast<uint64_t>(chunk) * 0xbf58476d1ce4e5b9ull)) | 1;
    auto bits = [&x] {
      x ^= x >> 12;
      x ^= x << 25;
      x ^= x >> 27;
      return x * 0x2545f4914f6cdd1dull;
    };
    auto next = [&] { return static_cast<float>((bits() >> 40) * 0x1.0p-24) * 2.0f - 1.0f; };  // [-1, 1)
    const int64_t i0 = chunk * kChunk, i1 = std::min(n, i0 + kChunk);
    if (dtype == DType::f8_e4m3) {
      const auto& table = fp8_uniform_table();
      auto* out = reinterpret_cast<uint8_t*>(buf.get());
      for (int64_t i = i0; i < i1; i += 4) {  // four weights per 64 random bits
        const uint64_t r = bits();
        for (int64_t j = 0; j < 4 && i + j < i1; ++j) out[i + j] = table[(r >> (16 * j)) & 0xffff];
      }
    } else if (dtype == DType::bf16) {
      auto* out = reinterpret_cast<uint16_t*>(buf.get());
      for (int64_t i = i0; i < i1; ++i) out[i] = cpu::f32_to_bf16(a * next());
    } else {
      auto* out = reinterpret_cast<float*>(buf.get());
      for (int64_t i = i0; i < i1; ++i)
        out[i] = scale ? block_a / 448.0f * (1.0f + 0.1f * next())
                       : norm ? 1.0f + 0.1f * next() : (shape.size() >= 2 ? 0.3f : 0.02f) * next();
    }
  };
  pool.parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) fill(c);
  });
  return Tensor(dtype, shape, buf.get(), std::shared_ptr<const void>(buf, buf.get()));
}

}  // namespace

DType model::synthetic_dtype(const ModelConfig& config, const std::string& name, const Shape& shape, bool linear) {
  if (name.ends_with("weight_scale_inv")) return DType::f32;
  if (linear && config.fp8.enabled) return DType::f8_e4m3;
  return shape.size() >= 2 && name.find("gate.weight") == std::string::npos ? DType::bf16 : DType::f32;
}

Model Model::synthetic(const ModelConfig& config, uint64_t seed) {
  auto impl = std::make_shared<Impl>();
  impl->files.dir = std::string("synthetic ") + family_name(config.family);
  impl->config = config;
  cpu::ThreadPool pool(0);  // every hardware thread
  impl->binding = model::bind_weights(config, impl->store, impl->files.dir.string(),
                                      [&](const std::string& name, const Shape& shape, bool linear) {
                                        return random_tensor(config, name, shape, linear, seed, pool);
                                      });
  return Model(std::move(impl));
}

void Model::prefetch(const std::function<void(uint64_t, uint64_t)>& progress) const {
  uint64_t total = 0, done = 0;
  for (const auto& shard : impl_->store.shards()) total += shard->bytes().size();
  const uint64_t step = std::max<uint64_t>(total / 100, 1);
  uint64_t next_report = 0;
  // Touching pages one by one leaves a cold read to the fault path's read-around: one request in
  // flight at a time. Asking for the window ahead (madvise WILLNEED) keeps the disk busy with large
  // requests while this thread faults in the window it reached, which is then in the page cache.
  constexpr size_t kWindow = size_t{32} << 20;
  volatile unsigned char sink = 0;
  for (const auto& shard : impl_->store.shards()) {
    const std::span<const std::byte> b = shard->bytes();
    io::advise(b.first(std::min(b.size(), kWindow)), io::Advice::willneed);
    for (size_t w = 0; w < b.size(); w += kWindow) {
      if (w + kWindow < b.size()) io::advise(b.subspan(w + kWindow, std::min(kWindow, b.size() - w - kWindow)), io::Advice::willneed);
      for (size_t i = w; i < std::min(b.size(), w + kWindow); i += 4096) {  // one byte per page faults the page in
        sink = sink ^ static_cast<unsigned char>(b[i]);
        done = std::min<uint64_t>(done + 4096, total);
        if (progress && done >= next_report) {
          progress(done, total);
          next_report = done + step;
        }
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
