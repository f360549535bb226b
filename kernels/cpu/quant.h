#pragma once
// Block-quantized weight rows (DType::q8_0, DType::q4_0): the byte layout, and scalar quantize /
// dequantize used by the loader (src/model/convert.cpp), the scalar matmul and the tests.
//
// A row of K weights (K a multiple of 32) is nb = K / 32 blocks of 32; block b holds one fp16
// scale d_b and 32 quants q with w = d_b * q. Blocks are stored in groups of up to 16 (a group is
// 512 weights): first the quants of the group's blocks, then their scales, so a row is one
// sequential stream and one 64-byte load covers exactly two q8 blocks (or four q4 blocks):
//   q8_0 block quants: 32 bytes, byte j = q[j] + 128 (q in [-127, 127]; stored unsigned so the
//        VNNI u8 x s8 dot takes the weights as the unsigned operand: sum (q + 128) a = sum q a +
//        128 sum a, and sum a is known per activation block).
//   q4_0 block quants: 16 bytes, byte j = (q[j] + 8) | (q[j + 16] + 8) << 4 (q in [-8, 7]): the
//        low nibbles are the block's first half, the high nibbles its second half, so unpacking is
//        one shift and one mask with no shuffles of the activations.
// A group of c blocks is c * (32 or 16) quant bytes then c * 2 scale bytes; rows are
// dtype_bytes(type, K) = nb * 34 (q8_0) or nb * 18 (q4_0) bytes.

#include <cstdint>

#include "moerun/dtype.h"

namespace moerun::cpu {

inline constexpr int64_t kQuantBlock = 32;       // weights per block (and per activation block)
inline constexpr int64_t kQuantGroupBlocks = 16;  // blocks per group

// Quant bytes per block: 32 (q8_0) or 16 (q4_0).
constexpr int64_t quant_block_bytes(DType t) noexcept { return t == DType::q8_0 ? 32 : 16; }

// Byte offset of group g in a row, and of its scales, for a row of nb blocks.
constexpr int64_t quant_group_offset(DType t, int64_t g) noexcept {
  return g * kQuantGroupBlocks * (quant_block_bytes(t) + 2);
}

uint16_t f32_to_f16(float f) noexcept;  // round to nearest even; overflow to inf

// Quantizes one row of k floats (k a multiple of 32) into dst (dtype_bytes(to, k) bytes).
// q8_0: d = max|w| / 127, q = round(w / d). q4_0: of d = (the signed value of largest magnitude)
// / -8 and d = max|w| / 7, the one with the smaller squared error, q = clamp(round(w / d), -8, 7).
// The scale is rounded to fp16 first and the quants are computed with the rounded scale.
void quantize_row(DType to, const float* src, int64_t k, void* dst);
// Decodes one row back to floats: dst[i] = d_b * q_i.
void dequantize_row(DType from, const void* src, int64_t k, float* dst);

}  // namespace moerun::cpu
