#pragma once
// The CUDA backend's host side: RAII device memory, and the Context every cuda:: op runs in (one
// device, one stream, a cuBLAS handle, a growable workspace, and one captured CUDA graph for the
// decode step). A later multi-GPU layer (NCCL) gets one Context per device.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_check.h"

#define MOERUN_CUBLAS_CHECK(expr)                                                                 \
  do {                                                                                            \
    if (const cublasStatus_t st_ = (expr); st_ != CUBLAS_STATUS_SUCCESS)                          \
      throw ::moerun::Error::cuda(#expr, cublasGetStatusString(st_), __FILE__, __LINE__);         \
  } while (0)

namespace moerun::cuda {

// Owned device memory. Allocation failure is an Error that says what was being allocated, how
// much was needed and how much the device had free.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const std::string& what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const noexcept { return ptr_; }
  template <class T>
  T* as() const noexcept { return static_cast<T*>(ptr_); }
  size_t bytes() const noexcept { return bytes_; }
  explicit operator bool() const noexcept { return ptr_ != nullptr; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Free and total bytes of the current device.
struct MemoryInfo {
  size_t free = 0, total = 0;
};
MemoryInfo memory_info();

class Context {
 public:
  explicit Context(int device = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const noexcept { return device_; }
  cudaStream_t stream() const noexcept { return stream_; }
  cublasHandle_t cublas();  // bound to stream(), created on first use

  // Scratch of at least `bytes`, valid until the next workspace() call. Ops that need several
  // areas ask once for their sum. Growing reallocates (the old contents are lost) and is refused
  // while a graph is being captured: run a step uncaptured first to size it.
  void* workspace(size_t bytes);
  uint64_t workspace_generation() const noexcept { return workspace_generation_; }  // bumps on regrow

  void synchronize();  // waits for the stream; errors of earlier async work surface here

  // Decode-step graph: begin_capture(); enqueue ops; end_capture(); then replay() repeats them.
  void begin_capture();
  void end_capture();
  bool capturing() const noexcept { return capturing_; }
  bool has_graph() const noexcept { return exec_ != nullptr; }
  void replay();
  void drop_graph();
  // Kernel launches (kernel nodes) and memory operations (copy/set nodes) in the captured graph: a
  // recorded decode step's launches per token. 0 without a graph.
  struct GraphCounts {
    size_t kernels = 0, memory_ops = 0, other = 0;
  };
  GraphCounts graph_counts() const;

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer workspace_;
  DeviceBuffer cublas_workspace_;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  bool capturing_ = false;
  uint64_t workspace_generation_ = 0;
};

}  // namespace moerun::cuda
