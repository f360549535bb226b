// The CUDA backend: weights uploaded once per engine into one device allocation, and per session a
// cuda::Context (stream, cuBLAS, workspace, the decode graph) on which every op is enqueued.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <unordered_map>

#include "kernels/cuda/context.h"
#include "moerun/error.h"
#include "runtime/backend.h"
#include "util/checked.h"
#include "util/strings.h"

namespace moerun::runtime {

using detail::cat;

// The engine's device copy of its prepared weights: one allocation, each tensor at a 256-byte
// aligned offset, looked up by the host tensor's data pointer.
struct BackendState {
  int device = 0;  // where the weights live (a distributed run's rank: local_rank % devices)
  cuda::DeviceBuffer memory;
  std::unordered_map<const void*, const void*> device_of;
};

namespace {

constexpr size_t kTensorAlign = 256;
constexpr double kMiB = 1024.0 * 1024.0;

// Host-to-device copies of the weights through two pinned staging buffers on a stream of their own:
// the host fills one buffer while the other is on its way (a pageable cudaMemcpy would stage through
// the driver's small buffer and, for host memory it cannot pin, may return before the DMA ends). Where
// pinned memory cannot be had, plain cudaMemcpy and a device-wide synchronize. finish() waits for all.
class Uploader {
 public:
  static constexpr size_t kChunk = size_t{64} << 20;
  Uploader() {
    MOERUN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    for (int i = 0; i < 2; ++i) {
      if (cudaHostAlloc(&staging_[i], kChunk, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        release_staging();
        return;
      }
      MOERUN_CUDA_CHECK(cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming));
    }
  }
  ~Uploader() {
    if (stream_) cudaStreamSynchronize(stream_);
    release_staging();
    if (stream_) cudaStreamDestroy(stream_);
  }
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  void copy(std::byte* dst, const void* src, size_t bytes) {
    const auto* from = static_cast<const std::byte*>(src);
    if (!staging_[0] || !staging_[1]) {
      MOERUN_CUDA_CHECK(cudaMemcpy(dst, from, bytes, cudaMemcpyHostToDevice));
      return;
    }
    for (size_t off = 0; off < bytes; off += kChunk) {
      const size_t n = std::min(kChunk, bytes - off);
      MOERUN_CUDA_CHECK(cudaEventSynchronize(done_[next_]));  // its previous copy has left the buffer
      std::memcpy(staging_[next_], from + off, n);
      MOERUN_CUDA_CHECK(cudaMemcpyAsync(dst + off, staging_[next_], n, cudaMemcpyHostToDevice, stream_));
      MOERUN_CUDA_CHECK(cudaEventRecord(done_[next_], stream_));
      next_ ^= 1;
    }
  }
  void finish() {
    MOERUN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    MOERUN_CUDA_CHECK(cudaDeviceSynchronize());  // (the pageable fallback's copies too)
  }

 private:
  void release_staging() {
    for (int i = 0; i < 2; ++i) {
      if (done_[i]) cudaEventDestroy(done_[i]);
      if (staging_[i]) cudaFreeHost(staging_[i]);
      done_[i] = nullptr;
      staging_[i] = nullptr;
    }
  }
  cudaStream_t stream_ = nullptr;
  void* staging_[2] = {nullptr, nullptr};
  cudaEvent_t done_[2] = {nullptr, nullptr};
  int next_ = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(std::shared_ptr<const BackendState> state) : state_(std::move(state)), device_(use_device(state_->device)) {}
  // The current device is per thread: a session stepped from another thread (a server's scheduler)
  // must find its engine's device current.
  void bind_thread() override { MOERUN_CUDA_CHECK(cudaSetDevice(device_)); }

  BackendKind kind() const noexcept override { return BackendKind::cuda; }

  void reserve(Buffer& b, size_t bytes) override {
    if (bytes <= b.bytes && b.data) return;
    if (ctx_.capturing())
      throw Error("CUDA backend", cat("a buffer grew to ", bytes, " bytes while the decode step was being recorded"));
    // Sessions reserve their planned sizes once (runtime/workspace.h), so no growth slack: the size
    // rounded to 256 bytes, with b.bytes the usable (planned) size.
    // The old buffer goes first, once the work that may still read it is done, so growing needs room
    // for the new size only (not old + new).
    if (b.holder) {
      ctx_.synchronize();
      b.holder.reset();
      b.data = nullptr;
      b.bytes = 0;
      ++generation_;
    }
    auto mem = std::make_shared<cuda::DeviceBuffer>(detail::checked_add(bytes, 255, "CUDA session memory") / 256 * 256,
                                                    "session memory");
    b.data = mem->data();
    b.bytes = bytes;
    b.holder = std::move(mem);
    ++generation_;
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    MOERUN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx_.stream()));
  }
  void download(void* dst, const void* src, size_t bytes) override {
    MOERUN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream()));
    ctx_.synchronize();
  }
  const void* weight(const Tensor& t) const override {
    if (!t) return nullptr;
    const auto it = state_->device_of.find(t.data());
    if (it == state_->device_of.end()) throw Error("CUDA backend", "a weight tensor was not uploaded to the device");
    return it->second;
  }

  void matmul(const MatmulParams& p) override { cuda::matmul(p, ctx_); }
  void matmul_group(std::span<const MatmulParams> ps) override { cuda::matmul_group(ps.data(), ps.size(), ctx_); }
  void rms_norm(const RmsNormParams& p) override { cuda::rms_norm(p, ctx_); }
  void rope(const RopeParams& p) override { cuda::rope(p, ctx_); }
  void attention(const AttentionParams& p) override { cuda::attention(p, ctx_); }
  void gated_act(const GatedActParams& p) override { cuda::gated_act(p, ctx_); }
  void route(const RouteParams& p) override { cuda::route(p, ctx_); }
  void embed(const EmbedParams& p) override { cuda::embed(p, ctx_); }
  void add(const AddParams& p) override { cuda::add(p, ctx_); }
  void clamp(const ClampParams& p) override { cuda::clamp(p, ctx_); }
  void store_rows(const StoreRowsParams& p) override { cuda::store_rows(p, ctx_); }
  void copy(const CopyParams& p) override { cuda::copy(p, ctx_); }
  void head_matmul(const HeadMatmulParams& p) override { cuda::head_matmul(p, ctx_); }
  void moe(const MoeParams& p) override { cuda::moe(p, ctx_); }
  void* native_stream() const noexcept override { return static_cast<void*>(ctx_.stream()); }

  bool can_record() const noexcept override { return true; }
  void begin_record() override { ctx_.begin_capture(); }
  void end_record() override { ctx_.end_capture(); }
  bool has_record() const noexcept override { return ctx_.has_graph(); }
  void replay() override { ctx_.replay(); }
  void drop_record() override { ctx_.drop_graph(); }
  uint64_t generation() const noexcept override { return generation_ + ctx_.workspace_generation(); }
  RecordedLaunches recorded_launches() const override {
    const cuda::Context::GraphCounts g = ctx_.graph_counts();
    return {g.kernels, g.memory_ops};
  }

 private:
  std::shared_ptr<const BackendState> state_;
  static int use_device(int device) {
    MOERUN_CUDA_CHECK(cudaSetDevice(device));
    return device;
  }
  int device_;  // made current before ctx_ (its stream and cuBLAS handle) is created
  cuda::Context ctx_;
  uint64_t generation_ = 0;
};

}  // namespace

uint64_t cuda_free_bytes() { return cuda::memory_info().free; }

int cuda_select_device(int local_rank) {
  int count = 0;
  MOERUN_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count < 1) throw Error("cuda", "no CUDA device for this rank");
  const int device = local_rank % count;
  MOERUN_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::shared_ptr<const BackendState> upload_weights(const ModelWeights& weights) {
  auto state = std::make_shared<BackendState>();
  MOERUN_CUDA_CHECK(cudaGetDevice(&state->device));
  std::unordered_map<const void*, size_t> offset_of;
  std::vector<const Tensor*> order;
  size_t total = 0;
  for_each_tensor(weights, [&](const WeightSite&, LinearPart, const Tensor& t) {
    if (offset_of.count(t.data())) return;  // tied weights are uploaded once
    offset_of.emplace(t.data(), total);
    order.push_back(&t);
    total += (t.nbytes() + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
  });
  const cuda::MemoryInfo mem = cuda::memory_info();
  if (total > mem.free)
    throw Error("CUDA backend", cat("the model's weights need ", static_cast<double>(total) / kMiB, " MiB of device memory but only ",
                                    static_cast<double>(mem.free) / kMiB, " MiB of ", static_cast<double>(mem.total) / kMiB,
                                    " MiB are free; use --backend cpu or a smaller model"));
  state->memory = cuda::DeviceBuffer(total, "the model's weights");
  auto* base = state->memory.as<std::byte>();
  Uploader up;
  for (const Tensor* t : order) {
    std::byte* dst = base + offset_of.at(t->data());
    up.copy(dst, t->data(), t->nbytes());
    state->device_of.emplace(t->data(), dst);
  }
  up.finish();  // every copy is on the device before a session's stream reads the weights
  return state;
}

std::unique_ptr<Backend> make_cuda_backend(const std::shared_ptr<const BackendState>& state) {
  if (!state) throw Error("CUDA backend", "the engine's weights were not uploaded");
  return std::make_unique<CudaBackend>(state);
}

}  // namespace moerun::runtime
