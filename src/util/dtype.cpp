#include "moerun/dtype.h"

#include <array>

namespace moerun {
namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
  bool is_float;
};

constexpr std::array<DTypeInfo, kDTypeCount> kDTypes = {{
    {DType::f64, "F64", 8, true},      {DType::f32, "F32", 4, true},
    {DType::f16, "F16", 2, true},      {DType::bf16, "BF16", 2, true},
    {DType::f8_e4m3, "F8_E4M3", 1, true}, {DType::f8_e5m2, "F8_E5M2", 1, true},
    {DType::i64, "I64", 8, false},     {DType::i32, "I32", 4, false},
    {DType::i16, "I16", 2, false},     {DType::i8, "I8", 1, false},
    {DType::u64, "U64", 8, false},     {DType::u32, "U32", 4, false},
    {DType::u16, "U16", 2, false},     {DType::u8, "U8", 1, false},
    {DType::boolean, "BOOL", 1, false},
}};

const DTypeInfo& info(DType t) noexcept { return kDTypes[static_cast<size_t>(t)]; }

}  // namespace

size_t dtype_size(DType t) noexcept { return info(t).size; }
std::string_view dtype_name(DType t) noexcept { return info(t).name; }
bool is_float(DType t) noexcept { return info(t).is_float; }

std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const DTypeInfo& d : kDTypes)
    if (d.name == name) return d.type;
  return std::nullopt;
}

}  // namespace moerun
