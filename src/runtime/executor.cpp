// The executor: one transformer definition for all seven families. It branches on capabilities of
// the config (attention kind, q/k norm, biases, clip_qkv, rope layout and scaling, per-layer FFN
// kind, router spec, shared experts), never on the family (docs/DESIGN.md rule 1).
//
// Per layer (docs/MODELS.md §2.7):   x += Attn(RMSNorm_in(x));   x += FFN_or_MoE(RMSNorm_post(x))
// then logits = RMSNorm_final(x) W_lm^T. Activations are fp32; the KV cache is of the session's
// KvType (f32, f16, bf16 or q8_0), converted as rows are stored and read as it is by attention.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "comm/comm.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "model/convert.h"
#include "model/partition.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "runtime/backend.h"
#include "moerun/plan.h"
#include "runtime/rope.h"
#include "runtime/workspace.h"
#include "util/checked.h"
#include "util/strings.h"

namespace moerun {

using detail::cat;

// MLA's internal norms are built by HF with the class default eps, not rms_norm_eps (MODELS.md §2.1).
constexpr float kMlaNormEps = 1e-6f;
constexpr int64_t kDefaultContextCap = 4096;
// Positions are indexed with 32-bit integers in the kernels; no context may pass this, override or not.
constexpr int64_t kMaxContext = int64_t{1} << 31;
using runtime::kMaxBatch;
using runtime::Ws;

namespace {

// A context must fit the model (max_position_embeddings) unless the caller overrides, and the
// kernels' indexing in every case.
void check_context(int64_t ctx, const ModelDesc& c, bool override_limit) {
  if (ctx < 1) throw Error("context", cat("must be at least 1 token, found ", ctx));
  if (ctx > kMaxContext) throw Error("context", cat(ctx, " tokens is more than the largest supported (", kMaxContext, ")"));
  if (ctx > c.max_position_embeddings && !override_limit)
    throw Error("context", cat(ctx, " tokens is more than the model's ", c.max_position_embeddings,
                               " (max_position_embeddings in config.json); --ctx-override runs it anyway, with degraded output"));
  // Past the window the model attends differently than moerun would (full attention): refused, not
  // silently wrong. Within it sliding-window attention is full attention.
  if (c.sliding_window && *c.sliding_window > 0 && ctx > *c.sliding_window)
    throw Error("context", cat(ctx, " tokens is more than the model's sliding window of ", *c.sliding_window,
                               " (sliding_window in config.json), which moerun does not implement; use -c ", *c.sliding_window,
                               " or less"));
}

// The recorded decode step (CUDA graphs) as three states. A single-token step runs unrecorded once
// (cold -> warm: every buffer the backend sizes lazily is sized), is recorded and replayed the
// second time (warm -> recorded), and is replayed from then on. When the backend's memory
// generation changes (memory a recording points into was reallocated), it starts cold again.
class RecordedStep {
 public:
  template <class Layers>
  void run(runtime::Backend& be, Layers&& layers) {
    if (state_ != State::cold && generation_ != be.generation()) state_ = State::cold;
    switch (state_) {
      case State::recorded:
        be.replay();
        return;
      case State::warm:
        be.begin_record();
        try {
          layers();
          be.end_record();
        } catch (...) {
          be.drop_record();
          state_ = State::cold;
          throw;
        }
        be.replay();
        state_ = State::recorded;
        return;
      case State::cold:
        be.drop_record();
        layers();
        generation_ = be.generation();
        state_ = State::warm;
        return;
    }
  }

 private:
  enum class State : uint8_t { cold, warm, recorded };
  State state_ = State::cold;
  uint64_t generation_ = 0;  // the backend's memory generation when the state was entered
};

}  // namespace

// The leader's commands to the other ranks of a distributed engine (Engine::follow): a header, then
// `n` int64 of payload (token ids, entries).
enum class Op : int64_t { quit, session_new, session_forward, session_truncate, session_free, batch_new, batch_forward, batch_free, stats, reset_stats };
struct Command {
  int64_t op = 0, id = 0, a = 0, b = 0, c = 0, n = 0;
};

struct Engine::Impl {
  explicit Impl(Model m) : model(std::move(m)) {}
  ~Impl() {
    if (!sends()) return;
    try {  // the workers' follow() returns
      send(Op::quit, 0);
    } catch (...) {  // a broken job: the launcher stops the ranks
    }
  }
  Model model;
  ModelWeights weights;  // prepared: FP8 kept or dequantized, vectors in f32, projections quantized if asked
  EngineOptions options;
  KvType kv_type = KvType::f32;  // resolved: what every session's cache stores
  int64_t default_context = 0;
  BackendKind backend = BackendKind::cpu;  // resolved
  std::shared_ptr<const runtime::BackendState> backend_state;  // CUDA: the uploaded weights
  MemoryPlan plan;  // computed before the weights were prepared; sessions allocate what it says
  // CPU: the one thread pool every session's ops run on (sized by options.threads), and the lock
  // that lets one session's step use it at a time (see the concurrency contract in engine.h).
  std::shared_ptr<cpu::ThreadPool> pool;
  mutable std::mutex step;

  // Distribution (docs/DESIGN.md "Distribution"). `part` is this rank's share (everything on one
  // rank), `local` the description the executor runs with (the share's head counts), `comm` the
  // collectives inside steps (MPI host buffers or NCCL device buffers) and `control` the leader's
  // commands (host bytes over MPI).
  model::Partition part;
  ModelConfig local;
  std::shared_ptr<comm::Comm> comm, control;
  uint64_t weight_bytes = 0;           // this rank's prepared weights
  mutable int64_t next_id = 0;         // the leader's session and batch ids
  mutable comm::Stats step_comm;       // collectives inside forward steps
  mutable std::vector<int64_t> payload;

  bool distributed() const noexcept { return part.ranks > 1; }
  bool sends() const noexcept { return distributed() && part.rank == 0; }
  void send(Op op, int64_t id, int64_t a = 0, int64_t b = 0, int64_t c = 0, std::span<const int64_t> data = {}) const {
    Command h{static_cast<int64_t>(op), id, a, b, c, static_cast<int64_t>(data.size())};
    control->broadcast_idle(&h, sizeof h, 0);
    if (!data.empty()) control->broadcast_idle(const_cast<int64_t*>(data.data()), data.size_bytes(), 0);
  }
  Command receive(std::vector<int64_t>& data) const {
    Command h;
    control->broadcast_idle(&h, sizeof h, 0);
    if (h.n < 0 || h.n > (int64_t{1} << 32)) throw Error("follow", detail::cat("a command with ", h.n, " payload values from the leader"));
    data.resize(static_cast<size_t>(h.n));
    if (h.n > 0) control->broadcast_idle(data.data(), data.size() * sizeof(int64_t), 0);
    return h;
  }
  Engine::RankStats local_stats() const;
  std::vector<Engine::RankStats> exchange_stats() const;
};

KvType kv_type_for(const EngineOptions& options, BackendKind backend, const ModelDesc& desc) {
  if (options.kv_type) return *options.kv_type;
  const bool naive_mla = desc.attention == AttentionKind::mla && options.mla == MlaMode::naive;
  if (naive_mla) return KvType::f32;
  // CUDA: bf16 (its MLA decode runs on tensor cores over bf16 rows); the CPU: kDefaultKvType.
  return backend == BackendKind::cuda ? KvType::bf16 : kDefaultKvType;
}

int64_t default_context(const ModelDesc& d, const EngineOptions& options) {
  if (options.context > 0) return options.context;
  int64_t fits = std::min(d.max_position_embeddings, kDefaultContextCap);
  if (d.sliding_window && *d.sliding_window > 0) fits = std::min(fits, *d.sliding_window);
  return fits;
}

Engine::Engine(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Engine Engine::load(const std::filesystem::path& dir, const EngineOptions& options) {
  return from_model(Model::load(dir), options);
}

// Tensors the config leaves unused would be silently dropped: a num_hidden_layers smaller than the
// checkpoint's runs the first layers and answers garbage. Refused unless the caller says otherwise.
static void check_unexpected_tensors(const Model& model, const EngineOptions& options) {
  const size_t n = model.unexpected_tensor_count();
  if (n == 0 || options.allow_unexpected_tensors) return;
  throw Error(model.files().dir.string(),
              cat(n, " unexpected tensor", n == 1 ? "" : "s", " that config.json does not use (",
                  detail::join_problems(model.unexpected_tensors(), 4), "): num_hidden_layers ",
                  model.config().num_hidden_layers, " or another dimension may not match the checkpoint, which would "
                  "give wrong answers; --ignore-unexpected-tensors (EngineOptions::allow_unexpected_tensors) runs "
                  "without them"));
}

namespace {

// Resident and peak resident memory of this process (VmRSS, VmHWM).
std::pair<uint64_t, uint64_t> resident_bytes() {
  std::ifstream status("/proc/self/status");
  uint64_t rss = 0, hwm = 0;
  for (std::string line; std::getline(status, line);) {
    unsigned long kib = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %lu kB", &kib) == 1) rss = kib * 1024ull;
    if (std::sscanf(line.c_str(), "VmHWM: %lu kB", &kib) == 1) hwm = kib * 1024ull;
  }
  return {rss, hwm};
}

}  // namespace

Engine Engine::from_model(Model model, const EngineOptions& opts) {
  check_unexpected_tensors(model, opts);
  EngineOptions options = opts;
  // The ranks: mpirun's world (MPI is initialised only under a launcher), or this process alone.
  std::shared_ptr<comm::Comm> world;
  if (options.ranks != 1 && comm::launched_by_mpi()) world = comm::mpi_world();
  const int ranks = world ? world->size() : 1, rank = world ? world->rank() : 0;
  if (options.ranks > 1 && options.ranks != ranks)
    throw Error("ranks", cat(options.ranks, " ranks were asked for but this process is one of ", ranks,
                             ranks == 1 ? " (start it with mpirun -np N)" : ""));
  options.ranks = ranks;
  options.rank = rank;
  if (options.mtp && ranks > 1)
    throw Error("mtp", cat("drafting with the multi-token-prediction layer runs in one process (this is one of ", ranks, " ranks)"));
  if (ranks > 1 && options.threads == 0)  // the ranks on this machine share its cores
    options.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / std::max(1, world->local_size()));
  if (options.context != 0) check_context(options.context, model.config(), options.context_override);
  const BackendKind requested = runtime::requested_backend(options);
  // An explicit backend that cannot run here is its own clear error, before any plan.
  const BackendKind resolved = runtime::resolve_backend(requested);
  const model::Partition part = model::make_partition(model.config(), options.split, rank, ranks);
  // The plan comes first: a model that cannot fit is refused before its weights are converted or
  // uploaded (the mapped files cost nothing until read). Under mpirun it is this rank's share.
  MemoryPlan plan = plan_memory(model, options);
  if (options.memory_check && !plan.fits) throw Error("memory", cat(ranks > 1 ? cat("rank ", rank, " of ", ranks, ": ") : std::string(), plan.refusal()));
  // `automatic` runs where the plan put it (the CPU when the model does not fit the GPU).
  const BackendKind backend = requested == BackendKind::automatic ? plan.backend : resolved;
  if (requested == BackendKind::automatic) options.backend = backend;
  ModelConfig local = model::local_config(model.config(), part);
  if (!options.mtp) local.mtp_ffn.clear();  // the MTP layers stay unused unless loaded
  const KvType kv_type = kv_type_for(options, backend, local);
  runtime::check_kv_type(local, kv_type, options.mla);
  if (backend == BackendKind::cuda && kv_type == KvType::q8_0)
    throw Error("--kv-type", "a q8_0 KV cache is not supported on CUDA (its attention reads f32, f16 or bf16 caches); "
                             "use --kv-type bf16 (the CUDA default), f16 or f32, or --backend cpu");
  auto impl = std::make_shared<Impl>(model);
  impl->part = part;
  impl->local = local;
  if (ranks > 1) {
    impl->control = world;
    if (backend == BackendKind::cuda) {
#if MOERUN_HAVE_CUDA
      impl->comm = comm::make_nccl(*world, runtime::cuda_select_device(world->local_rank()));
#endif
    } else {
      impl->comm = world;
    }
  } else {
    impl->comm = impl->control = comm::make_single();
  }
  // The CPU backend's pool runs its sessions' ops; on CUDA one made for the load converts the weights.
  auto pool = std::make_shared<cpu::ThreadPool>(options.threads);
  if (backend == BackendKind::cpu) impl->pool = pool;
  // This rank's share: views of what it keeps, copies of column ranges, nothing of the rest (a
  // lazily made synthetic model fills only what is kept).
  const model::SliceHooks hooks{.materialize = [&](const Tensor& t) { model.materialize(t); },
                                .release = [&](const Tensor& t) { model.release(t); }};
  ModelWeights full = model.weights();
  if (options.mtp) full.mtp = model.mtp_weights();  // (one rank: checked above)
  const ModelWeights share = model::slice_weights(full, model.config(), part, false, hooks);
  impl->weights = model::prepare_weights(share, local, {runtime::fp8_form(options, backend), options.quant}, pool.get(), options.progress);
  pool.reset();
  // The weights the engine runs (copies and mapped views alike); a --quant source nothing reads
  // after conversion stays unlocked.
  if (options.mlock) model::lock_weights(impl->weights);
  {
    std::unordered_map<const void*, bool> seen;  // a tied head counts once
    for_each_tensor(impl->weights, [&](const WeightSite&, LinearPart, const Tensor& t) {
      if (seen.emplace(t.data(), true).second) impl->weight_bytes += t.nbytes();
    });
  }
  impl->options = options;
  impl->kv_type = kv_type;
  impl->default_context = moerun::default_context(model.config(), options);
  impl->backend = backend;
  impl->plan = std::move(plan);
  impl->backend_state = runtime::prepare_backend(backend, impl->weights, options);
  return Engine(std::move(impl));
}

const Model& Engine::model() const noexcept { return impl_->model; }
const ModelConfig& Engine::config() const noexcept { return impl_->model.config(); }
const ModelWeights& Engine::weights() const noexcept { return impl_->weights; }
const EngineOptions& Engine::options() const noexcept { return impl_->options; }
int64_t Engine::default_context() const noexcept { return impl_->default_context; }
BackendKind Engine::backend() const noexcept { return impl_->backend; }
KvType Engine::kv_type() const noexcept { return impl_->kv_type; }
const MemoryPlan& Engine::plan() const noexcept { return impl_->plan; }

namespace {

// One sequence's state: its KV cache and position. A Session is one of these plus the runner it
// steps with alone; a Batch steps many of them through its own runner.
struct Sequence {
  const Engine::Impl* engine = nullptr;
  int64_t context = 0;
  int64_t pos = 0;
  // Cache per layer, in backend memory, of the engine's KvType. GQA: K [ctx, H_kv, d_h] and V
  // [ctx, H_kv, d_h]. MLA: one latent row per position, [ctx, kv_lora_rank + qk_rope_head_dim] =
  // [normed c, rotated k_rope].
  std::vector<runtime::Buffer> k_cache, v_cache;
  // With a multi-token-prediction layer: every position's final hidden state (after the final norm),
  // [context, D] f32 in backend memory, written by each step that runs the position.
  float* hidden = nullptr;
};

// A sequence's share of one step: its `n` new tokens are rows [row, row + n) of the step, at its
// positions [seq->pos, seq->pos + n). `slot` is its RoPE table (dynamic NTK depends on the length).
struct Segment {
  Sequence* seq = nullptr;
  int64_t row = 0, n = 0;
  int64_t slot = 0;
};

// What a matmul folds in, saving the separate ops (one CUDA launch each; the CPU runs the same
// steps as the separate ops, bit for bit): RMSNorm of its input rows, and adding into its output
// (the residual add).
struct Fold {
  const Tensor* norm = nullptr;  // the input's RMSNorm weight; null: the input as it is
  float eps = 0.0f;
  bool accumulate = false;
};

// What the executor steps with: a backend, a workspace planned for `tokens` rows and `sequences`
// segments per step, the experts' pointer tables and the RoPE tables. Every matmul, norm and MoE
// block runs once over all rows of a step (weights read once for the whole batch); RoPE, the cache
// stores and attention run per segment over that sequence's own cache.
struct Runner {
  const Engine::Impl* engine;
  const ModelDesc& c;  // the executor sees capabilities and dimensions, never the family (this rank's share of them)
  const model::Partition& P;  // what this rank holds (everything on one rank)
  const ModelWeights& w;
  int64_t vocab_rows = 0;  // the widest rank's LM-head rows under a vocabulary split
  std::unique_ptr<runtime::Backend> be;
  KvType kv_type;
  runtime::WorkspacePlan plan;
  int64_t tokens = 0, sequences = 1, max_context = 0;
  // MoE layers: the experts' gate/up/down weight pointers as tables in backend memory, and for FP8
  // experts their block scales' (null otherwise).
  struct ExpertTables {
    runtime::Buffer gate, up, down, gate_scale, up_scale, down_scale;
    DType dtype = DType::f32;
  };
  std::vector<ExpertTables> experts;
  // The workspace (runtime/workspace.h): one buffer per role, allocated once at the planned size.
  std::array<runtime::Buffer, static_cast<size_t>(Ws::count)> ws;
  bool reserved = false;
  std::vector<int64_t> positions;  // host copy of this step's positions
  std::vector<runtime::RopeTable> rope;  // per slot (one unless the scaling is dynamic)
  std::vector<int64_t> rope_seq_len;     // what each slot's table was made for (-1: none yet)
  RecordedStep decode_step;  // single-token steps of one session on a backend that can record them
  std::span<const Segment> segs;  // the step being run
  std::vector<AttentionParams> attn_calls;  // one per segment, run as one op (reserved: no allocation per step)
  BatchStats* expert_stats = nullptr;  // set: count the distinct experts each MoE layer runs
  std::vector<int32_t> routed;         // (host copy of a layer's routing, for the count)
  std::vector<uint8_t> expert_seen;

  Runner(const Engine::Impl* e, int64_t max_tokens, int64_t max_sequences, int64_t context, bool reserve_now)
      : engine(e), c(e->local), P(e->part), w(e->weights), be(runtime::make_backend(e->backend, e->backend_state, e->pool)),
        kv_type(e->kv_type), tokens(max_tokens), sequences(max_sequences), max_context(context) {
    const runtime::WorkspaceShare share = runtime::workspace_share(P, c.vocab_size);
    vocab_rows = share.vocab_rows;
    if (P.head_split && (w.lm_head.dim(0) != P.vocab.size() || P.vocab.size() > vocab_rows))
      throw Error("partition", cat("rank ", P.rank, " holds ", w.lm_head.dim(0), " LM-head rows but its share is ", P.vocab.size()));
    plan = runtime::plan_workspace(c, max_context, engine->options.mla, tokens, sequences, share);
    const bool dynamic = c.rope.scaling.type == RopeType::dynamic;
    rope.resize(dynamic ? static_cast<size_t>(sequences) : 1);
    rope_seq_len.assign(rope.size(), -1);
    attn_calls.reserve(static_cast<size_t>(sequences));
    make_expert_tables();
    if (reserve_now) reserve();
  }

  void reserve() {
    if (reserved) return;
    for (size_t r = 0; r < ws.size(); ++r)
      if (plan[r].bytes > 0) be->reserve(ws[r], plan[r].bytes);
    reserved = true;
  }
  uint64_t memory_bytes() const {
    uint64_t n = 0;
    for (const runtime::Buffer& b : ws) n += b.bytes;
    for (const auto& t : experts) n += t.gate.bytes + t.up.bytes + t.down.bytes + t.gate_scale.bytes + t.up_scale.bytes + t.down_scale.bytes;
    return n;
  }

  const void* wp(const Tensor& t) const { return be->weight(t); }
  // Layers 0 .. L-1 are the decoder's; L + i is multi-token-prediction layer i's block.
  const LayerWeights& lw(size_t l) const { return l < w.layers.size() ? w.layers[l] : w.mtp[l - w.layers.size()].block; }
  FfnKind ffn_of(size_t l) const { return l < c.layer_ffn.size() ? c.layer_ffn[l] : c.mtp_ffn[l - c.layer_ffn.size()]; }
  // Room for `count` elements of a workspace role; asking for more than the plan is a bug.
  template <class T = float>
  T* buf(Ws role, int64_t count) {
    const auto r = static_cast<size_t>(role);
    if (count < 0 || static_cast<uint64_t>(count) * sizeof(T) > plan[r].bytes)
      throw Error("workspace", cat("role '", plan[r].role, "' was planned for ", plan[r].bytes, " bytes but a step asked for ",
                                   count, " elements of ", sizeof(T), " bytes"));
    return static_cast<T*>(ws[r].data);
  }
  template <class T = float>
  T* at(Ws role) const { return static_cast<T*>(ws[static_cast<size_t>(role)].data); }

  void make_expert_tables() {
    const size_t L = w.layers.size() + w.mtp.size();
    experts.resize(L);
    for (size_t l = 0; l < L; ++l) {
      const LayerWeights& LW = lw(l);
      if (ffn_of(l) != FfnKind::moe || LW.experts.empty()) continue;
      ExpertTables& t = experts[l];
      const MlpWeights* first = held_expert(LW);
      if (!first) throw Error("MoE layer " + std::to_string(l), "this rank holds none of its experts");
      t.dtype = first->gate_proj.weight.dtype();
      // Experts this rank does not hold (expert parallel) get null entries: the moe op skips them.
      std::vector<const void*> g, u, d, gs, us, ds;
      for (const MlpWeights& m : LW.experts) {
        if (!m.gate_proj.defined()) {
          for (auto* v : {&g, &u, &d, &gs, &us, &ds}) v->push_back(nullptr);
          continue;
        }
        for (const LinearWeight* lw : {&m.gate_proj, &m.up_proj, &m.down_proj})
          if (lw->weight.dtype() != t.dtype || lw->bias)
            throw Error("MoE layer " + std::to_string(l), "experts must share one weight dtype and have no biases");
        g.push_back(wp(m.gate_proj.weight));
        u.push_back(wp(m.up_proj.weight));
        d.push_back(wp(m.down_proj.weight));
        gs.push_back(scale_of(m.gate_proj));
        us.push_back(scale_of(m.up_proj));
        ds.push_back(scale_of(m.down_proj));
      }
      for (auto [b, host] : {std::pair{&t.gate, &g}, std::pair{&t.up, &u}, std::pair{&t.down, &d}, std::pair{&t.gate_scale, &gs},
                             std::pair{&t.up_scale, &us}, std::pair{&t.down_scale, &ds}}) {
        be->reserve(*b, host->size() * sizeof(void*));
        be->upload(b->data, host->data(), host->size() * sizeof(void*));
      }
    }
  }

  // The first routed expert of a layer this rank holds (null: none).
  static const MlpWeights* held_expert(const LayerWeights& L) {
    for (const MlpWeights& m : L.experts)
      if (m.gate_proj.defined()) return &m;
    return nullptr;
  }

  // Partial sums of the ranks added up in place (a no-op on one rank): the collectives of a step.
  void reduce(float* data, int64_t count) {
    const auto t0 = std::chrono::steady_clock::now();
    engine->comm->all_reduce_sum(data, static_cast<size_t>(count), comm::Type::f32, be->native_stream());
    count_comm(static_cast<uint64_t>(count) * sizeof(float), t0);
  }
  void gather(const float* part, float* all, int64_t count) {
    const auto t0 = std::chrono::steady_clock::now();
    engine->comm->all_gather(part, all, static_cast<size_t>(count), comm::Type::f32, be->native_stream());
    count_comm(static_cast<uint64_t>(count) * sizeof(float), t0);
  }
  void count_comm(uint64_t bytes, std::chrono::steady_clock::time_point t0) {
    comm::Stats& st = engine->step_comm;
    ++st.calls;
    st.bytes += bytes;
    st.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // An FP8 weight's block scales (f32 once prepared), or null.
  const float* scale_of(const LinearWeight& weight) const {
    return weight.weight_scale_inv ? static_cast<const float*>(wp(weight.weight_scale_inv)) : nullptr;
  }
  MatmulParams lin_params(float* dst, const float* src, int64_t n, const LinearWeight& weight, int64_t src_stride = 0,
                          Fold fold = {}) {
    return {.out = dst, .x = src, .weight = wp(weight.weight), .weight_dtype = weight.weight.dtype(),
            .bias = weight.bias ? static_cast<const float*>(wp(weight.bias)) : nullptr, .n = n,
            .in_features = weight.weight.dim(1), .out_features = weight.weight.dim(0), .x_stride = src_stride,
            .weight_scale = scale_of(weight), .block_out = c.fp8.block_out, .block_in = c.fp8.block_in,
            .norm_weight = fold.norm ? static_cast<const float*>(wp(*fold.norm)) : nullptr, .norm_eps = fold.eps,
            .accumulate = fold.accumulate};
  }
  void lin(float* dst, const float* src, int64_t n, const LinearWeight& weight, int64_t src_stride = 0, Fold fold = {}) {
    be->matmul(lin_params(dst, src, n, weight, src_stride, fold));
  }
  void lin(float* dst, const float* src, int64_t n, const Tensor& weight, Fold fold = {}) {
    lin(dst, src, n, LinearWeight{weight, {}, {}}, 0, fold);
  }

  void norm(float* dst, const float* src, int64_t rows, int64_t cols, const Tensor& weight, float eps, int64_t stride = 0) {
    be->rms_norm({.out = dst, .x = src, .weight = static_cast<const float*>(wp(weight)), .rows = rows, .cols = cols,
                  .eps = eps, .stride = stride});
  }

  // The step's ids and positions into backend memory, and each segment's RoPE table (made again
  // only when its length matters, dynamic NTK, and changed).
  void upload_step(std::span<const int32_t> ids) {
    const int64_t n = static_cast<int64_t>(ids.size());
    positions.resize(ids.size());
    for (const Segment& s : segs)
      for (int64_t t = 0; t < s.n; ++t) positions[static_cast<size_t>(s.row + t)] = s.seq->pos + t;
    const int64_t half = std::max<int64_t>(c.rope.dim / 2, 1);
    for (const Segment& s : segs) {
      const auto slot = static_cast<size_t>(s.slot);
      const int64_t seq_len = s.seq->pos + s.n;
      // Only dynamic NTK depends on the length; the others are computed once.
      if (rope_seq_len[slot] >= 0 && (c.rope.scaling.type != RopeType::dynamic || seq_len == rope_seq_len[slot])) continue;
      rope[slot] = runtime::rope_table(c.rope, c.max_position_embeddings, seq_len);
      rope_seq_len[slot] = seq_len;
      float* f = buf(Ws::inv_freq, half * static_cast<int64_t>(rope.size()));
      be->upload(f + s.slot * half, rope[slot].inv_freq.data(), rope[slot].inv_freq.size() * sizeof(float));
    }
    be->upload(buf<int32_t>(Ws::ids, n), ids.data(), static_cast<size_t>(n) * sizeof(int32_t));
    be->upload(buf<int64_t>(Ws::positions, n), positions.data(), static_cast<size_t>(n) * sizeof(int64_t));
  }

  const int64_t* dev_positions() { return at<const int64_t>(Ws::positions); }

  // The RoPE table a segment's rows use: the one every row shares, or the segment's own (dynamic
  // NTK); and where its inverse frequencies are in backend memory.
  int64_t rope_slot(const Segment& s) const { return rope.size() == 1 ? 0 : s.slot; }
  const float* inv_freq_of(int64_t slot) { return at<const float>(Ws::inv_freq) + slot * std::max<int64_t>(c.rope.dim / 2, 1); }

  // A cache store that rotates the new K rows on the way in (their RoPE, as apply_rope would with the
  // segment's table): `heads` heads `head_stride` apart, dims [offset, offset + rope dim) of each.
  StoreRowsParams rotated_store(StoreRowsParams p, const Segment& s, int64_t heads, int64_t head_stride, int64_t offset) {
    const int64_t slot = rope_slot(s);
    p.rope_inv_freq = inv_freq_of(slot);
    p.rope_heads = heads;
    p.rope_head_stride = head_stride;
    p.rope_offset = offset;
    p.rope_dim = c.rope.dim;
    p.rope_attention_factor = rope[static_cast<size_t>(slot)].attention_factor;
    p.rope_style = c.rope.style;
    return p;
  }

  // RoPE on the step's rows of `data`: once over all of them, or per segment when each has its own
  // table (dynamic NTK).
  void apply_rope(float* data, int64_t n, int64_t heads, int64_t token_stride, int64_t head_stride, int64_t offset) {
    auto run = [&](int64_t row, int64_t rows, int64_t slot) {
      be->rope({.x = data + row * token_stride, .n_tokens = rows, .n_heads = heads, .token_stride = token_stride,
                .head_stride = head_stride, .rot_offset = offset, .rot_dim = c.rope.dim, .positions = dev_positions() + row,
                .inv_freq = inv_freq_of(slot),
                .attention_factor = rope[static_cast<size_t>(slot)].attention_factor, .style = c.rope.style});
    };
    if (rope.size() == 1) run(0, n, 0);
    else
      for (const Segment& s : segs) run(s.row, s.n, rope_slot(s));
  }

  // GQA attention of n tokens (input `in` [n, D], normed by `in_norm` on the way into q/k/v) into
  // `o` [n, D] (added to it with `add_out`): of this rank's heads (o then holds its partial sum of o_proj).
  void gqa(size_t l, const float* in, int64_t n, float* o, Fold in_norm, bool add_out) {
    const LayerWeights& L = lw(l);
    const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, dh = c.head_dim;
    // A q/k norm over all heads (OLMoE) needs every head's q and k: the rank computes them whole and
    // takes its heads from them (qs/ks: their widths, q0/k0: where its heads start).
    const int64_t qs = (P.full_qk ? P.heads_total : H) * dh, ks = (P.full_qk ? P.kv_heads_total : Hkv) * dh;
    const int64_t q0 = P.full_qk ? P.q_heads.begin * dh : 0, k0 = P.full_qk ? P.kv_heads.begin * dh : 0;
    float* qb = buf(Ws::q, n * qs);
    float* kb = buf(Ws::k, n * ks);
    float* vb = buf(Ws::v, n * Hkv * dh);
    const MatmulParams qkv[] = {lin_params(qb, in, n, L.q_proj, 0, in_norm), lin_params(kb, in, n, L.k_proj, 0, in_norm),
                                lin_params(vb, in, n, L.v_proj, 0, in_norm)};
    be->matmul_group(qkv);
    const float eps = static_cast<float>(c.rms_norm_eps);
    if (c.qk_norm == QkNorm::per_head) {  // Qwen3: each head normed on its own, one weight for all heads
      norm(qb, qb, n * H, dh, L.q_norm, eps);
      norm(kb, kb, n * Hkv, dh, L.k_norm, eps);
    } else if (c.qk_norm == QkNorm::full) {  // OLMoE: over the whole projection
      norm(qb, qb, n, qs, L.q_norm, eps);
      norm(kb, kb, n, ks, L.k_norm, eps);
    }
    if (c.clip_qkv) {
      const float lim = static_cast<float>(*c.clip_qkv);
      be->clamp({.x = qb, .n = n * qs, .limit = lim});
      be->clamp({.x = kb, .n = n * ks, .limit = lim});
      be->clamp({.x = vb, .n = n * Hkv * dh, .limit = lim});
    }
    apply_rope(qb + q0, n, H, qs, dh, 0);  // (K is rotated as it is stored)
    const int64_t row = Hkv * dh;
    float* ab = buf(Ws::attn, n * H * dh);
    attn_calls.clear();
    for (const Segment& s : segs) {  // each sequence over its own cache
      void* kc = s.seq->k_cache[l].data;
      void* vc = s.seq->v_cache[l].data;
      const int64_t* p = dev_positions() + s.row;
      be->store_rows(rotated_store({.cache = kc, .cache_type = kv_type, .src = kb + s.row * ks + k0, .positions = p, .n = s.n,
                                    .cols = row, .src_stride = ks, .cache_stride = row},
                                   s, Hkv, dh, 0));
      be->store_rows({.cache = vc, .cache_type = kv_type, .src = vb + s.row * row, .positions = p, .n = s.n, .cols = row,
                      .src_stride = row, .cache_stride = row});
      attn_calls.push_back({.out = ab + s.row * H * dh, .q = qb + s.row * qs + q0, .k = kc, .v = vc, .kv_type = kv_type, .positions = p,
                            .n_tokens = s.n, .n_heads = H, .n_kv_heads = Hkv, .qk_dim = dh, .v_dim = dh, .q_token_stride = qs,
                            .q_head_stride = dh, .k_pos_stride = row, .k_head_stride = dh, .v_pos_stride = row, .v_head_stride = dh,
                            .scale = static_cast<float>(c.softmax_scale), .max_len = s.seq->context});
    }
    be->attention_many(attn_calls);
    lin(o, ab, n, L.o_proj, 0, {.accumulate = add_out});
  }

  // Multi-head latent attention (docs/MODELS.md §4) into `o` [n, D], as gqa() takes its input and output.
  void mla(size_t l, const float* in, int64_t n, float* o, Fold in_norm, bool add_out) {
    const LayerWeights& L = lw(l);
    const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
    const int64_t r = c.kv_lora_rank, dq = dn + dr, row = r + dr;
    float* qb = buf(Ws::q, n * H * dq);
    // [c_raw, k_rope] = x W_kva^T (the cache keeps the normed latent and the rotated rope key), in one
    // pass with the query's first projection of the same rows.
    float* new_rows = buf(Ws::kv_new, n * row);
    if (c.q_lora_rank) {
      float* qa = buf(Ws::q_lora, n * *c.q_lora_rank);
      const MatmulParams first[] = {lin_params(qa, in, n, L.q_a_proj, 0, in_norm),
                                    lin_params(new_rows, in, n, L.kv_a_proj_with_mqa, 0, in_norm)};
      be->matmul_group(first);
      // q_b reads q_a's output normed (q_a_layernorm), folded into it.
      lin(qb, qa, n, L.q_b_proj, 0, {.norm = &L.q_a_layernorm, .eps = kMlaNormEps});
    } else {
      const MatmulParams first[] = {lin_params(qb, in, n, L.q_proj, 0, in_norm), lin_params(new_rows, in, n, L.kv_a_proj_with_mqa, 0, in_norm)};
      be->matmul_group(first);
    }
    norm(new_rows, new_rows, n, r, L.kv_a_layernorm, kMlaNormEps, row);
    apply_rope(qb, n, H, H * dq, dq, dn);
    // (--mla naive, which reads the cache as f32 rows below, takes only an f32 cache: check_kv_type.)
    // The one rope key all heads share is rotated as the row is stored.
    for (const Segment& s : segs)
      be->store_rows(rotated_store({.cache = s.seq->k_cache[l].data, .cache_type = kv_type, .src = new_rows + s.row * row,
                                    .positions = dev_positions() + s.row, .n = s.n, .cols = row, .src_stride = row,
                                    .cache_stride = row},
                                   s, 1, row, r));

    const Tensor& kvb = L.kv_b_proj.weight;  // [H*(dn+dv), r]: per head dn rows of W_UK, then dv rows of W_UV
    const float* kvb_scale = scale_of(L.kv_b_proj);
    float* ab = buf(Ws::attn, n * H * dv);
    if (engine->options.mla == MlaMode::absorbed) {
      // q~_h = W_UK^h^T q_h^N, then MQA over [c, k_rope] with values c (MODELS.md §4).
      float* qcat = buf(Ws::q_absorbed, n * H * row);
      be->head_matmul({.out = qcat, .x = qb, .weight = wp(kvb), .weight_dtype = kvb.dtype(), .n_tokens = n, .n_heads = H,
                       .in_dim = dn, .out_dim = r, .head_rows = dn + dv, .row_offset = 0, .row_len = r,
                       .x_token_stride = H * dq, .x_head_stride = dq, .out_token_stride = H * row,
                       .out_head_stride = row, .transposed = true, .weight_scale = kvb_scale, .block_out = c.fp8.block_out,
                       .block_in = c.fp8.block_in});
      be->copy({.dst = qcat + r, .src = qb + dn, .rows = n * H, .cols = dr, .dst_stride = row, .src_stride = dq});
      float* latent_out = buf(Ws::latent_out, n * H * r);
      attn_calls.clear();
      for (const Segment& s : segs) {
        const void* cache = s.seq->k_cache[l].data;
        attn_calls.push_back({.out = latent_out + s.row * H * r, .q = qcat + s.row * H * row, .k = cache, .v = cache,
                              .kv_type = kv_type, .positions = dev_positions() + s.row, .n_tokens = s.n, .n_heads = H,
                              .n_kv_heads = 1, .qk_dim = row, .v_dim = r, .q_token_stride = H * row, .q_head_stride = row,
                              .k_pos_stride = row, .k_head_stride = 0, .v_pos_stride = row, .v_head_stride = 0,
                              .scale = static_cast<float>(c.softmax_scale), .max_len = s.seq->context});
      }
      be->attention_many(attn_calls);
      // o_h = W_UV^h o~_h.
      be->head_matmul({.out = ab, .x = latent_out, .weight = wp(kvb), .weight_dtype = kvb.dtype(), .n_tokens = n,
                       .n_heads = H, .in_dim = r, .out_dim = dv, .head_rows = dn + dv, .row_offset = dn, .row_len = r,
                       .x_token_stride = H * r, .x_head_stride = r, .out_token_stride = H * dv, .out_head_stride = dv,
                       .transposed = false, .weight_scale = kvb_scale, .block_out = c.fp8.block_out, .block_in = c.fp8.block_in});
    } else {
      // Naive: per-head K = [W_UK c, k_rope] and V = W_UV c for every cached position of the sequence.
      for (const Segment& s : segs) {
        const auto* cache = static_cast<const float*>(s.seq->k_cache[l].data);
        const int64_t len = s.seq->pos + s.n;
        float* kvf = buf(Ws::kv_full, len * H * (dn + dv));
        lin(kvf, cache, len, L.kv_b_proj, row);
        float* kf = buf(Ws::k_full, len * H * dq);
        be->copy({.dst = kf, .src = kvf, .rows = len * H, .cols = dn, .dst_stride = dq, .src_stride = dn + dv});
        for (int64_t hh = 0; hh < H; ++hh)
          be->copy({.dst = kf + hh * dq + dn, .src = cache + r, .rows = len, .cols = dr, .dst_stride = H * dq, .src_stride = row});
        be->attention({.out = ab + s.row * H * dv, .q = qb + s.row * H * dq, .k = kf, .v = kvf + dn,
                       .positions = dev_positions() + s.row, .n_tokens = s.n, .n_heads = H, .n_kv_heads = H, .qk_dim = dq,
                       .v_dim = dv, .q_token_stride = H * dq, .q_head_stride = dq, .k_pos_stride = H * dq, .k_head_stride = dq,
                       .v_pos_stride = H * (dn + dv), .v_head_stride = dn + dv, .scale = static_cast<float>(c.softmax_scale),
                       .max_len = len});
      }
    }
    lin(o, ab, n, L.o_proj, 0, {.accumulate = add_out});
  }

  // The gated FFN over n rows: out = down(act(gate x) * up x), act = hidden_act (SwiGLU for silu);
  // x normed by `in_norm` on the way in, the result added to `o` with `add_out`.
  void swiglu(const MlpWeights& m, const float* in, int64_t n, float* o, Fold in_norm = {}, bool add_out = false) {
    const int64_t I = m.gate_proj.weight.dim(0);
    float* g = buf(Ws::ffn_gate, n * I);
    float* u = buf(Ws::ffn_up, n * I);
    const MatmulParams gate_up[] = {lin_params(g, in, n, m.gate_proj, 0, in_norm), lin_params(u, in, n, m.up_proj, 0, in_norm)};
    be->matmul_group(gate_up);
    be->gated_act({.out = g, .gate = g, .up = u, .n = n * I, .act = c.hidden_act});
    lin(o, g, n, m.down_proj, 0, {.accumulate = add_out});
  }

  // The MoE block into `o` [n, D]: route every token, then run each selected expert once over all
  // of its tokens (the backend's moe op; in a batched step, every sequence's tokens together); plus
  // the shared expert.
  void moe(size_t l, const float* in, int64_t n, float* o) {
    const LayerWeights& L = lw(l);
    const RouterSpec& rs = c.router;
    const int64_t D = c.hidden_size, E = rs.n_routed_experts, K = rs.num_experts_per_tok;
    float* z = buf(Ws::router_logits, n * E);
    lin(z, in, n, L.router);
    int32_t* ids = buf<int32_t>(Ws::expert_ids, n * K);
    float* wts = buf(Ws::expert_weights, n * K);
    be->route({.expert_ids = ids, .expert_weights = wts, .logits = z,
               .correction_bias = L.e_score_correction_bias ? static_cast<const float*>(wp(L.e_score_correction_bias)) : nullptr,
               .n_tokens = n, .n_experts = E, .top_k = K, .score = rs.score, .method = rs.method, .n_group = rs.n_group,
               .topk_group = rs.topk_group, .norm_topk_prob = rs.norm_topk_prob,
               .routed_scaling_factor = static_cast<float>(rs.routed_scaling_factor)});
    if (expert_stats) count_experts(ids, n * K, E);
    const ExpertTables& t = experts[l];
    const int64_t I = held_expert(L)->gate_proj.weight.dim(0);
    MoeParams mp{.out = o, .x = in, .expert_ids = ids, .expert_weights = wts,
                 .gate = static_cast<const void* const*>(t.gate.data), .up = static_cast<const void* const*>(t.up.data),
                 .down = static_cast<const void* const*>(t.down.data), .weight_dtype = t.dtype, .n_tokens = n, .top_k = K,
                 .n_experts = E, .hidden = D, .intermediate = I, .act = c.hidden_act,
                 .gate_scale = static_cast<const float* const*>(t.gate_scale.data),
                 .up_scale = static_cast<const float* const*>(t.up_scale.data),
                 .down_scale = static_cast<const float* const*>(t.down_scale.data), .block_out = c.fp8.block_out,
                 .block_in = c.fp8.block_in};
    const bool shared = c.shared.count > 0 && P.shared_here;  // (expert parallel: rank 0 alone adds it)
    const bool shared_inside = shared && shared_fuses(L.shared_expert, t.dtype, I);
    if (shared_inside) {
      // DeepSeek's ungated shared expert as one more pair of every token: no ops of its own.
      const MlpWeights& m = L.shared_expert;
      mp.shared_gate = wp(m.gate_proj.weight);
      mp.shared_up = wp(m.up_proj.weight);
      mp.shared_down = wp(m.down_proj.weight);
      mp.shared_gate_scale = scale_of(m.gate_proj);
      mp.shared_up_scale = scale_of(m.up_proj);
      mp.shared_down_scale = scale_of(m.down_proj);
    }
    be->moe(mp);
    if (shared && !shared_inside) {
      float* s = buf(Ws::shared_out, n * D);
      swiglu(L.shared_expert, in, n, s);
      const float* g = nullptr;
      if (c.shared.gated) {  // Qwen2-MoE: sigmoid(x . w_sg) scales the shared expert per token
        float* gb = buf(Ws::shared_gate, n);
        lin(gb, in, n, L.shared_expert_gate);
        g = gb;
      }
      be->add({.out = o, .x = s, .gate = g, .rows = n, .cols = D});
    }
  }

  // Whether a layer's shared expert can run inside the moe op: ungated, the routed experts' width
  // and weight type, no biases.
  bool shared_fuses(const MlpWeights& m, DType dtype, int64_t I) const {
    if (c.shared.gated || m.gate_proj.bias || m.up_proj.bias || m.down_proj.bias) return false;
    for (const LinearWeight* lw : {&m.gate_proj, &m.up_proj, &m.down_proj})
      if (lw->weight.dtype() != dtype) return false;
    return m.gate_proj.weight.dim(0) == I && m.up_proj.weight.dim(0) == I && m.down_proj.weight.dim(1) == I;
  }

  void count_experts(const int32_t* ids, int64_t count, int64_t E) {
    routed.resize(static_cast<size_t>(count));
    be->download(routed.data(), ids, routed.size() * sizeof(int32_t));
    expert_seen.assign(static_cast<size_t>(E), 0);
    for (int32_t e : routed)
      if (e >= 0 && e < E && !expert_seen[static_cast<size_t>(e)]) {
        expert_seen[static_cast<size_t>(e)] = 1;
        ++expert_stats->expert_runs;
      }
  }

  // Decoder layer l (or multi-token-prediction block, l >= L) over the n rows of the residual stream xb.
  void block(size_t l, float* xb, int64_t n) {
    const int64_t D = c.hidden_size;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const LayerWeights& L = lw(l);
    float* hb = buf(Ws::h, n * D);
    float* ob = buf(Ws::out, n * D);
    // The input norm is folded into the attention's first projections, and its o_proj adds into the
    // residual stream directly unless the ranks' partial sums are reduced first.
    const Fold in_norm{.norm = &L.input_layernorm, .eps = eps};
    const bool attn_adds = !P.attn_split;
    if (c.attention == AttentionKind::gqa) gqa(l, xb, n, attn_adds ? xb : ob, in_norm, attn_adds);
    else mla(l, xb, n, attn_adds ? xb : ob, in_norm, attn_adds);
    if (!attn_adds) {
      reduce(ob, n * D);  // the ranks' heads' o_proj partial sums
      be->add({.out = xb, .x = ob, .rows = n, .cols = D});
    }
    if (diagnosing) checkpoint(xb, n * D, cat("layer ", l, "'s attention"));
    const bool moe_layer = ffn_of(l) == FfnKind::moe;
    // The ranks' experts (and shared or dense columns) partial sums, one all-reduce per block.
    const bool ffn_reduced = moe_layer ? P.experts_ep || P.experts_tp || P.ffn_split : P.ffn_split;
    if (moe_layer) {
      norm(hb, xb, n, D, L.post_attention_layernorm, eps);  // (read by the router, the experts and the shared expert)
      moe(l, hb, n, ob);
    } else {
      // A dense FFN: the norm folded into gate + up, down adding into the stream unless reduced first.
      swiglu(L.mlp, xb, n, ffn_reduced ? ob : xb, {.norm = &L.post_attention_layernorm, .eps = eps}, !ffn_reduced);
    }
    if (ffn_reduced) reduce(ob, n * D);
    if (moe_layer || ffn_reduced) be->add({.out = xb, .x = ob, .rows = n, .cols = D});
    if (diagnosing) checkpoint(xb, n * D, cat("layer ", l, "'s ", moe_layer ? "MoE block" : "MLP"));
  }

  // Every layer and the final norm + LM head, from ids (already in backend memory) to logits: of
  // every row when `all_rows` (one segment), else of each segment's last row, in segment order.
  // Positions and lengths are read from backend memory only, so a single-token step can be
  // recorded once and replayed.
  float* layers(int64_t n, bool all_rows) {
    const int64_t D = c.hidden_size;
    float* xb = buf(Ws::x, n * D);
    be->embed({.out = xb, .table = wp(w.embed_tokens), .dtype = w.embed_tokens.dtype(),
               .ids = at<const int32_t>(Ws::ids), .n_tokens = n, .dim = D, .first_row = P.embed_split ? P.vocab.begin : 0,
               .rows = P.embed_split ? P.vocab.size() : 0});
    if (P.embed_split) reduce(xb, n * D);  // each token's row from the rank that holds it (zeros elsewhere)
    if (diagnosing) checkpoint(xb, n * D, "the token embeddings (embed_tokens)");
    const float eps = static_cast<float>(c.rms_norm_eps);
    for (size_t l = 0; l < w.layers.size(); ++l) block(l, xb, n);
    // A sequence with a multi-token-prediction layer keeps each position's final hidden state.
    for (const Segment& s : segs)
      if (s.seq->hidden) norm(s.seq->hidden + s.seq->pos * D, xb + s.row * D, s.n, D, w.norm, eps);
    const int64_t rows = all_rows ? n : static_cast<int64_t>(segs.size());
    const float* last = xb + (n - rows) * D;  // one segment: its last `rows` rows are contiguous
    if (!all_rows && segs.size() > 1) {
      // Each segment's last row gathered (rows <= segments <= the planned tokens, so `out` has room).
      float* g = buf(Ws::out, rows * D);
      for (size_t i = 0; i < segs.size(); ++i)
        be->copy({.dst = g + static_cast<int64_t>(i) * D, .src = xb + (segs[i].row + segs[i].n - 1) * D, .rows = 1, .cols = D,
                  .dst_stride = D, .src_stride = D});
      last = g;
    }
    if (!P.head_here) return nullptr;  // (expert parallel: rank 0 alone computes the logits)
    // The final norm is folded into the LM head.
    const auto head = [&](float* out) {
      lin(out, last, rows, w.lm_head, Fold{.norm = &w.norm, .eps = eps});
    };
    const int64_t V = c.vocab_size;
    if (!P.head_split) {
      float* lg = buf(Ws::logits, rows * V);
      head(lg);
      if (diagnosing) checkpoint(lg, rows * V, "the final norm and LM head");
      return lg;
    }
    // Vocabulary split: each rank's rows of the head, gathered (padded to the widest rank's), then
    // laid side by side on the leader.
    float* part = buf(Ws::logits_part, rows * vocab_rows);
    head(part);
    float* all = buf(Ws::logits_all, P.ranks * rows * vocab_rows);
    gather(part, all, rows * vocab_rows);
    if (P.rank != 0) return nullptr;
    float* lg = buf(Ws::logits, rows * V);
    for (int r = 0; r < P.ranks; ++r) {
      const model::Range vr = model::share(V, r, P.ranks);
      be->copy({.dst = lg + vr.begin, .src = all + r * rows * vocab_rows, .rows = rows, .cols = vr.size(), .dst_stride = V,
                .src_stride = vr.size()});
    }
    return lg;
  }

  // Non-finite values (NaN weights, overflowing activations) must not reach the sampler as garbage
  // text. The logits are checked on every step (V floats per row: cheap); when they are bad, the
  // step is run again with the hidden state checked after each block, to name the first block that broke.
  bool diagnosing = false;
  std::vector<float> probe;
  void checkpoint(const float* data, int64_t count, const std::string& where) {  // only while diagnosing
    probe.resize(static_cast<size_t>(count));
    be->download(probe.data(), data, probe.size() * sizeof(float));
    for (float value : probe)
      if (!std::isfinite(value))
        throw Error("forward", cat(where, " produced ", std::isnan(value) ? "NaN" : "infinite", " values: the model's weights there hold NaN/Inf ",
                                   "or its activations overflow float32"));
  }
  [[noreturn]] void diagnose_non_finite(int64_t n, bool all_rows) {
    diagnosing = true;
    try {
      layers(n, all_rows);
    } catch (...) {
      diagnosing = false;
      throw;
    }
    diagnosing = false;
    throw Error("forward", "the logits hold NaN or infinite values");  // unreachable unless the second run differs
  }

  // One step over `segments` (their ids concatenated in `ids`, at most `tokens` rows): logits of
  // every row (`all_rows`, one segment) or of each segment's last row go to `dst`. Positions
  // advance only when the step succeeds. `recordable`: a single-token step of one session, which a
  // backend that can may record and replay (its pointers must not change between steps).
  void step(std::span<const Segment> segments, std::span<const int32_t> ids, bool all_rows, float* dst, bool recordable) {
    be->bind_thread();
    reserve();
    segs = segments;
    const int64_t n = static_cast<int64_t>(ids.size());
    upload_step(ids);
    // The naive MLA form reads the cache length on the host, so its steps are never recorded.
    // (Nor are steps that write each position's hidden state: its row moves with the position.)
    recordable = recordable && be->can_record() && n == 1 && !all_rows && !engine->distributed() && !segments[0].seq->hidden &&
                 !(c.attention == AttentionKind::mla && engine->options.mla == MlaMode::naive);
    if (recordable) decode_step.run(*be, [&] { layers(n, all_rows); });
    else layers(n, all_rows);
    // NCCL collectives were only enqueued: wait for them here, under the deadline, so a dead or
    // unreachable peer fails the step with its rank named rather than hanging the download.
    if (engine->comm->device_buffers()) engine->comm->synchronize(be->native_stream());
    if (P.rank != 0) {  // a worker: the leader alone has the logits
      for (const Segment& s : segments) s.seq->pos += s.n;
      return;
    }
    const int64_t rows = all_rows ? n : static_cast<int64_t>(segments.size());
    const float* lg = at<const float>(Ws::logits);
    const std::span<float> result(dst, static_cast<size_t>(rows * c.vocab_size));
    be->download(result.data(), lg, result.size() * sizeof(float));
    for (float value : result)
      if (!std::isfinite(value)) {
        // Running the step again to name the layer would be collectives the other ranks do not join.
        if (engine->distributed())
          throw Error("forward", "the logits hold NaN or infinite values (run the model in one process to find the layer)");
        diagnose_non_finite(n, all_rows);
      }
    for (const Segment& s : segments) s.seq->pos += s.n;
  }

  // Multi-token-prediction layer `m` (docs/MODELS.md "Multi-token prediction") over n rows at the
  // next positions of `mseq` (its own one-layer cache): row t joins the hidden state `h` [n, D]
  // (backend memory) with the embedding of ids[t], the token that followed it:
  //   x = eh_proj [enorm(embed(id)); hnorm(h)],  y = block(x),  logits = head(head_norm(y)).
  // The block output of the last row goes to `y_last` [D] (backend memory; it may be `h`'s last row:
  // h is read first), its logits to `dst` [V] on the host.
  void mtp_step(size_t m, Sequence& mseq, const float* h, std::span<const int32_t> ids, float* y_last, float* dst) {
    be->bind_thread();
    reserve();
    const int64_t n = static_cast<int64_t>(ids.size()), D = c.hidden_size, V = c.vocab_size;
    const Segment one[] = {{.seq = &mseq, .row = 0, .n = n, .slot = 0}};
    segs = one;
    upload_step(ids);
    const MtpWeights& M = w.mtp[m];
    const float eps = static_cast<float>(c.rms_norm_eps);
    float* e = buf(Ws::out, n * D);
    be->embed({.out = e, .table = wp(M.embed_tokens), .dtype = M.embed_tokens.dtype(), .ids = at<const int32_t>(Ws::ids),
               .n_tokens = n, .dim = D});
    float* in = buf(Ws::mtp_in, n * 2 * D);
    be->copy({.dst = in, .src = e, .rows = n, .cols = D, .dst_stride = 2 * D, .src_stride = D});
    be->copy({.dst = in + D, .src = h, .rows = n, .cols = D, .dst_stride = 2 * D, .src_stride = D});
    norm(in, in, n, D, M.enorm, eps, 2 * D);
    norm(in + D, in + D, n, D, M.hnorm, eps, 2 * D);
    float* xb = buf(Ws::x, n * D);
    lin(xb, in, n, M.eh_proj);
    block(w.layers.size() + m, xb, n);
    be->copy({.dst = y_last, .src = xb + (n - 1) * D, .rows = 1, .cols = D, .dst_stride = D, .src_stride = D});
    float* hb = buf(Ws::h, D);
    norm(hb, xb + (n - 1) * D, 1, D, M.head_norm, eps);
    float* lg = buf(Ws::logits, V);
    lin(lg, hb, 1, M.head);
    be->download(dst, lg, static_cast<size_t>(V) * sizeof(float));
    for (int64_t i = 0; i < V; ++i)
      if (!std::isfinite(dst[i])) throw Error("mtp", "the multi-token-prediction layer's logits hold NaN or infinite values");
    mseq.pos += n;
  }
};

// New tokens for `seq` (Session::forward, a Batch entry): at least one, every id in the vocabulary,
// and room for them all in its context; `who` names the caller in the error.
void check_new_tokens(const Sequence& seq, std::span<const int32_t> ids, int64_t vocab, const std::string& who) {
  const auto n = static_cast<int64_t>(ids.size());
  if (n == 0) throw Error(who, "no tokens given");
  for (int32_t id : ids)
    if (id < 0 || id >= vocab) throw Error(who, cat("token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
  if (n > seq.context - seq.pos)
    throw Error(who, cat(seq.pos, " cached + ", n, " new tokens exceed the context of ", seq.context, " tokens"));
}

// A session's part of the memory plan (runtime::plan_session, overflow-checked) against what the
// host has free, before anything is allocated. The CPU backend refuses more (allocations there
// succeed lazily and would fail later, under the OOM killer); CUDA allocations fail at once with a
// clear error.
void check_host_memory(const Engine::Impl& e, uint64_t bytes, uint64_t kv_bytes, const std::string& what, const char* hint) {
  if (!e.options.memory_check) return;
  std::string source;
  uint64_t have = 0;
  if (e.backend == BackendKind::cuda) {
    // On the device a buffer either fits or fails at once, but a session whose buffers cannot all
    // fit would allocate the first (gigabytes, maybe) before the next fails: refused up front.
#if MOERUN_HAVE_CUDA
    have = runtime::cuda_free_bytes();
    source = "free device memory, cudaMemGetInfo";
#else
    return;
#endif
  } else {
    have = host_available_bytes(&source);
  }
  if (bytes > have)
    throw Error("context", cat(what, " needs ", runtime::format_bytes(bytes), " (KV cache ", runtime::format_bytes(kv_bytes), ") but ",
                               runtime::format_bytes(have), " is available (", source, "); ", hint));
}

// A leader's session or batch going away: the other ranks drop their copy (nothing to do on one rank).
void send_free(const Engine::Impl& e, Op op, int64_t id) noexcept {
  if (!e.sends()) return;
  try {
    const std::lock_guard<std::mutex> lock(e.step);
    e.send(op, id);
  } catch (...) {  // a broken job: the launcher stops the ranks
  }
}

}  // namespace

struct Session::Impl {
  std::shared_ptr<const Engine::Impl> keep;  // the engine outlives its sessions
  const Engine::Impl* engine;
  int64_t id = -1;  // a distributed engine's name for it on every rank
  runtime::SessionMemory mem;  // what this session allocates (the memory plan's session part)
  Sequence seq;
  std::unique_ptr<Runner> runner;  // its own steps (the workspace reserved at once, or at the first one)
  std::vector<float> host_logits;  // what forward() returns a view of
  // The multi-token-prediction drafter (an engine that loaded the layer): the final hidden state of
  // every position (seq.hidden), the cached ids, and per MTP layer a cache whose position j holds
  // (hidden j, id j + 1) once both are known; `chain`, past the last position's row, the block
  // output a draft feeds the next.
  struct Mtp {
    runtime::Buffer hidden;  // [context + 1, D]: row j position j's, the last row `chain`
    Sequence seq;
    std::vector<int32_t> ids;
    std::vector<float> logits;
  };
  std::unique_ptr<Mtp> mtp;

  Impl(std::shared_ptr<const Engine::Impl> e, int64_t ctx, bool workspace_now) : keep(std::move(e)), engine(keep.get()) {
    const ModelDesc& c = engine->local;
    check_context(ctx, c, engine->options.context_override);
    mem = runtime::plan_session(c, ctx, engine->options.mla, engine->kv_type, runtime::workspace_share(engine->part, c.vocab_size));
    check_host_memory(*engine, workspace_now ? mem.total_bytes : mem.kv_bytes, mem.kv_bytes,
                      cat("a session with the ", ctx, "-token context"), "use a smaller -c");
    runner = std::make_unique<Runner>(engine, std::min(ctx, kMaxBatch), 1, ctx, workspace_now);
    seq.engine = engine;
    seq.context = ctx;
    const size_t L = static_cast<size_t>(c.num_hidden_layers);
    seq.k_cache.resize(L);
    seq.v_cache.resize(L);
    auto reserve_cache = [&](Sequence& s, size_t l) {  // GQA: K and V; MLA: the latent rows in k_cache
      runner->be->reserve(s.k_cache[l], mem.cache_bytes);
      if (c.attention == AttentionKind::gqa) runner->be->reserve(s.v_cache[l], mem.cache_bytes);
    };
    for (size_t l = 0; l < L; ++l) reserve_cache(seq, l);
    if (!c.mtp_ffn.empty()) {
      mtp = std::make_unique<Mtp>();
      runner->be->reserve(mtp->hidden, mem.mtp_hidden_bytes);
      seq.hidden = static_cast<float*>(mtp->hidden.data);
      mtp->seq.engine = engine;
      mtp->seq.context = ctx;
      mtp->seq.k_cache.resize(L + c.mtp_ffn.size());
      mtp->seq.v_cache.resize(L + c.mtp_ffn.size());
      for (size_t l = L; l < L + c.mtp_ffn.size(); ++l) reserve_cache(mtp->seq, l);
      mtp->ids.reserve(static_cast<size_t>(ctx));
      mtp->logits.resize(static_cast<size_t>(c.vocab_size));
    }
  }

  void record_ids(std::span<const int32_t> fed) {  // after a successful step
    if (mtp) mtp->ids.insert(mtp->ids.end(), fed.begin(), fed.end());
  }
  void truncated(int64_t n) {
    if (!mtp) return;
    mtp->ids.resize(static_cast<size_t>(n));
    mtp->seq.pos = std::min(mtp->seq.pos, std::max<int64_t>(n - 1, 0));
  }

  // The MTP cache's rows up to `end` (exclusive) from the recorded hidden states and the cached ids,
  // in micro-batches (the step lock held).
  void catch_up(int64_t end) {
    Sequence& ms = mtp->seq;
    const int64_t D = engine->local.hidden_size;
    float* scratch = seq.hidden + seq.context * D;
    for (int64_t j = ms.pos; j < end;) {
      const int64_t m = std::min(runner->tokens, end - j);
      runner->mtp_step(0, ms, seq.hidden + j * D, std::span<const int32_t>(mtp->ids).subspan(static_cast<size_t>(j + 1), static_cast<size_t>(m)),
                       scratch, mtp->logits.data());
      j += m;
    }
  }
  void mtp_prefill() {
    if (!mtp || seq.pos < 2) return;
    const std::lock_guard<std::mutex> lock(engine->step);
    mtp->seq.pos = std::min(mtp->seq.pos, seq.pos - 1);
    catch_up(seq.pos - 1);
  }

  // The tokens after position P (seq.pos) are `next` and then drafts: the MTP layer's cache is brought
  // up to position P - 1 from the recorded hidden states (rows it has not seen, (hidden j, id j + 1)),
  // then each draft comes from the last row's logits, the next row joining the block output with it.
  size_t mtp_draft(int32_t next, size_t count, std::vector<int32_t>& out) {
    out.clear();
    const ModelDesc& c = engine->local;
    if (!mtp) throw Error("mtp", "this engine did not load a multi-token-prediction layer (EngineOptions::mtp, --spec mtp)");
    if (next < 0 || next >= c.vocab_size) throw Error("mtp", cat("token id ", next, " is outside the vocabulary [0, ", c.vocab_size, ")"));
    const int64_t P = seq.pos, D = c.hidden_size;
    if (P == 0 || count == 0) return 0;  // no hidden state to start from
    // Drafts occupy MTP positions P - 1 .. P + count - 2, and the verification P .. P + count.
    count = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(count), seq.context - P));
    if (count == 0) return 0;
    const std::lock_guard<std::mutex> lock(engine->step);
    Sequence& ms = mtp->seq;
    ms.pos = std::min(ms.pos, P - 1);  // rows from P - 1 on joined a token that may have changed
    float* chain = seq.hidden + seq.context * D;
    try {
      catch_up(P - 1);  // rows j < P - 1: mtp->ids[j + 1] follows hidden row j
      runner->mtp_step(0, ms, seq.hidden + (P - 1) * D, std::span<const int32_t>(&next, 1), chain, mtp->logits.data());
      auto argmax = [&] {
        return static_cast<int32_t>(std::max_element(mtp->logits.begin(), mtp->logits.end()) - mtp->logits.begin());
      };
      out.push_back(argmax());
      while (out.size() < count) {
        const int32_t last = out.back();
        runner->mtp_step(0, ms, chain, std::span<const int32_t>(&last, 1), chain, mtp->logits.data());
        out.push_back(argmax());
      }
    } catch (...) {
      ms.pos = std::min(ms.pos, P - 1);
      throw;
    }
    ms.pos = P - 1;  // the chain's rows are overwritten from the verified hidden states next time
    return out.size();
  }

  std::span<const float> forward(std::span<const int32_t> ids, bool all_positions) {
    const ModelDesc& c = engine->local;
    const int64_t n = static_cast<int64_t>(ids.size());
    check_new_tokens(seq, ids, c.vocab_size, "forward");
    if (engine->sends()) {
      engine->payload.assign(ids.begin(), ids.end());
      engine->send(Op::session_forward, id, all_positions ? 1 : 0, 0, 0, engine->payload);
    }
    const size_t rows = all_positions ? static_cast<size_t>(n) : 1;
    host_logits.resize(detail::checked_bytes("logits", 1, rows, c.vocab_size));  // keeps its capacity
    const int64_t start = seq.pos;
    try {
      for (int64_t b = 0; b < n; b += runner->tokens) {
        const int64_t m = std::min(runner->tokens, n - b);
        const auto chunk = ids.subspan(static_cast<size_t>(b), static_cast<size_t>(m));
        // all_positions: each micro-batch's rows land at their place; else the last one's row wins.
        float* dst = host_logits.data() + (all_positions ? static_cast<size_t>(b) * static_cast<size_t>(c.vocab_size) : 0);
        const Segment one[] = {{.seq = &seq, .row = 0, .n = m, .slot = 0}};
        runner->step(one, chunk, all_positions, dst, /*recordable=*/true);
      }
    } catch (...) {
      seq.pos = start;  // a failed call changes nothing (on the other ranks either)
      if (engine->sends()) engine->send(Op::session_truncate, id, start);
      throw;
    }
    record_ids(ids);
    return host_logits;
  }
};

Session::Session(const Engine& engine, int64_t context, bool workspace) {
  const int64_t ctx = context > 0 ? context : engine.default_context();
  const Engine::Impl& e = *engine.impl_;
  if (!e.sends()) {
    impl_ = std::make_unique<Impl>(engine.impl_, ctx, workspace);
    return;
  }
  // The leader makes the session first (a refusal sends nothing), then every rank makes its copy.
  const std::lock_guard<std::mutex> lock(e.step);
  impl_ = std::make_unique<Impl>(engine.impl_, ctx, workspace);
  impl_->id = e.next_id++;
  e.send(Op::session_new, impl_->id, ctx, workspace ? 1 : 0);
}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&& other) noexcept {
  if (this != &other) {
    Session gone(std::move(*this));  // the other ranks drop this one's copy
    impl_ = std::move(other.impl_);
  }
  return *this;
}
Session::~Session() {
  if (impl_) send_free(*impl_->engine, Op::session_free, impl_->id);
}

std::vector<float> Session::forward(std::span<const int32_t> ids, bool all_positions) {
  const std::span<const float> v = forward_view(ids, all_positions);
  return {v.begin(), v.end()};
}
std::span<const float> Session::forward_view(std::span<const int32_t> ids, bool all_positions) {
  const std::lock_guard<std::mutex> lock(impl_->engine->step);  // the engine's threads, one step at a time
  return impl_->forward(ids, all_positions);
}
size_t Session::mtp_draft(int32_t next, size_t count, std::vector<int32_t>& out) { return impl_->mtp_draft(next, count, out); }
void Session::mtp_prefill() { impl_->mtp_prefill(); }
std::span<const float> Session::mtp_logits() const noexcept {
  return impl_->mtp ? std::span<const float>(impl_->mtp->logits) : std::span<const float>();
}
bool Engine::has_mtp() const noexcept { return !impl_->weights.mtp.empty(); }

int64_t Session::position() const noexcept { return impl_->seq.pos; }
int64_t Session::context() const noexcept { return impl_->seq.context; }
uint64_t Session::memory_bytes() const noexcept {
  uint64_t n = impl_->runner->memory_bytes();
  for (const auto* list : {&impl_->seq.k_cache, &impl_->seq.v_cache})
    for (const runtime::Buffer& b : *list) n += b.bytes;
  if (const auto& m = impl_->mtp) {
    n += m->hidden.bytes;
    for (const auto* list : {&m->seq.k_cache, &m->seq.v_cache})
      for (const runtime::Buffer& b : *list) n += b.bytes;
  }
  return n;
}
void Session::truncate(int64_t n) {
  if (n < 0 || n > impl_->seq.pos) throw Error("Session::truncate", cat("cannot keep ", n, " of ", impl_->seq.pos, " cached tokens"));
  if (impl_->engine->sends()) {
    const std::lock_guard<std::mutex> lock(impl_->engine->step);
    impl_->engine->send(Op::session_truncate, impl_->id, n);
  }
  impl_->seq.pos = n;  // rows past n are overwritten by the next forward
  impl_->truncated(n);
}

// --- batched steps ----------------------------------------------------------------------------

struct Batch::Impl {
  std::shared_ptr<const Engine::Impl> keep;
  const Engine::Impl* engine;
  BatchOptions options;
  Runner runner;
  int64_t id = -1;  // a distributed engine's name for it on every rank
  struct Item {
    Session::Impl* session = nullptr;
    std::span<const int32_t> ids;
  };
  std::vector<Item> items;
  std::vector<Segment> segs;
  std::vector<int32_t> ids;
  std::vector<float> logits;
  BatchStats stats;

  Impl(std::shared_ptr<const Engine::Impl> e, const BatchOptions& o)
      : keep(std::move(e)), engine(keep.get()), options(resolve(*engine, o)),
        runner(engine, options.max_tokens, options.max_sequences, options.max_context, false) {
    const runtime::WorkspacePlan& p = runner.plan;
    uint64_t bytes = 0;
    for (const runtime::WorkspaceEntry& entry : p) bytes += entry.bytes;
    check_host_memory(*engine, bytes, 0, cat("a batch of ", options.max_tokens, " tokens"), "use fewer tokens per step");
    runner.reserve();
    if (options.count_experts) runner.expert_stats = &stats;
    items.reserve(static_cast<size_t>(options.max_sequences));
    segs.reserve(static_cast<size_t>(options.max_sequences));
    ids.reserve(static_cast<size_t>(options.max_tokens));
  }

  static BatchOptions resolve(const Engine::Impl& e, BatchOptions o) {
    if (o.max_context <= 0) o.max_context = e.default_context;
    if (o.max_tokens < 1 || o.max_tokens > kMaxContext)
      throw Error("batch", cat("max_tokens must be in [1, ", kMaxContext, "], found ", o.max_tokens));
    if (o.max_sequences < 1 || o.max_sequences > o.max_tokens)
      throw Error("batch", cat("max_sequences must be in [1, max_tokens = ", o.max_tokens, "], found ", o.max_sequences));
    check_context(o.max_context, e.local, e.options.context_override);
    return o;
  }

  std::span<const float> forward(std::span<const BatchEntry> entries) {
    const ModelDesc& c = engine->local;
    if (entries.empty()) throw Error("batch", "no entries given");
    if (static_cast<int64_t>(entries.size()) > options.max_sequences)
      throw Error("batch", cat(entries.size(), " entries is more than the ", options.max_sequences, " this batch was made for"));
    items.clear();
    int64_t total = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      const BatchEntry& en = entries[i];
      const std::string who = cat("batch entry ", i);
      if (!en.session) throw Error(who, "has no session");
      Session::Impl& si = *en.session->impl_;
      if (si.engine != engine) throw Error(who, "is a session of another engine");
      for (size_t j = 0; j < i; ++j)
        if (entries[j].session == en.session) throw Error(who, cat("is the session of entry ", j, " again"));
      const auto n = static_cast<int64_t>(en.ids.size());
      check_new_tokens(si.seq, en.ids, c.vocab_size, who);
      if (si.seq.context > options.max_context && c.attention == AttentionKind::mla && engine->options.mla == MlaMode::naive)
        throw Error(who, cat("has a ", si.seq.context, "-token context; this batch was made for ", options.max_context));
      if (n > options.max_tokens - total)
        throw Error("batch", cat("the entries hold more than the ", options.max_tokens, " tokens this batch was made for"));
      items.push_back({&si, en.ids});
      total += n;
    }
    return run(items);
  }

  // One step over checked items (the leader's, or a worker's copy of them).
  std::span<const float> run(std::span<const Item> step_items) {
    if (engine->sends()) {  // [entries] x (session id, n, ids...)
      std::vector<int64_t>& pl = engine->payload;
      pl.clear();
      for (const Item& it : step_items) {
        pl.push_back(it.session->id);
        pl.push_back(static_cast<int64_t>(it.ids.size()));
        pl.insert(pl.end(), it.ids.begin(), it.ids.end());
      }
      engine->send(Op::batch_forward, id, static_cast<int64_t>(step_items.size()), 0, 0, pl);
    }
    segs.clear();
    ids.clear();
    int64_t total = 0;
    for (size_t i = 0; i < step_items.size(); ++i) {
      const auto n = static_cast<int64_t>(step_items[i].ids.size());
      segs.push_back({.seq = &step_items[i].session->seq, .row = total, .n = n,
                      .slot = runner.rope.size() > 1 ? static_cast<int64_t>(i) : 0});
      ids.insert(ids.end(), step_items[i].ids.begin(), step_items[i].ids.end());
      total += n;
    }
    logits.resize(detail::checked_bytes("logits", 1, step_items.size(), engine->local.vocab_size));
    try {
      runner.step(segs, ids, /*all_rows=*/false, logits.data(), /*recordable=*/false);
    } catch (...) {
      if (engine->sends())  // the sessions are unchanged here; so they must be on the other ranks
        for (const Item& it : step_items) engine->send(Op::session_truncate, it.session->id, it.session->seq.pos);
      throw;
    }
    ++stats.steps;
    for (const Item& it : step_items) it.session->record_ids(it.ids);
    return logits;
  }
};

Batch::Batch(const Engine& engine, const BatchOptions& options) {
  const Engine::Impl& e = *engine.impl_;
  if (!e.sends()) {
    impl_ = std::make_unique<Impl>(engine.impl_, options);
    return;
  }
  const std::lock_guard<std::mutex> lock(e.step);
  impl_ = std::make_unique<Impl>(engine.impl_, options);
  impl_->id = e.next_id++;
  const BatchOptions& o = impl_->options;
  const int64_t count[] = {o.count_experts ? 1 : 0};
  e.send(Op::batch_new, impl_->id, o.max_tokens, o.max_sequences, o.max_context, count);
}
Batch::Batch(Batch&&) noexcept = default;
Batch& Batch::operator=(Batch&& other) noexcept {
  if (this != &other) {
    Batch gone(std::move(*this));
    impl_ = std::move(other.impl_);
  }
  return *this;
}
Batch::~Batch() {
  if (impl_) send_free(*impl_->engine, Op::batch_free, impl_->id);
}

std::span<const float> Batch::forward(std::span<const BatchEntry> entries) {
  const std::lock_guard<std::mutex> lock(impl_->engine->step);
  return impl_->forward(entries);
}
const BatchOptions& Batch::options() const noexcept { return impl_->options; }
uint64_t Batch::memory_bytes() const noexcept { return impl_->runner.memory_bytes(); }
const BatchStats& Batch::stats() const noexcept { return impl_->stats; }

// --- distributed engines ----------------------------------------------------------------------

int launch_rank() noexcept {
  try {
    return comm::launch_rank();
  } catch (...) {  // a malformed launcher environment: Engine::load names it
    return 0;
  }
}
int launch_size() noexcept {
  try {
    return comm::launch_size();
  } catch (...) {
    return 1;
  }
}
void abort_ranks(int code) noexcept { comm::abort_world(code); }

int Engine::rank() const noexcept { return impl_->part.rank; }
int Engine::ranks() const noexcept { return impl_->part.ranks; }
SplitMode Engine::split() const noexcept { return impl_->part.split; }
std::string Engine::partition_summary() const { return impl_->part.summary(); }

Engine::RankStats Engine::Impl::local_stats() const {
  RankStats r;
  r.rank = part.rank;
  std::tie(r.rss_bytes, r.peak_rss_bytes) = resident_bytes();
  r.weight_bytes = weight_bytes;
  r.comm_calls = step_comm.calls;
  r.comm_bytes = step_comm.bytes;
  r.comm_seconds = step_comm.seconds;
  return r;
}

std::vector<Engine::RankStats> Engine::Impl::exchange_stats() const {
  static_assert(std::is_trivially_copyable_v<RankStats>);
  const RankStats mine = local_stats();
  std::vector<RankStats> all(static_cast<size_t>(part.ranks));
  control->all_gather(&mine, all.data(), sizeof mine, comm::Type::u8);
  return all;
}

std::vector<Engine::RankStats> Engine::rank_stats() const {
  const Impl& e = *impl_;
  if (!e.distributed()) return {e.local_stats()};
  const std::lock_guard<std::mutex> lock(e.step);
  e.send(Op::stats, 0);
  return e.exchange_stats();
}

void Engine::reset_comm_stats() const {
  const Impl& e = *impl_;
  const std::lock_guard<std::mutex> lock(e.step);
  if (e.sends()) e.send(Op::reset_stats, 0);
  e.step_comm = {};
}

// A worker's loop: every command of the leader, run on this rank's share, until the leader's
// engine is released. A command naming something this rank does not have means the ranks
// disagree: an Error (the job then stops).
void Engine::follow() const {
  const Impl& e = *impl_;
  if (!e.distributed() || e.part.rank == 0) return;
  std::unordered_map<int64_t, std::unique_ptr<Session::Impl>> sessions;
  std::unordered_map<int64_t, std::unique_ptr<Batch::Impl>> batches;
  std::vector<int64_t> data;
  std::vector<int32_t> ids;
  std::vector<Batch::Impl::Item> items;
  auto session = [&](int64_t id) -> Session::Impl& {
    const auto it = sessions.find(id);
    if (it == sessions.end()) throw Error("follow", cat("rank ", e.part.rank, ": the leader named session ", id, ", which this rank does not have"));
    return *it->second;
  };
  for (;;) {
    const Command h = e.receive(data);
    switch (static_cast<Op>(h.op)) {
      case Op::quit:
        return;
      case Op::session_new:
        sessions[h.id] = std::make_unique<Session::Impl>(impl_, h.a, h.b != 0);
        sessions[h.id]->id = h.id;
        break;
      case Op::session_forward:
        ids.assign(data.begin(), data.end());
        session(h.id).forward(ids, h.a != 0);
        break;
      case Op::session_truncate:
        session(h.id).seq.pos = h.a;
        break;
      case Op::session_free:
        sessions.erase(h.id);
        break;
      case Op::batch_new: {
        const BatchOptions o{.max_tokens = h.a, .max_sequences = h.b, .max_context = h.c, .count_experts = !data.empty() && data[0] != 0};
        batches[h.id] = std::make_unique<Batch::Impl>(impl_, o);
        batches[h.id]->id = h.id;
        break;
      }
      case Op::batch_forward: {
        const auto it = batches.find(h.id);
        if (it == batches.end()) throw Error("follow", cat("rank ", e.part.rank, ": the leader named batch ", h.id, ", which this rank does not have"));
        // (session id, n, ids...) per entry: the ids first, then spans into them.
        ids.clear();
        std::vector<std::pair<int64_t, int64_t>> entries;  // session, count
        for (size_t i = 0; i + 1 < data.size();) {
          const int64_t sid = data[i], n = data[i + 1];
          if (n < 0 || i + 2 + static_cast<size_t>(n) > data.size()) throw Error("follow", "a malformed batch step from the leader");
          entries.emplace_back(sid, n);
          ids.insert(ids.end(), data.begin() + static_cast<std::ptrdiff_t>(i + 2), data.begin() + static_cast<std::ptrdiff_t>(i + 2 + static_cast<size_t>(n)));
          i += 2 + static_cast<size_t>(n);
        }
        items.clear();
        size_t at = 0;
        for (const auto& [sid, n] : entries) {
          items.push_back({&session(sid), std::span<const int32_t>(ids).subspan(at, static_cast<size_t>(n))});
          at += static_cast<size_t>(n);
        }
        it->second->run(items);
        break;
      }
      case Op::batch_free:
        batches.erase(h.id);
        break;
      case Op::stats:
        e.exchange_stats();
        break;
      case Op::reset_stats:
        e.step_comm = {};
        break;
      default:
        throw Error("follow", cat("rank ", e.part.rank, ": unknown command ", h.op, " from the leader"));
    }
  }
}

}  // namespace moerun
