// Gated activations: out = act(gate) * up, the middle of every gated FFN (docs/MODELS.md §2.2).
// Each formula is the one transformers' activations.py runs (through PyTorch's fp32 CPU kernels):
//   silu       nn.functional.silu                         x / (1 + exp(-x))
//   gelu       nn.functional.gelu                         x * 0.5 * (1 + erf(x * sqrt(1/2)))
//   gelu_tanh  nn.functional.gelu(approximate="tanh"),    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
//              NewGELUActivation (gelu_new): the same formula
// The loop is plain: the activation is a few thousand elements per token, next to matmuls that read
// millions of weights, so it has no separate fast path.

#include <cmath>

#include "kernels/ops.h"

namespace moerun::cpu {
namespace {

constexpr float kSqrtHalf = 0.70710678118654752440f;    // M_SQRT1_2
constexpr float kSqrt2OverPi = 0.79788456080286535588f;  // M_SQRT2 * M_2_SQRTPI * 0.5, PyTorch's kBeta
constexpr float kKappa = 0.044715f;

float silu(float x) { return x / (1.0f + std::exp(-x)); }
float gelu(float x) { return x * 0.5f * (1.0f + std::erf(x * kSqrtHalf)); }
float gelu_tanh(float x) { return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + kKappa * (x * x * x)))); }

// One loop per activation, so the choice is made once per call, not per element.
template <float (*Act)(float)>
void gated(const GatedActParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.out[i] = Act(p.gate[i]) * p.up[i];
}

}  // namespace

void gated_act(const GatedActParams& p, Context&) {
  switch (p.act) {
    case Activation::silu: return gated<silu>(p);
    case Activation::gelu: return gated<gelu>(p);
    case Activation::gelu_tanh: return gated<gelu_tanh>(p);
  }
}

}  // namespace moerun::cpu
