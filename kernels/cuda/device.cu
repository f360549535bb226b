// Device discovery. Without a usable driver cudaGetDeviceCount fails (for example "CUDA driver
// version is insufficient"); every such error means "no GPU" so CPU-only machines run the suite.

#include <cuda_runtime.h>

#include "kernels/ops.h"

namespace moerun::cuda {

bool available() noexcept {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later calls start clean
    return false;
  }
  return count > 0;
}

}  // namespace moerun::cuda
