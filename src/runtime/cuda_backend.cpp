// The CUDA backend: weights uploaded once per engine into one device allocation, and per session a
// cuda::Context (stream, cuBLAS, workspace, the decode graph) on which every op is enqueued.

#include <cuda_runtime.h>

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
    auto mem = std::make_shared<cuda::DeviceBuffer>(detail::checked_add(bytes, 255, "CUDA session memory") / 256 * 256,
                                                    "session memory");
    b.data = mem->data();
    b.bytes = bytes;
    b.holder = std::move(mem);  // the old buffer is freed here (cudaFree waits for work using it)
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
  for (const Tensor* t : order) {
    std::byte* dst = base + offset_of.at(t->data());
    MOERUN_CUDA_CHECK(cudaMemcpy(dst, t->data(), t->nbytes(), cudaMemcpyHostToDevice));
    state->device_of.emplace(t->data(), dst);
  }
  return state;
}

std::unique_ptr<Backend> make_cuda_backend(const std::shared_ptr<const BackendState>& state) {
  if (!state) throw Error("CUDA backend", "the engine's weights were not uploaded");
  return std::make_unique<CudaBackend>(state);
}

}  // namespace moerun::runtime
