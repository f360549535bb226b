// The executor: one transformer definition for all seven families. It branches on capabilities of
// the config (attention kind, q/k norm, biases, clip_qkv, rope layout and scaling, per-layer FFN
// kind, router spec, shared experts), never on the family (docs/DESIGN.md rule 1).
//
// Per layer (docs/MODELS.md §2.7):   x += Attn(RMSNorm_in(x));   x += FFN_or_MoE(RMSNorm_post(x))
// then logits = RMSNorm_final(x) W_lm^T. Activations and the KV cache are fp32.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "model/convert.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "runtime/rope.h"
#include "util/strings.h"

namespace moerun {

using detail::cat;

// MLA's internal norms are built by HF with the class default eps, not rms_norm_eps (MODELS.md §2.1).
constexpr float kMlaNormEps = 1e-6f;
constexpr int64_t kDefaultContextCap = 4096;

struct Engine::Impl {
  Model model;
  ModelWeights weights;  // prepared: FP8 dequantized, vectors in f32
  EngineOptions options;
  int64_t default_context = 0;
};

Engine::Engine(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Engine Engine::load(const std::filesystem::path& dir, const EngineOptions& options) {
  return from_model(Model::load(dir), options);
}

Engine Engine::from_model(Model model, const EngineOptions& options) {
  auto impl = std::make_shared<Impl>(Impl{model, model::prepare_weights(model.weights(), model.config(), options.fp8_dequant),
                                          options, 0});
  const int64_t trained = model.config().max_position_embeddings;
  impl->default_context = options.context > 0 ? options.context : std::min(trained, kDefaultContextCap);
  return Engine(std::move(impl));
}

const Model& Engine::model() const noexcept { return impl_->model; }
const ModelConfig& Engine::config() const noexcept { return impl_->model.config(); }
const ModelWeights& Engine::weights() const noexcept { return impl_->weights; }
const EngineOptions& Engine::options() const noexcept { return impl_->options; }
int64_t Engine::default_context() const noexcept { return impl_->default_context; }

namespace {

// Grows on demand and keeps its capacity, so decoding after the first step allocates nothing.
float* buffer(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

void linear(float* out, const float* x, int64_t n, const LinearWeight& w, int64_t x_stride, cpu::ThreadPool* pool) {
  cpu::matmul({.out = out, .x = x, .weight = w.weight.data(), .weight_dtype = w.weight.dtype(),
               .bias = w.bias ? w.bias.data_as<float>() : nullptr, .n = n, .in_features = w.weight.dim(1),
               .out_features = w.weight.dim(0), .x_stride = x_stride, .out_stride = 0, .pool = pool});
}

void rms_norm(float* out, const float* x, int64_t rows, int64_t cols, const Tensor& weight, float eps, int64_t stride = 0) {
  cpu::rms_norm({.out = out, .x = x, .weight = weight.data_as<float>(), .rows = rows, .cols = cols, .eps = eps, .stride = stride});
}

}  // namespace

struct Session::Impl {
  const Engine::Impl* engine;
  std::shared_ptr<const Engine::Impl> keep;  // the engine outlives its sessions
  const ModelConfig& c;
  const ModelWeights& w;
  int64_t context;
  int64_t pos = 0;

  // Cache per layer. GQA: K [ctx, H_kv, d_h] and V [ctx, H_kv, d_h]. MLA: one latent row per
  // position, [ctx, kv_lora_rank + qk_rope_head_dim] = [normed c, rotated k_rope].
  std::vector<std::vector<float>> k_cache, v_cache;

  // Scratch, grown on demand.
  std::vector<float> x, h, q, k, v, attn, out, tmp, gate, up, scores, logits, router, route_scratch, expert_in,
      expert_out, kv_full, k_full;
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;
  std::vector<int64_t> positions;
  runtime::RopeTable rope;
  int64_t rope_seq_len = -1;
  std::unique_ptr<cpu::ThreadPool> pool;  // this session's workers; forward() runs on them

  void lin(float* dst, const float* src, int64_t n, const LinearWeight& weight, int64_t src_stride = 0) {
    linear(dst, src, n, weight, src_stride, pool.get());
  }

  Impl(std::shared_ptr<const Engine::Impl> e, int64_t ctx)
      : engine(e.get()), keep(std::move(e)), c(engine->model.config()), w(engine->weights), context(ctx),
        pool(std::make_unique<cpu::ThreadPool>(engine->options.threads)) {
    const size_t L = static_cast<size_t>(c.num_hidden_layers);
    k_cache.resize(L);
    v_cache.resize(L);
    for (size_t l = 0; l < L; ++l) {
      if (c.attention == AttentionKind::gqa) {
        const int64_t row = c.num_key_value_heads * c.head_dim;
        k_cache[l].assign(static_cast<size_t>(ctx * row), 0.0f);
        v_cache[l].assign(static_cast<size_t>(ctx * row), 0.0f);
      } else {
        k_cache[l].assign(static_cast<size_t>(ctx * (c.kv_lora_rank + c.qk_rope_head_dim)), 0.0f);
      }
    }
  }

  void update_rope(int64_t seq_len) {
    // Only dynamic NTK depends on the length; the others are computed once.
    if (rope_seq_len >= 0 && (c.rope.scaling.type != RopeType::dynamic || seq_len == rope_seq_len)) return;
    rope = runtime::rope_table(c.rope, c.max_position_embeddings, seq_len);
    rope_seq_len = seq_len;
  }

  void apply_rope(float* data, int64_t n, int64_t heads, int64_t token_stride, int64_t head_stride, int64_t offset) {
    cpu::rope({.x = data, .n_tokens = n, .n_heads = heads, .token_stride = token_stride, .head_stride = head_stride,
               .rot_offset = offset, .rot_dim = c.rope.dim, .positions = positions.data(),
               .inv_freq = rope.inv_freq.data(), .attention_factor = rope.attention_factor, .style = c.rope.style});
  }

  // GQA attention of n tokens (normed input `in` [n, D]) into `o` [n, D].
  void gqa(size_t l, const float* in, int64_t n, float* o) {
    const LayerWeights& L = w.layers[l];
    const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, dh = c.head_dim;
    float* qb = buffer(q, n * H * dh);
    float* kb = buffer(k, n * Hkv * dh);
    float* vb = buffer(v, n * Hkv * dh);
    lin(qb, in, n, L.q_proj);
    lin(kb, in, n, L.k_proj);
    lin(vb, in, n, L.v_proj);
    if (c.qk_norm == QkNorm::per_head) {  // Qwen3: each head normed on its own, one weight for all heads
      rms_norm(qb, qb, n * H, dh, L.q_norm, static_cast<float>(c.rms_norm_eps));
      rms_norm(kb, kb, n * Hkv, dh, L.k_norm, static_cast<float>(c.rms_norm_eps));
    } else if (c.qk_norm == QkNorm::full) {  // OLMoE: over the whole projection
      rms_norm(qb, qb, n, H * dh, L.q_norm, static_cast<float>(c.rms_norm_eps));
      rms_norm(kb, kb, n, Hkv * dh, L.k_norm, static_cast<float>(c.rms_norm_eps));
    }
    if (c.clip_qkv) {
      const float lim = static_cast<float>(*c.clip_qkv);
      for (float* p : {qb, kb, vb}) {
        const int64_t count = p == qb ? n * H * dh : n * Hkv * dh;
        for (int64_t i = 0; i < count; ++i) p[i] = std::clamp(p[i], -lim, lim);
      }
    }
    apply_rope(qb, n, H, H * dh, dh, 0);
    apply_rope(kb, n, Hkv, Hkv * dh, dh, 0);
    const int64_t row = Hkv * dh;
    std::memcpy(k_cache[l].data() + pos * row, kb, static_cast<size_t>(n * row) * sizeof(float));
    std::memcpy(v_cache[l].data() + pos * row, vb, static_cast<size_t>(n * row) * sizeof(float));

    float* ab = buffer(attn, n * H * dh);
    cpu::attention({.out = ab, .q = qb, .k = k_cache[l].data(), .v = v_cache[l].data(), .positions = positions.data(),
                    .n_tokens = n, .n_heads = H, .n_kv_heads = Hkv, .qk_dim = dh, .v_dim = dh,
                    .q_token_stride = H * dh, .q_head_stride = dh, .k_pos_stride = row, .k_head_stride = dh,
                    .v_pos_stride = row, .v_head_stride = dh, .scale = static_cast<float>(c.softmax_scale),
                    .scratch = buffer(scores, pos + n)});
    lin(o, ab, n, L.o_proj);
  }

  // Multi-head latent attention (docs/MODELS.md §4) into `o` [n, D].
  void mla(size_t l, const float* in, int64_t n, float* o) {
    const LayerWeights& L = w.layers[l];
    const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
    const int64_t r = c.kv_lora_rank, dq = dn + dr, row = r + dr;
    float* qb = buffer(q, n * H * dq);
    if (c.q_lora_rank) {
      float* qa = buffer(tmp, n * *c.q_lora_rank);
      lin(qa, in, n, L.q_a_proj);
      rms_norm(qa, qa, n, *c.q_lora_rank, L.q_a_layernorm, kMlaNormEps);
      lin(qb, qa, n, L.q_b_proj);
    } else {
      lin(qb, in, n, L.q_proj);
    }
    // [c_raw, k_rope] = x W_kva^T; the cache keeps the normed latent and the rotated rope key.
    float* cache = k_cache[l].data();
    float* new_rows = cache + pos * row;
    lin(new_rows, in, n, L.kv_a_proj_with_mqa);
    rms_norm(new_rows, new_rows, n, r, L.kv_a_layernorm, kMlaNormEps, row);
    apply_rope(new_rows, n, 1, row, row, r);  // one rope key shared by all heads
    apply_rope(qb, n, H, H * dq, dq, dn);

    const Tensor& kvb = L.kv_b_proj.weight;  // [H*(dn+dv), r]: per head dn rows of W_UK, then dv rows of W_UV
    const int64_t len = pos + n;
    float* ab = buffer(attn, n * H * std::max(r, dv));
    if (engine->options.mla == MlaMode::absorbed) {
      // q~_h = W_UK^h^T q_h^N, then MQA over [c, k_rope] with values c (MODELS.md §4).
      float* qcat = buffer(k, n * H * row);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t hh = 0; hh < H; ++hh) {
          const float* qn = qb + (t * H + hh) * dq;
          float* dst = qcat + (t * H + hh) * row;
          std::fill(dst, dst + r, 0.0f);
          for (int64_t j = 0; j < dn; ++j) {
            const int64_t wrow = hh * (dn + dv) + j;
            for (int64_t cc = 0; cc < r; ++cc) dst[cc] += qn[j] * cpu::load_f32(kvb.data(), kvb.dtype(), wrow * r + cc);
          }
          std::memcpy(dst + r, qn + dn, static_cast<size_t>(dr) * sizeof(float));
        }
      float* latent_out = buffer(v, n * H * r);
      cpu::attention({.out = latent_out, .q = qcat, .k = cache, .v = cache, .positions = positions.data(),
                      .n_tokens = n, .n_heads = H, .n_kv_heads = 1, .qk_dim = row, .v_dim = r,
                      .q_token_stride = H * row, .q_head_stride = row, .k_pos_stride = row, .k_head_stride = 0,
                      .v_pos_stride = row, .v_head_stride = 0, .scale = static_cast<float>(c.softmax_scale),
                      .scratch = buffer(scores, len)});
      // o_h = W_UV^h o~_h.
      for (int64_t t = 0; t < n; ++t)
        for (int64_t hh = 0; hh < H; ++hh) {
          const float* lo = latent_out + (t * H + hh) * r;
          float* dst = ab + (t * H + hh) * dv;
          for (int64_t i = 0; i < dv; ++i) {
            const int64_t wrow = hh * (dn + dv) + dn + i;
            float acc = 0.0f;
            for (int64_t cc = 0; cc < r; ++cc) acc += cpu::load_f32(kvb.data(), kvb.dtype(), wrow * r + cc) * lo[cc];
            dst[i] = acc;
          }
        }
    } else {
      // Naive: per-head K = [W_UK c, k_rope] and V = W_UV c for every cached position.
      float* kvf = buffer(kv_full, len * H * (dn + dv));
      lin(kvf, cache, len, L.kv_b_proj, row);
      float* kf = buffer(k_full, len * H * dq);
      for (int64_t s = 0; s < len; ++s)
        for (int64_t hh = 0; hh < H; ++hh) {
          float* dst = kf + (s * H + hh) * dq;
          std::memcpy(dst, kvf + (s * H + hh) * (dn + dv), static_cast<size_t>(dn) * sizeof(float));
          std::memcpy(dst + dn, cache + s * row + r, static_cast<size_t>(dr) * sizeof(float));
        }
      cpu::attention({.out = ab, .q = qb, .k = kf, .v = kvf + dn, .positions = positions.data(), .n_tokens = n,
                      .n_heads = H, .n_kv_heads = H, .qk_dim = dq, .v_dim = dv, .q_token_stride = H * dq,
                      .q_head_stride = dq, .k_pos_stride = H * dq, .k_head_stride = dq, .v_pos_stride = H * (dn + dv),
                      .v_head_stride = dn + dv, .scale = static_cast<float>(c.softmax_scale),
                      .scratch = buffer(scores, len)});
    }
    lin(o, ab, n, L.o_proj);
  }

  // SwiGLU over n rows: out = down(silu(gate x) * up x).
  void swiglu(const MlpWeights& m, const float* in, int64_t n, float* o) {
    const int64_t I = m.gate_proj.weight.dim(0);
    float* g = buffer(gate, n * I);
    float* u = buffer(up, n * I);
    lin(g, in, n, m.gate_proj);
    lin(u, in, n, m.up_proj);
    cpu::silu_mul({.out = g, .gate = g, .up = u, .n = n * I});
    lin(o, g, n, m.down_proj);
  }

  // The MoE block into `o` [n, D]: route every token, then run each selected expert once over all
  // of its tokens (tokens grouped by expert), adding weighted outputs; plus the shared expert.
  void moe(size_t l, const float* in, int64_t n, float* o) {
    const LayerWeights& L = w.layers[l];
    const RouterSpec& rs = c.router;
    const int64_t D = c.hidden_size, E = rs.n_routed_experts, K = rs.num_experts_per_tok;
    float* z = buffer(router, n * E);
    lin(z, in, n, {L.router, {}, {}});
    expert_ids.resize(static_cast<size_t>(n * K));
    expert_weights.resize(static_cast<size_t>(n * K));
    cpu::route({.expert_ids = expert_ids.data(), .expert_weights = expert_weights.data(), .logits = z,
                .correction_bias = L.e_score_correction_bias ? L.e_score_correction_bias.data_as<float>() : nullptr,
                .n_tokens = n, .n_experts = E, .top_k = K, .score = rs.score, .method = rs.method, .n_group = rs.n_group,
                .topk_group = rs.topk_group, .norm_topk_prob = rs.norm_topk_prob,
                .routed_scaling_factor = static_cast<float>(rs.routed_scaling_factor),
                .scratch = buffer(route_scratch, 3 * E + rs.n_group)});
    std::fill(o, o + n * D, 0.0f);
    for (int64_t e = 0; e < E; ++e) {
      int64_t count = 0;
      for (int64_t i = 0; i < n * K; ++i) count += expert_ids[static_cast<size_t>(i)] == e;
      if (count == 0) continue;  // only the selected experts are computed
      float* xin = buffer(expert_in, count * D);
      int64_t j = 0;
      for (int64_t i = 0; i < n * K; ++i)
        if (expert_ids[static_cast<size_t>(i)] == e) std::memcpy(xin + (j++) * D, in + (i / K) * D, static_cast<size_t>(D) * sizeof(float));
      float* y = buffer(expert_out, count * D);
      swiglu(L.experts[static_cast<size_t>(e)], xin, count, y);
      j = 0;
      for (int64_t i = 0; i < n * K; ++i)
        if (expert_ids[static_cast<size_t>(i)] == e) {
          const float wgt = expert_weights[static_cast<size_t>(i)];
          float* dst = o + (i / K) * D;
          const float* src = y + (j++) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] += wgt * src[d];
        }
    }
    if (c.shared.count > 0) {
      float* s = buffer(expert_out, n * D);
      swiglu(L.shared_expert, in, n, s);
      float gamma = 1.0f;
      for (int64_t t = 0; t < n; ++t) {
        if (c.shared.gated) {  // Qwen2-MoE: sigmoid(x . w_sg) scales the shared expert per token
          float dot = 0.0f;
          lin(&dot, in + t * D, 1, {L.shared_expert_gate, {}, {}});
          gamma = 1.0f / (1.0f + std::exp(-dot));
        }
        for (int64_t d = 0; d < D; ++d) o[t * D + d] += gamma * s[t * D + d];
      }
    }
  }

  std::vector<float> forward(std::span<const int32_t> ids, bool all_positions) {
    const int64_t n = static_cast<int64_t>(ids.size());
    if (n == 0) throw Error("forward", "no tokens given");
    for (int32_t id : ids)
      if (id < 0 || id >= c.vocab_size) throw Error("forward", cat("token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")"));
    if (pos + n > context)
      throw Error("forward", cat(pos, " cached + ", n, " new tokens exceed the context of ", context, " tokens"));
    const int64_t D = c.hidden_size;
    positions.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) positions[static_cast<size_t>(t)] = pos + t;
    update_rope(pos + n);

    float* xb = buffer(x, n * D);
    const Tensor& emb = w.embed_tokens;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t d = 0; d < D; ++d) xb[t * D + d] = cpu::load_f32(emb.data(), emb.dtype(), ids[static_cast<size_t>(t)] * D + d);

    const float eps = static_cast<float>(c.rms_norm_eps);
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const LayerWeights& L = w.layers[l];
      float* hb = buffer(h, n * D);
      float* ob = buffer(out, n * D);
      rms_norm(hb, xb, n, D, L.input_layernorm, eps);
      if (c.attention == AttentionKind::gqa) gqa(l, hb, n, ob);
      else mla(l, hb, n, ob);
      for (int64_t i = 0; i < n * D; ++i) xb[i] += ob[i];
      rms_norm(hb, xb, n, D, L.post_attention_layernorm, eps);
      if (c.layer_ffn[l] == FfnKind::moe) moe(l, hb, n, ob);
      else swiglu(L.mlp, hb, n, ob);
      for (int64_t i = 0; i < n * D; ++i) xb[i] += ob[i];
    }
    pos += n;

    const int64_t first = all_positions ? 0 : n - 1, rows = n - first;
    float* hb = buffer(h, rows * D);
    rms_norm(hb, xb + first * D, rows, D, w.norm, eps);
    std::vector<float> result(static_cast<size_t>(rows * c.vocab_size));
    lin(result.data(), hb, rows, {w.lm_head, {}, {}});
    return result;
  }
};

Session::Session(const Engine& engine, int64_t context)
    : impl_(std::make_unique<Impl>(engine.impl_, context > 0 ? context : engine.default_context())) {}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

std::vector<float> Session::forward(std::span<const int32_t> ids, bool all_positions) {
  return impl_->forward(ids, all_positions);
}
int64_t Session::position() const noexcept { return impl_->pos; }
int64_t Session::context() const noexcept { return impl_->context; }
void Session::truncate(int64_t n) {
  if (n < 0 || n > impl_->pos) throw Error("Session::truncate", cat("cannot keep ", n, " of ", impl_->pos, " cached tokens"));
  impl_->pos = n;  // rows past n are overwritten by the next forward
}

}  // namespace moerun
