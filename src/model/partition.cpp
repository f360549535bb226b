// A rank's share of a model: ranges by split, the rank's description, and the weights cut to it
// (model/partition.h).

#include "model/partition.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "kernels/ops.h"
#include "moerun/error.h"
#include "util/strings.h"

namespace moerun {

std::string_view split_name(SplitMode mode) noexcept {
  switch (mode) {
    case SplitMode::automatic: return "auto";
    case SplitMode::ep: return "ep";
    case SplitMode::tp: return "tp";
    case SplitMode::ep_tp: return "ep+tp";
  }
  return "?";
}

SplitMode parse_split(std::string_view name) {
  for (SplitMode m : {SplitMode::automatic, SplitMode::ep, SplitMode::tp, SplitMode::ep_tp})
    if (name == split_name(m)) return m;
  throw Error("--split", detail::cat("'", name, "' is not a split (auto, ep, tp or ep+tp)"));
}

}  // namespace moerun

namespace moerun::model {

using detail::cat;

Range share(int64_t n, int rank, int ranks, int64_t unit) {
  if (unit < 1 || n < ranks * unit) unit = 1;
  const int64_t units = (n + unit - 1) / unit, base = units / ranks, extra = units % ranks;
  const int64_t b = rank * base + std::min<int64_t>(rank, extra), e = b + base + (rank < extra ? 1 : 0);
  return {std::min(n, b * unit), std::min(n, e * unit)};
}

namespace {

// The unit column ranges fall on: an FP8 block (when square) so slices keep their scales, else 32
// (the blocks of --quant q8/q4 and a whole number of SIMD vectors); share() takes single columns
// when there are fewer units than ranks.
int64_t block_unit(const ModelDesc& d) {
  if (d.fp8.enabled) return d.fp8.block_out == d.fp8.block_in ? d.fp8.block_out : 1;
  return 32;
}

}  // namespace

std::string Partition::summary() const {
  if (!distributed()) return "one process: the whole model";
  std::string s = cat("rank ", rank, " of ", ranks, " (", split_name(split), "):");
  s += cat(" heads ", attn_split ? cat(q_heads.begin, "-", q_heads.end - 1) : std::string("all"));
  if (experts_ep) s += cat(", experts ", experts.begin, "-", experts.end - 1);
  if (experts_tp) s += cat(", expert columns ", expert_cols.begin, "-", expert_cols.end - 1);
  if (ffn_split) s += ", FFN columns split";
  if (!shared_here) s += ", no shared expert";
  s += head_split ? cat(", vocabulary ", vocab.begin, "-", vocab.end - 1, " (embedding and LM head)")
                  : head_here ? std::string(", LM head") : std::string(", no LM head");
  return s;
}

Partition make_partition(const ModelDesc& d, SplitMode split, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks) throw Error("ranks", cat("rank ", rank, " of ", ranks, " is not a rank"));
  Partition p;
  p.rank = rank;
  p.ranks = ranks;
  const bool moe = d.num_moe_layers() > 0;
  const int64_t H = d.num_attention_heads, E = moe ? d.router.n_routed_experts : 0;
  const bool gqa = d.attention == AttentionKind::gqa;
  const int64_t Hkv = gqa ? d.num_key_value_heads : 1;
  // Whether attention heads can be split: every rank needs a query head, and with fewer KV heads
  // than ranks, the ranks sharing a KV head need a query head each of its group.
  auto heads_split_problem = [&]() -> std::string {
    if (H < ranks) return cat(H, " attention heads cannot be split over ", ranks, " ranks");
    if (gqa && Hkv < ranks && (ranks + Hkv - 1) / Hkv > H / Hkv)
      return cat(H, " query heads in ", Hkv, " KV groups cannot be split over ", ranks, " ranks");
    return {};
  };
  if (split == SplitMode::automatic) {
    split = moe ? SplitMode::ep_tp : SplitMode::tp;
    if (ranks > 1 && !heads_split_problem().empty() && moe) split = SplitMode::ep;
  }
  p.split = split;
  p.q_heads = {0, H};
  p.kv_heads = {0, Hkv};
  p.experts = {0, E};
  p.expert_cols = {0, moe ? d.moe_intermediate_size : 0};
  p.dense_cols = {0, d.intermediate_size};
  p.shared_cols = {0, d.shared.intermediate_size};
  p.vocab = {0, d.vocab_size};
  p.heads_total = H;
  p.kv_heads_total = Hkv;
  if (ranks == 1) return p;

  const bool tp_part = split == SplitMode::tp || split == SplitMode::ep_tp;
  p.attn_split = p.ffn_split = p.head_split = p.embed_split = tp_part;
  p.experts_ep = moe && (split == SplitMode::ep || split == SplitMode::ep_tp);
  p.experts_tp = moe && split == SplitMode::tp;
  const std::string who = cat("--split ", split_name(split));
  if (p.attn_split) {
    if (std::string why = heads_split_problem(); !why.empty())
      throw Error(who, cat(why, moe ? "; --split ep splits only the experts" : ""));
    p.full_qk = gqa && d.qk_norm == QkNorm::full;
    if (!gqa) {
      p.q_heads = share(H, rank, ranks);
    } else if (Hkv >= ranks) {
      p.kv_heads = share(Hkv, rank, ranks);
      const int64_t g = H / Hkv;
      p.q_heads = {p.kv_heads.begin * g, p.kv_heads.end * g};
    } else {
      // Fewer KV heads than ranks: the ranks are dealt to the KV heads in order, and the ranks of
      // one KV head share its group of query heads (each then holds a copy of that KV head).
      const int64_t g = H / Hkv, k = static_cast<int64_t>(rank) * Hkv / ranks;
      int first = 0, count = 0;
      for (int r = 0; r < ranks; ++r)
        if (static_cast<int64_t>(r) * Hkv / ranks == k) {
          if (count++ == 0) first = r;
        }
      const Range in_group = share(g, rank - first, count);
      p.kv_heads = {k, k + 1};
      p.q_heads = {k * g + in_group.begin, k * g + in_group.end};
    }
  }
  const int64_t unit = block_unit(d);
  if (p.ffn_split) {
    if (d.has_dense_layers()) {
      if (d.intermediate_size < ranks) throw Error(who, cat("intermediate_size ", d.intermediate_size, " cannot be split over ", ranks, " ranks"));
      p.dense_cols = share(d.intermediate_size, rank, ranks, unit);
    }
    if (moe && d.shared.count > 0) {
      if (d.shared.intermediate_size < ranks)
        throw Error(who, cat("the shared expert's ", d.shared.intermediate_size, " columns cannot be split over ", ranks, " ranks"));
      p.shared_cols = share(d.shared.intermediate_size, rank, ranks, unit);
    }
  } else {
    p.shared_here = rank == 0;  // computed once, added to rank 0's partial sum
  }
  if (p.experts_ep) {
    if (E < ranks) throw Error(who, cat(E, " routed experts cannot be split over ", ranks, " ranks"));
    p.experts = share(E, rank, ranks);
  }
  if (p.experts_tp) {
    if (d.moe_intermediate_size < ranks)
      throw Error(who, cat("moe_intermediate_size ", d.moe_intermediate_size, " cannot be split over ", ranks, " ranks"));
    p.expert_cols = share(d.moe_intermediate_size, rank, ranks, unit);
  }
  if (p.head_split) {
    if (d.vocab_size < ranks) throw Error(who, cat("a vocabulary of ", d.vocab_size, " cannot be split over ", ranks, " ranks"));
    p.vocab = share(d.vocab_size, rank, ranks);
  } else {
    p.head_here = rank == 0;
  }
  return p;
}

ModelConfig local_config(const ModelConfig& config, const Partition& p) {
  ModelConfig c = config;
  if (!p.distributed()) return c;
  c.num_attention_heads = p.q_heads.size();
  if (c.attention == AttentionKind::gqa) c.num_key_value_heads = p.kv_heads.size();
  if (c.has_dense_layers()) c.intermediate_size = p.dense_cols.size();
  if (c.num_moe_layers() > 0) {
    c.moe_intermediate_size = p.expert_cols.size();
    c.shared.intermediate_size = p.shared_cols.size();
  }
  return c;
}

SliceRule slice_rule(const WeightSite& s, const ModelDesc& d, const Partition& p) {
  if (!p.distributed()) return {};
  const std::string_view role = s.role;
  auto rows = [](Range r) { return SliceRule{.cut = Cut::rows, .range = r}; };
  auto cols = [&](Range r) { return SliceRule{.cut = Cut::cols, .range = r, .bias = p.rank == 0}; };
  auto scaled = [](Range r, int64_t k) { return Range{r.begin * k, r.end * k}; };
  constexpr SliceRule none{.cut = Cut::none};
  if (s.layer < 0) {
    if (role == "lm_head") return p.head_split ? rows(p.vocab) : p.head_here ? SliceRule{} : none;
    if (role == "embed_tokens" && p.embed_split) return rows(p.vocab);
    return {};  // the final norm
  }
  const bool gqa = d.attention == AttentionKind::gqa;
  const int64_t dq = gqa ? d.head_dim : d.qk_nope_head_dim + d.qk_rope_head_dim;
  const int64_t dv = gqa ? d.head_dim : d.v_head_dim;
  if (p.attn_split) {
    if (role == "q_proj" || role == "q_b_proj") return p.full_qk ? SliceRule{} : rows(scaled(p.q_heads, dq));
    if (role == "k_proj") return p.full_qk ? SliceRule{} : rows(scaled(p.kv_heads, d.head_dim));
    if (role == "v_proj") return rows(scaled(p.kv_heads, d.head_dim));
    if (role == "kv_b_proj") return rows(scaled(p.q_heads, d.qk_nope_head_dim + d.v_head_dim));
    if (role == "o_proj") return cols(scaled(p.q_heads, dv));
  }
  const bool mlp_part = role == "gate_proj" || role == "up_proj" || role == "down_proj";
  auto ffn = [&](Range r) { return role == "down_proj" ? cols(r) : rows(r); };
  if (s.routed() && mlp_part) {
    if (p.experts_ep) return s.expert >= p.experts.begin && s.expert < p.experts.end ? SliceRule{} : none;
    if (p.experts_tp) return ffn(p.expert_cols);
    return {};
  }
  if (s.shared_expert && mlp_part) return p.ffn_split ? ffn(p.shared_cols) : p.shared_here ? SliceRule{} : none;
  if (role == "shared_expert_gate") return p.shared_here ? SliceRule{} : none;
  if (mlp_part && p.ffn_split) return ffn(p.dense_cols);  // a dense layer's MLP
  return {};
}

namespace {

float scalar_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32: return t.data_as<float>()[i];
    case DType::bf16: return cpu::bf16_to_f32(t.data_as<uint16_t>()[i]);
    case DType::f16: return cpu::f16_to_f32(t.data_as<uint16_t>()[i]);
    default: throw Error("partition", cat("block scales of dtype ", dtype_name(t.dtype()), " are not supported"));
  }
}

std::shared_ptr<std::byte[]> bytes_for(size_t n) { return std::shared_ptr<std::byte[]>(new std::byte[std::max<size_t>(n, 1)]); }

Tensor owned(DType dtype, Shape shape, const std::shared_ptr<std::byte[]>& buf) {
  return Tensor(dtype, std::move(shape), buf.get(), std::shared_ptr<const void>(buf, buf.get()));
}

// Rows [r) x columns [c) of an FP8 weight, dequantized to f32 with its block scales (a cut that
// does not fall on the block grid).
Tensor dequantize(const Tensor& w, const Tensor& scale, Range r, Range c, const ModelDesc& d) {
  const int64_t in = w.dim(1), bo = d.fp8.block_out, bi = d.fp8.block_in, sc = scale.dim(1);
  const float* values = cpu::f8_e4m3_values();
  auto buf = bytes_for(static_cast<size_t>(r.size() * c.size()) * sizeof(float));
  auto* out = reinterpret_cast<float*>(buf.get());
  const auto* q = w.data_as<uint8_t>();
  for (int64_t i = r.begin; i < r.end; ++i)
    for (int64_t j = c.begin; j < c.end; ++j) {
      const uint8_t b = q[i * in + j];
      const float v = (b & 0x80) ? -values[b & 0x7f] : values[b & 0x7f];
      out[(i - r.begin) * c.size() + (j - c.begin)] = v * scalar_at(scale, (i / bo) * sc + j / bi);
    }
  return owned(DType::f32, {r.size(), c.size()}, buf);
}

// Columns [c) of a 2-D tensor, copied.
Tensor copy_cols(const Tensor& t, Range c) {
  const int64_t rows = t.dim(0), in = t.dim(1);
  const size_t e = dtype_bytes(t.dtype(), 1), row_bytes = static_cast<size_t>(c.size()) * e;
  auto buf = bytes_for(static_cast<size_t>(rows) * row_bytes);
  const auto* src = static_cast<const std::byte*>(t.data());
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(buf.get() + static_cast<size_t>(i) * row_bytes, src + (static_cast<size_t>(i * in + c.begin)) * e, row_bytes);
  return owned(t.dtype(), {rows, c.size()}, buf);
}

bool on_grid(Range r, int64_t block, int64_t total) { return r.begin % block == 0 && (r.end % block == 0 || r.end == total); }
Range blocks_of(Range r, int64_t block) { return {r.begin / block, (r.end + block - 1) / block}; }

// A shape-only tensor (the plan of a bare config): the cut's shape, no data.
Tensor shaped(const Tensor& t, Shape shape, DType dtype) { return Tensor(dtype, std::move(shape), t.data(), nullptr); }

}  // namespace

ModelWeights slice_weights(const ModelWeights& w, const ModelDesc& d, const Partition& p, bool shapes_only, const SliceHooks& hooks) {
  ModelWeights out = w;
  if (!p.distributed()) return out;
  auto materialize = [&](const Tensor& t) {
    if (hooks.materialize && t.defined() && !shapes_only) hooks.materialize(t);
  };
  auto release = [&](const Tensor& t) {
    if (hooks.release && t.defined() && !shapes_only) hooks.release(t);
  };
  for_each_weight(out, [&](const WeightSite& site, auto& x) {
    const SliceRule rule = slice_rule(site, d, p);
    if constexpr (std::is_same_v<std::remove_reference_t<decltype(x)>, LinearWeight>) {
      LinearWeight& lw = x;
      const Tensor whole = lw.weight, scale = lw.weight_scale_inv, bias = lw.bias;
      const std::string name = cat(site.role, site.layer >= 0 ? cat(" of layer ", site.layer) : std::string());
      switch (rule.cut) {
        case Cut::whole:
          materialize(whole), materialize(scale), materialize(bias);
          return;
        case Cut::none:
          lw = LinearWeight{};
          return;
        case Cut::rows: {
          const Range r = rule.range;
          if (whole.rank() != 2 || r.end > whole.dim(0)) throw Error("partition", cat(name, ": rows ", r.begin, "-", r.end, " of ", shape_str(whole.shape())));
          const int64_t bo = d.fp8.block_out;
          if (scale && !on_grid(r, bo, whole.dim(0))) {  // FP8 rows off the block grid: f32 copy
            if (shapes_only) lw.weight = shaped(whole, {r.size(), whole.dim(1)}, DType::f32);
            else {
              materialize(whole), materialize(scale);
              lw.weight = dequantize(whole, scale, r, {0, whole.dim(1)}, d);
            }
            lw.weight_scale_inv = {};
          } else {
            lw.weight = shapes_only ? shaped(whole, {r.size(), whole.dim(1)}, whole.dtype()) : whole.narrow(r.begin, r.size());
            if (scale) {
              const Range b = blocks_of(r, bo);
              lw.weight_scale_inv = shapes_only ? shaped(scale, {b.size(), scale.dim(1)}, scale.dtype()) : scale.narrow(b.begin, b.size());
            }
            materialize(lw.weight), materialize(lw.weight_scale_inv);
          }
          if (bias) {
            lw.bias = shapes_only ? shaped(bias, {r.size()}, bias.dtype()) : bias.narrow(r.begin, r.size());
            materialize(lw.bias);
          }
          return;
        }
        case Cut::cols: {
          const Range c = rule.range;
          if (whole.rank() != 2 || c.end > whole.dim(1)) throw Error("partition", cat(name, ": columns ", c.begin, "-", c.end, " of ", shape_str(whole.shape())));
          const int64_t rows = whole.dim(0), bi = d.fp8.block_in;
          if (shapes_only) {
            const bool deq = scale && !on_grid(c, bi, whole.dim(1));
            lw.weight = shaped(whole, {rows, c.size()}, deq ? DType::f32 : whole.dtype());
            lw.weight_scale_inv = scale && !deq ? shaped(scale, {scale.dim(0), blocks_of(c, bi).size()}, scale.dtype()) : Tensor{};
          } else {
            materialize(whole), materialize(scale);
            if (scale && !on_grid(c, bi, whole.dim(1))) {
              lw.weight = dequantize(whole, scale, {0, rows}, c, d);
              lw.weight_scale_inv = {};
            } else {
              lw.weight = copy_cols(whole, c);
              if (scale) lw.weight_scale_inv = copy_cols(scale, blocks_of(c, bi));
            }
            release(whole), release(scale);
          }
          if (!rule.bias) lw.bias = {};
          else materialize(lw.bias);
          return;
        }
      }
    } else {
      Tensor& t = x;
      if (rule.cut == Cut::none) t = {};
      else if (rule.cut == Cut::rows)  // the tied LM head reaches here as a Tensor
        t = shapes_only ? shaped(t, [&] { Shape s = t.shape(); s[0] = rule.range.size(); return s; }(), t.dtype())
                        : t.narrow(rule.range.begin, rule.range.size());
      if (rule.cut != Cut::none) materialize(t);
    }
  });
  return out;
}

}  // namespace moerun::model
