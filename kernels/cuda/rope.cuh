#pragma once
// The rotary embedding's arithmetic on the GPU, shared by rope (kernels/cuda/rope.cu) and store_rows'
// fused rotation (kernels/cuda/elementwise.cu) so the two give the same bits: a kernel computing it
// separately could be contracted into FMAs differently by the compiler. The angle is fp32 position *
// inv_freq (one rounded product, as HF and the CPU twin compute it); cos/sin are the accurate sincosf
// (never the __sincosf intrinsic: positions reach 10^5 and more, where the intrinsic's missing range
// reduction would be far off), scaled by the attention factor; the rotation's products and sums are
// rounded one by one (__fmul_rn / __fadd_rn never contract), as the CPU twin's scalar code does.

#include <cstdint>

namespace moerun::cuda::detail {

struct RopeCosSin {
  float c, s;
};

__device__ __forceinline__ RopeCosSin rope_cos_sin(int64_t position, float inv_freq, float attention_factor) {
  const float angle = __fmul_rn(static_cast<float>(position), inv_freq);
  float s, c;
  sincosf(angle, &s, &c);
  return {__fmul_rn(c, attention_factor), __fmul_rn(s, attention_factor)};
}

// The rotated pair (x0, x1) -> (x0 c - x1 s, x1 c + x0 s).
__device__ __forceinline__ float rope_first(float x0, float x1, RopeCosSin r) {
  return __fsub_rn(__fmul_rn(x0, r.c), __fmul_rn(x1, r.s));
}
__device__ __forceinline__ float rope_second(float x0, float x1, RopeCosSin r) {
  return __fadd_rn(__fmul_rn(x1, r.c), __fmul_rn(x0, r.s));
}

}  // namespace moerun::cuda::detail
