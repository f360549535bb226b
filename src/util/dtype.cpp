#include "moerun/dtype.h"

#include <array>

namespace moerun {
namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;         // bytes per block
  int64_t block;       // elements per block
  bool is_float;
};

constexpr std::array<DTypeInfo, kAllDTypeCount> kDTypes = {{
    {DType::f64, "F64", 8, 1, true},      {DType::f32, "F32", 4, 1, true},
    {DType::f16, "F16", 2, 1, true},      {DType::bf16, "BF16", 2, 1, true},
    {DType::f8_e4m3, "F8_E4M3", 1, 1, true}, {DType::f8_e5m2, "F8_E5M2", 1, 1, true},
    {DType::i64, "I64", 8, 1, false},     {DType::i32, "I32", 4, 1, false},
    {DType::i16, "I16", 2, 1, false},     {DType::i8, "I8", 1, 1, false},
    {DType::u64, "U64", 8, 1, false},     {DType::u32, "U32", 4, 1, false},
    {DType::u16, "U16", 2, 1, false},     {DType::u8, "U8", 1, 1, false},
    {DType::boolean, "BOOL", 1, 1, false},
    // 32 quants + one fp16 scale per block.
    {DType::q8_0, "Q8_0", 34, 32, false}, {DType::q4_0, "Q4_0", 18, 32, false},
}};

const DTypeInfo& info(DType t) noexcept { return kDTypes[static_cast<size_t>(t)]; }

}  // namespace

size_t dtype_size(DType t) noexcept { return info(t).size; }
std::string_view dtype_name(DType t) noexcept { return info(t).name; }
bool is_float(DType t) noexcept { return info(t).is_float; }
bool is_block(DType t) noexcept { return info(t).block > 1; }
int64_t dtype_block_elems(DType t) noexcept { return info(t).block; }
size_t dtype_block_bytes(DType t) noexcept { return info(t).size; }

size_t dtype_bytes(DType t, int64_t n) noexcept {
  const DTypeInfo& d = info(t);
  return static_cast<size_t>((n + d.block - 1) / d.block) * d.size;
}

std::optional<DType> parse_dtype(std::string_view name) noexcept {
  // Only the safetensors types: a file naming "Q8_0" is not a file we wrote, and not one we can read.
  for (int i = 0; i < kDTypeCount; ++i)
    if (kDTypes[static_cast<size_t>(i)].name == name) return kDTypes[static_cast<size_t>(i)].type;
  return std::nullopt;
}

std::string_view kv_type_name(KvType t) noexcept {
  switch (t) {
    case KvType::f32: return "f32";
    case KvType::f16: return "f16";
    case KvType::bf16: return "bf16";
    case KvType::q8_0: return "q8_0";
  }
  return "?";
}

std::optional<KvType> parse_kv_type(std::string_view name) noexcept {
  for (KvType t : {KvType::f32, KvType::f16, KvType::bf16, KvType::q8_0})
    if (kv_type_name(t) == name) return t;
  return std::nullopt;
}

size_t kv_bytes(KvType t, int64_t n) noexcept {
  switch (t) {
    case KvType::f32: return static_cast<size_t>(n) * 4;
    case KvType::f16: case KvType::bf16: return static_cast<size_t>(n) * 2;
    case KvType::q8_0: return static_cast<size_t>((n + kKvBlock - 1) / kKvBlock) * kKvBlockBytes;
  }
  return 0;
}

}  // namespace moerun
