// Device discovery. Without a usable driver cudaGetDeviceCount fails (for example "CUDA driver
// version is insufficient"); every such error means "no GPU" so CPU-only machines run the suite.
// Also whether launches use programmatic dependent launch (kernels/cuda/launch.h): per device, its
// compute capability is read once and cached; the environment once per process.

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/launch.h"
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

namespace {

std::atomic<int> g_pdl_override{-1};

// Per device ordinal: 0 not read yet, 1 below sm_90 (or unreadable), 2 sm_90 or later.
constexpr int kMaxDevices = 64;
std::array<std::atomic<int>, kMaxDevices> g_pdl_device{};

bool env_disables_pdl() noexcept {
  static const bool off = [] {
    const char* v = std::getenv("MOERUN_NO_PDL");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return off;
}

bool device_supports_pdl() noexcept {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    (void)cudaGetLastError();
    return false;
  }
  int known = g_pdl_device[static_cast<size_t>(device)].load(std::memory_order_relaxed);
  if (known == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      major = 0;
    }
    known = major >= 9 ? 2 : 1;
    g_pdl_device[static_cast<size_t>(device)].store(known, std::memory_order_relaxed);
  }
  return known == 2;
}

}  // namespace

bool pdl_enabled() noexcept {
  const int mode = g_pdl_override.load(std::memory_order_relaxed);
  if (mode == 0) return false;
  if (mode < 0 && env_disables_pdl()) return false;
  return device_supports_pdl();
}

void pdl_test_override(int mode) noexcept {
  g_pdl_override.store(mode < 0 ? -1 : mode > 0 ? 1 : 0, std::memory_order_relaxed);
}

}  // namespace moerun::cuda
