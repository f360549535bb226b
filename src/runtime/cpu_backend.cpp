// The CPU backend: host memory (64-byte aligned for the vector kernels) and the cpu:: ops, each run
// on the engine's thread pool with this session's scratch (one cpu::Context).

#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/context.h"
#include "kernels/cpu/thread_pool.h"
#include "moerun/error.h"
#include "runtime/backend.h"
#include "util/checked.h"
#include "util/strings.h"

namespace moerun::runtime {
namespace {

constexpr size_t kAlign = 64;

class CpuBackend final : public Backend {
 public:
  // pool: the engine's threads, shared by its sessions (Engine serializes their steps).
  explicit CpuBackend(std::shared_ptr<cpu::ThreadPool> pool) : pool_(std::move(pool)) {}

  BackendKind kind() const noexcept override { return BackendKind::cpu; }

  void reserve(Buffer& b, size_t bytes) override {
    if (bytes <= b.bytes && b.data) return;
    // Rounded up to the alignment plus one spare vector; bytes comes checked from get(), but a
    // size near SIZE_MAX must not wrap to a small buffer here either.
    const size_t size = detail::checked_add(bytes, 2 * kAlign, "CPU backend scratch") / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, size);
    if (!p) throw Error("CPU backend", detail::cat("cannot allocate ", size, " bytes of scratch"));
    b.holder = std::shared_ptr<void>(p, std::free);
    b.data = p;
    b.bytes = bytes;  // the usable (planned) size; the allocation adds the alignment padding
  }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  const void* weight(const Tensor& t) const override { return t.data(); }

  void matmul(const MatmulParams& p) override { cpu::matmul(p, ctx_); }
  void matmul_group(std::span<const MatmulParams> ps) override { cpu::matmul_group(ps.data(), ps.size(), ctx_); }
  void rms_norm(const RmsNormParams& p) override { cpu::rms_norm(p, ctx_); }
  void rope(const RopeParams& p) override { cpu::rope(p, ctx_); }
  void attention(const AttentionParams& p) override { cpu::attention(p, ctx_); }
  void attention_many(std::span<const AttentionParams> ps) override { cpu::attention_many(ps.data(), ps.size(), ctx_); }
  void gated_act(const GatedActParams& p) override { cpu::gated_act(p, ctx_); }
  void route(const RouteParams& p) override { cpu::route(p, ctx_); }
  void embed(const EmbedParams& p) override { cpu::embed(p, ctx_); }
  void add(const AddParams& p) override { cpu::add(p, ctx_); }
  void clamp(const ClampParams& p) override { cpu::clamp(p, ctx_); }
  void store_rows(const StoreRowsParams& p) override { cpu::store_rows(p, ctx_); }
  void copy(const CopyParams& p) override { cpu::copy(p, ctx_); }
  void head_matmul(const HeadMatmulParams& p) override { cpu::head_matmul(p, ctx_); }
  void moe(const MoeParams& p) override { cpu::moe(p, ctx_); }

 private:
  std::shared_ptr<cpu::ThreadPool> pool_;
  cpu::Context ctx_{pool_.get()};  // the ops' threads (the engine's pool) and this session's scratch
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<cpu::ThreadPool> pool) {
  return std::make_unique<CpuBackend>(std::move(pool));
}

BackendKind resolve_backend(BackendKind requested) {
  switch (requested) {
    case BackendKind::cpu: return BackendKind::cpu;
    case BackendKind::cuda:
#if MOERUN_HAVE_CUDA
      if (!cuda::available()) throw Error("backend cuda", "no usable CUDA device (no GPU, or the driver is missing or too old)");
      return BackendKind::cuda;
#else
      throw Error("backend cuda", "this build of moerun has no CUDA support (configure with -DMOERUN_CUDA=ON)");
#endif
    case BackendKind::automatic:
#if MOERUN_HAVE_CUDA
      return cuda::available() ? BackendKind::cuda : BackendKind::cpu;
#else
      return BackendKind::cpu;
#endif
  }
  return BackendKind::cpu;
}

std::shared_ptr<const BackendState> prepare_backend(BackendKind kind, const ModelWeights& weights, const EngineOptions& options) {
  if (kind != BackendKind::cuda) return nullptr;
#if MOERUN_HAVE_CUDA
  if (options.quant != WeightQuant::none)
    throw Error("backend cuda", "--quant q8/q4 is a CPU-backend option; the CUDA backend runs the checkpoint's BF16/F32 weights");
  return upload_weights(weights);
#else
  (void)weights;
  (void)options;
  throw Error("backend cuda", "this build of moerun has no CUDA support");
#endif
}

namespace {
BackendWrapper& backend_wrapper() {
  static BackendWrapper wrap;
  return wrap;
}
std::unique_ptr<Backend> make_plain_backend(BackendKind kind, const std::shared_ptr<const BackendState>& state,
                                            std::shared_ptr<cpu::ThreadPool> pool);
}  // namespace

void set_backend_wrapper(BackendWrapper wrap) { backend_wrapper() = std::move(wrap); }

std::unique_ptr<Backend> make_backend(BackendKind kind, const std::shared_ptr<const BackendState>& state,
                                      std::shared_ptr<cpu::ThreadPool> pool) {
  std::unique_ptr<Backend> b = make_plain_backend(kind, state, std::move(pool));
  return backend_wrapper() ? backend_wrapper()(std::move(b)) : std::move(b);
}

namespace {
std::unique_ptr<Backend> make_plain_backend(BackendKind kind, const std::shared_ptr<const BackendState>& state,
                                            std::shared_ptr<cpu::ThreadPool> pool) {
#if MOERUN_HAVE_CUDA
  if (kind == BackendKind::cuda) return make_cuda_backend(state);
#else
  (void)state;
#endif
  (void)kind;
  if (!pool) throw Error("CPU backend", "the engine made no thread pool");
  return make_cpu_backend(std::move(pool));
}
}  // namespace

}  // namespace moerun::runtime
