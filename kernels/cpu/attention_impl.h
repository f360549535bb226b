#pragma once
// Internals of cpu::attention shared by attention.cpp (the portable loop and the dispatch),
// attention_avx512.cpp and the tests, which run every path this CPU supports.

#include <cstdint>

#include "kernels/cpu/context.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"

namespace moerun::cpu::detail {

// Tokens [t0, t0 + tokens) x query heads [h0, h0 + heads), which all read the same KV head, on
// AVX-512: each block of key rows and each value row is loaded once for the tile.
// scores: tokens * heads * (the tile's largest position + 1) floats.
void attend_avx512(const AttentionParams& p, int64_t t0, int64_t tokens, int64_t h0, int64_t heads, float* scores);

// cpu::attention on a chosen instruction set (which this CPU must support); scalar and avx2 share
// the portable loop.
void attention_isa(const AttentionParams& p, Context& ctx, Isa isa);

}  // namespace moerun::cpu::detail
