#pragma once
// The error every op test allows, in one table (in the spirit of llama.cpp's test-backend-ops, where
// each op states the error its comparison may show): per op, per comparison and per weight dtype.
// An output element passes when
//
//     |got - want| <= abs + rel * |want| + mag * M
//
// where M is the magnitude the op's row names (the sum of the |terms| the element adds up, the largest
// |want| of the output, the |input| of an elementwise function). Tests compute M and read the numbers
// from here; change a budget here, with its reason, never in a test. Known-answer tests on hand-made
// inputs (one-hot keys, equal scores, constant values) keep their own tighter bounds beside the
// reasoning that gives them.
//
// Used by tests/kernels (CPU ops against double-precision formulas) and tests/cuda (CUDA ops against
// their CPU twins). Plain C++ with no test framework in it.

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "moerun/dtype.h"

namespace moerun::testing {

enum class Op : uint8_t {
  matmul,
  rms_norm,
  rope,
  attention,
  gated_act,
  route,
  moe,
  embed,
  add,
  add_gated,  // add with a sigmoid gate per row
  clamp,
  store_rows,
  copy,
  head_matmul,
};

// What a test compares.
enum class Check : uint8_t {
  reference,    // a CPU op against the formula in double (tests/kernels)
  cuda,         // a CUDA op against its CPU twin, both in fp32 (tests/cuda)
  cuda_tensor,  // a CUDA op on its tensor-core path (activations rounded to the weight dtype) against
                // its CPU twin
};

struct Tolerance {
  double abs = 0.0;  // absolute
  double rel = 0.0;  // times |want|
  double mag = 0.0;  // times the magnitude M of the op's row

  double at(double want, double magnitude = 0.0) const { return abs + rel * std::fabs(want) + mag * magnitude; }
};

struct OpTolerance {
  Op op;
  Check check;
  DType dtype;  // the op's weight dtype; f32 for ops without weights
  Tolerance tol;
};

// clang-format off
inline constexpr OpTolerance kOpTolerances[] = {
    // --- CPU ops against double-precision formulas (tests/kernels) ---
    // matmul, M = (sum_i |x_i w_i| + |b|) * max(1, in_features / 512): fp32 accumulation of in_features
    // products in 16 or 32 lanes (well under in/16 * 2^-24 relative); bf16, f16 and fp8 weights decode
    // exactly. Quantized weights are checked against the exact block formula (int8 activations), so
    // the same fp32 accumulation is all that differs. rel: the last roundings (the bias add). fp8
    // adds one rounding per term (the weight times its block scale, or x times it in decode): 2^-24.
    {Op::matmul, Check::reference, DType::f32, {1e-30, 1e-6, 2e-5}},
    {Op::matmul, Check::reference, DType::bf16, {1e-30, 1e-6, 2e-5}},
    {Op::matmul, Check::reference, DType::f16, {1e-30, 1e-6, 2e-5}},
    {Op::matmul, Check::reference, DType::f8_e4m3, {1e-30, 1e-6, 2e-5}},
    {Op::matmul, Check::reference, DType::q8_0, {1e-30, 1e-6, 2e-5}},
    {Op::matmul, Check::reference, DType::q4_0, {1e-30, 1e-6, 2e-5}},
    // rms_norm: an fp32 sum of squares over <= 67 values, one sqrt and two products.
    {Op::rms_norm, Check::reference, DType::f32, {1e-30, 1e-5, 0.0}},
    // rope, M = max(1, attention_factor) * (|x0| + |x1|) of the rotated pair: fp32 cos/sin (of an fp32
    // angle, as the reference takes it) and two products, a few ulps.
    {Op::rope, Check::reference, DType::f32, {0.0, 0.0, 1e-6}},
    // attention, M = max(1, the largest |want| of the output): fp32 dot products of <= 576 terms and an
    // fp32 softmax (the AVX-512 path's polynomial exp is < 2e-9 relative) give ~1e-6 of M.
    {Op::attention, Check::reference, DType::f32, {0.0, 0.0, 1e-5}},
    // gated_act, M = |gate|: fp32 with its transcendental, a few ulps of the result, plus the
    // cancellation in 1 + erf / 1 + tanh for negative x (an ulp of 1 times |x| / 2, as torch's fp32
    // kernels have too).
    {Op::gated_act, Check::reference, DType::f32, {1e-30, 1e-6, 1.2e-7}},
    // route (the weights; the ids must match exactly): fp32 softmax or sigmoid over <= 67 experts and
    // one normalisation.
    {Op::route, Check::reference, DType::f32, {1e-12, 2e-6, 0.0}},
    // moe, M = sum_k |weight_k * down_k(...)| of the output element: two fp32 matmuls of <= 96 terms
    // and the activation per expert.
    {Op::moe, Check::reference, DType::f32, {1e-8, 0.0, 1e-5}},
    {Op::moe, Check::reference, DType::bf16, {1e-8, 0.0, 1e-5}},
    // Data movement, widening (bf16 and f16 are exact in fp32), clamp and a single fp32 add: exact.
    {Op::embed, Check::reference, DType::f32, {0.0, 0.0, 0.0}},
    {Op::embed, Check::reference, DType::bf16, {0.0, 0.0, 0.0}},
    {Op::embed, Check::reference, DType::f16, {0.0, 0.0, 0.0}},
    {Op::add, Check::reference, DType::f32, {0.0, 0.0, 0.0}},
    {Op::clamp, Check::reference, DType::f32, {0.0, 0.0, 0.0}},
    {Op::store_rows, Check::reference, DType::f32, {0.0, 0.0, 0.0}},
    {Op::copy, Check::reference, DType::f32, {0.0, 0.0, 0.0}},
    // add_gated, M = |x|: one fp32 sigmoid (a few ulps) times x, added with one rounding.
    {Op::add_gated, Check::reference, DType::f32, {1e-30, 1e-6, 1e-6}},
    // head_matmul, M = sum_i |w_i x_i| of the element: the fp32 accumulation of matmul's row above or
    // of axpy over the input rows (transposed), every weight dtype decoding exactly (fp8: one more
    // rounding per term, of x * scale or of the weight times its scale, 2^-24 of M).
    {Op::head_matmul, Check::reference, DType::f32, {1e-30, 1e-6, 2e-5}},
    {Op::head_matmul, Check::reference, DType::bf16, {1e-30, 1e-6, 2e-5}},
    {Op::head_matmul, Check::reference, DType::f16, {1e-30, 1e-6, 2e-5}},
    {Op::head_matmul, Check::reference, DType::f8_e4m3, {1e-30, 1e-6, 2e-5}},

    // --- CUDA ops against their CPU twins (tests/cuda); max |got - want| over the output ---
    // matmul, M = the element's sum_i |x_i w_i| + |b| (the CPU matmul of |x|, |W| and |b|): fp32
    // products summed in another order, ~sqrt(in) * 2^-24 of M for in <= 4095.
    {Op::matmul, Check::cuda, DType::f32, {1e-30, 0.0, 2e-5}},
    {Op::matmul, Check::cuda, DType::bf16, {1e-30, 0.0, 2e-5}},
    {Op::matmul, Check::cuda, DType::f16, {1e-30, 0.0, 2e-5}},
    {Op::matmul, Check::cuda, DType::f8_e4m3, {1e-30, 0.0, 2e-5}},
    // ... cuBLAS GEMMs on tensor cores (the reference rounds x as the GPU does): products exact, fp32
    // accumulation inside the MMA units may truncate rather than round between partial sums: 2^-13
    // of M (a dropped term is ~1/in of M, larger).
    {Op::matmul, Check::cuda_tensor, DType::bf16, {1e-30, 0.0, 1.25e-4}},
    {Op::matmul, Check::cuda_tensor, DType::f16, {1e-30, 0.0, 1.25e-4}},
    {Op::matmul, Check::cuda_tensor, DType::f8_e4m3, {1e-30, 0.0, 1.25e-4}},
    // rms_norm and rope: fp32 arithmetic in another order, rsqrtf, sincosf: a few ulps of O(1) outputs.
    {Op::rms_norm, Check::cuda, DType::f32, {2e-5, 0.0, 0.0}},
    {Op::rope, Check::cuda, DType::f32, {1e-5, 0.0, 0.0}},
    // attention: scores differ by summation order (<= 576 products), exp by a few ulps, and
    // flash-decoding rescales partial sums; outputs are convex combinations of values in [-1, 1].
    {Op::attention, Check::cuda, DType::f32, {3e-5, 0.0, 0.0}},
    // gated_act and gated add: expf/erff/tanhf against std:: (a few ulps) and FMA contraction; outputs
    // are at most ~20 in magnitude, so a few ulps of 20.
    {Op::gated_act, Check::cuda, DType::f32, {2e-5, 0.0, 0.0}},
    {Op::add_gated, Check::cuda, DType::f32, {2e-5, 0.0, 0.0}},
    // route (the weights; ids must match): expf against std::exp differ by a few ulps and the
    // normalisation divides two such values: ~100 ulps.
    {Op::route, Check::cuda, DType::f32, {1e-30, 1e-5, 0.0}},
    // moe, M = the largest |want| of the output (O(1) by construction): decode (any dtype) and f32
    // prefill sum the same fp32 products in another order through two matmuls of <= 256 terms and
    // the activation, a few hundred ulps of M at most.
    {Op::moe, Check::cuda, DType::f32, {0.0, 0.0, 5e-5}},
    {Op::moe, Check::cuda, DType::bf16, {0.0, 0.0, 5e-5}},
    {Op::moe, Check::cuda, DType::f16, {0.0, 0.0, 5e-5}},
    // ... bf16 prefill: x and h are rounded to bf16 (2^-8 relative) before the GEMMs; the errors of
    // ~100-term sums average out to ~2^-8 / sqrt(3) of a typical term sum, a few 1e-3 of M.
    {Op::moe, Check::cuda_tensor, DType::bf16, {0.0, 0.0, 2e-2}},
    // ... f16 prefill: the same with 2^-11 rounding.
    {Op::moe, Check::cuda_tensor, DType::f16, {0.0, 0.0, 4e-3}},
    // head_matmul: fp32 sums of 512 products of random signs in another order, ~sqrt(512) * 2^-24
    // times the partial sums, ~1e-5; 10x headroom.
    {Op::head_matmul, Check::cuda, DType::f32, {1e-4, 0.0, 0.0}},
    {Op::head_matmul, Check::cuda, DType::bf16, {1e-4, 0.0, 0.0}},
    {Op::head_matmul, Check::cuda, DType::f16, {1e-4, 0.0, 0.0}},
    // Pure moves, widening, clamp and a single fp32 add: bit-exact.
    {Op::embed, Check::cuda, DType::f32, {0.0, 0.0, 0.0}},
    {Op::embed, Check::cuda, DType::bf16, {0.0, 0.0, 0.0}},
    {Op::embed, Check::cuda, DType::f16, {0.0, 0.0, 0.0}},
    {Op::add, Check::cuda, DType::f32, {0.0, 0.0, 0.0}},
    {Op::clamp, Check::cuda, DType::f32, {0.0, 0.0, 0.0}},
    {Op::store_rows, Check::cuda, DType::f32, {0.0, 0.0, 0.0}},
    {Op::copy, Check::cuda, DType::f32, {0.0, 0.0, 0.0}},
};
// clang-format on

// The row of (op, check, dtype); dtype is the op's weight dtype (f32 for ops without weights). A
// combination without a row is a test asking for a budget nobody set: std::logic_error.
inline Tolerance tolerance(Op op, Check check, DType dtype = DType::f32) {
  for (const OpTolerance& row : kOpTolerances)
    if (row.op == op && row.check == check && row.dtype == dtype) return row.tol;
  throw std::logic_error("tests/support/op_tolerances.h has no row for op " + std::to_string(static_cast<int>(op)) +
                         ", check " + std::to_string(static_cast<int>(check)) + ", dtype " +
                         std::string(dtype_name(dtype)));
}

}  // namespace moerun::testing
