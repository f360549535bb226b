#pragma once
// Backend: the op set of kernels/ops.h plus the memory the ops run on (docs/DESIGN.md). The executor
// is written once against it; `cpu` runs ops on the session's thread pool over host memory, `cuda`
// enqueues them on one stream over device memory with the weights uploaded once per engine.
// Pointers in the params an executor passes are backend pointers (from buffers and weight()).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "moerun/engine.h"
#include "moerun/weights.h"
#include "util/strings.h"

namespace moerun::cpu {
class ThreadPool;
}  // namespace moerun::cpu

namespace moerun::runtime {

// Memory that lives where the ops run. Sessions reserve each buffer once at its planned size
// (runtime/workspace.h), so no forward step allocates.
struct Buffer {
  void* data = nullptr;
  size_t bytes = 0;  // usable bytes: what was reserved (backends may pad the allocation for alignment)
  std::shared_ptr<void> holder;  // frees with the backend's deallocator
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const noexcept = 0;

  // Makes `b` at least `bytes` large (its old contents are lost when it grows).
  virtual void reserve(Buffer& b, size_t bytes) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;    // host -> backend, stream-ordered
  virtual void download(void* dst, const void* src, size_t bytes) = 0;  // backend -> host; waits for it
  // Where the ops read a prepared weight tensor (the tensor itself on the CPU, its device copy on CUDA).
  virtual const void* weight(const Tensor& t) const = 0;

  virtual void matmul(const MatmulParams& p) = 0;
  // Several matmuls of the same rows (q/k/v, gate/up); a backend may run them as one pass.
  virtual void matmul_group(std::span<const MatmulParams> ps) {
    for (const MatmulParams& p : ps) matmul(p);
  }
  virtual void rms_norm(const RmsNormParams& p) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void attention(const AttentionParams& p) = 0;
  // Independent attentions (a batched step's sequences); a backend may run them as one pass.
  virtual void attention_many(std::span<const AttentionParams> ps) {
    for (const AttentionParams& p : ps) attention(p);
  }
  virtual void gated_act(const GatedActParams& p) = 0;
  virtual void route(const RouteParams& p) = 0;
  virtual void embed(const EmbedParams& p) = 0;
  virtual void add(const AddParams& p) = 0;
  virtual void clamp(const ClampParams& p) = 0;
  virtual void store_rows(const StoreRowsParams& p) = 0;
  virtual void copy(const CopyParams& p) = 0;
  virtual void head_matmul(const HeadMatmulParams& p) = 0;
  virtual void moe(const MoeParams& p) = 0;
  // The stream the ops are enqueued on (CUDA: a cudaStream_t, for NCCL collectives between them);
  // null on the CPU, whose ops are done when they return.
  virtual void* native_stream() const noexcept { return nullptr; }
  // Makes the calling thread ready to enqueue this backend's ops (CUDA: its device current).
  virtual void bind_thread() {}

  // A recorded decode step (CUDA graphs). generation() changes whenever memory a recorded step
  // points into was reallocated, which makes the recording stale.
  virtual bool can_record() const noexcept { return false; }
  virtual void begin_record() {}
  virtual void end_record() {}
  virtual bool has_record() const noexcept { return false; }
  virtual void replay() {}
  virtual void drop_record() {}
  virtual uint64_t generation() const noexcept { return 0; }
  // What the recorded step launches (CUDA: the captured graph's kernel and copy/set nodes, the
  // launches of one decode token); zeros without a recording.
  struct RecordedLaunches {
    size_t kernels = 0, memory_ops = 0;
  };
  virtual RecordedLaunches recorded_launches() const { return {}; }
};

// Tests and benchmarks only: when set, make_backend hands every backend it makes to `wrap` and
// returns what that gives (a counting stub: runtime/counting_backend.h). Set it before the engine's
// sessions are made and clear it (an empty function) afterwards; not thread-safe.
using BackendWrapper = std::function<std::unique_ptr<Backend>(std::unique_ptr<Backend>)>;
void set_backend_wrapper(BackendWrapper wrap);

// The engine-wide state of a backend: for CUDA the uploaded weights (shared by all sessions).
struct BackendState;

// The backend options ask for, with the quantization policy applied (quantized weights: the CPU).
BackendKind requested_backend(const EngineOptions& options);
// Resolves `automatic` and checks that the chosen backend can run here (throws Error otherwise).
BackendKind resolve_backend(BackendKind requested);
// "1.50 GiB", "12.0 MiB", "3.0 KiB": sizes in messages and plans.
using detail::format_bytes;  // (util/strings.h)
std::shared_ptr<const BackendState> prepare_backend(BackendKind kind, const ModelWeights& weights, const EngineOptions& options);
// pool: the engine's CPU threads (the CPU backend runs its ops on them; CUDA ignores it).
std::unique_ptr<Backend> make_backend(BackendKind kind, const std::shared_ptr<const BackendState>& state,
                                      std::shared_ptr<cpu::ThreadPool> pool);

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<cpu::ThreadPool> pool);
#if MOERUN_HAVE_CUDA
uint64_t cuda_free_bytes();  // free memory of the device sessions use
// A distributed run's rank uses device local_rank % devices (made current on the calling thread);
// returns it.
int cuda_select_device(int local_rank);
std::shared_ptr<const BackendState> upload_weights(const ModelWeights& weights);
std::unique_ptr<Backend> make_cuda_backend(const std::shared_ptr<const BackendState>& state);
#endif

}  // namespace moerun::runtime
