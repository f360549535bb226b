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

// How a KV cache stores its rows (--kv-type; llama.cpp's -ctk/-ctv, one type for K and V). The
// attention kernels read the chosen type directly; new rows are converted as they are stored.
//   f32, f16, bf16: one element each (f16/bf16 rounded to nearest even).
//   q8_0: blocks of 32 consecutive elements of the cache, each 34 bytes: an fp16 scale d then 32
//         int8 q with x = d * q, d = max|x| / 127 (ggml's block_q8_0 layout). Element e lies in
//         block e / 32, so every row, head and latent offset the kernels start at must be a multiple
//         of 32 elements.
enum class KvType : uint8_t { f32, f16, bf16, q8_0 };
inline constexpr int64_t kKvBlock = 32;  // q8_0 elements per block
inline constexpr size_t kKvBlockBytes = 34;
std::string_view kv_type_name(KvType t) noexcept;                  // "f32", "f16", "bf16", "q8_0"
std::optional<KvType> parse_kv_type(std::string_view name) noexcept;
// Bytes of n consecutive cache elements (q8_0: n a multiple of 32).
size_t kv_bytes(KvType t, int64_t n) noexcept;

}  // namespace moerun
