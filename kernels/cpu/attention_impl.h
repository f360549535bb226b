#pragma once
// Internals of cpu::attention shared by attention.cpp (the portable loop and the dispatch),
// attention_avx512.cpp and the tests, which run every path this CPU supports.

#include <cstdint>
#include <span>

#include "kernels/cpu/context.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"

namespace moerun::cpu::detail {

// Tokens [t0, t0 + tokens) x query heads [h0, h0 + heads), which all read the same KV head, on
// AVX-512: each block of key rows and each value row is loaded once for the tile.
// scores: tokens * heads * (the tile's largest position + 1) floats; widened: attend_avx512_scratch(p)
// floats, where f16, bf16 and q8_0 caches are widened a block of rows at a time (unused for f32).
void attend_avx512(const AttentionParams& p, int64_t t0, int64_t tokens, int64_t h0, int64_t heads, float* scores,
                   float* widened);
int64_t attend_avx512_scratch(const AttentionParams& p);

// Throws moerun::Error unless p's cache layout suits its kv_type: q8_0 needs qk_dim, v_dim and every
// stride of k and v to be multiples of 32, so each row and head starts on a block.
void check_kv_layout(const AttentionParams& p);

// cpu::attention on a chosen instruction set (which this CPU must support); scalar and avx2 share
// the portable loop.
void attention_isa(const AttentionParams& p, Context& ctx, Isa isa);
// cpu::attention_many on a chosen instruction set.
void attention_many_isa(std::span<const AttentionParams> ps, Context& ctx, Isa isa);

}  // namespace moerun::cpu::detail
