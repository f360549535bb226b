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

struct Preparer {
  const ModelConfig& c;
  DType fp8_to;
  WeightQuant quant;

  // quantize: whether this projection may be quantized (kv_b_proj may not).
  LinearWeight linear(const LinearWeight& w, bool quantize = true) const {
    LinearWeight out;
    if (quantize && quant != WeightQuant::none && w.weight && w.weight.rank() == 2 && w.weight.dim(1) % 32 == 0 &&
        is_float(w.weight.dtype())) {
      out.weight = quantize_matrix(w.weight, w.weight_scale_inv, c.fp8.block_out, c.fp8.block_in,
                                   quant == WeightQuant::q8 ? DType::q8_0 : DType::q4_0);
    } else if (w.weight && w.weight.dtype() == DType::f8_e4m3) {
      out.weight = dequantize_fp8(w.weight, w.weight_scale_inv, c.fp8.block_out, c.fp8.block_in, fp8_to);
    } else {
      out.weight = prepare_matrix(w.weight);
    }
    out.bias = to_f32(w.bias);
    return out;
  }
  MlpWeights mlp(const MlpWeights& m) const { return {linear(m.gate_proj), linear(m.up_proj), linear(m.down_proj)}; }
};

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

ModelWeights prepare_weights(const ModelWeights& w, const ModelConfig& c, DType fp8_to, WeightQuant quant) {
  const Preparer p{c, fp8_to, quant};
  ModelWeights out;
  out.embed_tokens = prepare_matrix(w.embed_tokens);
  out.norm = to_f32(w.norm);
  // A tied LM head shares the embedding, except under quantization: the head is the largest matrix a
  // decode step reads, so it gets its own quantized copy while lookups keep the exact table.
  const bool tied = w.lm_head.data() == w.embed_tokens.data();
  out.lm_head = tied && quant == WeightQuant::none ? out.embed_tokens : p.linear({w.lm_head, {}, {}}).weight;
  for (const LayerWeights& L : w.layers) {
    LayerWeights& o = out.layers.emplace_back();
    o.input_layernorm = to_f32(L.input_layernorm);
    o.post_attention_layernorm = to_f32(L.post_attention_layernorm);
    o.q_proj = p.linear(L.q_proj);
    o.k_proj = p.linear(L.k_proj);
    o.v_proj = p.linear(L.v_proj);
    o.o_proj = p.linear(L.o_proj);
    o.q_norm = to_f32(L.q_norm);
    o.k_norm = to_f32(L.k_norm);
    o.q_a_proj = p.linear(L.q_a_proj);
    o.q_a_layernorm = to_f32(L.q_a_layernorm);
    o.q_b_proj = p.linear(L.q_b_proj);
    o.kv_a_proj_with_mqa = p.linear(L.kv_a_proj_with_mqa);
    o.kv_a_layernorm = to_f32(L.kv_a_layernorm);
    o.kv_b_proj = p.linear(L.kv_b_proj, /*quantize=*/false);  // read per head, element by element
    o.mlp = p.mlp(L.mlp);
    o.router = prepare_matrix(L.router);
    o.e_score_correction_bias = to_f32(L.e_score_correction_bias);
    for (const MlpWeights& e : L.experts) o.experts.push_back(p.mlp(e));
    o.shared_expert = p.mlp(L.shared_expert);
    o.shared_expert_gate = prepare_matrix(L.shared_expert_gate);
  }
  return out;
}

}  // namespace moerun::model
