#include "model/convert.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu/quant.h"
#include "kernels/ops.h"
#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::model {
namespace {

using detail::cat;

// A new owned tensor of `dtype` and `shape`; `fill` writes its bytes.
template <class Fill>
Tensor owned(DType dtype, const Shape& shape, Fill fill) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  auto buf = std::shared_ptr<std::byte[]>(new std::byte[dtype_bytes(dtype, n) + 1]);
  fill(buf.get(), n);
  return Tensor(dtype, shape, buf.get(), std::shared_ptr<const void>(buf, buf.get()));
}

float element(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32: case DType::bf16: case DType::f16: return cpu::load_f32(t.data(), t.dtype(), i);
    default: throw Error("convert", cat("cannot read ", dtype_name(t.dtype()), " as a number"));
  }
}

Tensor to_f32(const Tensor& t) {
  if (!t) return t;
  return owned(DType::f32, t.shape(), [&](std::byte* dst, int64_t n) {
    float* f = reinterpret_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) f[i] = element(t, i);
  });
}

bool aligned(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data()) % dtype_size(t.dtype()) == 0;
}

// Matrices stay views unless misaligned (unpadded headers) or FP8.
Tensor prepare_matrix(const Tensor& t) {
  if (!t || aligned(t)) return t;
  return owned(t.dtype(), t.shape(), [&](std::byte* dst, int64_t) { std::memcpy(dst, t.data(), t.nbytes()); });
}

}  // namespace

Tensor dequantize_fp8(const Tensor& q, const Tensor& s, int64_t block_out, int64_t block_in, DType to) {
  if (to != DType::bf16 && to != DType::f32) throw Error("dequantize_fp8", "target dtype must be BF16 or F32");
  const int64_t rows = q.dim(0), cols = q.dim(1);
  const int64_t scale_cols = s.dim(1);
  const auto* qb = q.data_as<uint8_t>();
  float lut[256];  // every e4m3 byte decoded once
  for (int b = 0; b < 256; ++b) lut[b] = cpu::f8_e4m3_to_f32(static_cast<uint8_t>(b));
  return owned(to, q.shape(), [&](std::byte* dst, int64_t) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        const float v = lut[qb[i * cols + j]] * element(s, (i / block_out) * scale_cols + j / block_in);
        if (to == DType::f32) {
          reinterpret_cast<float*>(dst)[i * cols + j] = v;
        } else {
          const uint16_t h = cpu::f32_to_bf16(v);
          std::memcpy(dst + 2 * (i * cols + j), &h, 2);
        }
      }
  });
}

Tensor quantize_matrix(const Tensor& w, const Tensor& scale_inv, int64_t block_out, int64_t block_in, DType to) {
  if (to != DType::q8_0 && to != DType::q4_0) throw Error("quantize_matrix", "target dtype must be Q8_0 or Q4_0");
  if (w.rank() != 2 || w.dim(1) % cpu::kQuantBlock != 0)
    throw Error("quantize_matrix", cat("need [out, in] with in a multiple of 32, got ", shape_str(w.shape())));
  // FP8 goes through its exact f32 dequantization; other dtypes are read row by row.
  const Tensor src = w.dtype() == DType::f8_e4m3 ? dequantize_fp8(w, scale_inv, block_out, block_in, DType::f32) : w;
  const int64_t rows = src.dim(0), cols = src.dim(1);
  const size_t row_bytes = dtype_bytes(to, cols);
  return owned(to, src.shape(), [&](std::byte* dst, int64_t) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < cols; ++j) row[static_cast<size_t>(j)] = element(src, r * cols + j);
      cpu::quantize_row(to, row.data(), cols, dst + static_cast<size_t>(r) * row_bytes);
    }
  });
}

PreparedForm prepared_form(const WeightSite& site, LinearPart part, const Tensor& t, const PrepareOptions& o) {
  const DType dt = t.dtype();
  const bool misaligned = t.defined() && !aligned(t);
  if (part == LinearPart::scale) return {.dtype = dt, .owned = false, .kept = false};  // folded into its weight
  if (part == LinearPart::bias || site.f32_at_run_time) return {.dtype = DType::f32, .owned = true};
  if (site.kind == WeightKind::linear) {
    const bool quantize = o.quant != WeightQuant::none && !site.per_head && t.rank() == 2 &&
                          t.dim(1) % cpu::kQuantBlock == 0 && is_float(dt);
    if (quantize) return {.dtype = o.quant == WeightQuant::q8 ? DType::q8_0 : DType::q4_0, .owned = true};
    if (dt == DType::f8_e4m3) return {.dtype = o.fp8_to, .owned = true};
  }
  return {.dtype = dt, .owned = misaligned};  // a view of the mapped file unless misaligned
}

namespace {

Tensor prepare_tensor(const WeightSite& site, LinearPart part, const Tensor& t, const Tensor& scale, const ModelDesc& d,
                      const PrepareOptions& o) {
  const PreparedForm f = prepared_form(site, part, t, o);
  if (!f.owned) return t;
  if (is_block(f.dtype)) return quantize_matrix(t, scale, d.fp8.block_out, d.fp8.block_in, f.dtype);
  if (t.dtype() == DType::f8_e4m3) return dequantize_fp8(t, scale, d.fp8.block_out, d.fp8.block_in, f.dtype);
  if (f.dtype == DType::f32) return to_f32(t);
  return prepare_matrix(t);  // an aligned copy
}

}  // namespace

ModelWeights prepare_weights(const ModelWeights& w, const ModelDesc& d, const PrepareOptions& o) {
  ModelWeights out = w;  // views; the walk replaces each tensor by its prepared form
  const void* embedding = w.embed_tokens.data();
  for_each_weight(out, [&](const WeightSite& site, auto& x) {
    if constexpr (std::is_same_v<std::remove_reference_t<decltype(x)>, LinearWeight>) {
      const Tensor scale = x.weight_scale_inv;
      x.weight = prepare_tensor(site, LinearPart::weight, x.weight, scale, d, o);
      x.weight_scale_inv = Tensor();  // dequantized or quantized: the scales are folded in
      if (x.bias) x.bias = prepare_tensor(site, LinearPart::bias, x.bias, {}, d, o);
    } else if (site.kind == WeightKind::linear && x.data() == embedding) {
      // A tied LM head shares the prepared embedding, except under quantization: the head is the
      // largest matrix a decode step reads, so it gets its own quantized copy while lookups keep the
      // exact table.
      x = o.quant == WeightQuant::none ? out.embed_tokens : prepare_tensor(site, LinearPart::weight, x, {}, d, o);
    } else {
      x = prepare_tensor(site, site.kind == WeightKind::linear ? LinearPart::weight : LinearPart::whole, x, {}, d, o);
    }
  });
  return out;
}

}  // namespace moerun::model
