#pragma once
// Element types as safetensors names them, plus moerun's own block-quantized weight types (made at
// load, never read from a file).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moerun {

enum class DType : uint8_t {
  f64, f32, f16, bf16, f8_e4m3, f8_e5m2,
  i64, i32, i16, i8, u64, u32, u16, u8, boolean,
  // Block-quantized weight rows (kernels/cpu/quant.h has the exact layout): 32 weights share one
  // fp16 scale. q8_0: int8 per weight (34 bytes per block); q4_0: 4 bits per weight (18 bytes).
  // A row of in_features (a multiple of 32) is self-contained, so row views stay valid.
  q8_0, q4_0,
};

inline constexpr int kDTypeCount = 15;       // the safetensors element types: parse_dtype's domain
inline constexpr int kAllDTypeCount = 17;    // ... plus the block types

size_t dtype_size(DType t) noexcept;                              // bytes per element; block types: bytes per block
std::string_view dtype_name(DType t) noexcept;                    // safetensors spelling: "BF16", "F8_E4M3"; "Q8_0"
std::optional<DType> parse_dtype(std::string_view safetensors_name) noexcept;  // never a block type
bool is_float(DType t) noexcept;                                  // f64, f32, f16, bf16, f8_*
bool is_block(DType t) noexcept;                                  // q8_0, q4_0
int64_t dtype_block_elems(DType t) noexcept;                      // elements per block: 1, or 32 for q8_0/q4_0
size_t dtype_block_bytes(DType t) noexcept;                       // bytes per block (= dtype_size for element types)
// Bytes of `n` consecutive elements; for block types n must be a multiple of the block (it rounds up).
size_t dtype_bytes(DType t, int64_t n) noexcept;

}  // namespace moerun
