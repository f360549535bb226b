#pragma once
// The op set every backend implements. cpu:: ops take host pointers; cuda:: ops take device pointers
// and a stream. Each op has one params struct so both backends and their tests agree on its meaning.
// No CUDA header here: the CPU-only build and the CLI never need the toolkit.

#include <cstdint>

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace moerun {

// RMSNorm over the last dimension, as HF's T5-style norm (docs/MODELS.md §2.1):
// out[r, :] = weight * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)), with the mean taken in fp32.
struct RmsNormParams {
  float* out = nullptr;           // [rows, cols]; must not alias x
  const float* x = nullptr;       // [rows, cols]
  const float* weight = nullptr;  // [cols]
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-6f;
};

namespace cpu {
void rms_norm(const RmsNormParams& p);
}  // namespace cpu

namespace cuda {
// True when a CUDA device can be used; any error from the driver (none installed, too old) is false.
bool available() noexcept;
void rms_norm(const RmsNormParams& p, CUstream_st* stream);
}  // namespace cuda

}  // namespace moerun
