#pragma once
// Element types as safetensors names them.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moerun {

enum class DType : uint8_t {
  f64, f32, f16, bf16, f8_e4m3, f8_e5m2,
  i64, i32, i16, i8, u64, u32, u16, u8, boolean,
};

inline constexpr int kDTypeCount = 15;

size_t dtype_size(DType t) noexcept;                              // bytes per element
std::string_view dtype_name(DType t) noexcept;                    // safetensors spelling: "BF16", "F8_E4M3"
std::optional<DType> parse_dtype(std::string_view safetensors_name) noexcept;
bool is_float(DType t) noexcept;                                  // f64, f32, f16, bf16, f8_*

}  // namespace moerun
