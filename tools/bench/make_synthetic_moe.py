#!/usr/bin/env python3
"""Synthetic (random-weight) models for CPU performance anchoring.

Sub-commands
  hf    write a Hugging Face-style directory (config.json + model.safetensors,
        bf16) using only numpy + json.  The safetensors file is written by hand:
        8-byte little-endian header length, JSON header (dtype/shape/
        data_offsets), raw little-endian data.
  gguf  convert such a directory to a BF16 GGUF with gguf-py's GGUFWriter
        (llama.cpp tensor names for qwen3moe / llama), reading the safetensors
        back through np.memmap (no torch needed).  gguf-py must be importable:
        the PyPI package `gguf` (or a gguf-py source dir on PYTHONPATH).
  bytes print per-token weight-byte accounting of a GGUF (JSON), for decode
        bandwidth math: all non-expert matrices + n_used/n_expert of the expert
        tensors + one embedding row.

Presets
  qwen3moe : Qwen3-30B-A3B layer shape (hidden 2048, 32 q heads / 4 kv heads,
             head_dim 128, moe_intermediate 768, 8 experts active) but only
             64 experts and 8 layers, vocab 32000 -> ~5.4 GB bf16,
             ~0.52 G active params/token.
  llama    : Llama-3.2-1B shape (hidden 2048, 16 layers, 32/8 heads,
             head_dim 64, ffn 8192, tied embeddings), vocab 32000 -> ~2.1 GB bf16.
  deepseek2: DeepSeek-V2-Lite layer shape (hidden 2048, 16 heads, MLA with
             kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128, no q_lora;
             64 routed experts, 6 active, 2 shared, moe_intermediate 1408;
             first_k_dense_replace 1 with intermediate 10944) but 6 layers
             (1 dense + 5 MoE) and vocab 32000 -> ~6.3 GB bf16, ~0.67 G active
             params/token.  GGUF: llama.cpp arch "deepseek2" in its MLA form
             (kv_b_proj split into attn_k_b (transposed) and attn_v_b, key/value
             length 576/512, key/value length_mla 192/128, q_lora_rank 0).

Weights are seeded random bf16 values with random sign and magnitude in
[2^-9, 2^-5) (built from random bits, much faster than a normal sampler on a
2-core box); norms are 1.0.  Values carry no meaning; only shapes, dtypes and
layout matter.  Llama q/k are NOT permuted to GGML rope order (irrelevant for
random weights).

tools/bench copy: taken from the team's shared/tools/make_synthetic_moe.py and
extended with the deepseek2 preset (used by tools/bench/compare_llamacpp.py).
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

PRESETS = {
    "qwen3moe": dict(
        architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
        hidden_size=2048, num_hidden_layers=8, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, intermediate_size=6144,
        moe_intermediate_size=768, num_experts=64, num_experts_per_tok=8,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        vocab_size=32000, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
        hidden_act="silu", torch_dtype="bfloat16",
        bos_token_id=1, eos_token_id=2),
    "llama": dict(
        architectures=["LlamaForCausalLM"], model_type="llama",
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, intermediate_size=8192,
        vocab_size=32000, max_position_embeddings=32768, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, hidden_act="silu", torch_dtype="bfloat16",
        bos_token_id=1, eos_token_id=2),
    "deepseek2": dict(
        architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
        hidden_size=2048, num_hidden_layers=6, num_attention_heads=16,
        num_key_value_heads=16, intermediate_size=10944, moe_intermediate_size=1408,
        q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=2,
        first_k_dense_replace=1, moe_layer_freq=1, topk_method="greedy", n_group=1,
        topk_group=1, norm_topk_prob=False, scoring_func="softmax",
        routed_scaling_factor=1.0, vocab_size=32000, max_position_embeddings=32768,
        rope_theta=10000.0, rope_scaling=None, rms_norm_eps=1e-6,
        tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
        torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2),
}


def hf_tensor_list(c):
    """Ordered (name, shape, kind) list.  Expert tensors of one layer/proj are
    consecutive so the stacked [E, rows, cols] GGUF tensor is one contiguous
    region of the safetensors file."""
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    if c["model_type"] == "deepseek_v2":
        return deepseek_tensor_list(c)
    hd = c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    t = [("model.embed_tokens.weight", (V, H), "w")]
    for i in range(L):
        p = f"model.layers.{i}."
        t += [(p + "input_layernorm.weight", (H,), "norm"),
              (p + "self_attn.q_proj.weight", (q, H), "w"),
              (p + "self_attn.k_proj.weight", (kv, H), "w"),
              (p + "self_attn.v_proj.weight", (kv, H), "w"),
              (p + "self_attn.o_proj.weight", (H, q), "w")]
        if c["model_type"] == "qwen3_moe":
            t += [(p + "self_attn.q_norm.weight", (hd,), "norm"),
                  (p + "self_attn.k_norm.weight", (hd,), "norm")]
        t += [(p + "post_attention_layernorm.weight", (H,), "norm")]
        if c["model_type"] == "qwen3_moe":
            E, F = c["num_experts"], c["moe_intermediate_size"]
            t += [(p + "mlp.gate.weight", (E, H), "w")]
            for proj, shp in (("gate_proj", (F, H)), ("up_proj", (F, H)), ("down_proj", (H, F))):
                t += [(p + f"mlp.experts.{e}.{proj}.weight", shp, "w") for e in range(E)]
        else:
            F = c["intermediate_size"]
            t += [(p + "mlp.gate_proj.weight", (F, H), "w"),
                  (p + "mlp.up_proj.weight", (F, H), "w"),
                  (p + "mlp.down_proj.weight", (H, F), "w")]
    t += [("model.norm.weight", (H,), "norm")]
    if not c["tie_word_embeddings"]:
        t += [("lm_head.weight", (V, H), "w")]
    return t


def deepseek_tensor_list(c):
    """DeepSeek-V2 (MLA, no q_lora) in HF naming; expert tensors of one layer/proj
    consecutive, as above."""
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    nh, r = c["num_attention_heads"], c["kv_lora_rank"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    E, F, Fd = c["n_routed_experts"], c["moe_intermediate_size"], c["intermediate_size"]
    Fs = F * c["n_shared_experts"]
    t = [("model.embed_tokens.weight", (V, H), "w")]
    for i in range(L):
        p = f"model.layers.{i}."
        t += [(p + "input_layernorm.weight", (H,), "norm"),
              (p + "self_attn.q_proj.weight", (nh * (nope + rope), H), "w"),
              (p + "self_attn.kv_a_proj_with_mqa.weight", (r + rope, H), "w"),
              (p + "self_attn.kv_a_layernorm.weight", (r,), "norm"),
              (p + "self_attn.kv_b_proj.weight", (nh * (nope + vd), r), "w"),
              (p + "self_attn.o_proj.weight", (H, nh * vd), "w"),
              (p + "post_attention_layernorm.weight", (H,), "norm")]
        if i < c["first_k_dense_replace"]:
            t += [(p + "mlp.gate_proj.weight", (Fd, H), "w"),
                  (p + "mlp.up_proj.weight", (Fd, H), "w"),
                  (p + "mlp.down_proj.weight", (H, Fd), "w")]
            continue
        t += [(p + "mlp.gate.weight", (E, H), "w")]
        for proj, shp in (("gate_proj", (F, H)), ("up_proj", (F, H)), ("down_proj", (H, F))):
            t += [(p + f"mlp.experts.{e}.{proj}.weight", shp, "w") for e in range(E)]
        t += [(p + "mlp.shared_experts.gate_proj.weight", (Fs, H), "w"),
              (p + "mlp.shared_experts.up_proj.weight", (Fs, H), "w"),
              (p + "mlp.shared_experts.down_proj.weight", (H, Fs), "w")]
    t += [("model.norm.weight", (H,), "norm")]
    if not c["tie_word_embeddings"]:
        t += [("lm_head.weight", (V, H), "w")]
    return t


def random_bf16(rng, n):
    """n random bf16 bit patterns: random sign, exponent 118..121, random mantissa."""
    r = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    e = np.uint16(118) + ((r >> np.uint16(7)) & np.uint16(3))
    return (r & np.uint16(0x807F)) | (e << np.uint16(7))


def cmd_hf(a):
    c = dict(PRESETS[a.preset])
    for kv in a.set or []:
        k, v = kv.split("=", 1)
        c[k] = json.loads(v)
    tl = hf_tensor_list(c)
    os.makedirs(a.out, exist_ok=True)
    hdr, off = {"__metadata__": {"format": "pt", "generator": "make_synthetic_moe.py", "seed": str(a.seed)}}, 0
    for name, shp, _ in tl:
        nb = int(np.prod(shp)) * 2
        hdr[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + nb]}
        off += nb
    hj = json.dumps(hdr, separators=(",", ":")).encode()
    hj += b" " * ((-len(hj)) % 8)
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    path = os.path.join(a.out, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name, shp, kind in tl:
            n = int(np.prod(shp))
            if kind == "norm":
                np.full(n, 0x3F80, dtype="<u2").tofile(f)  # 1.0 in bf16
                continue
            chunk = 1 << 26
            for s in range(0, n, chunk):
                random_bf16(rng, min(chunk, n - s)).astype("<u2", copy=False).tofile(f)
    nparams = sum(int(np.prod(s)) for _, s, _ in tl)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    print(f"wrote {path}: {len(tl)} tensors, {nparams/1e9:.3f} G params, "
          f"{os.path.getsize(path)/1e9:.2f} GB in {time.time()-t0:.1f}s")


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    base = 8 + n
    return hdr, mm, base


def add_synthetic_vocab(w, V):
    """Minimal SentencePiece-style vocab: <unk> <s> </s>, 256 byte tokens, fillers."""
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    toks += [f"\u2581t{i}" for i in range(V - len(toks))]
    types += [1] * (V - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([-float(i) for i in range(V)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def gguf_deepseek2(a, c, view, stacked, f32):
    """DeepSeek-V2 -> llama.cpp "deepseek2" in the MLA form its converter writes:
    the KV cache holds the compressed latent (kv_lora_rank) + the rope part of k
    (one "KV head" of key length r + rope, value length r), and kv_b_proj is split
    per head into attn_k_b [nh, r, nope] (transposed) and attn_v_b [nh, vd, r] so
    the graph can absorb them."""
    import gguf
    BF16 = gguf.GGMLQuantizationType.BF16
    H, L, nh = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    r, nope, rope, vd = c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    E, nd = c["n_routed_experts"], c["first_k_dense_replace"]
    if c.get("q_lora_rank"):
        sys.exit("gguf: deepseek2 with q_lora_rank is not written by this tool")
    w = gguf.GGUFWriter(a.out, "deepseek2")
    w.add_name("synthetic-deepseek2")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(1)  # MLA stored as one shared latent "head"
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_expert_used_count(c["num_experts_per_tok"])
    w.add_leading_dense_block_count(nd)
    w.add_vocab_size(c["vocab_size"])
    # llama.cpp treats only 26/27-layer files as "lite" (no q_lora); others must say the rank: 0 = none
    w.add_q_lora_rank(0)
    w.add_kv_lora_rank(r)
    w.add_key_length(r + rope)
    w.add_value_length(r)
    w.add_key_length_mla(nope + rope)
    w.add_value_length_mla(vd)
    w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    w.add_expert_count(E)
    w.add_expert_shared_count(c["n_shared_experts"])
    w.add_expert_weights_scale(c["routed_scaling_factor"])
    w.add_rope_dimension_count(rope)
    add_synthetic_vocab(w, c["vocab_size"])

    w.add_tensor("token_embd.weight", view("model.embed_tokens.weight"), raw_dtype=BF16)
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", f32(view(p + "input_layernorm.weight")))
        w.add_tensor(b + "attn_q.weight", view(p + "self_attn.q_proj.weight"), raw_dtype=BF16)
        w.add_tensor(b + "attn_kv_a_mqa.weight", view(p + "self_attn.kv_a_proj_with_mqa.weight"), raw_dtype=BF16)
        w.add_tensor(b + "attn_kv_a_norm.weight", f32(view(p + "self_attn.kv_a_layernorm.weight")))
        kvb = np.asarray(view(p + "self_attn.kv_b_proj.weight")).reshape(nh, nope + vd, r)
        w.add_tensor(b + "attn_k_b.weight", np.ascontiguousarray(kvb[:, :nope, :].transpose(0, 2, 1)), raw_dtype=BF16)
        w.add_tensor(b + "attn_v_b.weight", np.ascontiguousarray(kvb[:, nope:, :]), raw_dtype=BF16)
        w.add_tensor(b + "attn_output.weight", view(p + "self_attn.o_proj.weight"), raw_dtype=BF16)
        w.add_tensor(b + "ffn_norm.weight", f32(view(p + "post_attention_layernorm.weight")))
        if i < nd:
            for hf, gg in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                w.add_tensor(b + gg + ".weight", view(p + f"mlp.{hf}.weight"), raw_dtype=BF16)
            continue
        w.add_tensor(b + "ffn_gate_inp.weight", f32(view(p + "mlp.gate.weight")))  # router F32
        w.add_tensor(b + "ffn_gate_exps.weight", stacked(p, "gate_proj", E), raw_dtype=BF16)
        w.add_tensor(b + "ffn_up_exps.weight", stacked(p, "up_proj", E), raw_dtype=BF16)
        w.add_tensor(b + "ffn_down_exps.weight", stacked(p, "down_proj", E), raw_dtype=BF16)
        for hf, gg in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")):
            w.add_tensor(b + gg + ".weight", view(p + f"mlp.shared_experts.{hf}.weight"), raw_dtype=BF16)
    w.add_tensor("output_norm.weight", f32(view("model.norm.weight")))
    if not c["tie_word_embeddings"]:
        w.add_tensor("output.weight", view("lm_head.weight"), raw_dtype=BF16)
    t0 = time.time()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: {os.path.getsize(a.out)/1e9:.2f} GB in {time.time()-t0:.1f}s")


def cmd_gguf(a):
    import gguf
    c = json.load(open(os.path.join(a.model_dir, "config.json")))
    hdr, mm, base = read_safetensors(os.path.join(a.model_dir, "model.safetensors"))

    def view(name):
        m = hdr[name]
        assert m["dtype"] == "BF16"
        s, e = m["data_offsets"]
        return mm[base + s: base + e].view("<u2").reshape(m["shape"])

    def stacked(prefix, proj, E):
        ms = [hdr[f"{prefix}mlp.experts.{e}.{proj}.weight"] for e in range(E)]
        for m0, m1 in zip(ms, ms[1:]):
            assert m0["data_offsets"][1] == m1["data_offsets"][0], "experts not contiguous"
        s, e = ms[0]["data_offsets"][0], ms[-1]["data_offsets"][1]
        return mm[base + s: base + e].view("<u2").reshape([E] + ms[0]["shape"])

    def f32(x):  # exact bf16 -> f32
        return (np.asarray(x).astype(np.uint32) << np.uint32(16)).view(np.float32)

    if c["model_type"] == "deepseek_v2":
        return gguf_deepseek2(a, c, view, stacked, f32)
    moe = c["model_type"] == "qwen3_moe"
    arch = "qwen3moe" if moe else "llama"
    w = gguf.GGUFWriter(a.out, arch)
    w.add_name(f"synthetic-{arch}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    if moe:
        w.add_expert_count(c["num_experts"])
        w.add_expert_used_count(c["num_experts_per_tok"])
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    add_synthetic_vocab(w, c["vocab_size"])

    BF16 = gguf.GGMLQuantizationType.BF16
    w.add_tensor("token_embd.weight", view("model.embed_tokens.weight"), raw_dtype=BF16)
    for i in range(c["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", f32(view(p + "input_layernorm.weight")))
        for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            w.add_tensor(b + gg + ".weight", view(p + f"self_attn.{hf}.weight"), raw_dtype=BF16)
        if moe:
            w.add_tensor(b + "attn_q_norm.weight", f32(view(p + "self_attn.q_norm.weight")))
            w.add_tensor(b + "attn_k_norm.weight", f32(view(p + "self_attn.k_norm.weight")))
        w.add_tensor(b + "ffn_norm.weight", f32(view(p + "post_attention_layernorm.weight")))
        if moe:
            E = c["num_experts"]
            w.add_tensor(b + "ffn_gate_inp.weight", f32(view(p + "mlp.gate.weight")))  # router kept F32 like convert_hf_to_gguf
            w.add_tensor(b + "ffn_gate_exps.weight", stacked(p, "gate_proj", E), raw_dtype=BF16)
            w.add_tensor(b + "ffn_up_exps.weight", stacked(p, "up_proj", E), raw_dtype=BF16)
            w.add_tensor(b + "ffn_down_exps.weight", stacked(p, "down_proj", E), raw_dtype=BF16)
        else:
            for hf, gg in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                w.add_tensor(b + gg + ".weight", view(p + f"mlp.{hf}.weight"), raw_dtype=BF16)
    w.add_tensor("output_norm.weight", f32(view("model.norm.weight")))
    if not c["tie_word_embeddings"]:
        w.add_tensor("output.weight", view("lm_head.weight"), raw_dtype=BF16)
    t0 = time.time()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: {os.path.getsize(a.out)/1e9:.2f} GB in {time.time()-t0:.1f}s")


def cmd_bytes(a):
    """Per-token weight bytes for batch-1 decode, from the GGUF tensor table."""
    import gguf
    r = gguf.GGUFReader(a.gguf)

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()
    arch = kv("general.architecture")
    n_exp = kv(f"{arch}.expert_count", 0) or 0
    n_used = kv(f"{arch}.expert_used_count", 0) or 0
    L = kv(f"{arch}.block_count")
    n_kv_heads = kv(f"{arch}.attention.head_count_kv")
    hd = kv(f"{arch}.attention.key_length") or kv(f"{arch}.embedding_length") // kv(f"{arch}.attention.head_count")
    tot = dense = expert = embd = 0
    params = active_params = lm_head_params = 0
    has_output = any(t.name == "output.weight" for t in r.tensors)
    types = {}
    for t in r.tensors:
        nb, ne = int(t.n_bytes), int(t.n_elements)
        tot += nb
        params += ne
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + nb
        if "_exps." in t.name:
            expert += nb
            active_params += ne * n_used // n_exp
        elif t.name == "token_embd.weight":
            embd += nb
            V = int(t.shape[1])
            if not has_output:  # tied: the whole matrix is read as the LM head
                dense += nb
                active_params += ne
                lm_head_params = ne
            else:
                dense += nb // V  # one row gathered
                active_params += ne // V
        else:
            dense += nb
            active_params += ne
            if t.name == "output.weight":
                lm_head_params = ne
    act = dense + (expert * n_used // n_exp if n_exp else 0)
    out = dict(file=os.path.basename(a.gguf), arch=arch, file_bytes=os.path.getsize(a.gguf),
               tensor_bytes=tot, params=params, active_params=active_params,
               lm_head_params=lm_head_params,
               dense_bytes_per_token=dense, expert_bytes_total=expert,
               n_expert=n_exp, n_expert_used=n_used,
               active_weight_bytes_per_token=act,
               # K+V, f16 cache; MLA (deepseek2): one latent row of key_length (V is a view of it)
               kv_bytes_per_token_per_ctx_pos=(L * hd * 2 if kv(f"{arch}.attention.kv_lora_rank") else 2 * L * n_kv_heads * hd * 2),
               bytes_by_type=types)
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)
    h = sp.add_parser("hf")
    h.add_argument("--preset", choices=sorted(PRESETS), required=True)
    h.add_argument("--out", required=True)
    h.add_argument("--seed", type=int, default=1234)
    h.add_argument("--set", action="append", help="override a config field, KEY=JSON")
    g = sp.add_parser("gguf")
    g.add_argument("model_dir")
    g.add_argument("out")
    b = sp.add_parser("bytes")
    b.add_argument("gguf")
    a = ap.parse_args()
    {"hf": cmd_hf, "gguf": cmd_gguf, "bytes": cmd_bytes}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
