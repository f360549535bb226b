#!/usr/bin/env python3
"""Golden data for DeepSeek-V3 multi-token prediction (MTP), from a numpy reference.

transformers builds no MTP module (it drops `model.layers.{L}.*` on load), so the MTP golden cannot
come from HF. Instead this script carries a float64 numpy implementation of DeepSeek-V3 and
  1. checks it against transformers: its main-model logits must match the HF logits committed in
     tests/data/golden/deepseek_v3/golden.safetensors (n = 1, 7, 33) to max |Δ| < 1e-4, asserted
     on every run (this is what makes the reference trustworthy);
  2. writes tests/data/golden/deepseek_v3_mtp/: a copy of the deepseek_v3 checkpoint (config,
     generation_config, shards, golden.safetensors) plus one shard `model-mtp.safetensors` holding
     a seeded random MTP module `model.layers.3.*` in the release's tensor names (added to the index);
  3. runs the MTP module (docs/MODELS.md "Multi-token prediction") on the written checkpoint and
     stores mtp_golden.safetensors:

  ids_<n>         [n] int32       the prompts ids_7 / ids_33 of deepseek_v3/golden.safetensors
  hidden_<n>      [n, D] f32      main model, final hidden state after model.norm
  mtp_hidden_<n>  [n-1, D] f32    MTP block output y at positions 0..n-2 (before shared_head.norm)
  mtp_logits_<n>  [n-1, V] f32    MTP logits at positions 0..n-2 (position i predicts t_{i+2})
  chain_<n>       [5] int32       [t_n, d1, d2, d3, d4]: t_n = greedy main token after the prompt,
                                  d1..d4 the greedy MTP drafts, chained by feeding y back as h

Pure numpy (no torch, no transformers, no safetensors package); run by developers only:

    python3 tools/golden/make_mtp_golden.py

The C++ tests read only the committed outputs.
"""

import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "tests" / "data" / "golden" / "deepseek_v3"
OUT = ROOT / "tests" / "data" / "golden" / "deepseek_v3_mtp"
MTP_SHARD = "model-mtp.safetensors"
SEED = 20240601
VALIDATE_LENGTHS = (1, 7, 33)
GOLDEN_LENGTHS = (7, 33)
DRAFTS = 4
TOLERANCE = 1e-4

# ---------------------------------------------------------------------------------------------
# safetensors, by hand (MODELS.md §1.1)

DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(raw[base + begin:base + end], dtype=dtype).reshape(info["shape"]).copy()
    return out, meta


def write_safetensors(path, tensors, metadata):
    """Tensors in sorted name order, 8-byte aligned header (as safetensors writes it)."""
    codes = {np.dtype(v): k for k, v in DTYPES.items()}
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        data = t.astype(t.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load_checkpoint(directory):
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    weights = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors, _ = read_safetensors(directory / shard)
        weights.update(tensors)
    missing = set(index["weight_map"]) - set(weights)
    assert not missing, f"index names tensors not in any shard: {sorted(missing)[:5]}"
    return {k: v.astype(np.float64) for k, v in weights.items()}


# ---------------------------------------------------------------------------------------------
# The numpy DeepSeek-V3 (MODELS.md §2, §3.7, §4), float64 throughout


class Config:
    def __init__(self, cfg):
        self.D = cfg["hidden_size"]
        self.V = cfg["vocab_size"]
        self.L = cfg["num_hidden_layers"]
        self.n_mtp = cfg.get("num_nextn_predict_layers", 1)
        self.H = cfg["num_attention_heads"]
        self.r_q = cfg["q_lora_rank"]
        self.r_kv = cfg["kv_lora_rank"]
        self.d_n = cfg["qk_nope_head_dim"]
        self.d_r = cfg["qk_rope_head_dim"]
        self.d_v = cfg["v_head_dim"]
        self.eps = cfg["rms_norm_eps"]
        self.E = cfg["n_routed_experts"]
        self.k = cfg["num_experts_per_tok"]
        self.n_group = cfg["n_group"]
        self.topk_group = cfg["topk_group"]
        self.norm_topk_prob = cfg["norm_topk_prob"]
        self.route_scale = cfg["routed_scaling_factor"]
        self.first_dense = cfg["first_k_dense_replace"]
        assert cfg.get("hidden_act", "silu") == "silu"
        assert cfg.get("rope_interleave", True)
        rope = cfg.get("rope_parameters") or dict(cfg.get("rope_scaling") or {}, rope_theta=cfg.get("rope_theta"))
        self.inv_freq, attn_factor, mscale_all_dim_m = yarn(rope, self.d_r)
        self.rope_factor = attn_factor
        # softmax scale: (d_n + d_r)^-1/2 · m(F, mscale_all_dim)²  (MODELS.md §4)
        self.tau = (self.d_n + self.d_r) ** -0.5 * mscale_all_dim_m ** 2


def yarn_m(F, mu):
    return 1.0 if F <= 1 else 0.1 * mu * math.log(F) + 1.0


def yarn(rope, d):
    """inv_freq, cos/sin attention factor a, and m(F, mscale_all_dim) (MODELS.md §2.5)."""
    b = float(rope["rope_theta"])
    theta = 1.0 / b ** (np.arange(0, d, 2, dtype=np.float64) / d)
    assert rope.get("rope_type", rope.get("type")) == "yarn"
    F = float(rope["factor"])
    L0 = float(rope["original_max_position_embeddings"])
    beta_fast, beta_slow = float(rope.get("beta_fast", 32)), float(rope.get("beta_slow", 1))

    def corr(r):
        return d * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(b))

    lo, hi = corr(beta_fast), corr(beta_slow)
    if rope.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    keep = 1.0 - ramp
    inv_freq = theta * keep + theta / F * (1.0 - keep)
    mscale, mscale_all = rope.get("mscale"), rope.get("mscale_all_dim")
    if rope.get("attention_factor") is not None:
        a = float(rope["attention_factor"])
    elif mscale and mscale_all:
        a = yarn_m(F, mscale) / yarn_m(F, mscale_all)
    else:
        a = yarn_m(F, 1.0)
    m_all = yarn_m(F, mscale_all) if mscale_all else 1.0
    return inv_freq, a, m_all


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(z):
    return z / (1.0 + np.exp(-z))


def ffn(x, W, prefix):
    gate = x @ W[prefix + "gate_proj.weight"].T
    up = x @ W[prefix + "up_proj.weight"].T
    return (silu(gate) * up) @ W[prefix + "down_proj.weight"].T


def rope_interleaved(x, positions, c):
    """Rotates adjacent pairs (x_2i, x_2i+1) by p·θ'_i (MODELS.md §2.4). x [..., T, d_r] with T last-but-one."""
    ang = positions[:, None].astype(np.float64) * c.inv_freq[None, :]
    C, S = c.rope_factor * np.cos(ang), c.rope_factor * np.sin(ang)
    xe, xo = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = xe * C - xo * S
    out[..., 1::2] = xo * C + xe * S
    return out


def mla(x, W, p, positions, c):
    """Naive MLA (MODELS.md §4) with causal attention over the rows of x."""
    T = x.shape[0]
    cq = rms_norm(x @ W[p + "q_a_proj.weight"].T, W[p + "q_a_layernorm.weight"], 1e-6)
    q = (cq @ W[p + "q_b_proj.weight"].T).reshape(T, c.H, c.d_n + c.d_r).transpose(1, 0, 2)  # [H, T, ·]
    q_n, q_r = q[..., :c.d_n], q[..., c.d_n:]
    kv = x @ W[p + "kv_a_proj_with_mqa.weight"].T
    latent = rms_norm(kv[:, :c.r_kv], W[p + "kv_a_layernorm.weight"], 1e-6)
    k_r = kv[:, c.r_kv:]
    kvb = (latent @ W[p + "kv_b_proj.weight"].T).reshape(T, c.H, c.d_n + c.d_v).transpose(1, 0, 2)
    k_n, v = kvb[..., :c.d_n], kvb[..., c.d_n:]
    q_r = rope_interleaved(q_r, positions, c)
    k_r = rope_interleaved(k_r, positions, c)  # one rope key shared by all heads
    scores = c.tau * (q_n @ k_n.transpose(0, 2, 1) + q_r @ k_r.T[None])  # [H, T, T]
    scores = np.where(np.tril(np.ones((T, T), dtype=bool))[None], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    prob = np.exp(scores)
    prob /= prob.sum(axis=-1, keepdims=True)
    o = (prob @ v).transpose(1, 0, 2).reshape(T, c.H * c.d_v)
    return o @ W[p + "o_proj.weight"].T


class RouteStats:
    """Smallest decision margins met, so near-ties (which f32 engines may resolve differently) show up."""

    def __init__(self):
        self.expert_margin = math.inf
        self.group_margin = math.inf
        self.bias_changed = 0
        self.tokens = 0


def route(x, W, p, c, stats=None):
    """noaux_tc (MODELS.md §3.7): returns [T, k] expert ids and weights."""
    z = x @ W[p + "gate.weight"].T
    s = 1.0 / (1.0 + np.exp(-z))
    bias = W[p + "gate.e_score_correction_bias"]
    ids, weights = [], []
    for t in range(x.shape[0]):
        chosen = select(s[t] + bias, c, stats)
        if stats is not None:
            stats.tokens += 1
            stats.bias_changed += set(chosen) != set(select(s[t], c, None))
        w = s[t][chosen]
        if c.norm_topk_prob:
            w = w / (w.sum() + 1e-20)
        ids.append(chosen)
        weights.append(w * c.route_scale)
    return np.array(ids), np.array(weights)


def select(sb, c, stats):
    per = c.E // c.n_group
    groups = sb.reshape(c.n_group, per)
    gscore = np.sort(groups, axis=1)[:, -2:].sum(axis=1)
    gorder = np.argsort(-gscore, kind="stable")
    keep = gorder[:c.topk_group]
    masked = np.zeros_like(sb)  # HF fills excluded experts with 0.0
    for g in keep:
        masked[g * per:(g + 1) * per] = sb[g * per:(g + 1) * per]
    order = np.argsort(-masked, kind="stable")
    chosen = order[:c.k]
    # the 0.0 fill equals the reference's -inf fill when >= k kept experts score above 0
    assert (masked[chosen] > 0).all(), "biased score <= 0 among selected experts: 0.0 vs -inf ambiguity"
    if stats is not None:
        stats.group_margin = min(stats.group_margin, gscore[gorder[c.topk_group - 1]] - gscore[gorder[c.topk_group]])
        stats.expert_margin = min(stats.expert_margin, masked[order[c.k - 1]] - masked[order[c.k]])
    return chosen


def moe(x, W, p, c, stats=None):
    ids, weights = route(x, W, p, c, stats)
    out = ffn(x, W, p + "shared_experts.")
    for t in range(x.shape[0]):
        for e, w in zip(ids[t], weights[t]):
            out[t] += w * ffn(x[t:t + 1], W, f"{p}experts.{e}.")[0]
    return out


def decoder_layer(h, W, layer, positions, c, stats=None):
    p = f"model.layers.{layer}."
    h = h + mla(rms_norm(h, W[p + "input_layernorm.weight"], c.eps), W, p + "self_attn.", positions, c)
    x = rms_norm(h, W[p + "post_attention_layernorm.weight"], c.eps)
    return h + (ffn(x, W, p + "mlp.") if layer < c.first_dense else moe(x, W, p + "mlp.", c, stats))


def main_model(ids, W, c):
    """Returns (final hidden after model.norm [T, D], logits [T, V])."""
    positions = np.arange(len(ids))
    h = W["model.embed_tokens.weight"][ids]
    for layer in range(c.L):
        h = decoder_layer(h, W, layer, positions, c)
    h = rms_norm(h, W["model.norm.weight"], c.eps)
    return h, h @ W["lm_head.weight"].T


def mtp_block(prev_hidden, next_ids, W, c, stats=None):
    """The MTP module (layer L) over positions 0..T-1: row i pairs prev_hidden[i] (the main model's
    post-norm hidden at i, or the previous MTP step's y) with next_ids[i] (the token at i + 1).
    Returns (y [T, D] before shared_head.norm, logits [T, V])."""
    p = f"model.layers.{c.L}."
    e = rms_norm(W[p + "embed_tokens.weight"][next_ids], W[p + "enorm.weight"], c.eps)
    g = rms_norm(prev_hidden, W[p + "hnorm.weight"], c.eps)
    x = np.concatenate([e, g], axis=-1) @ W[p + "eh_proj.weight"].T  # embedding half first
    y = decoder_layer(x, W, c.L, np.arange(len(next_ids)), c, stats)
    logits = rms_norm(y, W[p + "shared_head.norm.weight"], c.eps) @ W[p + "shared_head.head.weight"].T
    return y, logits


# ---------------------------------------------------------------------------------------------
# The MTP weights


def mtp_weights(W, c, rng):
    """Layer L's MTP tensors: the full decoder layer copies layer L-1's names and shapes."""
    src, dst = f"model.layers.{c.L - 1}.", f"model.layers.{c.L}."
    out = {}
    for name in sorted(W):
        if not name.startswith(src):
            continue
        shape = W[name].shape
        tail = name[len(src):]
        if tail.endswith("e_score_correction_bias"):
            new = (rng.random(shape) - 0.5) * 0.1  # |b| <= 0.05, as the main layers
        elif "norm" in tail:
            new = 1.0 + 0.1 * rng.standard_normal(shape)
        elif tail == "mlp.gate.weight":
            new = 0.3 * rng.standard_normal(shape)
        else:
            new = rng.standard_normal(shape) / math.sqrt(shape[-1])
        out[dst + tail] = new
    D, V = c.D, c.V
    out[dst + "embed_tokens.weight"] = rng.standard_normal((V, D))
    out[dst + "enorm.weight"] = 1.0 + 0.1 * rng.standard_normal(D)
    out[dst + "hnorm.weight"] = 1.0 + 0.1 * rng.standard_normal(D)
    out[dst + "eh_proj.weight"] = rng.standard_normal((D, 2 * D)) / math.sqrt(2 * D)
    out[dst + "shared_head.norm.weight"] = 1.0 + 0.1 * rng.standard_normal(D)
    out[dst + "shared_head.head.weight"] = rng.standard_normal((V, D)) / math.sqrt(D)
    return {k: v.astype(np.float32) for k, v in out.items()}


def write_checkpoint(mtp):
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for f in sorted(SRC.iterdir()):
        shutil.copy2(f, OUT / f.name)
    write_safetensors(OUT / MTP_SHARD, mtp, {"format": "pt"})
    index_path = OUT / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for name in mtp:
        index["weight_map"][name] = MTP_SHARD
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    meta = index.setdefault("metadata", {})
    meta["total_size"] = meta.get("total_size", 0) + sum(t.nbytes for t in mtp.values())
    if "total_parameters" in meta:
        meta["total_parameters"] += sum(t.size for t in mtp.values())
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------


def main():
    cfg = json.loads((SRC / "config.json").read_text())
    c = Config(cfg)
    assert c.n_mtp == 1
    golden, golden_meta = read_safetensors(SRC / "golden.safetensors")

    # 1. The numpy main model against transformers.
    W = load_checkpoint(SRC)
    errors = {}
    for n in VALIDATE_LENGTHS:
        ids = golden[f"ids_{n}"].astype(np.int64)
        _, logits = main_model(ids, W, c)
        errors[n] = float(np.abs(logits - golden[f"logits_{n}"]).max())
        print(f"main model n={n:2d}: max |numpy - transformers {golden_meta.get('transformers')}| = {errors[n]:.3e}")
    assert max(errors.values()) < TOLERANCE, f"numpy reference disagrees with transformers: {errors}"

    # 2. The checkpoint with its MTP module, then everything re-read from what was written.
    write_checkpoint(mtp_weights(W, c, np.random.default_rng(SEED)))
    W = load_checkpoint(OUT)
    p = f"model.layers.{c.L}."
    assert not np.array_equal(W[p + "embed_tokens.weight"], W["model.embed_tokens.weight"])
    assert not np.array_equal(W[p + "shared_head.head.weight"], W["lm_head.weight"])

    # 3. MTP goldens.
    out = {}
    stats = RouteStats()  # prompt positions
    chain_stats = RouteStats()  # draft positions (rows recomputed each step, so counts repeat)
    for n in GOLDEN_LENGTHS:
        ids = golden[f"ids_{n}"].astype(np.int64)
        hidden, logits = main_model(ids, W, c)
        assert np.abs(logits - golden[f"logits_{n}"]).max() < TOLERANCE
        t_next = int(np.argmax(logits[-1]))
        assert t_next == int(np.argmax(golden[f"logits_{n}"][-1]))
        # MTP over positions 0..n-1: (h_i, t_{i+1}), the last pair using the main model's next token.
        seq_h = hidden
        seq_ids = np.append(ids[1:], t_next)
        y, mtp_logits = mtp_block(seq_h, seq_ids, W, c, stats)
        out[f"ids_{n}"] = ids.astype(np.int32)
        out[f"hidden_{n}"] = hidden.astype(np.float32)
        out[f"mtp_hidden_{n}"] = y[:n - 1].astype(np.float32)
        out[f"mtp_logits_{n}"] = mtp_logits[:n - 1].astype(np.float32)
        chain = [t_next]
        margins = [np.diff(np.sort(logits[-1])[-2:])[0]]
        step_logits = mtp_logits[-1]
        for _ in range(DRAFTS):
            draft = int(np.argmax(step_logits))
            chain.append(draft)
            margins.append(np.diff(np.sort(step_logits)[-2:])[0])
            if len(chain) == DRAFTS + 1:
                break
            # the next MTP position pairs the previous step's y (in place of h) with the draft
            seq_h = np.vstack([seq_h, y[-1:]])
            seq_ids = np.append(seq_ids, draft)
            y_all, logits_all = mtp_block(seq_h, seq_ids, W, c, chain_stats)
            assert np.allclose(y_all[:len(y)], y, rtol=0, atol=1e-12)  # causal: earlier rows unchanged
            y, step_logits = y_all, logits_all[-1]
        out[f"chain_{n}"] = np.array(chain, dtype=np.int32)
        print(f"n={n:2d}: chain {chain}, top-1/top-2 logit margins {[f'{m:.3g}' for m in margins]}")

    print(f"MTP routing: {stats.tokens} token decisions, {stats.bias_changed} changed by the correction bias; "
          f"smallest margins: expert {stats.expert_margin:.3g}, group {stats.group_margin:.3g}; "
          f"chain steps: expert {chain_stats.expert_margin:.3g}, group {chain_stats.group_margin:.3g}")
    meta = {"model": "deepseek_v3_mtp", "dtype": "float32", "reference": "numpy", "numpy": np.__version__,
            "validated_against": f"transformers {golden_meta.get('transformers')} logits of deepseek_v3/golden.safetensors",
            "max_abs_error": json.dumps({str(k): float(f"{v:.3e}") for k, v in errors.items()}),
            "mtp_seed": str(SEED)}
    write_safetensors(OUT / "mtp_golden.safetensors", out, meta)

    for name in sorted(out):
        print(f"  {name:16s} {str(out[name].dtype):8s} {list(out[name].shape)}")
    total = 0
    for f in sorted(OUT.iterdir()):
        total += f.stat().st_size
        print(f"  {f.name:36s} {f.stat().st_size:8d} bytes")
    print(f"{OUT.relative_to(ROOT)}: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
