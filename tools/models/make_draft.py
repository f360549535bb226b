#!/usr/bin/env python3
"""Make a layer-truncated draft model of a Hugging Face llama-style directory, for `--spec draft`.

    python3 tools/models/make_draft.py SRC DST --layers N

DST gets config.json with num_hidden_layers = N (and per-layer lists such as layer_types cut to N),
the tokenizer, generation_config.json and chat-template files as they are, a SOURCE note, and one
model.safetensors holding every tensor of SRC except those of layers N and up: the embedding, the
first N decoder layers, the final norm and (when the embeddings are untied) lm_head. The result is
an early-exit draft with exactly the target's tokenizer: cheap to run, and as good at guessing as
its first N layers are (a measurement tool; nothing is trained). Reads one model.safetensors or a
sharded checkpoint (model.safetensors.index.json); uses only the standard library (json + struct),
copying tensor bytes as they are (any dtype), in chunks.
"""

import argparse
import json
import os
import re
import shutil
import struct
import sys

# Files copied unchanged when SRC has them.
COPIED = [
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja", "chat_template.json",
]
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
CHUNK = 64 << 20


def fail(msg):
    print(f"make_draft: {msg}", file=sys.stderr)
    sys.exit(1)


def read_header(path):
    """The JSON header of a safetensors file and the offset where its data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            fail(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            fail(f"{path}: header of {n} bytes (not a safetensors file?)")
        header = json.loads(f.read(n))
    return header, 8 + n


def source_tensors(src):
    """{name: (file, data_start, info)} over SRC's safetensors file or shards."""
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(src, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        fail(f"{src}: no model.safetensors or model.safetensors.index.json")
    out = {}
    for name in files:
        path = os.path.join(src, name)
        header, start = read_header(path)
        for key, info in header.items():
            if key != "__metadata__":
                out[key] = (path, start, info)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="the target model's directory (Hugging Face layout)")
    ap.add_argument("dst", help="the draft's directory (created; must be empty or absent)")
    ap.add_argument("--layers", type=int, required=True, help="decoder layers the draft keeps (the first N)")
    args = ap.parse_args()

    with open(os.path.join(args.src, "config.json")) as f:
        config = json.load(f)
    # Multimodal wrappers keep the language model's settings under text_config.
    text = config.get("text_config", config)
    total = text.get("num_hidden_layers")
    if not isinstance(total, int):
        fail(f"{args.src}/config.json: no num_hidden_layers")
    if not 1 <= args.layers <= total:
        fail(f"--layers must be in [1, {total}] (the model has {total} layers), found {args.layers}")
    if os.path.exists(args.dst) and os.listdir(args.dst):
        fail(f"{args.dst}: exists and is not empty")
    os.makedirs(args.dst, exist_ok=True)

    text["num_hidden_layers"] = args.layers
    for key, value in list(text.items()):  # per-layer lists (layer_types, ...) follow the layer count
        if isinstance(value, list) and len(value) == total and key not in ("architectures",):
            text[key] = value[: args.layers]
    if isinstance(text.get("max_window_layers"), int):
        text["max_window_layers"] = min(text["max_window_layers"], args.layers)
    with open(os.path.join(args.dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    for name in COPIED:
        if os.path.exists(os.path.join(args.src, name)):
            shutil.copyfile(os.path.join(args.src, name), os.path.join(args.dst, name))

    # The kept tensors, in a stable order, laid out back to back after an 8-byte-aligned header.
    tensors = source_tensors(args.src)
    kept = []
    for name in sorted(tensors):
        m = LAYER.search(name)
        if m and int(m.group(1)) >= args.layers:
            continue
        kept.append(name)
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in kept:
        _, _, info = tensors[name]
        begin, end = info["data_offsets"]
        header[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    out_path = os.path.join(args.dst, "model.safetensors")
    with open(out_path + ".tmp", "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name in kept:
            path, start, info = tensors[name]
            begin, end = info["data_offsets"]
            with open(path, "rb") as f:
                f.seek(start + begin)
                left = end - begin
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        fail(f"{path}: ends inside tensor {name}")
                    out.write(chunk)
                    left -= len(chunk)
    os.replace(out_path + ".tmp", out_path)

    with open(os.path.join(args.dst, "SOURCE"), "w") as f:
        f.write(f"Layer-truncated draft of {os.path.abspath(args.src)}: its first {args.layers} of {total} decoder layers, "
                f"the embedding, the final norm and the LM head, made by tools/models/make_draft.py (no training).\n")
    dropped = len(tensors) - len(kept)
    print(f"make_draft: {args.dst}: {args.layers} of {total} layers, {len(kept)} tensors ({dropped} dropped), "
          f"{offset / 1e6:.1f} MB of weights")


if __name__ == "__main__":
    main()
