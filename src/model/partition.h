#pragma once
// A rank's share of a model (docs/DESIGN.md "Distribution"): which attention heads, experts,
// intermediate columns and vocabulary rows it holds under a split (moerun/engine.h SplitMode), the
// description the executor runs with on that rank (its head counts), and the weights cut to the
// share: row ranges stay views of the mapped files, column ranges become owned copies, tensors the
// rank does not hold are left out (undefined). Loading, the memory plan and synthetic models all cut
// with the same rules (slice_rule), so the plan of a rank is what the rank allocates.

#include <cstdint>
#include <functional>
#include <string>

#include "moerun/config.h"
#include "moerun/engine.h"
#include "moerun/weights.h"

namespace moerun::model {

struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const noexcept { return end - begin; }
  bool operator==(const Range&) const = default;
};

// [begin, end) of rank r when `n` items are shared by `ranks` contiguously, the first n % ranks
// ranks one more (uneven counts allowed). `unit`: boundaries fall on multiples of it (FP8 blocks)
// when n has at least `ranks` units, else on single items.
Range share(int64_t n, int rank, int ranks, int64_t unit = 1);

struct Partition {
  int rank = 0, ranks = 1;
  SplitMode split = SplitMode::automatic;  // resolved
  bool attn_split = false;    // attention heads split (o_proj partial sums: all-reduce)
  bool ffn_split = false;     // dense FFNs and shared experts split by intermediate (all-reduce)
  bool experts_ep = false;    // routed experts split by expert
  bool experts_tp = false;    // every routed expert split by intermediate
  bool head_split = false;    // LM head split by vocabulary (all-gather of the logits)
  bool embed_split = false;   // token embedding split by vocabulary (other ranks' ids look up zeros: all-reduce)
  // Attention. GQA: query heads [q_heads) and the KV heads they read [kv_heads) (KV heads are
  // replicated when fewer than the ranks). MLA: q_heads (the latent is on every rank). full_qk: the
  // q/k norm spans all heads (OLMoE), so q and k are computed whole and the rank takes its heads
  // from them.
  Range q_heads, kv_heads;
  bool full_qk = false;
  int64_t heads_total = 0, kv_heads_total = 0;  // the model's (GQA: KV heads; MLA: 1)
  Range experts;                 // routed experts held (ep; all otherwise)
  Range expert_cols;             // of moe_intermediate_size (tp; all otherwise)
  Range dense_cols;              // of intermediate_size
  Range shared_cols;             // of shared.intermediate_size
  bool shared_here = true;       // computes the shared expert (ep: rank 0 only)
  Range vocab;                   // LM head rows (head_split; all otherwise)
  bool head_here = true;         // computes logits at all (ep: rank 0 only)

  bool distributed() const noexcept { return ranks > 1; }
  std::string summary() const;   // "rank 0 of 2 (ep+tp): heads 0-1 of 4, experts all 8, ..."
};

// The share of `rank` of `ranks` under `split` (automatic resolved). Throws Error when the split
// cannot be made (more ranks than heads for tp, than experts for ep, ...), naming the limit.
Partition make_partition(const ModelDesc& desc, SplitMode split, int rank, int ranks);

// The description the executor runs with on the rank: head counts of its share (full_qk keeps
// them whole: the executor takes its heads itself); everything else as the model's.
ModelConfig local_config(const ModelConfig& config, const Partition& p);

// How a rank holds one tensor of the walk.
enum class Cut : uint8_t { whole, none, rows, cols };
struct SliceRule {
  Cut cut = Cut::whole;
  Range range{};        // rows or columns of the weight (rows: dimension 0, cols: dimension 1)
  bool bias = true;     // a projection's bias: kept (cols cut: on one rank only, the sum adds it once)
};
SliceRule slice_rule(const WeightSite& site, const ModelDesc& desc, const Partition& p);

// Hooks for weights that are not plain mapped views: synthetic models fill only what a rank
// keeps (materialize) and drop what it copied from (release).
struct SliceHooks {
  std::function<void(const Tensor& view)> materialize;  // about to be read or kept
  std::function<void(const Tensor& whole)> release;     // no longer needed
};

// `w` cut to the rank's share: views for whole tensors and row ranges, owned copies for column
// ranges (FP8 weights keep their block scales when the range falls on block boundaries, and are
// dequantized to f32 otherwise), undefined tensors for what the rank does not hold. `shapes_only`:
// no data is read or copied (the memory plan of a bare config).
ModelWeights slice_weights(const ModelWeights& w, const ModelDesc& desc, const Partition& p, bool shapes_only = false,
                           const SliceHooks& hooks = {});

}  // namespace moerun::model
