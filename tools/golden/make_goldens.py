#!/usr/bin/env python3
"""Golden data for the executor tests: tiny random models of every family, made and run with
Hugging Face transformers (the conformance target, docs/MODELS.md §9).

For each model this writes tests/data/golden/<name>/: the HF checkpoint (config.json + safetensors,
some sharded with an index) and golden.safetensors holding

  ids_<n>     [n] int32     prompts of lengths 1, 7 and 33 (seeded)
  logits_<n>  [n, V] f32    HF logits at every position (eager attention, no cache)
  greedy      [16] int32    greedy continuation of ids_7 (generate, use_cache=True)

with the transformers and torch versions in its metadata. Run by developers only:

    pip install torch transformers safetensors numpy
    python3 tools/golden/make_goldens.py            # all models
    python3 tools/golden/make_goldens.py llama      # some
    python3 tools/golden/make_goldens.py qwen2_moe_gelu_tanh olmoe_gelu   # the hidden_act goldens

The C++ tests read only the committed outputs; CI needs no Python.
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "golden"
VOCAB = 512
PROMPT_LENGTHS = (1, 7, 33)
GREEDY_TOKENS = 16

# Tiny, real-shaped configs (MODELS.md §9.3) that still reach every path: dense-then-MoE layers,
# >= 8 experts, top-k >= 2, groups, GQA with H != H_kv, MLA with and without q_lora, rope scaling.
BASE = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
MLA = dict(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
           intermediate_size=128, moe_intermediate_size=32, num_key_value_heads=4, rms_norm_eps=1e-6,
           rope_theta=10000.0, attention_bias=False)
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=32.0,
            beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)

MODELS = {
    "llama": dict(model_type="llama", num_hidden_layers=2, intermediate_size=128, rope_theta=10000.0,
                  attention_bias=True),
    "llama3_tied": dict(model_type="llama", num_hidden_layers=2, intermediate_size=128, rope_theta=500000.0,
                        tie_word_embeddings=True,
                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64)),
    "mixtral": dict(model_type="mixtral", num_hidden_layers=2, intermediate_size=96, num_local_experts=8,
                    num_experts_per_tok=2, rope_theta=1e6, sliding_window=None),
    "qwen2_moe": dict(model_type="qwen2_moe", num_hidden_layers=3, intermediate_size=128,
                      moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=8,
                      num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=[1], rope_theta=1e6, rms_norm_eps=1e-6, qkv_bias=True),
    "qwen3_moe": dict(model_type="qwen3_moe", num_hidden_layers=3, head_dim=32, intermediate_size=128,
                      moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[0], rope_theta=1e6, rms_norm_eps=1e-6),
    "olmoe": dict(model_type="olmoe", num_hidden_layers=2, intermediate_size=32, num_experts=8,
                  num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=2.0, rope_theta=10000.0),
    "deepseek_v2_lite": dict(model_type="deepseek_v2", num_hidden_layers=3, q_lora_rank=None,
                             n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2,
                             first_k_dense_replace=1, topk_method="greedy", n_group=1, topk_group=1,
                             routed_scaling_factor=1.5, norm_topk_prob=False, rope_scaling=None, **MLA),
    "deepseek_v2": dict(model_type="deepseek_v2", num_hidden_layers=3, q_lora_rank=32, n_routed_experts=8,
                        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                        topk_method="group_limited_greedy", n_group=4, topk_group=2,
                        routed_scaling_factor=16.0, norm_topk_prob=False, max_position_embeddings=256,
                        rope_scaling=dict(YARN, mscale=0.707, mscale_all_dim=0.707), **MLA),
    "deepseek_v3": dict(model_type="deepseek_v3", num_hidden_layers=3, q_lora_rank=32, n_routed_experts=16,
                        num_experts_per_tok=4, n_shared_experts=1, first_k_dense_replace=1, n_group=4,
                        topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                        max_position_embeddings=256, rope_scaling=YARN, **MLA),
}
# The FP8 model: dimensions that are not multiples of 128, so partial scale blocks occur.
FP8 = dict(MODELS["deepseek_v3"], hidden_size=256, q_lora_rank=160, kv_lora_rank=64, qk_rope_head_dim=32,
           intermediate_size=320, moe_intermediate_size=96)
# hidden_act other than silu (every family builds its MLPs and experts with ACT2FN[config.hidden_act]):
# the tanh-approximated GELU through Qwen2-MoE's dense layer, shared expert and routed experts, and
# the exact (erf) GELU through OLMoE's experts. Listed after the models above so their seeds stay put.
ACTIVATION_MODELS = {
    "qwen2_moe_gelu_tanh": dict(MODELS["qwen2_moe"], hidden_act="gelu_pytorch_tanh"),
    "olmoe_gelu": dict(MODELS["olmoe"], hidden_act="gelu"),
}
SHARDED = {"mixtral", "deepseek_v3"}  # saved as several shards plus an index
FP8_BLOCK = 128


def make_config(spec):
    spec = dict(BASE, **spec)
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, **spec)


def rerandomize(model, seed):
    """Every parameter and buffer random and non-trivial: HF init leaves biases 0 and norms 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()) + sorted(model.named_buffers()):
            if "inv_freq" in name or p.dtype not in (torch.float32, torch.bfloat16):
                continue
            if name.endswith("e_score_correction_bias"):
                new = (torch.rand(p.shape, generator=g) - 0.5) * 0.1  # |b| <= 0.05
            elif "norm" in name:
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                new = 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name:
                new = 1.0 * torch.randn(p.shape, generator=g)
            elif name.endswith("gate.weight") or "shared_expert_gate" in name:  # routers: decisive scores
                new = 0.3 * torch.randn(p.shape, generator=g)
            else:
                fan_in = p.shape[-1]
                new = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
            p.copy_(new.to(p.dtype))


def prompts(seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randint(3, VOCAB, (n,), generator=g) for n in PROMPT_LENGTHS}


@torch.no_grad()
def goldens(model, ids_by_len):
    out = {}
    for n, ids in ids_by_len.items():
        out[f"ids_{n}"] = ids.to(torch.int32)
        out[f"logits_{n}"] = model(ids[None, :], use_cache=False).logits[0].float().contiguous()
    prompt = ids_by_len[7][None, :]
    # An explicit mask: generate() would otherwise mask every prompt token equal to the pad id.
    gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=GREEDY_TOKENS,
                         min_new_tokens=GREEDY_TOKENS, do_sample=False, use_cache=True, eos_token_id=None,
                         pad_token_id=0)
    out["greedy"] = gen[0, 7:].to(torch.int32).contiguous()
    return out


def metadata(name, dtype):
    return {"model": name, "dtype": dtype, "transformers": transformers.__version__, "torch": torch.__version__}


def build(spec, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(spec), attn_implementation="eager", dtype=dtype)
    model.eval()
    rerandomize(model, seed)
    return model


def save_model(model, out_dir, sharded):
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="300KB" if sharded else "1GB")


def make(name, spec, seed):
    out_dir = OUT / name
    model = build(spec, seed)
    save_model(model, out_dir, name in SHARDED)
    save_file(goldens(model, prompts(seed)), out_dir / "golden.safetensors", metadata(name, "float32"))
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters -> {out_dir.relative_to(ROOT)}")
    return model


def make_bf16(name, fp32_dir, seed):
    """Reload the fp32 checkpoint in bf16 (HF's keep-in-fp32 rules apply as for real checkpoints)."""
    out_dir = OUT / name
    model = AutoModelForCausalLM.from_pretrained(fp32_dir, dtype=torch.bfloat16, attn_implementation="eager")
    model.eval()
    save_model(model, out_dir, False)
    data = goldens(model, prompts(seed))
    # HF in fp32 on the same bf16 weights: what an engine that reads bf16 and computes in fp32 must
    # reproduce exactly (bf16 arithmetic alone moves logits by up to ~2 where a routing choice flips).
    upcast = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for n in PROMPT_LENGTHS:
            data[f"f32_logits_{n}"] = upcast(data[f"ids_{n}"].long()[None, :], use_cache=False).logits[0].contiguous()
    save_file(data, out_dir / "golden.safetensors", metadata(name, "bfloat16"))
    print(f"{name}: bf16 copy -> {out_dir.relative_to(ROOT)}")


def is_fp8_linear(name):
    """Every 2-D Linear weight of attention and MLPs, as in DeepSeek-V3's FP8 release (MODELS.md §6):
    not embeddings, lm_head, norms or the router."""
    return name.endswith("proj.weight") and "embed" not in name and "lm_head" not in name


def quantize_block_fp8(w):
    """Per 128x128 block: scale = amax / 448, q = e4m3(W / scale); returns q, scale, q * scale."""
    rows, cols = w.shape
    br, bc = math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK)
    padded = torch.zeros(br * FP8_BLOCK, bc * FP8_BLOCK)
    padded[:rows, :cols] = w
    blocks = padded.view(br, FP8_BLOCK, bc, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = (amax / 448.0).float()
    q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
    deq = (q.float() * scale[:, None, :, None]).view(br * FP8_BLOCK, bc * FP8_BLOCK)[:rows, :cols]
    q = q.view(br * FP8_BLOCK, bc * FP8_BLOCK)[:rows, :cols].contiguous()
    return q, scale.contiguous(), deq.contiguous()


def fp8_round_trip_(w):
    """Replaces a [out, in] weight by its FP8 block-quantized value, in place."""
    w.copy_(quantize_block_fp8(w.float())[2].to(w.dtype))


def make_fp8(name, seed):
    """A DeepSeek-V3 model stored as F8_E4M3 + weight_scale_inv; HF runs the dequantized weights.

    In memory HF v5 holds experts fused ([E, 2*I, D] gate_up_proj, [E, D, I] down_proj); each
    expert's gate, up and down matrix is block-quantized on its own, as in the released checkpoint.
    save_pretrained then writes the per-expert 2-D names, and quantizing those again reproduces the
    same bytes (a block's largest value is exactly 448 * scale)."""
    out_dir = OUT / name
    model = build(FP8, seed)
    inter = FP8["moe_intermediate_size"]
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("experts.gate_up_proj"):
                for e in range(p.shape[0]):
                    fp8_round_trip_(p.data[e, :inter])
                    fp8_round_trip_(p.data[e, inter:])
            elif pname.endswith("experts.down_proj"):
                for e in range(p.shape[0]):
                    fp8_round_trip_(p.data[e])
            elif p.dim() == 2 and is_fp8_linear(pname):
                fp8_round_trip_(p.data)
    save_model(model, out_dir, False)
    state = load_file(out_dir / "model.safetensors")
    fp8_state = {}
    for tname, t in state.items():
        if t.dim() == 2 and is_fp8_linear(tname):
            q, scale, deq = quantize_block_fp8(t.float())
            assert torch.equal(deq, t.float()), f"{tname}: FP8 round trip is not exact"
            fp8_state[tname] = q
            fp8_state[tname + "_scale_inv"] = scale  # a multiplier despite its name (MODELS.md §6)
        else:
            fp8_state[tname] = t
    save_file(fp8_state, out_dir / "model.safetensors", {"format": "pt"})
    config = json.loads((out_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(goldens(model, prompts(seed)), out_dir / "golden.safetensors", metadata(name, "fp8-dequantized-f32"))
    n_fp8 = len([k for k in fp8_state if k.endswith("_scale_inv")])
    print(f"{name}: {n_fp8} FP8 weights -> {out_dir.relative_to(ROOT)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = list(MODELS) + ["deepseek_v3_bf16", "deepseek_v3_fp8"] + list(ACTIVATION_MODELS)
    parser.add_argument("models", nargs="*", help="models to make (default: all): " + ", ".join(every))
    args = parser.parse_args()
    unknown = set(args.models) - set(every)
    if unknown:
        parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    args.models = args.models or every
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(every):
        if name not in args.models:
            continue
        seed = 1000 + i
        if name in MODELS:
            make(name, MODELS[name], seed)
        elif name in ACTIVATION_MODELS:
            make(name, ACTIVATION_MODELS[name], seed)
        elif name == "deepseek_v3_bf16":
            if not (OUT / "deepseek_v3" / "config.json").exists():
                make("deepseek_v3", MODELS["deepseek_v3"], 1000 + every.index("deepseek_v3"))
            make_bf16(name, OUT / "deepseek_v3", seed)
        else:
            make_fp8(name, seed)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    sys.exit(main())
