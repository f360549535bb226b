// The memory plan (include/moerun/plan.h): the weights' bytes from one walk over the bound weights
// with the conversions prepare_weights() will make, the KV cache and the workspace from the
// description and the context, placed on the host or the device by backend, against what is free.

#include "moerun/plan.h"

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/weight_store.h"
#include "kernels/ops.h"
#include "model/binding.h"
#include "model/convert.h"
#include "model/partition.h"
#include "comm/comm.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "runtime/backend.h"
#include "runtime/workspace.h"
#include "util/checked.h"
#include "util/strings.h"

namespace moerun {

using detail::cat;

namespace runtime {

BackendKind requested_backend(const EngineOptions& o) {
  // Quantized weights run on the CPU (the CUDA kernels take f32/bf16/f16/FP8): `automatic` means
  // cpu for them, whoever asks (the CLI and library callers alike).
  return o.quant != WeightQuant::none && o.backend == BackendKind::automatic ? BackendKind::cpu : o.backend;
}

void check_kv_type(const ModelDesc& d, KvType kv_type, MlaMode mla) {
  if (kv_type == KvType::f32) return;
  const std::string name(kv_type_name(kv_type));
  if (d.attention == AttentionKind::mla && mla == MlaMode::naive)
    throw Error("--kv-type", cat(name, " KV cache: the naive MLA form (--mla naive) reads the latent cache as f32 rows; use --kv-type f32"));
  if (kv_type != KvType::q8_0) return;
  auto need32 = [&](const char* field, int64_t v) {
    if (v % kKvBlock != 0)
      throw Error("--kv-type", cat("q8_0 KV cache stores blocks of 32 values, so ", field, " must be a multiple of 32 (it is ", v,
                                   " in config.json); use --kv-type f16 or bf16"));
  };
  if (d.attention == AttentionKind::gqa) {
    need32("head_dim", d.head_dim);
  } else {
    need32("kv_lora_rank", d.kv_lora_rank);
    need32("qk_rope_head_dim", d.qk_rope_head_dim);
  }
}

DType fp8_form(const EngineOptions& o, BackendKind /*backend*/) {
  // Both backends read FP8 weights with their block scales (the CUDA GEMVs, MoE and head matmuls as
  // the CPU kernels do), so --fp8 keep is zero copy on either.
  return o.fp8_dequant;
}

size_t cuda_scratch_bytes(const ModelDesc& d, int64_t context) {
  constexpr size_t kMiB = size_t{1} << 20;
  const auto B = static_cast<size_t>(std::max<int64_t>(1, std::min(context, kMaxBatch)));
  const auto D = static_cast<size_t>(d.hidden_size);
  size_t widest = D;  // the widest GEMM input row
  for (int64_t w : {d.intermediate_size, d.moe_intermediate_size, d.num_attention_heads * d.v_head_dim,
                    d.num_attention_heads * d.head_dim, d.q_lora_rank.value_or(0), d.kv_lora_rank})
    widest = std::max(widest, static_cast<size_t>(std::max<int64_t>(w, 0)));
  // A GEMM's x rounded to bf16, plus an FP8 weight's bf16 dequantization tile (matmul.cu).
  const size_t gemm = B * widest * 2 + (d.fp8.enabled ? 64 * kMiB : 0);
  // The MoE prefill: per (token, expert) pair its gathered x (bf16), gate/up/act rows (f32) and down row.
  // (+1: a shared expert may run as one more pair of every token.)
  const auto pairs = B * static_cast<size_t>(std::max<int64_t>(d.router.num_experts_per_tok, 0) + (d.shared.count > 0 ? 1 : 0));
  const auto I = static_cast<size_t>(std::max<int64_t>(d.moe_intermediate_size, 0));
  const size_t moe = pairs * (D * 2 + I * 4 * 3 + D * 4);
  // Split-K attention partials stay within ~2 blocks per SM of 16 query rows x 512 floats: 16 MiB.
  const size_t ops = std::max({gemm, moe, 16 * kMiB});
  // The workspace grows to 1.25x a request (context.cu); cuBLAS's own 32 MiB; 64 MiB for the graph,
  // events and kernels' module memory.
  return ops + ops / 4 + 32 * kMiB + 64 * kMiB;
}

WorkspaceShare workspace_share(const model::Partition& p, int64_t vocab_size) {
  WorkspaceShare s;
  if (!p.distributed()) return s;
  s.ranks = p.ranks;
  if (p.full_qk) {
    s.q_heads = p.heads_total;
    s.kv_heads = p.kv_heads_total;
  }
  if (p.head_split) s.vocab_rows = model::share(vocab_size, 0, p.ranks).size();  // rank 0's is the widest
  s.logits = p.rank == 0;
  return s;
}

WorkspacePlan plan_workspace(const ModelDesc& d, int64_t context, MlaMode mla, int64_t tokens, int64_t sequences,
                             const WorkspaceShare& share) {
  const std::string what = cat("the workspace of a ", context, "-token context");
  const int64_t B = tokens > 0 ? tokens : std::min(context, kMaxBatch);
  const int64_t rope_tables = d.rope.scaling.type == RopeType::dynamic ? std::max<int64_t>(sequences, 1) : 1;
  const bool gqa = d.attention == AttentionKind::gqa, mla_naive = !gqa && mla == MlaMode::naive;
  const int64_t H = d.num_attention_heads, D = d.hidden_size;
  const int64_t dqk = gqa ? d.head_dim : d.qk_nope_head_dim + d.qk_rope_head_dim;
  const int64_t dv = gqa ? d.head_dim : d.v_head_dim;
  const int64_t row = d.kv_lora_rank + d.qk_rope_head_dim;  // MLA latent row
  // (Multi-token-prediction blocks run in the same buffers.)
  const bool mtp_moe = std::find(d.mtp_ffn.begin(), d.mtp_ffn.end(), FfnKind::moe) != d.mtp_ffn.end();
  const bool mtp_dense = std::find(d.mtp_ffn.begin(), d.mtp_ffn.end(), FfnKind::dense) != d.mtp_ffn.end();
  const bool any_moe = d.num_moe_layers() > 0 || mtp_moe;
  const int64_t ffn = std::max(d.has_dense_layers() || mtp_dense ? d.intermediate_size : 0,
                               any_moe && d.shared.count > 0 ? d.shared.intermediate_size : 0);
  const int64_t E = any_moe ? d.router.n_routed_experts : 0, K = any_moe ? d.router.num_experts_per_tok : 0;
  auto f32 = [&](auto... dims) { return detail::checked_bytes(what, sizeof(float), dims...); };
  WorkspacePlan p;
  auto set = [&](Ws role, const char* name, size_t bytes) { p[static_cast<size_t>(role)] = {name, bytes}; };
  set(Ws::ids, "ids", detail::checked_bytes(what, sizeof(int32_t), B));
  set(Ws::positions, "positions", detail::checked_bytes(what, sizeof(int64_t), B));
  set(Ws::inv_freq, "inv_freq", f32(rope_tables, std::max<int64_t>(d.rope.dim / 2, 1)));
  set(Ws::x, "x", f32(B, D));
  set(Ws::h, "h", f32(B, D));
  set(Ws::out, "out", f32(B, D));
  set(Ws::q, "q", f32(B, share.q_heads > 0 ? share.q_heads : H, dqk));
  set(Ws::k, "k", gqa ? f32(B, share.kv_heads > 0 ? share.kv_heads : d.num_key_value_heads, d.head_dim) : 0);
  set(Ws::v, "v", gqa ? f32(B, d.num_key_value_heads, d.head_dim) : 0);
  set(Ws::attn, "attn", f32(B, H, dv));
  set(Ws::q_lora, "q_lora", !gqa && d.q_lora_rank ? f32(B, *d.q_lora_rank) : 0);
  set(Ws::kv_new, "kv_new", gqa ? 0 : f32(B, row));
  set(Ws::q_absorbed, "q_absorbed", gqa || mla_naive ? 0 : f32(B, H, row));
  set(Ws::latent_out, "latent_out", gqa || mla_naive ? 0 : f32(B, H, d.kv_lora_rank));
  set(Ws::kv_full, "kv_full", mla_naive ? f32(context, H, d.qk_nope_head_dim + d.v_head_dim) : 0);
  set(Ws::k_full, "k_full", mla_naive ? f32(context, H, dqk) : 0);
  set(Ws::ffn_gate, "ffn_gate", ffn > 0 ? f32(B, ffn) : 0);
  set(Ws::ffn_up, "ffn_up", ffn > 0 ? f32(B, ffn) : 0);
  set(Ws::router_logits, "router_logits", any_moe ? f32(B, E) : 0);
  set(Ws::expert_ids, "expert_ids", any_moe ? detail::checked_bytes(what, sizeof(int32_t), B, K) : 0);
  set(Ws::expert_weights, "expert_weights", any_moe ? f32(B, K) : 0);
  set(Ws::shared_out, "shared_out", any_moe && d.shared.count > 0 ? f32(B, D) : 0);
  set(Ws::shared_gate, "shared_gate", any_moe && d.shared.gated ? f32(B) : 0);
  set(Ws::logits, "logits", share.logits ? f32(B, d.vocab_size) : 0);
  set(Ws::logits_part, "logits_part", share.vocab_rows > 0 ? f32(B, share.vocab_rows) : 0);
  set(Ws::logits_all, "logits_all", share.vocab_rows > 0 ? f32(share.ranks, B, share.vocab_rows) : 0);
  set(Ws::mtp_in, "mtp_in", d.mtp_ffn.empty() ? 0 : f32(B, 2, D));
  return p;
}

SessionMemory plan_session(const ModelDesc& d, int64_t context, MlaMode mla, KvType kv_type, const WorkspaceShare& share) {
  const std::string what = cat("the ", context, "-token context");
  SessionMemory m;
  m.kv_type = kv_type;
  // GQA keeps K and V in two buffers of half a position's elements each; MLA one latent row. A
  // position's row is whole q8_0 blocks (check_kv_type), so bytes per element times elements is exact.
  const int64_t per_buffer = d.kv_floats_per_position() / (d.attention == AttentionKind::gqa ? 2 : 1);
  const size_t row_bytes = kv_bytes(kv_type, per_buffer);
  m.cache_bytes = detail::checked_bytes(what, row_bytes, context);
  m.kv_bytes = detail::checked_bytes(what, row_bytes, context, d.attention == AttentionKind::gqa ? 2 : 1, d.num_hidden_layers);
  m.workspace = plan_workspace(d, context, mla, 0, 1, share);
  const auto mtp_layers = static_cast<int64_t>(d.mtp_ffn.size());
  const auto mtp_moe = static_cast<int64_t>(std::count(d.mtp_ffn.begin(), d.mtp_ffn.end(), FfnKind::moe));
  if (const int64_t moe_layers = d.num_moe_layers() + mtp_moe; moe_layers > 0)
    m.expert_table_bytes = detail::checked_bytes(what, 6 * sizeof(void*), moe_layers, d.router.n_routed_experts);
  if (mtp_layers > 0) {
    m.mtp_cache_bytes = detail::checked_bytes(what, row_bytes, context, d.attention == AttentionKind::gqa ? 2 : 1, mtp_layers);
    m.mtp_hidden_bytes = detail::checked_bytes(what, sizeof(float), context + 1, d.hidden_size);  // + the chain's row
  }
  m.total_bytes = detail::checked_add(m.kv_bytes, m.expert_table_bytes, what);
  m.total_bytes = detail::checked_add(m.total_bytes, detail::checked_add(m.mtp_cache_bytes, m.mtp_hidden_bytes, what), what);
  for (const WorkspaceEntry& e : m.workspace) m.total_bytes = detail::checked_add(m.total_bytes, e.bytes, what);
  return m;
}

}  // namespace runtime

namespace {

constexpr size_t kDeviceAlign = 256;  // the CUDA upload's tensor alignment

using runtime::format_bytes;

// The backend a plan is for: `automatic` as the engine resolves it, but an explicit cuda is planned
// (with no device memory available) even where no GPU is usable.
BackendKind planned_backend(const EngineOptions& o) {
  const BackendKind requested = runtime::requested_backend(o);
  return requested == BackendKind::automatic ? runtime::resolve_backend(requested) : requested;
}

struct DeviceRoom {
  uint64_t bytes = 0;
  std::string source;
};
DeviceRoom cuda_room() {
#if MOERUN_HAVE_CUDA
  if (cuda::available()) return {runtime::cuda_free_bytes(), "cudaMemGetInfo"};
#endif
  return {0, "no usable CUDA device"};
}

// What the machine has, read once per plan (every suggestion is compared with the same numbers).
struct Room {
  MemoryPlan::Device host;
  DeviceRoom cuda;
};
Room measure_room() {
  Room r;
  r.host.name = "host";
  r.host.available_bytes = host_available_bytes(&r.host.available_source);
  r.cuda = cuda_room();
  return r;
}

// The weights' part of a plan: one walk with the conversions options ask for. `shape_only`: the
// weights are shapes without data (a plan from a config), so tying comes from the description
// rather than from shared data.
MemoryPlan weigh(const ModelDesc& d, const ModelWeights& w, bool shape_only, const EngineOptions& o, BackendKind backend) {
  MemoryPlan p;
  p.backend = backend;
  p.quant = o.quant;
  p.kv_type = kv_type_for(o, backend, d);
  const model::PrepareOptions po{runtime::fp8_form(o, backend), o.quant};
  std::map<DType, MemoryPlan::Weights> by_dtype;
  const bool tied = (shape_only ? d.tie_word_embeddings : w.lm_head.data() == w.embed_tokens.data()) &&
                    w.lm_head.shape() == w.embed_tokens.shape();  // (a rank's rows of a split head are its own)
  Tensor weight;  // the walk visits a weight before its scales
  for_each_tensor(w, [&](const WeightSite& site, LinearPart part, const Tensor& t) {
    if (part == LinearPart::weight) weight = t;
    const bool tied_head = tied && site.kind == WeightKind::linear && site.layer < 0;
    // A tied head shares the prepared embedding unless quantization gives it its own copy.
    if (tied_head && o.quant == WeightQuant::none) return;
    const model::PreparedForm f = model::prepared_form(site, part, t, po, weight);
    if (part == LinearPart::weight && t.dtype() == DType::f8_e4m3) {
      p.fp8_form = f.dtype;
      p.fp8_source_bytes += t.nbytes();
    }
    if (!f.kept || (tied_head && !f.owned)) return;  // (a head left unquantized is the embedding's view)
    const size_t bytes = dtype_bytes(f.dtype, t.numel());
    MemoryPlan::Weights& entry = by_dtype[f.dtype];
    entry.dtype = std::string(dtype_name(f.dtype));
    (f.owned ? entry.owned_bytes : entry.mapped_bytes) += bytes;
    (f.owned ? p.weights_owned_bytes : p.weights_mapped_bytes) += bytes;
    p.weights_device_bytes += (bytes + kDeviceAlign - 1) / kDeviceAlign * kDeviceAlign;
  });
  p.weights_bytes = p.weights_mapped_bytes + p.weights_owned_bytes;
  for (const auto& [dtype, entry] : by_dtype) p.weights.push_back(entry);
  std::sort(p.weights.begin(), p.weights.end(), [](const auto& a, const auto& b) {
    return a.mapped_bytes + a.owned_bytes > b.mapped_bytes + b.owned_bytes;
  });
  return p;
}

// A weighed plan completed for one session at `context`: KV cache, workspace, devices, verdict (any
// session part `p` already had is replaced).
MemoryPlan place(MemoryPlan p, const ModelDesc& d, MlaMode mla, int64_t context, const Room& room, const runtime::WorkspaceShare& share) {
  const std::string what = cat("the ", context, "-token context");
  p.context = context;
  p.workspace.clear();
  p.total_bytes = p.available_bytes = 0;
  const runtime::SessionMemory s = runtime::plan_session(d, context, mla, p.kv_type, share);
  p.kv_bytes = s.kv_bytes;
  for (const runtime::WorkspaceEntry& e : s.workspace)
    if (e.bytes > 0) p.workspace.push_back({e.role, e.bytes});
  if (s.expert_table_bytes > 0) p.workspace.push_back({"expert_tables", s.expert_table_bytes});
  p.workspace_bytes = s.total_bytes - s.kv_bytes;
  MemoryPlan::Device host = room.host;
  if (p.backend == BackendKind::cuda) {
    // Weight copies made at load stay on the host; the mapped views are read once, at upload. The
    // device also holds the ops' scratch (the op workspace at the longest prefill step, cuBLAS's).
    host.needed_bytes = p.weights_owned_bytes;
    const size_t scratch = runtime::cuda_scratch_bytes(d, context);
    p.workspace.push_back({"cuda_scratch", scratch});
    p.workspace_bytes += scratch;
    p.devices = {host, MemoryPlan::Device{.name = "cuda:0",
                                          .needed_bytes = detail::checked_add(detail::checked_add(p.weights_device_bytes, s.total_bytes, what),
                                                                              scratch, what),
                                          .available_bytes = room.cuda.bytes,
                                          .available_source = room.cuda.source}};
  } else {
    host.needed_bytes = detail::checked_add(p.weights_bytes, s.total_bytes, what);
    p.devices = {host};
  }
  p.fits = true;
  for (const MemoryPlan::Device& dev : p.devices) {
    p.total_bytes += dev.needed_bytes;
    p.available_bytes += dev.available_bytes;
    p.fits = p.fits && dev.fits();
  }
  return p;
}

// Flags that would make a plan fit, each on its own: FP8 kept as FP8 (CPU), a smaller KV type, a
// quantization (CPU) and the largest power-of-two context. The weights are walked again only for
// another weight form; other KV types and contexts reuse `p`'s weights.
std::string suggest(const ModelDesc& d, const ModelWeights& w, bool shape_only, const EngineOptions& o, const MemoryPlan& p,
                    const Room& room, const runtime::WorkspaceShare& share) {
  std::vector<std::string> out;
  if (p.backend == BackendKind::cpu && p.fp8_source_bytes > 0 && p.fp8_form != DType::f8_e4m3 && o.quant == WeightQuant::none) {
    EngineOptions alt = o;
    alt.fp8_dequant = DType::f8_e4m3;
    if (const MemoryPlan ap = place(weigh(d, w, shape_only, alt, p.backend), d, o.mla, p.context, room, share); ap.fits)
      out.push_back(cat("--fp8 keep (needs ", format_bytes(ap.total_bytes), ")"));
  }
  if (p.backend == BackendKind::cpu && p.kv_type != KvType::q8_0) {
    bool q8_ok = true;
    try {
      runtime::check_kv_type(d, KvType::q8_0, o.mla);
    } catch (const Error&) {
      q8_ok = false;
    }
    MemoryPlan kp = p;
    kp.kv_type = KvType::q8_0;
    if (q8_ok) {
      if (const MemoryPlan ap = place(kp, d, o.mla, p.context, room, share); ap.fits)
        out.push_back(cat("--kv-type q8_0 (needs ", format_bytes(ap.total_bytes), ")"));
    }
  }
  if (p.backend == BackendKind::cpu && o.quant == WeightQuant::none) {
    for (WeightQuant q : {WeightQuant::q8, WeightQuant::q4}) {
      EngineOptions alt = o;
      alt.quant = q;
      const MemoryPlan ap = place(weigh(d, w, shape_only, alt, p.backend), d, o.mla, p.context, room, share);
      if (ap.fits) {
        out.push_back(cat("--quant ", q == WeightQuant::q8 ? "q8" : "q4", " (needs ", format_bytes(ap.total_bytes), ")"));
        break;
      }
    }
  }
  // Below the requested context, and within the trained one unless the caller overrides it.
  const int64_t most = o.context_override ? p.context - 1 : std::min(p.context - 1, d.max_position_embeddings);
  int64_t c = 1;
  while (c * 2 <= most) c *= 2;
  for (; c >= 256; c /= 2) {
    const MemoryPlan cp = place(p, d, o.mla, c, room, share);
    if (cp.fits) {
      out.push_back(cat("-c ", c, " (needs ", format_bytes(cp.total_bytes), ")"));
      break;
    }
  }
  std::string s;
  for (const std::string& x : out) s += (s.empty() ? "" : " or ") + x;
  return s;
}

// Ranks of a distributed run on this machine (they share its memory): the launcher's count.
int local_ranks() {
  const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int n = v ? std::atoi(v) : 1;
  return n > 0 ? n : 1;
}

MemoryPlan plan_for(const ModelDesc& d, const ModelWeights& w, bool shape_only, const EngineOptions& o,
                    const runtime::WorkspaceShare& share = {}) {
  const int64_t context = o.context > 0 ? o.context : default_context(d, o);
  Room room = measure_room();
  if (share.ranks > 1) room.host.available_bytes /= static_cast<uint64_t>(std::min(local_ranks(), share.ranks));
  MemoryPlan p = place(weigh(d, w, shape_only, o, planned_backend(o)), d, o.mla, context, room, share);
  // `--backend auto` picks the GPU only when the plan fits it; otherwise the CPU, saying why.
  if (!p.fits && p.backend == BackendKind::cuda && runtime::requested_backend(o) == BackendKind::automatic) {
    const MemoryPlan::Device& gpu = p.devices.back();
    const std::string why = cat("the model needs ", format_bytes(gpu.needed_bytes), " on ", gpu.name, " where ",
                                format_bytes(gpu.available_bytes), " is free: running on the CPU (--backend cuda insists)");
    EngineOptions on_cpu = o;
    on_cpu.backend = BackendKind::cpu;
    p = place(weigh(d, w, shape_only, on_cpu, BackendKind::cpu), d, o.mla, context, room, share);
    p.backend_note = why;
    if (!p.fits) p.suggestions = suggest(d, w, shape_only, on_cpu, p, room, share);
    return p;
  }
  if (!p.fits) p.suggestions = suggest(d, w, shape_only, o, p, room, share);
  return p;
}

// The plan of one rank's share (options.ranks > 1, or 0 under a launcher): the weights cut to the
// share (shapes only: nothing is read) and the rank's description.
MemoryPlan plan_share(const ModelConfig& config, const ModelWeights& w, bool shape_only, const EngineOptions& o) {
  const int ranks = o.ranks > 0 ? o.ranks : comm::launch_size();
  const int rank = o.ranks > 0 ? o.rank : comm::launch_rank();
  if (ranks <= 1) return plan_for(config, w, shape_only, o);
  const model::Partition part = model::make_partition(config, o.split, rank, ranks);
  const ModelConfig local = model::local_config(config, part);
  const ModelWeights cut = model::slice_weights(w, config, part, /*shapes_only=*/true);
  MemoryPlan p = plan_for(local, cut, shape_only, o, runtime::workspace_share(part, config.vocab_size));
  p.rank = rank;
  p.ranks = ranks;
  p.split = std::string(split_name(part.split));
  p.partition = part.summary();
  return p;
}

// Shape-only tensors: every tensor of a plan made from a config points here and is never read.
alignas(64) const std::byte kShapeOnly[64] = {};

DType checkpoint_dtype(const ModelConfig& c, const std::string& name, bool linear) {
  if (name.ends_with("weight_scale_inv")) return DType::f32;
  if (linear && c.fp8.enabled) return DType::f8_e4m3;
  if (c.torch_dtype == "float32") return DType::f32;
  if (c.torch_dtype == "float16") return DType::f16;
  return DType::bf16;
}

}  // namespace

uint64_t host_available_bytes(std::string* source) {
  uint64_t avail = UINT64_MAX;
  std::string from = "unknown";
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    uint64_t kib = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %lu kB", &kib) == 1) {
      avail = kib * 1024;
      from = "MemAvailable";
    }
  }
  // cgroup v2 (memory.max - memory.current) or v1 (limit - usage), when lower.
  for (const auto& [limit_file, usage_file] : {std::pair{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                                               std::pair{"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                                         "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
    std::ifstream lf(limit_file), uf(usage_file);
    uint64_t limit = 0, usage = 0;
    if (!(lf >> limit) || limit == 0) continue;  // "max" (no limit) does not parse
    uf >> usage;
    const uint64_t room = limit > usage ? limit - usage : 0;
    if (room < avail) {
      avail = room;
      from = cat("cgroup ", limit_file);
    }
  }
  if (source) *source = from;
  return avail;
}

std::string MemoryPlan::refusal() const {
  std::string line = cat("the model does not fit: needs ");
  for (size_t i = 0; i < devices.size(); ++i) {
    const Device& dev = devices[i];
    std::string parts;
    if (dev.name == "host") {
      parts = backend == BackendKind::cuda ? cat("weight copies ", format_bytes(weights_owned_bytes))
                                           : cat("weights ", format_bytes(weights_bytes), ", KV cache ", format_bytes(kv_bytes), " at ", context,
                                                 " tokens, workspace ", format_bytes(workspace_bytes));
    } else {
      parts = cat("weights ", format_bytes(weights_device_bytes), ", KV cache ", format_bytes(kv_bytes), " at ", context, " tokens, workspace ",
                  format_bytes(workspace_bytes));
    }
    line += cat(i ? "; " : "", format_bytes(dev.needed_bytes), " on ", dev.name, " (", parts, ") where ", format_bytes(dev.available_bytes),
                " is available (", dev.available_source, ")");
  }
  line += suggestions.empty() ? "; no smaller context, KV type or quantization fits" : cat("; would fit: ", suggestions);
  return line + "; --no-memory-check skips this check";
}

namespace {

const char* backend_name(BackendKind b) { return b == BackendKind::cuda ? "cuda" : "cpu"; }
const char* quant_name(WeightQuant q) { return q == WeightQuant::q8 ? "q8" : q == WeightQuant::q4 ? "q4" : "none"; }
// What FP8 weights become: the --fp8 spelling, or the block type --quant makes of them.
std::string fp8_name(DType form) {
  switch (form) {
    case DType::f8_e4m3: return "kept";
    case DType::bf16: return "dequantized to bf16";
    case DType::f32: return "dequantized to f32";
    default: return cat("quantized to ", dtype_name(form));
  }
}

}  // namespace

std::string plan_text(const MemoryPlan& p) {
  std::string weights, buffers;
  for (const MemoryPlan::Weights& w : p.weights) {
    if (w.mapped_bytes) weights += cat(weights.empty() ? "" : ", ", w.dtype, " ", format_bytes(w.mapped_bytes), " mapped");
    if (w.owned_bytes) weights += cat(weights.empty() ? "" : ", ", w.dtype, " ", format_bytes(w.owned_bytes), " owned");
  }
  std::vector<MemoryPlan::Buffer> largest = p.workspace;
  std::sort(largest.begin(), largest.end(), [](const auto& a, const auto& b) { return a.bytes > b.bytes; });
  for (size_t i = 0; i < largest.size() && i < 4; ++i) buffers += cat(i ? ", " : "", largest[i].role, " ", format_bytes(largest[i].bytes));
  if (largest.size() > 4) buffers += cat(", ", largest.size() - 4, " more");
  char line[512];
  std::string out = cat("memory plan: backend ", backend_name(p.backend), ", context ", p.context, " tokens, quant ",
                        quant_name(p.quant), ", KV ", kv_type_name(p.kv_type),
                        p.fp8_source_bytes ? cat(", FP8 ", fp8_name(p.fp8_form)) : std::string(), "\n");
  if (p.ranks > 1) out = cat(p.partition, "\n", out);
  if (!p.backend_note.empty()) out += cat("  (", p.backend_note, ")\n");
  auto row = [&](const char* part, uint64_t bytes, const std::string& detail) {
    std::snprintf(line, sizeof line, "  %-10s %12s  %s\n", part, format_bytes(bytes).c_str(), detail.c_str());
    out += line;
  };
  row("weights", p.weights_bytes, cat("(", weights, ")"));
  if (p.backend == BackendKind::cuda) row("", p.weights_device_bytes, "(device copy)");
  row("KV cache", p.kv_bytes, cat("(", p.context, " tokens, ", kv_type_name(p.kv_type), ")"));
  row("workspace", p.workspace_bytes, cat("(", buffers, ")"));
  for (const MemoryPlan::Device& d : p.devices) {
    std::snprintf(line, sizeof line, "  %-10s %12s  needed, %s available (%s): %s\n", d.name.c_str(), format_bytes(d.needed_bytes).c_str(),
                  format_bytes(d.available_bytes).c_str(), d.available_source.c_str(), d.fits() ? "fits" : "does not fit");
    out += line;
  }
  out += cat("verdict: ", p.fits ? "fits" : "does not fit",
             p.fits ? "" : p.suggestions.empty() ? " (no smaller context, KV type or quantization fits either)" : cat(" (would fit: ", p.suggestions, ")"), "\n");
  return out;
}

std::string plan_json(const MemoryPlan& p) {
  using Json = nlohmann::ordered_json;
  Json j;
  if (p.ranks > 1) {
    j["rank"] = p.rank;
    j["ranks"] = p.ranks;
    j["split"] = p.split;
    j["partition"] = p.partition;
  }
  j["backend"] = backend_name(p.backend);
  if (!p.backend_note.empty()) j["backend_note"] = p.backend_note;
  j["quant"] = quant_name(p.quant);
  j["context"] = p.context;
  j["kv_type"] = kv_type_name(p.kv_type);
  j["fp8"] = p.fp8_source_bytes ? Json(fp8_name(p.fp8_form)) : Json(nullptr);
  j["fp8_source_bytes"] = p.fp8_source_bytes;
  j["weights_bytes"] = p.weights_bytes;
  j["kv_bytes"] = p.kv_bytes;
  j["workspace_bytes"] = p.workspace_bytes;
  j["total_bytes"] = p.total_bytes;
  j["available_bytes"] = p.available_bytes;
  j["fits"] = p.fits;
  j["weights_mapped_bytes"] = p.weights_mapped_bytes;
  j["weights_owned_bytes"] = p.weights_owned_bytes;
  j["weights_device_bytes"] = p.backend == BackendKind::cuda ? Json(p.weights_device_bytes) : Json(nullptr);
  j["weights"] = Json::array();
  for (const MemoryPlan::Weights& w : p.weights)
    j["weights"].push_back({{"dtype", w.dtype}, {"mapped_bytes", w.mapped_bytes}, {"owned_bytes", w.owned_bytes}});
  j["workspace"] = Json::array();
  for (const MemoryPlan::Buffer& b : p.workspace) j["workspace"].push_back({{"role", b.role}, {"bytes", b.bytes}});
  j["devices"] = Json::array();
  for (const MemoryPlan::Device& d : p.devices)
    j["devices"].push_back({{"name", d.name}, {"needed_bytes", d.needed_bytes}, {"available_bytes", d.available_bytes},
                            {"available_source", d.available_source}, {"fits", d.fits()}});
  j["suggestions"] = p.suggestions;
  return j.dump(2) + "\n";
}

// The description and weights an engine with `options` runs: the multi-token-prediction layers only
// when it loads them.
static ModelConfig engine_config(const ModelConfig& config, const EngineOptions& options) {
  ModelConfig c = config;
  if (!options.mtp) c.mtp_ffn.clear();
  return c;
}

MemoryPlan plan_memory(const Model& model, const EngineOptions& options) {
  if (!options.mtp) return plan_share(engine_config(model.config(), options), model.weights(), false, options);
  ModelWeights w = model.weights();
  w.mtp = model.mtp_weights();
  return plan_share(model.config(), w, false, options);
}

MemoryPlan plan_memory(const ModelConfig& config, const EngineOptions& options, WeightSource stored) {
  const io::WeightStore none;
  const model::TensorFactory shape_only = [&](const std::string& name, const Shape& shape, bool linear) {
    const DType dt = stored == WeightSource::synthetic ? model::synthetic_dtype(config, name, shape, linear) : checkpoint_dtype(config, name, linear);
    return Tensor(dt, shape, kShapeOnly, nullptr);
  };
  model::Binding b = model::bind_weights(config, none, "config", shape_only);
  if (options.mtp) b.weights.mtp = model::bind_mtp(config, none, "config", shape_only);
  return plan_share(engine_config(config, options), b.weights, true, options);
}

}  // namespace moerun
