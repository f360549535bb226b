#pragma once
// On-load conversions, done once (docs/DESIGN.md rule 3): FP8 block-scaled weights kept as they are
// (their scales as f32) or dequantized to bf16 or f32, small vectors (norms, biases, correction bias) to f32, any tensor whose data is not
// aligned for its dtype copied to aligned memory, and with a WeightQuant the 2-D projections
// quantized to q8_0 / q4_0 (kernels/cpu/quant.h). Everything else stays a view of the mmap.

#include "moerun/model_desc.h"
#include "moerun/engine.h"
#include "moerun/weights.h"

namespace moerun::cpu {
class ThreadPool;  // kernels/cpu/thread_pool.h
}

namespace moerun::model {

// W[i, j] = fp8(Q[i, j]) * S[i / block_out, j / block_in], products in fp32 (docs/MODELS.md §6).
Tensor dequantize_fp8(const Tensor& q, const Tensor& scale_inv, int64_t block_out, int64_t block_in, DType to);

// W [out, in] of any float dtype (FP8 with its scales dequantized first) as q8_0 or q4_0 rows;
// in must be a multiple of 32.
Tensor quantize_matrix(const Tensor& w, const Tensor& scale_inv, int64_t block_out, int64_t block_in, DType to);

struct PrepareOptions {
  // FP8 projections: kept as they are in the file (f8_e4m3: the kernels read the bytes and apply the
  // block scales, which become f32 when stored otherwise), or dequantized to bf16 or f32.
  DType fp8_to = DType::f8_e4m3;
  WeightQuant quant = WeightQuant::none;
};

// What preparation makes of one tensor of the walk (moerun/weights.h): its dtype at run time and
// whether that is a new owned copy (else the mapped view itself is used); `kept` is false for FP8
// block scales folded into a converted weight. The memory plan predicts the weights' bytes with
// it and prepare_weights() follows it, so the two cannot disagree. FP8 block scales are kept (as f32)
// with FP8 weights that stay FP8 and folded away otherwise.
//   quant: every projection the executor runs through matmul (attention incl. MLA's q_a/q_b/kv_a,
//   dense MLP, experts, shared expert, the LM head) whose in_features is a multiple of 32 is
//   quantized (a routed expert's only when its out_features is too: its three matrices share one dtype); norms, router, embeddings, kv_b_proj (read per head by head_matmul) and the shared
//   expert gate stay as they are. Norms, biases and the correction bias become f32 copies.
struct PreparedForm {
  DType dtype = DType::f32;
  bool owned = false;
  bool kept = true;
};
// `weight`: for a scale part, the weight it scales.
PreparedForm prepared_form(const WeightSite& site, LinearPart part, const Tensor& t, const PrepareOptions& options,
                           const Tensor& weight = {});

// Every tensor of `w` in its prepared form (views where nothing changes). The walk first decides
// and allocates every owned tensor (any Error comes before work starts), then the conversions run
// on `pool`'s threads (the calling thread alone without one), large tensors split into row ranges
// so the threads share even one matrix; the result is bit-identical whatever the pool. `progress`
// is called from the calling thread with source bytes done of the total ("converting weights"),
// at most about a hundred times, and once more with done == total at the end.
ModelWeights prepare_weights(const ModelWeights& w, const ModelDesc& desc, const PrepareOptions& options,
                             cpu::ThreadPool* pool = nullptr, const LoadProgress& progress = {});

// Locks the memory of every tensor of `w` (mlock): owned prepared copies and the mapped pages the
// views use, so the kernel never pages them out or drops them from the page cache. Call it with the
// prepared weights: under quantization the mapped source matrices are not locked, as nothing reads
// them after preparation. Throws Error naming the limit on locked memory (RLIMIT_MEMLOCK, `ulimit
// -l`) when the kernel refuses; nothing stays locked then.
void lock_weights(const ModelWeights& w);

}  // namespace moerun::model
