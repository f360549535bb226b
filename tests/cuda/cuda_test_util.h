#pragma once
// Helpers shared by the CUDA op tests (tests/cuda/*_test.cpp): seeded never-zero random inputs,
// uploads and downloads through cuda::DeviceBuffer with guard values after outputs, weight-dtype
// conversion of host data, and the error metric. Header-only so each suite file stays independent.
// Copies: the forms that take a Context are ordered on its (non-blocking) stream; the older forms
// without one synchronize the whole device around a legacy-stream copy, which is correct but slower.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "moerun/dtype.h"

// First statement of every GPU test: the suite passes on machines without a usable device.
#define MOERUN_SKIP_WITHOUT_CUDA()                                                       \
  do {                                                                                   \
    if (!::moerun::cuda::available())                                                    \
      GTEST_SKIP() << "no usable CUDA device (cudaGetDeviceCount failed or found none)"; \
  } while (0)

namespace moerun::cuda::testing {

using ::moerun::cuda::DeviceBuffer;  // so `using namespace cuda::testing` is all a test needs

inline constexpr float kGuard = 12345.0f;  // written after outputs; a kernel that overruns changes it
inline constexpr size_t kGuardCount = 64;

// n floats uniform in [lo, hi), never exactly zero (a zero hides a missed term in a sum). The mapping from
// the 64-bit stream to [0, 1) is spelled out so every standard library gives the same values.
inline std::vector<float> uniform(size_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(n);
  for (float& x : v) {
    const double u = static_cast<double>(rng() >> 11) / 9007199254740992.0;
    x = static_cast<float>(lo + (hi - lo) * u);
    if (x == 0.0f) x = 1e-3f;
  }
  return v;
}

// fp32 -> IEEE half bits, round to nearest even, for values in the normal half range; smaller magnitudes
// become the smallest normal of the same sign so test data stays never-zero.
inline uint16_t f32_to_f16_bits(float f) {
  uint32_t b = 0;
  std::memcpy(&b, &f, sizeof b);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (!(a >= 6.103515625e-05f)) return static_cast<uint16_t>(sign | 0x0400u);  // 2^-14
  if (a >= 65504.0f) return static_cast<uint16_t>(sign | 0x7bffu);
  const int32_t exp = static_cast<int32_t>((b >> 23) & 0xff) - 127 + 15;
  uint32_t mant = b & 0x7fffffu;
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is still correct
  return static_cast<uint16_t>(sign | h);
}

// A weight vector in `dtype` (f32, bf16 or f16) as raw bytes, and the fp32 values it really holds (what the
// CPU twin reads back through cpu::load_f32), so both backends see identical numbers.
struct HostWeights {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

inline HostWeights to_dtype(const std::vector<float>& v, DType dtype) {
  HostWeights w;
  w.bytes.resize(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::f32) {
      std::memcpy(w.bytes.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = dtype == DType::bf16 ? cpu::f32_to_bf16(v[i]) : f32_to_f16_bits(v[i]);
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
    }
  }
  w.values.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) w.values[i] = cpu::load_f32(w.bytes.data(), dtype, static_cast<int64_t>(i));
  return w;
}

// A device copy of a host vector (any trivially copyable element type).
template <class T>
DeviceBuffer upload(const std::vector<T>& host, const std::string& what = "test input") {
  DeviceBuffer d(host.size() * sizeof(T), what);
  if (!host.empty())
    MOERUN_CUDA_CHECK(cudaMemcpy(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  // A pageable copy may return before its last DMA lands, and a Context's stream does not wait for the
  // legacy default stream: finish it here so the op under test reads the whole input.
  MOERUN_CUDA_CHECK(cudaDeviceSynchronize());
  return d;
}

// A device output of n floats followed by kGuardCount guard values; the output part starts as `fill`.
inline DeviceBuffer output_with_guard(size_t n, float fill = std::numeric_limits<float>::quiet_NaN()) {
  std::vector<float> host(n + kGuardCount, kGuard);
  std::fill(host.begin(), host.begin() + static_cast<std::ptrdiff_t>(n), fill);
  return upload(host, "test output");
}

// All floats of a device buffer (outputs and guards alike); synchronizes the whole device first.
inline std::vector<float> download(const DeviceBuffer& d) {
  std::vector<float> host(d.bytes() / sizeof(float));
  MOERUN_CUDA_CHECK(cudaDeviceSynchronize());
  if (!host.empty())
    MOERUN_CUDA_CHECK(cudaMemcpy(host.data(), d.data(), host.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

// Stream-ordered forms: the copy goes on `ctx`'s stream (the non-blocking stream its ops run on), so it
// is ordered with them without a device-wide synchronization, and the stream is synchronized before
// returning (a pageable host buffer may be reused or freed as soon as the call returns).
template <class T>
DeviceBuffer upload(const std::vector<T>& host, Context& ctx, const std::string& what = "test input") {
  DeviceBuffer d(host.size() * sizeof(T), what);
  if (!host.empty())
    MOERUN_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, ctx.stream()));
  ctx.synchronize();
  return d;
}

inline DeviceBuffer output_with_guard(size_t n, Context& ctx, float fill = std::numeric_limits<float>::quiet_NaN()) {
  std::vector<float> host(n + kGuardCount, kGuard);
  std::fill(host.begin(), host.begin() + static_cast<std::ptrdiff_t>(n), fill);
  return upload(host, ctx, "test output");
}

// All elements of a device buffer as T, copied after everything queued on `ctx`'s stream so far.
template <class T = float>
std::vector<T> download(const DeviceBuffer& d, Context& ctx) {
  std::vector<T> host(d.bytes() / sizeof(T));
  if (!host.empty())
    MOERUN_CUDA_CHECK(cudaMemcpyAsync(host.data(), d.data(), host.size() * sizeof(T), cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return host;
}

// Index of the first guard value (from `from` on) that changed, or -1 when all are intact.
inline int64_t first_bad_guard(const std::vector<float>& got, size_t from) {
  for (size_t i = from; i < got.size(); ++i)
    if (got[i] != kGuard) return static_cast<int64_t>(i);
  return -1;
}

// max |got[i] - want[i]| over the first want.size() values; infinity when got holds a NaN or an infinity
// where want is finite, so a non-finite result can never pass a tolerance.
inline float max_abs_diff(const std::vector<float>& got, const std::vector<float>& want) {
  float m = 0.0f;
  const size_t n = std::min(got.size(), want.size());
  if (got.size() < want.size()) return std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i]) && std::isfinite(want[i])) return std::numeric_limits<float>::infinity();
    m = std::max(m, std::fabs(got[i] - want[i]));
  }
  return m;
}

}  // namespace moerun::cuda::testing
