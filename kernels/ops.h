#pragma once
// The op set every backend implements. cpu:: ops take host pointers and a cpu::Context (threads and
// scratch); cuda:: ops take device pointers and a cuda::Context (stream and workspace). Each op has
// one params struct, the same for both backends, so they and their tests agree on its meaning; what
// only one backend needs to run an op lives in its Context, never in the params.
// Activations are fp32; weights may be f32, bf16, f16, FP8 e4m3 with block scales, or q8_0 / q4_0
// ([out, in] as HF nn.Linear stores them); KV caches f32, f16, bf16 or q8_0 (KvType).
// Nothing here knows about model families: ops see capabilities (rope layout, router kind) only.
// No CUDA header here: the CPU-only build and the CLI never need the toolkit. nvcc compiles this
// header as C++17 (no std::span).

#include <cstddef>
#include <cstdint>

#include "moerun/model_desc.h"
#include "moerun/dtype.h"

namespace moerun {

// y[t, o] = sum_i x[t, i] * W[o, i] + bias[o]   (y = x W^T + b), fp32 accumulation.
// Two fusions save the executor a launch each (fields at the end): with norm_weight set the matmul reads
// RMSNorm(x) instead of x, x'[t, i] = norm_weight[i] * (x[t, i] * inv_rms[t]) with inv_rms[t] =
// 1 / sqrt(mean_i(x[t, i]^2) + norm_eps) as RmsNormParams (mean in fp32); with accumulate,
// out[t, o] += y[t, o] (the residual add; out must not alias x).
struct MatmulParams {
  float* out = nullptr;           // [n, out_features], row stride out_stride
  const float* x = nullptr;       // [n, in_features], row stride x_stride
  const void* weight = nullptr;   // [out_features, in_features] of weight_dtype, rows contiguous
  DType weight_dtype = DType::f32;
  const float* bias = nullptr;    // [out_features] or nullptr
  int64_t n = 0, in_features = 0, out_features = 0;
  int64_t x_stride = 0;           // 0: in_features
  int64_t out_stride = 0;         // 0: out_features
  // FP8 (f8_e4m3) weights only: block scales [ceil(out/block_out), ceil(in/block_in)] (DeepSeek's
  // weight_scale_inv); element (o, i) is w * scale[o / block_out, i / block_in].
  const float* weight_scale = nullptr;
  int64_t block_out = 128, block_in = 128;
  const float* norm_weight = nullptr;  // [in_features] or nullptr: RMSNorm x first (x itself is not written)
  float norm_eps = 0.0f;               // with norm_weight only
  bool accumulate = false;             // out += y instead of out = y
};

// RMSNorm over the last dimension, as HF's T5-style norm (docs/MODELS.md §2.1):
// out[r, :] = weight * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)), with the mean taken in fp32.
struct RmsNormParams {
  float* out = nullptr;           // [rows, cols], row stride `stride`; may equal x (in place)
  const float* x = nullptr;       // [rows, cols], row stride `stride`
  const float* weight = nullptr;  // [cols]
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-6f;
  int64_t stride = 0;             // 0: cols
};

// Rotary position embedding, in place, on dims [rot_offset, rot_offset + rot_dim) of every head.
// neox: pairs (i, i + d/2); interleaved: pairs (2i, 2i + 1) (docs/MODELS.md §2.4).
// angle = position * inv_freq[i] in fp32; cos and sin are multiplied by attention_factor (YaRN).
struct RopeParams {
  float* x = nullptr;                  // [n_tokens, n_heads, ...]: token stride, head stride below
  int64_t n_tokens = 0, n_heads = 0;
  int64_t token_stride = 0, head_stride = 0;  // in floats
  int64_t rot_offset = 0, rot_dim = 0;
  const int64_t* positions = nullptr;  // [n_tokens]
  const float* inv_freq = nullptr;     // [rot_dim / 2]
  float attention_factor = 1.0f;
  RopeStyle style = RopeStyle::neox;
};

// Causal attention of new tokens over a cache (GQA, MQA and MLA's absorbed form alike).
// Query head h reads KV head h / (n_heads / n_kv_heads). Token t attends to cache rows
// [0, positions[t]]; scores = scale * q.k, softmax in fp32, out = sum p * v.
// MLA absorbed: one KV head whose key row is [c, k_rope] (kv_lora_rank + d_r) and whose value is
// the first kv_lora_rank entries of the same row: k and v point into the same cache.
// The cache holds kv_type elements (moerun/dtype.h: KvType); its strides count elements, and for
// q8_0 every row and head offset is a multiple of 32 elements (whole blocks).
struct AttentionParams {
  float* out = nullptr;        // [n_tokens, n_heads, v_dim]
  const float* q = nullptr;    // [n_tokens, n_heads, qk_dim], strides below
  const void* k = nullptr;     // [ctx, n_kv_heads, qk_dim] of kv_type, strides below
  const void* v = nullptr;     // [ctx, n_kv_heads, v_dim] of kv_type, strides below
  KvType kv_type = KvType::f32;
  const int64_t* positions = nullptr;  // [n_tokens]
  int64_t n_tokens = 0, n_heads = 0, n_kv_heads = 0, qk_dim = 0, v_dim = 0;
  int64_t q_token_stride = 0, q_head_stride = 0;
  int64_t k_pos_stride = 0, k_head_stride = 0;
  int64_t v_pos_stride = 0, v_head_stride = 0;
  float scale = 1.0f;
  // Cache rows any token may attend (the session's context). CUDA sizes its split-K grid by it so a
  // captured decode graph stays valid as positions grow; 0: positions[n_tokens - 1] + 1 (read on the
  // host, CPU only).
  int64_t max_len = 0;
};

// out = act(gate) * up, elementwise: the gated FFN's middle (SwiGLU for silu, GeGLU for the GELUs),
// with act the config's hidden_act as transformers defines it (moerun/config.h, Activation).
struct GatedActParams {
  float* out = nullptr;         // [n]; may equal gate
  const float* gate = nullptr;  // [n]
  const float* up = nullptr;    // [n]
  int64_t n = 0;
  Activation act = Activation::silu;
};

// MoE routing for every variant (docs/MODELS.md §3): scores (softmax or sigmoid), optional
// selection-only correction bias, group-limited selection (group score = max for
// group_limited_greedy, sum of the two best for noaux_tc), top-k, optional renormalisation, then
// the routed scaling factor.
struct RouteParams {
  int32_t* expert_ids = nullptr;         // [n_tokens, top_k]
  float* expert_weights = nullptr;       // [n_tokens, top_k]
  const float* logits = nullptr;         // [n_tokens, n_experts]
  const float* correction_bias = nullptr;  // [n_experts] or nullptr
  int64_t n_tokens = 0, n_experts = 0, top_k = 0;
  ScoreFunc score = ScoreFunc::softmax;
  TopkMethod method = TopkMethod::greedy;
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
};

// out[t, :] = table[ids[t], :] widened to fp32 (the token embedding).
struct EmbedParams {
  float* out = nullptr;          // [n_tokens, dim]
  const void* table = nullptr;   // [vocab, dim] of dtype
  DType dtype = DType::f32;
  const int32_t* ids = nullptr;  // [n_tokens], in range (the executor checks)
  int64_t n_tokens = 0, dim = 0;
  // A vocabulary-split table (a rank's share): it holds rows [first_row, first_row + rows) of the
  // vocabulary, and ids outside give zero rows (the ranks' lookups are then summed). rows 0: the
  // whole vocabulary.
  int64_t first_row = 0, rows = 0;
};

// out[r, :] += x[r, :], or out[r, :] += sigmoid(gate[r]) * x[r, :] when gate is set (Qwen2-MoE's
// gated shared expert).
struct AddParams {
  float* out = nullptr;         // [rows, cols]
  const float* x = nullptr;     // [rows, cols]
  const float* gate = nullptr;  // [rows] or nullptr
  int64_t rows = 0, cols = 0;
};

// x = clamp(x, -limit, limit) elementwise (OLMoE's clip_qkv).
struct ClampParams {
  float* x = nullptr;
  int64_t n = 0;
  float limit = 0.0f;
};

// Writes new rows into a cache at their positions: cache[positions[t] * cache_stride + j] =
// src[t * src_stride + j] for j < cols, converted to the cache's type (KvType; q8_0: cols and
// cache_stride multiples of 32, each 32-block quantized on its own). Positions are read where the op
// runs, so a captured decode step stays valid.
// With rope_inv_freq set, the stored values are first rotated (the new K rows' RoPE, fused so it
// costs no launch of its own; src itself is not written): for each row t and head h < rope_heads,
// dims [h * rope_head_stride + rope_offset, + rope_dim) of the row are rotated exactly as RopeParams
// defines (position positions[t], inv_freq rope_inv_freq, attention_factor, style), i.e. what rope
// on a copy followed by store_rows gives, bit for bit on each backend. rope_dim is even, the regions
// lie inside cols, and with rope_heads > 1 each lies inside its head (rope_offset + rope_dim <=
// rope_head_stride). GQA: rope_heads = n_kv_heads, rope_head_stride = head_dim; MLA: one head,
// rope_offset = kv_lora_rank, rope_dim = qk_rope_head_dim.
struct StoreRowsParams {
  void* cache = nullptr;       // of cache_type, strides in elements
  KvType cache_type = KvType::f32;
  const float* src = nullptr;
  const int64_t* positions = nullptr;  // [n]
  int64_t n = 0, cols = 0, src_stride = 0, cache_stride = 0;
  const float* rope_inv_freq = nullptr;  // [rope_dim / 2] or nullptr: no rotation
  int64_t rope_heads = 1, rope_head_stride = 0, rope_offset = 0, rope_dim = 0;  // in floats
  float rope_attention_factor = 1.0f;
  RopeStyle rope_style = RopeStyle::neox;
};

// Strided 2-D copy: dst[r * dst_stride + j] = src[r * src_stride + j] for r < rows, j < cols.
struct CopyParams {
  float* dst = nullptr;
  const float* src = nullptr;
  int64_t rows = 0, cols = 0, dst_stride = 0, src_stride = 0;
};

// One small matrix per head, taken from a shared weight (MLA's absorption, docs/MODELS.md §4).
// Head h uses rows [h * head_rows + row_offset, ...) of weight W (row length `row_len`):
//   transposed = false: out[t, h, o] = sum_i W[h * head_rows + row_offset + o, i] * x[t, h, i]
//                       (o < out_dim, i < in_dim = row_len)
//   transposed = true:  out[t, h, o] = sum_i W[h * head_rows + row_offset + i, o] * x[t, h, i]
//                       (i < in_dim, o < out_dim = row_len)
struct HeadMatmulParams {
  float* out = nullptr;
  const float* x = nullptr;
  const void* weight = nullptr;
  DType weight_dtype = DType::f32;
  int64_t n_tokens = 0, n_heads = 0, in_dim = 0, out_dim = 0;
  int64_t head_rows = 0, row_offset = 0, row_len = 0;
  int64_t x_token_stride = 0, x_head_stride = 0;
  int64_t out_token_stride = 0, out_head_stride = 0;
  bool transposed = false;
  // FP8 (f8_e4m3) weights only: block scales of the whole weight [ceil(rows / block_out),
  // ceil(row_len / block_in)]; element (row, i) of W is w * scale[row / block_out, i / block_in].
  const float* weight_scale = nullptr;
  int64_t block_out = 128, block_in = 128;
};

// The routed experts of one MoE layer (docs/MODELS.md §3), after routing:
//   out[t, :] = sum_k weights[t, k] * down_e(act(gate_e x[t]) * up_e x[t]),  e = ids[t, k]
// with act as GatedActParams::act.
// Expert e's matrices are gate[e], up[e] ([intermediate, hidden]) and down[e] ([hidden,
// intermediate]), all of weight_dtype. The pointer tables and ids live where the op runs (host for
// cpu::, device for cuda::). Each selected expert runs once over all of its tokens; experts nobody
// selected are not read. out is overwritten. A null gate[e] is an expert held by another rank
// (expert parallel): its pairs add nothing here, and the ranks' outputs are summed afterwards.
struct MoeParams {
  float* out = nullptr;                // [n_tokens, hidden]
  const float* x = nullptr;            // [n_tokens, hidden]
  const int32_t* expert_ids = nullptr;     // [n_tokens, top_k]
  const float* expert_weights = nullptr;   // [n_tokens, top_k]
  const void* const* gate = nullptr;   // [n_experts]
  const void* const* up = nullptr;     // [n_experts]
  const void* const* down = nullptr;   // [n_experts]
  DType weight_dtype = DType::f32;
  int64_t n_tokens = 0, top_k = 0, n_experts = 0, hidden = 0, intermediate = 0;
  Activation act = Activation::silu;   // hidden_act
  // FP8 (f8_e4m3) experts only: each matrix's block scales, as MatmulParams::weight_scale.
  const float* const* gate_scale = nullptr;  // [n_experts]
  const float* const* up_scale = nullptr;    // [n_experts]
  const float* const* down_scale = nullptr;  // [n_experts]
  int64_t block_out = 128, block_in = 128;
  // The shared expert as one more pair of every token (DeepSeek's ungated shared experts), fused so
  // it costs no launches of its own: when shared_gate is set,
  //   out[t, :] += down_s(act(gate_s x[t]) * up_s x[t])   (weight 1, added after the routed sum)
  // with gate_s/up_s [intermediate, hidden] and down_s [hidden, intermediate] (the routed experts'
  // intermediate and weight_dtype; FP8: their scales below, same block sizes). Device (cuda::) or
  // host (cpu::) pointers as the op runs, like the tables above.
  const void* shared_gate = nullptr;
  const void* shared_up = nullptr;
  const void* shared_down = nullptr;
  const float* shared_gate_scale = nullptr;
  const float* shared_up_scale = nullptr;
  const float* shared_down_scale = nullptr;
};

// CPU ops: host pointers, run to completion on the context's pool (or the calling thread without
// one), with scratch from the context, never from the params.
namespace cpu {
class Context;  // kernels/cpu/context.h: the thread pool and per-thread scratch
void matmul(const MatmulParams& p, Context& ctx);
// Up to kMatmulGroupMax matmuls (the q/k/v or gate/up projections of the same rows, a decode step's
// experts) in one pass over the pool: their output rows are split together, so the group costs one
// dispatch and the threads stay balanced, and entries reading the same activations prepare them
// once. Each entry's results are exactly matmul()'s.
inline constexpr size_t kMatmulGroupMax = 32;
void matmul_group(const MatmulParams* ps, size_t count, Context& ctx);
void rms_norm(const RmsNormParams& p, Context& ctx);
void rope(const RopeParams& p, Context& ctx);
void attention(const AttentionParams& p, Context& ctx);  // (token, head) pairs split across the pool
// Several independent attentions (a batched step's sequences, each over its own cache) in one pass
// over the pool; each gives exactly what attention() gives it.
void attention_many(const AttentionParams* ps, size_t count, Context& ctx);
void gated_act(const GatedActParams& p, Context& ctx);
void route(const RouteParams& p, Context& ctx);
void embed(const EmbedParams& p, Context& ctx);
void add(const AddParams& p, Context& ctx);
void clamp(const ClampParams& p, Context& ctx);
void store_rows(const StoreRowsParams& p, Context& ctx);
void copy(const CopyParams& p, Context& ctx);
void head_matmul(const HeadMatmulParams& p, Context& ctx);  // heads split across the pool
void moe(const MoeParams& p, Context& ctx);
// Element conversions used by the CPU ops and the loader.
float bf16_to_f32(uint16_t h) noexcept;
uint16_t f32_to_bf16(float f) noexcept;  // round to nearest even
float f16_to_f32(uint16_t h) noexcept;
float f8_e4m3_to_f32(uint8_t b) noexcept;
// Every E4M3 byte's exact value (f8_e4m3_to_f32 of 0..255, NaN for 0x7f and 0xff): one load per
// weight for the scalar kernels and the loader's conversions.
const float* f8_e4m3_values() noexcept;
// Reads element i of a weight row of `dtype` (f32, bf16, f16) as fp32.
float load_f32(const void* data, DType dtype, int64_t i) noexcept;
}  // namespace cpu

// CUDA ops: device pointers, enqueued on the context's stream (asynchronous; nothing syncs unless
// it says so). Scratch comes from the context's workspace, never from the params, and is sized on
// first use so that a later captured decode step allocates nothing.
namespace cuda {
class Context;  // kernels/cuda/context.h: one device, one stream, a cuBLAS handle, a workspace
// True when a CUDA device can be used; any error from the driver (none installed, too old) is false.
bool available() noexcept;
void matmul(const MatmulParams& p, Context& ctx);   // GEMV for few tokens, cuBLAS GEMM for many
// Matmuls of the same rows (q/k/v, q_a + kv_a, gate + up; at most cpu::kMatmulGroupMax): entries
// that read the same x with the same n, in_features, x_stride, weight dtype and norm run as one launch on the
// GEMV path (their output rows concatenated); anything else runs entry by entry. Each entry's results
// are exactly matmul()'s.
void matmul_group(const MatmulParams* ps, size_t count, Context& ctx);
void rms_norm(const RmsNormParams& p, Context& ctx);
void rope(const RopeParams& p, Context& ctx);
void attention(const AttentionParams& p, Context& ctx);  // flash-decoding / tiled prefill
void gated_act(const GatedActParams& p, Context& ctx);
void route(const RouteParams& p, Context& ctx);
void embed(const EmbedParams& p, Context& ctx);
void add(const AddParams& p, Context& ctx);
void clamp(const ClampParams& p, Context& ctx);
void store_rows(const StoreRowsParams& p, Context& ctx);
void copy(const CopyParams& p, Context& ctx);
void head_matmul(const HeadMatmulParams& p, Context& ctx);
void moe(const MoeParams& p, Context& ctx);  // decode: device-side ids; prefill: grouped GEMMs
}  // namespace cuda

}  // namespace moerun
