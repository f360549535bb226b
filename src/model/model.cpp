#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
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
  // DeepSeek-V3's multi-token-prediction layers, bound when the checkpoint has them whole (views:
  // nothing is read unless an engine loads them), else why not.
  std::vector<MtpWeights> mtp;
  std::string mtp_error;
  std::vector<TensorRecord> tensors;
  // Lazily made synthetic tensors (by address), filled on demand on `pool`'s threads.
  struct Lazy {
    std::string name;
    Shape shape;
    bool linear = false;
    DType dtype = DType::f32;
    const std::byte* data = nullptr;
    size_t bytes = 0;
  };
  std::vector<Lazy> lazy;
  uint64_t seed = 0;
  std::shared_ptr<cpu::ThreadPool> pool;
  std::mutex fill_lock;
};

Model::Model(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Model Model::load(const std::filesystem::path& dir) {
  auto impl = std::make_shared<Impl>();
  impl->files = discover_model_files(dir);
  if (impl->files.config.empty()) throw Error(dir.string(), "config.json not found (not a Hugging Face model directory?)");
  impl->config = load_model_config(impl->files.config);
  impl->store = io::WeightStore::open(impl->files);
  impl->binding = model::bind_weights(impl->config, impl->store, dir.string());
  try {
    impl->mtp = model::bind_mtp(impl->config, impl->store, dir.string());
  } catch (const Error& e) {
    impl->mtp_error = e.what();
  }
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

// Memory for a synthetic tensor: large ones an anonymous mapping each, so pages nobody fills cost
// nothing (small ones from the heap: a mapping each would run into vm.max_map_count on DeepSeek-V3's
// ~100k tensors).
std::shared_ptr<std::byte> reserve_bytes(size_t bytes) {
  if (bytes < (size_t{1} << 20)) return std::shared_ptr<std::byte>(new std::byte[std::max<size_t>(bytes, 1)], std::default_delete<std::byte[]>());
  void* p = mmap(nullptr, std::max<size_t>(bytes, 1), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw Error("synthetic model", std::string("cannot reserve ") + std::to_string(bytes) + " bytes: " + std::strerror(errno));
  const size_t len = std::max<size_t>(bytes, 1);
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(p), [len](std::byte* q) { munmap(q, len); });
}

// Random weights at HF-like scales: matrices uniform with variance 1/in (bf16, or FP8 whose block
// scales bring it to that range), norm weights near 1 and other vectors small (f32). xorshift64*
// streams of 2^20 elements each, seeded by the tensor's name, the seed and the chunk, filled on
// `pool`'s threads: fast enough for the tens of GB of a DeepSeek-V3 layer's experts, and the
// same bits whatever the thread count. Fills elements [e0, e1) of the tensor at `out`.
void fill_random(const ModelConfig& config, const std::string& name, const Shape& shape, DType dtype, uint64_t seed, std::byte* buf,
                 int64_t e0, int64_t e1, cpu::ThreadPool& pool) {
  const bool scale = name.ends_with("weight_scale_inv");
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
    // The chunk's stream runs from its start; only elements in [e0, e1) are stored.
    const int64_t i0 = chunk * kChunk, i1 = std::min(e1, i0 + kChunk);
    if (dtype == DType::f8_e4m3) {
      const auto& table = fp8_uniform_table();
      auto* out = reinterpret_cast<uint8_t*>(buf);
      for (int64_t i = i0; i < i1; i += 4) {  // four weights per 64 random bits
        const uint64_t r = bits();
        for (int64_t j = 0; j < 4 && i + j < i1; ++j)
          if (i + j >= e0) out[i + j] = table[(r >> (16 * j)) & 0xffff];
      }
    } else if (dtype == DType::bf16) {
      auto* out = reinterpret_cast<uint16_t*>(buf);
      for (int64_t i = i0; i < i1; ++i) {
        const float v = a * next();
        if (i >= e0) out[i] = cpu::f32_to_bf16(v);
      }
    } else {
      auto* out = reinterpret_cast<float*>(buf);
      for (int64_t i = i0; i < i1; ++i) {
        const float v = scale ? block_a / 448.0f * (1.0f + 0.1f * next())
                              : norm ? 1.0f + 0.1f * next() : (shape.size() >= 2 ? 0.3f : 0.02f) * next();
        if (i >= e0) out[i] = v;
      }
    }
  };
  const int64_t c0 = e0 / kChunk, c1 = (e1 + kChunk - 1) / kChunk;
  pool.parallel_for(c1 - c0, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) fill(c0 + c);
  });
}

}  // namespace

DType model::synthetic_dtype(const ModelConfig& config, const std::string& name, const Shape& shape, bool linear) {
  if (name.ends_with("weight_scale_inv")) return DType::f32;
  if (linear && config.fp8.enabled) return DType::f8_e4m3;
  return shape.size() >= 2 && name.find("gate.weight") == std::string::npos ? DType::bf16 : DType::f32;
}

Model Model::synthetic(const ModelConfig& config, uint64_t seed, bool lazy, bool mtp) {
  auto impl = std::make_shared<Impl>();
  impl->files.dir = std::string("synthetic ") + family_name(config.family);
  impl->config = config;
  impl->seed = seed;
  impl->pool = std::make_shared<cpu::ThreadPool>(0);  // every hardware thread
  const model::TensorFactory make = [&](const std::string& name, const Shape& shape, bool linear) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const DType dtype = model::synthetic_dtype(config, name, shape, linear);
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    std::shared_ptr<std::byte> buf = reserve_bytes(bytes);
    if (lazy) impl->lazy.push_back({name, shape, linear, dtype, buf.get(), bytes});
    else fill_random(config, name, shape, dtype, seed, buf.get(), 0, n, *impl->pool);
    return Tensor(dtype, shape, buf.get(), std::shared_ptr<const void>(buf, buf.get()));
  };
  impl->binding = model::bind_weights(config, impl->store, impl->files.dir.string(), make);
  if (mtp) impl->mtp = model::bind_mtp(config, impl->store, impl->files.dir.string(), make);
  else impl->mtp_error = impl->files.dir.string() + ": made without its multi-token-prediction layer";
  std::sort(impl->lazy.begin(), impl->lazy.end(), [](const Impl::Lazy& a, const Impl::Lazy& b) { return a.data < b.data; });
  if (!lazy) impl->pool.reset();
  return Model(std::move(impl));
}

void Model::materialize(const Tensor& view) const {
  if (impl_->lazy.empty() || !view.defined()) return;
  const auto* p = static_cast<const std::byte*>(view.data());
  auto it = std::upper_bound(impl_->lazy.begin(), impl_->lazy.end(), p, [](const std::byte* q, const Impl::Lazy& l) { return q < l.data; });
  if (it == impl_->lazy.begin()) return;
  const Impl::Lazy& l = *--it;
  if (p >= l.data + l.bytes) return;
  const size_t esize = dtype_size(l.dtype);
  const auto e0 = static_cast<int64_t>(static_cast<size_t>(p - l.data) / esize);
  const int64_t e1 = std::min<int64_t>(e0 + view.numel(), static_cast<int64_t>(l.bytes / esize));
  auto* impl = const_cast<Impl*>(impl_.get());  // the fill is the tensor's content, decided at make time
  const std::lock_guard<std::mutex> lock(impl->fill_lock);
  fill_random(impl_->config, l.name, l.shape, l.dtype, impl_->seed, const_cast<std::byte*>(l.data), e0, e1, *impl->pool);
}

void Model::release(const Tensor& t) const {
  if (!t.defined()) return;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto b = reinterpret_cast<uintptr_t>(t.data()), e = b + t.nbytes();
  const uintptr_t first = (b + page - 1) / page * page, last = e / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
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
const std::vector<MtpWeights>& Model::mtp_weights() const {
  if (impl_->mtp.empty()) throw Error("mtp", impl_->mtp_error);
  return impl_->mtp;
}
const std::vector<TensorRecord>& Model::tensors() const noexcept { return impl_->tensors; }
const std::vector<std::string>& Model::warnings() const noexcept { return impl_->binding.warnings; }
const std::vector<std::string>& Model::unexpected_tensors() const noexcept { return impl_->binding.unexpected; }
size_t Model::unexpected_tensor_count() const noexcept { return impl_->binding.unexpected_count; }
int64_t Model::total_params() const noexcept { return impl_->binding.total_params; }
int64_t Model::active_params() const noexcept { return impl_->binding.active_params; }

}  // namespace moerun
