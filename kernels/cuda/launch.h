#pragma once
// Launch arithmetic shared by the CUDA ops' host code (kernels/cuda/*.cu), their device code and the
// plain-C++ plans (attention_plan.h, tested by the CPU suite): rounding, the 16-byte alignment test
// of the vector paths, and the grid of the element-wise kernels. No CUDA header, so g++ compiles it too
// (nvcc as C++17).

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

}  // namespace moerun::cuda
