#pragma once
// A session's workspace: one named buffer per role, planned once from the model description and the
// context, allocated once when the session is made, and never grown: no forward step allocates.
// B = min(context, kMaxBatch) is the largest micro-batch (Session::forward splits longer inputs).
// Every buffer holds one thing; its shape is written beside its role.

#include <array>
#include <cstddef>
#include <cstdint>

#include "moerun/engine.h"
#include "moerun/model_desc.h"

namespace moerun::model {
struct Partition;
}  // namespace moerun::model

namespace moerun::runtime {

// A forward pass runs at most this many tokens at once: longer inputs run in micro-batches, so the
// activations of a step are bounded whatever the prompt length (results equal up to rounding).
inline constexpr int64_t kMaxBatch = 512;

enum class Ws : uint8_t {
  ids,             // [B] int32: the step's token ids
  positions,       // [B] int64: their positions
  inv_freq,        // [S, rope.dim / 2]: RoPE inverse frequencies (S = 1, or one per sequence for dynamic NTK)
  x,               // [B, D]: the residual stream
  h,               // [B, D]: the normed input of a block (and of the LM head)
  out,             // [B, D]: a block's output, added to x
  q,               // [B, H, d_qk]: queries (GQA d_h; MLA d_n + d_r)
  k,               // [B, H_kv, d_h]: new keys (GQA)
  v,               // [B, H_kv, d_h]: new values (GQA)
  attn,            // [B, H, d_v]: attention output before o_proj (GQA d_v = d_h)
  q_lora,          // [B, r_q]: MLA's compressed query
  kv_new,          // [B, r_kv + d_r]: MLA's new latent rows [c, k_rope]
  q_absorbed,      // [B, H, r_kv + d_r]: MLA absorbed queries [W_UK^T q_nope, q_rope]
  latent_out,      // [B, H, r_kv]: MLA absorbed attention output in latent space
  kv_full,         // [ctx, H, d_n + d_v]: MLA naive form: K_nope and V of every cached position
  k_full,          // [ctx, H, d_n + d_r]: MLA naive form: full keys of every cached position
  ffn_gate,        // [B, I]: gate projection, then act(gate) * up (I: the widest dense or shared FFN)
  ffn_up,          // [B, I]: up projection
  router_logits,   // [B, E]
  expert_ids,      // [B, k] int32: routed experts per token
  expert_weights,  // [B, k]: their weights
  shared_out,      // [B, D]: the shared expert's output
  shared_gate,     // [B]: Qwen2-MoE's sigmoid gate input per token
  logits,          // [B, V]: LM-head output (every position of a micro-batch when asked)
  logits_part,     // [B, V_r]: a rank's rows of a vocabulary-split LM head (padded to the widest rank's)
  logits_all,      // [ranks, B, V_r]: every rank's logits_part, gathered
  mtp_in,          // [B, 2D]: a multi-token-prediction layer's input [enorm(embedding); hnorm(hidden)]
  count
};

struct WorkspaceEntry {
  const char* role = "";
  size_t bytes = 0;  // 0: not used by this model
};
using WorkspacePlan = std::array<WorkspaceEntry, static_cast<size_t>(Ws::count)>;

// What a rank of a distributed engine computes beyond its description (model/partition.h): the
// whole q/k projections when the q/k norm spans all heads, and the vocabulary-split LM head.
struct WorkspaceShare {
  int64_t q_heads = 0, kv_heads = 0;  // heads the q/k projections produce (0: the description's)
  int64_t vocab_rows = 0;             // the widest rank's LM-head rows under a vocabulary split (0: none)
  int ranks = 1;
  bool logits = true;                 // holds the full logits (the leader, or every rank of one)
};

WorkspaceShare workspace_share(const model::Partition& p, int64_t vocab_size);

// The bytes of every role for steps of at most `tokens` rows (0: min(context, kMaxBatch), a
// session's micro-batch) over `sequences` sequences of at most `context` positions (a Batch's
// steps; the RoPE tables are per sequence when the scaling is dynamic), overflow-checked: a context
// is user input. Roles this model does not use get 0.
WorkspacePlan plan_workspace(const ModelDesc& d, int64_t context, MlaMode mla, int64_t tokens = 0, int64_t sequences = 1,
                             const WorkspaceShare& share = {});

// Everything one session allocates, as the memory plan counts it and the session reserves it.
struct SessionMemory {
  KvType kv_type = KvType::f32;
  size_t cache_bytes = 0;         // one cache buffer of one layer (GQA: K or V; MLA: the latent rows)
  size_t kv_bytes = 0;            // every layer's caches
  WorkspacePlan workspace;
  // Every MoE layer's gate/up/down pointer tables and their FP8 scale tables (null pointers unless
  // the experts are FP8: a few KiB, so they are always made).
  size_t expert_table_bytes = 0;
  // With multi-token-prediction layers (ModelDesc::mtp_ffn): their caches and the final hidden state
  // of every position they read ([context + 1, D] f32: the last row feeds a draft to the next).
  size_t mtp_cache_bytes = 0, mtp_hidden_bytes = 0;
  size_t total_bytes = 0;         // kv + workspace + expert tables + mtp
};
SessionMemory plan_session(const ModelDesc& d, int64_t context, MlaMode mla, KvType kv_type, const WorkspaceShare& share = {});

// Throws Error when sessions of this model cannot store their cache as `kv_type`: q8_0 needs every
// row and head offset the kernels start at to be a multiple of 32 elements, and the naive MLA form
// reads the latent cache as plain f32 rows.
void check_kv_type(const ModelDesc& d, KvType kv_type, MlaMode mla);
// The FP8 form weights take at load on `backend` (--fp8: kept as FP8 on both backends by default).
DType fp8_form(const EngineOptions& options, BackendKind backend);
// Device memory the CUDA ops need beyond the session's buffers, at a context's longest step: the op
// workspace (a GEMM's bf16 input and FP8 dequantization tile, the MoE prefill's rows, split-K
// partials), cuBLAS's workspace and the runtime's own. An upper estimate the plan reserves.
size_t cuda_scratch_bytes(const ModelDesc& d, int64_t context);

}  // namespace moerun::runtime
