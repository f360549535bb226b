#pragma once
// The gated FFN's activation on the device: act(g) * u for the config's hidden_act, as cpu::gated_act
// (kernels/cpu/activations.cpp, the formulas of transformers' activations.py). expf, erff and tanhf,
// not the __ intrinsics, to stay within a few ulps of the CPU's std:: functions. The activation is a
// runtime argument: the branch is the same for every thread of a launch, so it costs nothing.

#include "moerun/model_desc.h"

namespace moerun::cuda::detail {

__device__ __forceinline__ float act_mul(Activation act, float g, float u) {
  switch (act) {
    case Activation::gelu:  // x * 0.5 * (1 + erf(x / sqrt(2)))
      return g * 0.5f * (1.0f + erff(g * 0.70710678118654752440f)) * u;
    case Activation::gelu_tanh:  // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
      return 0.5f * g * (1.0f + tanhf(0.79788456080286535588f * (g + 0.044715f * (g * g * g)))) * u;
    default:  // silu: x / (1 + exp(-x))
      return g / (1.0f + expf(-g)) * u;
  }
}

}  // namespace moerun::cuda::detail
