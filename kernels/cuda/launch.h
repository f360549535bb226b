#pragma once
// Launch arithmetic shared by the CUDA ops' host code (kernels/cuda/*.cu), their device code and the
// plain-C++ plans (attention_plan.h, tested by the CPU suite): rounding, the 16-byte alignment test
// of the vector paths, and the grid of the element-wise kernels. No CUDA header outside the
// __CUDACC__ part below, so g++ compiles it too (nvcc as C++17).
//
// Programmatic dependent launch (PDL, sm_90 and later): every kernel of ours is launched through
// launch_kernel, which on such a device adds cudaLaunchAttributeProgrammaticStreamSerialization, so
// the GPU may start setting up a kernel while its predecessor in the stream is still finishing (in a
// captured graph too: the edge becomes a programmatic one), hiding a few microseconds of launch gap
// per kernel. That is only safe because every __global__ in kernels/cuda executes MOERUN_PDL_WAIT()
// (griddepcontrol.wait) as its first statement: it blocks until the preceding kernels have completed
// and their writes are visible, so nothing it reads or writes can race them (tests/kernels/
// pdl_wait_test.cpp checks every kernel's first statement). No kernel triggers its dependents early
// (griddepcontrol.launch_dependents): a dependent launches only once all our blocks have exited, so
// PDL never changes what any kernel sees, only when the next one is set up. Kernels we do not launch
// (cuBLAS) keep plain serialization; a PDL kernel after one of them still waits for it to complete.
// MOERUN_NO_PDL=1 (read once) or pdl_test_override turn the attribute off; below sm_90 it is never set.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#ifndef MOERUN_HOST_DEVICE
#if defined(__CUDACC__)
#define MOERUN_HOST_DEVICE __host__ __device__  // callable from kernels and from the host
#else
#define MOERUN_HOST_DEVICE
#endif
#endif

namespace moerun::cuda {

template <class T>
struct NonDeduced {  // std::type_identity (C++20): b takes a's type instead of deducing its own
  using type = T;
};

// a / b rounded up, and a rounded up to a multiple of b (a >= 0, b > 0), in a's type.
template <class T>
constexpr T ceil_div(T a, typename NonDeduced<T>::type b) {
  return (a + b - 1) / b;
}
template <class T>
constexpr T round_up(T a, typename NonDeduced<T>::type b) {
  return ceil_div(a, b) * b;
}

// Pieces carved out of one workspace start on cudaMalloc's alignment.
inline constexpr size_t kWorkspaceAlign = 256;

// Whether p can be read and written as 16-byte vectors (float4, uint4).
MOERUN_HOST_DEVICE inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Element-wise kernels run blocks of kEltThreads threads in grid-stride loops; elt_blocks(n) is the
// grid for n items of one thread each, capped at kMaxEltBlocks (also the grid.y limit, so a row op
// can use it for its column blocks).
inline constexpr int kEltThreads = 256;
inline constexpr int64_t kMaxEltBlocks = 65535;
inline unsigned elt_blocks(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(n, kEltThreads), 1, kMaxEltBlocks));
}

// Whether launch_kernel adds the PDL attribute on the current device: compute capability >= 9.0, and
// not disabled by MOERUN_NO_PDL=1 (read on first use) or the test override. Defined in device.cu.
bool pdl_enabled() noexcept;
// Tests only: -1 as the environment says (the default), 0 off, 1 on wherever the device supports it
// (whatever MOERUN_NO_PDL says). Takes effect at the next launch.
void pdl_test_override(int mode) noexcept;

}  // namespace moerun::cuda

// First statement of every __global__ in kernels/cuda: wait for the kernels this one may have been
// launched ahead of (PDL, see above). Compiles to nothing below sm_90, where no launch sets PDL.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MOERUN_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define MOERUN_PDL_WAIT() ((void)0)
#endif

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace moerun::cuda {

// kernel<<<grid, block, smem, stream>>>(args...), with the PDL attribute where pdl_enabled(). Arguments
// convert to the kernel's parameter types as in a <<<>>> launch. A launch error throws (and is cleared,
// so a later cudaGetLastError check does not see it again).
template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1] = {};
  if (pdl_enabled()) {
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
  }
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    MOERUN_CUDA_CHECK(err);
  }
}

}  // namespace moerun::cuda
#endif  // __CUDACC__
