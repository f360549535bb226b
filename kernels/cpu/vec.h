#pragma once
// Small vector loops shared by the CPU ops' decode paths (attention, head_matmul, rms_norm), compiled
// for AVX-512, AVX2+FMA and plain x86-64 and picked at run time (GCC target_clones). Reductions
// accumulate in sixteen fixed lanes, so a result depends only on the inputs, never on the CPU.

#include <cstdint>

namespace moerun::cpu::vec {

float dot(const float* a, const float* b, int64_t n) noexcept;        // sum a[i] * b[i]
float sum_squares(const float* a, int64_t n) noexcept;                 // sum a[i]^2
void axpy(float* out, float alpha, const float* x, int64_t n) noexcept;  // out[i] += alpha * x[i]
// out[i] += alpha * bf16(w[i]) widened to fp32.
void axpy_bf16(float* out, float alpha, const uint16_t* w, int64_t n) noexcept;
void scale_mul(float* out, const float* x, float inv, const float* weight, int64_t n) noexcept;  // out = weight * (x * inv)
void add(float* out, const float* x, int64_t n) noexcept;              // out[i] += x[i]

}  // namespace moerun::cpu::vec
