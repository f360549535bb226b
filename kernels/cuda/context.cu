// The CUDA backend's host side (see context.h).

#include "kernels/cuda/context.h"

#include <utility>
#include <vector>

#include "moerun/error.h"

namespace moerun::cuda {

using detail::cat;

namespace {
constexpr size_t kCublasWorkspace = 32u << 20;  // cuBLAS's own scratch, fixed so graphs can capture GEMMs
constexpr double kMiB = 1024.0 * 1024.0;
}  // namespace

MemoryInfo memory_info() {
  MemoryInfo m;
  MOERUN_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
  return m;
}

DeviceBuffer::DeviceBuffer(size_t bytes, const std::string& what) : bytes_(bytes) {
  if (bytes == 0) return;
  if (const cudaError_t err = cudaMalloc(&ptr_, bytes); err != cudaSuccess) {
    (void)cudaGetLastError();
    ptr_ = nullptr;
    size_t free = 0, total = 0;
    const bool known = cudaMemGetInfo(&free, &total) == cudaSuccess;
    throw Error("CUDA", cat("cannot allocate ", what, ": needs ", static_cast<double>(bytes) / kMiB, " MiB, ",
                            known ? cat(static_cast<double>(free) / kMiB, " MiB free of ", static_cast<double>(total) / kMiB, " MiB")
                                  : std::string("free memory unknown"),
                            " (", cudaGetErrorString(err), ")"));
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

Context::Context(int device) : device_(device) {
  MOERUN_CUDA_CHECK(cudaSetDevice(device));
  MOERUN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

Context::~Context() {
  drop_graph();
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

cublasHandle_t Context::cublas() {
  if (!cublas_) {
    MOERUN_CUBLAS_CHECK(cublasCreate(&cublas_));
    MOERUN_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    cublas_workspace_ = DeviceBuffer(kCublasWorkspace, "the cuBLAS workspace");
    MOERUN_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_.data(), cublas_workspace_.bytes()));
    MOERUN_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  }
  return cublas_;
}

void* Context::workspace(size_t bytes) {
  if (bytes <= workspace_.bytes()) return workspace_.data();
  if (capturing_)
    throw Error("CUDA", cat("an op needs ", bytes, " bytes of workspace while a graph is being captured (have ",
                            workspace_.bytes(), "); run the step once uncaptured first"));
  MOERUN_CUDA_CHECK(cudaStreamSynchronize(stream_));  // work in flight may still read the old area
  workspace_ = DeviceBuffer();
  workspace_ = DeviceBuffer(bytes + bytes / 4, "the op workspace");
  ++workspace_generation_;
  return workspace_.data();
}

void Context::synchronize() { MOERUN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void Context::begin_capture() {
  drop_graph();
  MOERUN_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
}

void Context::end_capture() {
  capturing_ = false;
  MOERUN_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph_));
  MOERUN_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
}

void Context::replay() {
  if (!exec_) throw Error("CUDA", "replay() without a captured graph");
  MOERUN_CUDA_CHECK(cudaGraphLaunch(exec_, stream_));
}

Context::GraphCounts Context::graph_counts() const {
  GraphCounts c;
  if (!graph_) return c;
  size_t n = 0;
  MOERUN_CUDA_CHECK(cudaGraphGetNodes(graph_, nullptr, &n));
  std::vector<cudaGraphNode_t> nodes(n);
  if (n > 0) MOERUN_CUDA_CHECK(cudaGraphGetNodes(graph_, nodes.data(), &n));
  for (size_t i = 0; i < n; ++i) {
    cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
    MOERUN_CUDA_CHECK(cudaGraphNodeGetType(nodes[i], &type));
    if (type == cudaGraphNodeTypeKernel) ++c.kernels;
    else if (type == cudaGraphNodeTypeMemcpy || type == cudaGraphNodeTypeMemset) ++c.memory_ops;
    else ++c.other;
  }
  return c;
}

void Context::drop_graph() {
  if (capturing_) {  // abandon a capture that failed half-way
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    (void)cudaGetLastError();
    capturing_ = false;
  }
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
}

}  // namespace moerun::cuda
