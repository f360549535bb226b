#pragma once
// Engine: a loaded model ready to run (weights prepared once at load). Session: one conversation's
// KV cache and position; feed it token ids, get next-token logits.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moerun/config.h"
#include "moerun/model.h"

namespace moerun {

struct MemoryPlan;  // moerun/plan.h
class Session;
class Batch;

enum class MlaMode : uint8_t {
  absorbed,  // attend over the latent cache with the key/value up-projections absorbed (decode form)
  naive,     // decompress per-head K and V from the latent cache first (HF's formulation)
};

// Where the executor runs. auto: CUDA when the build has it and a device is usable, else CPU.
enum class BackendKind : uint8_t { automatic, cpu, cuda };

// Weight quantization applied once at load (CPU backend): q8 = int8 in blocks of 32 with one scale
// per block, q4 = 4-bit in blocks of 32 with one scale per block. Norms, router and embeddings
// stay as they are.
enum class WeightQuant : uint8_t { none, q8, q4 };

// How a model is split across the ranks of a distributed run (`mpirun -np N moerun ...`; docs/DESIGN.md
// "Distribution"). ep: each rank holds a contiguous share of every MoE layer's routed experts and
// runs them for all tokens (everything else on every rank); tp: attention heads, dense FFNs, shared
// experts, every routed expert's intermediate and the LM head's vocabulary are split; ep_tp: experts
// as ep, the rest as tp. automatic: ep_tp for MoE models, tp for dense ones (ep when the heads cannot
// be split over the ranks).
enum class SplitMode : uint8_t { automatic, ep, tp, ep_tp };
std::string_view split_name(SplitMode mode) noexcept;  // "auto", "ep", "tp", "ep+tp"
SplitMode parse_split(std::string_view name);           // throws Error naming the accepted values

// This process's rank and the number of ranks as the launcher (mpirun) started them: 0 and 1
// without one. Read from the launcher's environment, before any engine exists (MPI is not
// initialised by asking).
int launch_rank() noexcept;
int launch_size() noexcept;
// After an error on one rank of a distributed run: stops every rank at once (MPI_Abort with `code`),
// so none waits for this one. Returns (does nothing) when MPI was never initialised.
void abort_ranks(int code) noexcept;

// Load-time work (converting weights) in progress: `done` of `total` source bytes of `stage`
// ("converting weights"); called from the loading thread, at most about a hundred times per stage.
using LoadProgress = std::function<void(std::string_view stage, uint64_t done, uint64_t total)>;

struct EngineOptions {
  int64_t context = 0;             // KV-cache positions per session; 0: min(max_position_embeddings, 4096)
  bool context_override = false;   // allow contexts above max_position_embeddings (output degrades)
  // FP8 block-scaled weights: F8_E4M3 keeps them as they are in the file (the CPU kernels apply the
  // block scales; zero copy), BF16 or F32 dequantizes them at load. The CUDA backend dequantizes to
  // BF16 whatever is asked here (its experts and per-head kernels do not read FP8 yet).
  DType fp8_dequant = DType::f8_e4m3;
  // How sessions store their KV cache (moerun/dtype.h). Unset: the backend's default, kDefaultKvType
  // on the CPU and f32 on CUDA (whose kernels read only f32 caches so far).
  std::optional<KvType> kv_type = std::nullopt;
  MlaMode mla = MlaMode::absorbed;
  int threads = 0;                 // the engine's CPU threads (shared by its sessions); 0: one per hardware thread
  BackendKind backend = BackendKind::automatic;
  WeightQuant quant = WeightQuant::none;  // quantized weights run on the CPU: `automatic` then means cpu
  // Run although the checkpoint holds tensors the config does not use (Model::unexpected_tensors():
  // e.g. more layers than num_hidden_layers); they are left out. false: loading is an Error.
  bool allow_unexpected_tensors = false;
  // Compute the memory plan (moerun/plan.h) before preparing the weights and refuse, with the
  // numbers, a model that does not fit. false: load anyway.
  bool memory_check = true;
  // Lock the weights in physical memory once loaded (mlock), so the kernel never pages them out.
  bool mlock = false;
  // Load DeepSeek-V3's multi-token-prediction layer (model.layers.{L}.*, num_nextn_predict_layers),
  // the drafter of `--spec mtp` (Session::mtp_draft). Error when the checkpoint has none. false: the
  // layer stays unused, as in transformers (a warning names it).
  bool mtp = false;
  LoadProgress progress = nullptr;  // none: silent
  // Distribution. ranks 0: as launched (mpirun's world size, 1 without mpirun; MPI is initialised
  // only under a launcher); 1: one process even under mpirun; N > 1 must equal the launch's size
  // (plan_memory also takes it without a launcher, to plan each rank's share). `rank` is read by
  // plan_memory only (which rank's share to plan); an engine's rank is its process's.
  SplitMode split = SplitMode::automatic;
  int ranks = 0;
  int rank = 0;
};

// The KV type CPU sessions use unless asked otherwise (chosen by measurement: docs/performance.md).
inline constexpr KvType kDefaultKvType = KvType::f16;
// The KV type sessions of a model described by `desc` with `options` on `backend` (resolved) use:
// options.kv_type, else f32 on CUDA and for the naive MLA form (which reads the cache as f32 rows),
// else kDefaultKvType.
KvType kv_type_for(const EngineOptions& options, BackendKind backend, const ModelDesc& desc);

// The context a session gets when none is asked for: min(max_position_embeddings, 4096), and no more
// than a sliding window; options.context when set.
int64_t default_context(const ModelDesc& desc, const EngineOptions& options);

// Concurrency. An Engine is immutable once loaded and may be shared by any number of threads and
// sessions. Its sessions share its resources (the CPU thread pool, the uploaded weights), so their
// forward steps run one at a time: Session::forward and forward_view take the engine's step lock, and
// steps of different sessions called from different threads are serialized, never interleaved. A
// Session is one conversation's state and not thread-safe: one thread uses it at a time (a server
// runs many sessions by taking turns, or one batched step over them). Loading, tokenizing and
// sampling hold no engine lock.
class Engine {
 public:
  static Engine load(const std::filesystem::path& dir, const EngineOptions& options = {});
  static Engine from_model(Model model, const EngineOptions& options = {});

  const Model& model() const noexcept;
  const ModelConfig& config() const noexcept;
  const ModelWeights& weights() const noexcept;  // as prepared for the executor
  const EngineOptions& options() const noexcept;
  int64_t default_context() const noexcept;
  BackendKind backend() const noexcept;  // the backend sessions run on (automatic resolved)
  KvType kv_type() const noexcept;       // what its sessions' KV caches store (options resolved)
  // The memory plan the engine was loaded with (weights; KV cache and workspace of one session at
  // the default context).
  const MemoryPlan& plan() const noexcept;
  // The multi-token-prediction layer was loaded (EngineOptions::mtp): Session::mtp_draft works.
  bool has_mtp() const noexcept;

  // Distributed engines (more than one rank). Rank 0, the leader, owns the text: it makes sessions
  // and batches and steps them as a single-process program would; every step and session change is
  // broadcast, and the other ranks (workers) run follow(), which mirrors them on each rank's share of
  // the weights until the leader's engine is released, then returns. A single-process engine is rank
  // 0 of 1 and follow() returns at once. A program holds one distributed engine at a time (the ranks
  // load them in the same order; a later one after the earlier is released).
  // Under mpirun, loading is collective: every rank loads the same model with the same options.
  int rank() const noexcept;
  int ranks() const noexcept;
  bool leader() const noexcept { return rank() == 0; }
  SplitMode split() const noexcept;  // resolved (automatic chosen)
  // What this rank holds ("ranks 2, split ep+tp: rank 0 holds heads 0-1 of 4, experts 0-3 of 8, ...").
  std::string partition_summary() const;
  void follow() const;
  // Per-rank numbers, gathered on the leader (a collective: workers answer from follow()).
  struct RankStats {
    int rank = 0;
    uint64_t rss_bytes = 0, peak_rss_bytes = 0;  // VmRSS and VmHWM of the rank's process
    uint64_t weight_bytes = 0;                   // the weights this rank holds (prepared)
    uint64_t comm_calls = 0, comm_bytes = 0;     // collectives inside forward steps since the last reset
    double comm_seconds = 0.0;
  };
  std::vector<RankStats> rank_stats() const;
  void reset_comm_stats() const;  // every rank's counters back to 0 (also a broadcast command)

  struct Impl;

 private:
  explicit Engine(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
  friend class Session;
  friend class Batch;
};

class Session {
 public:
  // 0: the engine's default context. Throws Error when the context is above the model's
  // max_position_embeddings (unless EngineOptions::context_override) or when its KV cache and
  // activations do not fit this machine's memory (CPU backend; the message says how much is needed).
  // `workspace` false: only the KV cache is allocated now, the activations of its own steps at the
  // first forward() (a session that runs only in Batch steps, a server's slot, never needs them).
  explicit Session(const Engine& engine, int64_t context = 0, bool workspace = true);
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  ~Session();

  // Runs `ids` at positions [position(), position() + ids.size()) and appends them to the cache
  // (in micro-batches of at most 512 tokens, so a long input needs no more activation memory than
  // a short one). Returns the logits of the last position [V], or of every new position [n, V] when
  // `all_positions`. Throws Error (and changes nothing) if an id is outside the vocabulary, the
  // sequence would pass the context, or the logits are not finite (the error names the first
  // layer whose output was NaN or infinite).
  std::vector<float> forward(std::span<const int32_t> ids, bool all_positions = false);
  // forward() without the copy: a view of the session's own logits buffer ([V], or [n, V] when
  // `all_positions`), valid until the next call on this session. A decode step through it allocates
  // nothing on the host.
  std::span<const float> forward_view(std::span<const int32_t> ids, bool all_positions = false);

  int64_t position() const noexcept;  // tokens in the cache
  int64_t context() const noexcept;
  // Bytes this session allocated (KV cache, workspace, expert tables): the plan's kv_bytes +
  // workspace_bytes for its context, allocated when the session is made (the workspace at its first
  // step when made without) and never grown.
  uint64_t memory_bytes() const noexcept;
  void truncate(int64_t n);  // keep the first n cached tokens (chat turns reuse a common prefix)
  void reset() { truncate(0); }

  // DeepSeek-V3's multi-token-prediction module as a drafter (Engine::has_mtp()): up to `count`
  // tokens that follow the cached tokens and `next` (the token sampled after them, not yet fed), the
  // module's greedy chain (docs/MODELS.md "Multi-token prediction"), into `out` (cleared first).
  // Returns how many (count, unless the context ends first). The main cache is unchanged: the module
  // keeps its own one-layer cache of the positions whose next token is known, brought up to date
  // here from the final hidden states every forward of this session records. Throws Error when the
  // engine has no MTP layer or runs on several ranks.
  size_t mtp_draft(int32_t next, size_t count, std::vector<int32_t>& out);
  // Brings the MTP layer's cache up to date with every cached position whose next token is cached
  // too (all but the last): what the first mtp_draft after a prompt would do, done with the prompt's
  // prefill. No-op without an MTP layer.
  void mtp_prefill();
  // The logits [V] of the last draft mtp_draft made (zeros before the first; empty without an MTP
  // layer): for tests and diagnostics.
  std::span<const float> mtp_logits() const noexcept;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend class Batch;
};

// Batched execution: one forward step over several sessions at once (a server's slots, bench -b).
// Each entry's ids run at its session's next positions. Every matmul, norm and MoE block runs once
// over all entries' tokens (the weights are read once per step for the whole batch; MoE groups
// every entry's tokens by expert); RoPE, the cache stores and attention run per sequence over its
// own cache. A sequence's logits do not depend on the others in the batch beyond float rounding.
struct BatchEntry {
  Session* session = nullptr;
  std::span<const int32_t> ids;  // new tokens: a decode step's one, or a chunk of a prompt
};

struct BatchOptions {
  int64_t max_tokens = 512;    // tokens of one step, all entries together (the workspace's rows)
  int64_t max_sequences = 64;  // entries of one step (<= max_tokens)
  // The largest session context the batch serves (only the naive MLA form's workspace depends on
  // it); 0: the engine's default context.
  int64_t max_context = 0;
  // Count the distinct routed experts every MoE layer runs per step (BatchStats; bench -b reports
  // how the bytes a step reads grow with the batch). Costs a copy of the routing per MoE layer.
  bool count_experts = false;
};

struct BatchStats {
  int64_t steps = 0;
  int64_t expert_runs = 0;  // with count_experts: distinct experts summed over steps and MoE layers
};

class Batch {
 public:
  // Allocates the workspace for max_tokens rows at once (Error when it does not fit the host's
  // memory, or the options are out of range).
  explicit Batch(const Engine& engine, const BatchOptions& options = {});
  Batch(Batch&&) noexcept;
  Batch& operator=(Batch&&) noexcept;
  ~Batch();

  // Runs every entry in one step and advances its session. Returns the logits of each entry's last
  // new position, [entries, V] (row i for entries[i]): a view valid until the next call. Throws
  // Error, changing no session, when an entry has no session, a session of another engine, the
  // same session as another entry, no ids, an id outside the vocabulary, more tokens than its
  // context has left, or the entries more tokens or sequences than the options allow; or when the
  // logits are not finite. Takes the engine's step lock, like Session::forward.
  std::span<const float> forward(std::span<const BatchEntry> entries);

  const BatchOptions& options() const noexcept;  // resolved (max_context set)
  const BatchStats& stats() const noexcept;
  uint64_t memory_bytes() const noexcept;        // its workspace and expert tables

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moerun
