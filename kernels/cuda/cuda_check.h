#pragma once
// MOERUN_CUDA_CHECK: every CUDA runtime call is checked; a failure becomes a moerun::Error naming the
// call, CUDA's message and our source location. After a launch: MOERUN_CUDA_CHECK(cudaGetLastError()).

#include <cuda_runtime.h>

#include "moerun/error.h"

#define MOERUN_CUDA_CHECK(expr)                                                          \
  do {                                                                                   \
    if (const cudaError_t err_ = (expr); err_ != cudaSuccess)                            \
      throw ::moerun::Error::cuda(#expr, cudaGetErrorString(err_), __FILE__, __LINE__);  \
  } while (0)
