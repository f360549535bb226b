#!/usr/bin/env python3
"""Side-by-side CPU benchmark: moerun vs llama.cpp on the same weights, dtype and thread count.

    python3 tools/bench/compare_llamacpp.py                        # prepare + run everything
    python3 tools/bench/compare_llamacpp.py --models default --threads 2 --reps 3
    python3 tools/bench/compare_llamacpp.py --skip-prepare --out bench.md --json bench.json

Run from the repository root. Needs: a built `moerun` (default build-llcmp/moerun), the PyPI
packages numpy and gguf, and llama.cpp: either the `llama-bench` tool (preferred) or the PyPI
package llama-cpp-python. tools/bench/build_llamacpp.sh builds both from the llama-cpp-python
sdist into ./bench-models/llamacpp (one compile of llama.cpp, native CPU flags).

Models (prepared under --work, default ./bench-models, git-ignored):
  default    models/default (SmolLM2-135M-Instruct, Llama, bf16 safetensors) for moerun; for
             llama.cpp a BF16 GGUF written here with the gguf package: bit-identical weights, q/k
             rows permuted to llama.cpp's rope layout, norms F32, byte-level BPE vocab + merges.
  qwen3moe   synthetic Qwen3-30B-A3B layer shape, 8 layers, 64 experts (8 active), vocab 32000
             (tools/bench/make_synthetic_moe.py preset qwen3moe, ~5.4 GB bf16).
  deepseek2  synthetic DeepSeek-V2-Lite layer shape (MLA kv_lora 512, 64 experts top-6 + 2
             shared, first layer dense 10944), 6 layers, vocab 32000 (preset deepseek2, ~6.3 GB).
  The synthetic models are one seeded set of random bf16 weights written as an HF directory
  (what moerun loads) and converted to GGUF (what llama.cpp loads): the same numbers on both sides.
dtypes:
  bf16       moerun: the bf16 safetensors as they are; llama.cpp: the BF16 GGUF.
  q8         moerun: `bench --quant q8` (reported as unsupported if this moerun lacks it);
             llama.cpp: a Q8_0 GGUF made from the BF16 one by llama-quantize (norms and the MoE
             router stay F32), or by gguf.quants when llama-quantize is absent.

What is timed, on both sides (llama-bench's definitions, which `moerun bench` follows):
  pp512  one forward pass over 512 random token ids from an empty KV cache, logits of the last
         position only; t/s = 512 / seconds. (llama.cpp: one llama_decode of 512 tokens, n_batch
         2048 / n_ubatch 512, i.e. a single ubatch, then llama_synchronize.)
  tg128  128 single-token decode steps from an empty cache, each returning the next logits
         (no sampling in the timing); t/s = 128 / seconds for all 128 steps.
  Each engine does one untimed warm-up run per test and then --reps timed runs; model loading
  and context/session creation are outside the timing. llama.cpp runs with llama-bench's
  defaults otherwise: mmap, flash attention "auto", f16 KV cache, -t N for both batch and decode.
  Repeats of a cell are alternated between the engines (--passes; the engine that goes first
  flips every pass) so machine noise hits both; the table pools every timed run: mean ± sd.
Bandwidth: moerun's `bytes/token` is moerun's own count (weights read per decode step, routed
experts at top-k, plus its fp32 KV rows at the mean context); GB/s = bytes/token x tg t/s;
`% ceil` is against the read-bandwidth ceiling moerun measures at start-up for the same thread
count (the best start-up of the run). llama.cpp's GB/s uses the GGUF tensor table (weights of one step, experts at top-k, one
embedding row) plus its f16 KV rows at the mean context, against the same ceiling.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SYNTH = HERE / "make_synthetic_moe.py"

MODELS = {
    "default": {"kind": "hf", "src": "models/default"},
    "qwen3moe": {"kind": "synthetic", "preset": "qwen3moe"},
    "deepseek2": {"kind": "synthetic", "preset": "deepseek2"},
}
DTYPES = ("bf16", "q8")
N_PROMPT, N_GEN = 512, 128


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# safetensors (read by hand: header length, JSON header, raw data) and bf16 helpers

def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return hdr, np.memmap(path, dtype=np.uint8, mode="r"), 8 + n


def bf16_to_f32(bits):
    return (np.asarray(bits).astype(np.uint32) << np.uint32(16)).view(np.float32)


def permute_rope_rows(w, n_head):
    """HF's half-split rotary row order -> llama.cpp's interleaved pairs, per head (the inverse of
    tools/models/import_gguf.py's unpermute): rows [h, half, pair] are read as [h, pair, half]."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------------------------
# model preparation

def llama_hf_to_gguf(model_dir, out):
    """A Llama-architecture HF directory with bf16 safetensors -> BF16 GGUF for llama.cpp."""
    import gguf
    c = json.loads((model_dir / "config.json").read_text())
    if c.get("model_type") != "llama":
        sys.exit(f"compare_llamacpp: {model_dir} is not a llama model")
    hdr, mm, base = read_safetensors(model_dir / "model.safetensors")
    H, L = c["hidden_size"], c["num_hidden_layers"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // nh

    def tensor(name):
        m = hdr[name]
        if m["dtype"] != "BF16":
            sys.exit(f"compare_llamacpp: {name} is {m['dtype']}, expected BF16")
        s, e = m["data_offsets"]
        return mm[base + s: base + e].view("<u2").reshape(m["shape"])

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(model_dir.name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    if hd != H // nh:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    if c.get("rope_scaling"):
        sys.exit("compare_llamacpp: rope_scaling is not written by this converter")
    add_bpe_tokenizer(w, model_dir, c)

    BF16 = gguf.GGMLQuantizationType.BF16
    w.add_tensor("token_embd.weight", tensor("model.embed_tokens.weight"), raw_dtype=BF16)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", bf16_to_f32(tensor(p + "input_layernorm.weight")))
        for hf, gg in names.items():
            t = tensor(p + f"self_attn.{hf}.weight")
            if hf in ("q_proj", "k_proj"):
                t = np.ascontiguousarray(permute_rope_rows(np.asarray(t), nh if hf == "q_proj" else nkv))
            w.add_tensor(b + gg + ".weight", t, raw_dtype=BF16)
        w.add_tensor(b + "ffn_norm.weight", bf16_to_f32(tensor(p + "post_attention_layernorm.weight")))
        for hf, gg in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            w.add_tensor(b + gg + ".weight", tensor(p + f"mlp.{hf}.weight"), raw_dtype=BF16)
    w.add_tensor("output_norm.weight", bf16_to_f32(tensor("model.norm.weight")))
    if "lm_head.weight" in hdr:
        w.add_tensor("output.weight", tensor("lm_head.weight"), raw_dtype=BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def add_bpe_tokenizer(w, model_dir, c):
    """tokenizer.json (byte-level BPE) -> llama.cpp's gpt2 tokenizer keys. The pre-tokenizer name
    is recognised from its tokenizer.json form (the reverse of import_gguf's PRE_TOKENIZERS)."""
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    tc_path = model_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    model = tj["model"]
    if model.get("type") != "BPE":
        sys.exit("compare_llamacpp: only byte-level BPE tokenizers are converted")
    vocab = dict(model["vocab"])
    for a in tj.get("added_tokens", []):
        vocab.setdefault(a["content"], a["id"])
    V = c["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(V)]
    types = [5] * V  # UNUSED unless named below
    for tok, i in vocab.items():
        if i < V:
            tokens[i], types[i] = tok, 1  # NORMAL
    for a in tj.get("added_tokens", []):
        if a["id"] < V:
            types[a["id"]] = 3 if a.get("special") else 4  # CONTROL / USER_DEFINED
    pre = tj.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else [pre.get("type")]
    pre_name = "smollm" if kinds == ["Digits", "ByteLevel"] else "gpt2" if kinds == ["ByteLevel"] else "default"
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_name)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}

    def tok_id(key):
        v = tc.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return ids.get(v) if v is not None else None
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                     ("unk_token", w.add_unk_token_id), ("pad_token", w.add_pad_token_id)):
        i = tok_id(key)
        if i is None and key in ("bos_token", "eos_token"):
            i = c.get(key + "_id")
        if i is not None:
            add(int(i))
    w.add_add_bos_token(bool(tc.get("add_bos_token", False)))
    if tc.get("chat_template"):
        w.add_chat_template(tc["chat_template"])


def quantize_q8_python(src, out):
    """Q8_0 GGUF from a BF16/F32 GGUF with gguf.quants, using llama-quantize's choice of tensors:
    2-D+ weights whose rows are a multiple of 32 become Q8_0; norms (1-D) and the MoE router
    (ffn_gate_inp) stay as they are. Slower than llama-quantize; used only without it."""
    import gguf
    from gguf.quants import quantize
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(out), arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(key, f.contents(), vt)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    Q8 = gguf.GGMLQuantizationType.Q8_0
    BF16, F32 = gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # numpy order
        if t.tensor_type not in (BF16, F32):
            sys.exit(f"quantize: {t.name} is {t.tensor_type.name}; only BF16/F32 inputs are handled")
        data = np.asarray(t.data).view("<u2" if t.tensor_type == BF16 else "<f4").reshape(shape)
        if len(shape) < 2 or "ffn_gate_inp" in t.name or shape[-1] % 32 != 0:
            w.add_tensor(t.name, data, raw_dtype=BF16 if t.tensor_type == BF16 else None)
            continue
        rows = data.reshape(-1, shape[-1])
        f32 = bf16_to_f32 if t.tensor_type == BF16 else (lambda x: np.asarray(x, dtype=np.float32))
        q = np.concatenate([quantize(f32(rows[i:i + 8192]), Q8) for i in range(0, rows.shape[0], 8192)])
        w.add_tensor(t.name, q.reshape(shape[:-1] + [q.shape[-1]]), raw_dtype=Q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def atomic(path, make):
    """Make `path` through a temporary name so an interrupted run leaves no half-written file."""
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    make(tmp)
    tmp.rename(path)


def prepare(name, work, dtypes, tools, synthetic_layers):
    spec = MODELS[name]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "hf":
        hf = (REPO / spec["src"]).resolve()
        if not (hf / "model.safetensors").exists():
            sys.exit(f"compare_llamacpp: {hf} has no model.safetensors (scripts/setup.sh makes models/default)")
    else:
        hf = d / "hf"
        if not (hf / "model.safetensors").exists():
            extra = ["--set", f"num_hidden_layers={synthetic_layers[name]}"] if synthetic_layers.get(name) else []
            log(f"# {name}: writing the synthetic HF directory")
            atomic(hf, lambda tmp: subprocess.run(
                [sys.executable, str(SYNTH), "hf", "--preset", spec["preset"], "--out", str(tmp)] + extra, check=True))
    gg = d / "bf16.gguf"
    if not gg.exists() or gg.stat().st_mtime < (hf / "model.safetensors").stat().st_mtime:
        log(f"# {name}: writing {gg}")
        if spec["kind"] == "hf":
            atomic(gg, lambda tmp: llama_hf_to_gguf(hf, tmp))
        else:
            atomic(gg, lambda tmp: subprocess.run([sys.executable, str(SYNTH), "gguf", str(hf), str(tmp)], check=True))
    out = {"hf": hf, "bf16": gg}
    if "q8" in dtypes:
        q8 = d / "q8_0.gguf"
        if not q8.exists() or q8.stat().st_mtime < gg.stat().st_mtime:
            log(f"# {name}: writing {q8}")
            if tools.get("quantize"):
                def llama_quantize(tmp):
                    p = subprocess.run([tools["quantize"], str(gg), str(tmp), "Q8_0", str(os.cpu_count() or 1)],
                                       capture_output=True, text=True, env=tools["env"])
                    if p.returncode != 0:
                        sys.exit("llama-quantize failed:\n" + "\n".join((p.stderr or p.stdout).splitlines()[-20:]))
                atomic(q8, llama_quantize)
            else:
                atomic(q8, lambda tmp: quantize_q8_python(gg, tmp))
        out["q8"] = q8
    return out


def gguf_decode_bytes(path, context):
    """Bytes one llama.cpp decode step reads: every weight except the embedding table (one row) and
    the routed experts (top-k of them), plus the f16 KV rows at `context` cached positions."""
    import gguf
    r = gguf.GGUFReader(str(path))

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()
    arch = kv("general.architecture")
    n_exp, n_used = kv(f"{arch}.expert_count", 0) or 0, kv(f"{arch}.expert_used_count", 0) or 0
    L, nh = kv(f"{arch}.block_count"), kv(f"{arch}.attention.head_count")
    nkv = kv(f"{arch}.attention.head_count_kv", nh)
    kl = kv(f"{arch}.attention.key_length") or kv(f"{arch}.embedding_length") // nh
    vl = kv(f"{arch}.attention.value_length") or kl
    has_output = any(t.name == "output.weight" for t in r.tensors)
    total = 0.0
    for t in r.tensors:
        nb = int(t.n_bytes)
        if "_exps." in t.name:
            total += nb * n_used / n_exp
        elif t.name == "token_embd.weight" and has_output:
            total += nb / int(t.shape[1])
        else:
            total += nb
    row = kl if kv(f"{arch}.attention.kv_lora_rank") else nkv * (kl + vl)  # MLA: one latent row, no V
    return total + row * 2 * context * L


# ----------------------------------------------------------------------------------------------
# running the engines

def run_cmd(cmd, env=None, timeout=3600):
    log("$ " + " ".join(str(c) for c in cmd))
    t0 = time.time()
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        p = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout}s")
    return p, time.time() - t0


def bench_moerun(moerun, hf_dir, threads, reps, quant):
    cmd = [moerun, "bench", "-m", hf_dir, "--backend", "cpu", "-t", threads, "-p", N_PROMPT, "-n", N_GEN, "-r", reps,
           "-o", "json"]
    if quant:
        cmd += ["--quant", quant]
    p, secs = run_cmd(cmd)
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        msg = err[-1] if err else f"exit {p.returncode}"
        if quant and "--quant" in (p.stderr + p.stdout):
            return {"error": f"unsupported: this moerun has no `bench --quant {quant}` ({msg})"}
        return {"error": msg}
    rows = json.loads(p.stdout)
    out = {"wall_s": secs}
    for r in rows:
        out[r["test"]] = {"tps": r["tps"], "bytes_per_token": r.get("bytes_per_token", 0),
                          "ceiling_gbps": r.get("ceiling_gbps", 0), "model": r.get("model")}
    return out


def bench_llamabench(tools, gguf_path, threads, reps):
    cmd = [tools["bench"], "-m", gguf_path, "-t", threads, "-p", N_PROMPT, "-n", N_GEN, "-r", reps, "-o", "json"]
    p, secs = run_cmd(cmd, env=tools["env"])
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        return {"error": err[-1] if err else f"exit {p.returncode}"}
    out = {"wall_s": secs}
    for r in json.loads(p.stdout):
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        out[test] = {"tps": r["samples_ts"]}
        out["build"] = f"{r.get('build_commit', '?')} ({r.get('build_number', '?')})"
        out["flash_attn"] = r.get("flash_attn")
    return out


def bench_llamapy(tools, gguf_path, threads, reps):
    """The same measurement through llama-cpp-python's ctypes API, in a child process."""
    cmd = [sys.executable, __file__, "_llamapy", "--gguf", gguf_path, "-t", threads, "-r", reps]
    p, secs = run_cmd(cmd, env=tools["env"])
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        return {"error": err[-1] if err else f"exit {p.returncode}"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = secs
    return out


_LOG_CB = None


def quiet_llama_log(lc):
    """Silence llama.cpp's log; the ctypes callback must stay referenced while the library runs."""
    global _LOG_CB
    _LOG_CB = lc.llama_log_callback(lambda level, text, user: None)
    lc.llama_log_set(_LOG_CB, None)


def llamapy_child(a):
    """llama-bench's test_prompt / test_gen through llama_cpp's low-level API: a context per test
    with n_ctx = n_prompt + n_gen, n_batch 2048, n_ubatch 512, flash attention auto, f16 KV;
    warm-up, then timed reps, each from a cleared KV cache."""
    import random
    import llama_cpp as lc
    quiet_llama_log(lc)
    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(a.gguf.encode(), mp)
    if not model:
        sys.exit(f"llama_cpp: cannot load {a.gguf}")
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    rng = random.Random(1)
    res = {}
    for test, n_prompt, n_gen in (("pp", N_PROMPT, 0), ("tg", 0, N_GEN)):
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_prompt + n_gen, 2048, 512
        cp.n_threads = cp.n_threads_batch = a.threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        ctx = lc.llama_init_from_model(model, cp)
        mem = lc.llama_get_memory(ctx)
        samples = []
        for rep in range(-1, a.reps):
            lc.llama_memory_clear(mem, False)
            if test == "pp":
                toks = (lc.llama_token * n_prompt)(*[rng.randrange(n_vocab) for _ in range(n_prompt)])
                t0 = time.perf_counter()
                if lc.llama_decode(ctx, lc.llama_batch_get_one(toks, n_prompt)) != 0:
                    sys.exit("llama_decode failed")
                lc.llama_synchronize(ctx)
                n = n_prompt
            else:
                tok = (lc.llama_token * 1)(rng.randrange(n_vocab))
                t0 = time.perf_counter()
                for _ in range(n_gen):
                    if lc.llama_decode(ctx, lc.llama_batch_get_one(tok, 1)) != 0:
                        sys.exit("llama_decode failed")
                    lc.llama_synchronize(ctx)
                    tok[0] = rng.randrange(n_vocab)
                n = n_gen
            secs = time.perf_counter() - t0
            if rep >= 0:
                samples.append(n / secs)
        lc.llama_free(ctx)
        res[f"{test}{n_prompt or n_gen}"] = {"tps": samples}
    lc.llama_model_free(model)
    res["build"] = f"llama-cpp-python {getattr(lc, '__version__', '?')}"
    print(json.dumps(res))


def llamapy_logits_child(a):
    """Last-position logits of a fixed id sequence through llama_cpp (for --check)."""
    import llama_cpp as lc
    quiet_llama_log(lc)
    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(a.gguf.encode(), mp)
    ids = [int(x) for x in a.ids.split(",")]
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 256, 256, 256
    cp.n_threads = cp.n_threads_batch = a.threads
    ctx = lc.llama_init_from_model(model, cp)
    toks = (lc.llama_token * len(ids))(*ids)
    if lc.llama_decode(ctx, lc.llama_batch_get_one(toks, len(ids))) != 0:
        sys.exit("llama_decode failed")
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    ptr = lc.llama_get_logits_ith(ctx, -1)
    print(json.dumps([float(ptr[i]) for i in range(n_vocab)]))


def check_logits(models, files, moerun, tools, threads):
    """Same ids through both engines on the bf16 files: does llama.cpp compute what moerun does?
    (Confirms the GGUF holds the same weights in the layout llama.cpp expects.)"""
    lines = ["| model | ids | argmax moerun | argmax llama.cpp | top-5 overlap | rel. RMS diff | cosine |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in models:
        hf, gg = files[m]["hf"], files[m]["bf16"]
        vocab = json.loads((Path(hf) / "config.json").read_text())["vocab_size"]
        ids = [(i * 7919 + 13) % vocab for i in range(24)]
        p, _ = run_cmd([moerun, "logits", "-m", hf, "--ids", ",".join(map(str, ids)), "--json"])
        if p.returncode != 0:
            lines.append(f"| {m} | moerun logits failed: {(p.stderr or '').strip().splitlines()[-1:]} |")
            continue
        a = np.array(json.loads(p.stdout)[-1], dtype=np.float64)
        q, _ = run_cmd([sys.executable, __file__, "_llamapy_logits", "--gguf", gg, "-t", threads,
                        "--ids", ",".join(map(str, ids))], env=tools["env"])
        if q.returncode != 0:
            lines.append(f"| {m} | llama_cpp logits failed: {(q.stderr or '').strip().splitlines()[-1:]} |")
            continue
        b = np.array(json.loads(q.stdout.strip().splitlines()[-1]), dtype=np.float64)
        top = len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5]))
        rel = float(np.sqrt(np.mean((a - b) ** 2)) / (np.sqrt(np.mean(a ** 2)) + 1e-30))
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        lines.append(f"| {m} | {len(ids)} | {int(a.argmax())} | {int(b.argmax())} | {top}/5 | {rel:.4f} | {cos:.5f} |")
    return "\n".join(lines) + "\n"


def find_tools(a, work):
    """llama-bench / llama-quantize / the llama_cpp shared library, and the env that finds them."""
    bindir = Path(a.llama_bin) if a.llama_bin else work / "llamacpp" / "build" / "bin"
    env = dict(os.environ)
    tools = {"env": env, "bench": None, "quantize": None, "python": False}
    for key, exe in (("bench", "llama-bench"), ("quantize", "llama-quantize")):
        p = bindir / exe
        tools[key] = str(p) if p.exists() else shutil.which(exe)
    if (bindir / "libllama.so").exists():
        env["LLAMA_CPP_LIB_PATH"] = str(bindir)  # llama-cpp-python loads this build's library
        env["LD_LIBRARY_PATH"] = f"{bindir}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(bindir)
    chk = subprocess.run([sys.executable, "-c", "import llama_cpp"], env=env, capture_output=True)
    tools["python"] = chk.returncode == 0
    backend = a.llama_backend
    if backend == "auto":
        backend = "bench" if tools["bench"] else "python" if tools["python"] else None
    if a.prepare_only:
        tools["backend"] = backend
        return tools
    if backend == "bench" and not tools["bench"]:
        sys.exit("compare_llamacpp: llama-bench not found (tools/bench/build_llamacpp.sh, or --llama-bin DIR)")
    if backend == "python" and not tools["python"]:
        sys.exit("compare_llamacpp: llama_cpp (llama-cpp-python) does not import")
    if backend is None:
        sys.exit("compare_llamacpp: no llama.cpp found: run tools/bench/build_llamacpp.sh "
                 "(or pip install llama-cpp-python)")
    tools["backend"] = backend
    stamp = bindir.parent / "cpu.txt"
    if stamp.exists() and stamp.read_text() != cpu_stamp():
        log(f"# WARNING: {bindir} was built (-march=native) on another CPU; rebuild it: tools/bench/build_llamacpp.sh")
        tools["warning"] = "llama.cpp was built on another CPU (-march=native): rebuild before trusting its numbers"
    return tools


def cpu_stamp():
    """What tools/bench/build_llamacpp.sh records in build/cpu.txt: first model name + flags lines."""
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return ""
    first = next((l for l in lines if l.startswith(("model name", "flags"))), "")
    flags = next((l for l in lines if l.startswith("flags")), "")
    return "".join(x + "\n" for x in (first, flags) if x)


# ----------------------------------------------------------------------------------------------
# table

def stats(samples):
    if not samples:
        return None
    m = statistics.fmean(samples)
    return m, (statistics.stdev(samples) if len(samples) > 1 else 0.0)


def fmt(s):
    return "-" if s is None else f"{s[0]:.2f} ± {s[1]:.2f}"


def table(cells):
    # Ceiling per thread count: the best moerun measured at any start-up in the run (a start-up
    # that met a busy moment reads low; the best one is the machine's).
    best = {}
    for c in cells:
        best[c["threads"]] = max([best.get(c["threads"], 0)] + c["ceilings"])
    head = ("| model | dtype | threads | moerun pp512 | moerun tg128 | bytes/token | GB/s | % ceil "
            "| llama.cpp pp512 | llama.cpp tg128 | llama.cpp GB/s | llama.cpp % ceil | ratio pp | ratio tg |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    lines = []
    for c in cells:
        mpp, mtg = stats(c["moerun"]["pp512"]), stats(c["moerun"]["tg128"])
        lpp, ltg = stats(c["llama"]["pp512"]), stats(c["llama"]["tg128"])
        ceil = best.get(c["threads"], 0)
        bpt = c["moerun_bpt"]
        gbps = bpt * mtg[0] / 1e9 if (mtg and bpt) else None
        lg = c["llama_bpt"] * ltg[0] / 1e9 if ltg else None
        note = c.get("moerun_error")
        mcells = [fmt(mpp), fmt(mtg)] if not note else [f"n/a ({note})", "n/a"]
        row = [c["model"], c["dtype_label"], str(c["threads"])] + mcells + [
            f"{bpt / 1e6:.1f} MB" if bpt else "-",
            f"{gbps:.1f}" if gbps else "-",
            f"{100 * gbps / ceil:.0f}%" if gbps and ceil else "-",
            fmt(lpp) if not c.get("llama_error") else f"n/a ({c['llama_error']})",
            fmt(ltg),
            f"{lg:.1f}" if lg else "-",
            f"{100 * lg / ceil:.0f}%" if lg and ceil else "-",
            f"{mpp[0] / lpp[0]:.2f}" if mpp and lpp else "-",
            f"{mtg[0] / ltg[0]:.2f}" if mtg and ltg else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return head + "\n".join(lines) + "\n"


def machine_line():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def git_rev():
    p = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return p.stdout.strip() or "?"


# ----------------------------------------------------------------------------------------------

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_llamapy":
        ap = argparse.ArgumentParser()
        ap.add_argument("_llamapy")
        ap.add_argument("--gguf", required=True)
        ap.add_argument("-t", "--threads", type=int, required=True)
        ap.add_argument("-r", "--reps", type=int, required=True)
        return llamapy_child(ap.parse_args())

    if len(sys.argv) > 1 and sys.argv[1] == "_llamapy_logits":
        ap = argparse.ArgumentParser()
        ap.add_argument("_llamapy_logits")
        ap.add_argument("--gguf", required=True)
        ap.add_argument("-t", "--threads", type=int, required=True)
        ap.add_argument("--ids", required=True)
        return llamapy_logits_child(ap.parse_args())

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default,qwen3moe,deepseek2", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--dtypes", default="bf16,q8", help="comma list of: bf16, q8")
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per engine invocation (after a warm-up)")
    ap.add_argument("--passes", type=int, default=2,
                    help="invocations per engine and cell, alternated with the other engine (first one flips)")
    ap.add_argument("--out", help="also write the markdown report here")
    ap.add_argument("--json", help="write every sample and the settings here")
    ap.add_argument("--work", default="bench-models", help="where prepared models live (default ./bench-models)")
    ap.add_argument("--skip-prepare", action="store_true", help="use the prepared files as they are")
    ap.add_argument("--prepare-only", action="store_true", help="prepare the models and stop")
    ap.add_argument("--moerun", default="build-llcmp/moerun", help="moerun binary")
    ap.add_argument("--llama-bin", help="folder with llama-bench, llama-quantize, libllama.so "
                                        "(default WORK/llamacpp/build/bin, then PATH)")
    ap.add_argument("--llama-backend", choices=("auto", "bench", "python"), default="auto",
                    help="llama.cpp through the llama-bench tool or through llama-cpp-python (auto: llama-bench if found)")
    ap.add_argument("--check", action="store_true",
                    help="first compare last-position logits of both engines on the bf16 files (needs llama-cpp-python)")
    ap.add_argument("--check-only", action="store_true", help="run --check and stop")
    ap.add_argument("--synthetic-layers", default="",
                    help="override layer counts, e.g. qwen3moe=8,deepseek2=6 (when the HF dirs are written)")
    a = ap.parse_args()

    models = [m for m in a.models.split(",") if m]
    dtypes = [d for d in a.dtypes.split(",") if d]
    threads = [int(t) for t in a.threads.split(",") if t]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m}")
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d}")
    layers = {k: int(v) for k, v in (kv.split("=") for kv in a.synthetic_layers.split(",") if kv)}
    os.chdir(REPO)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tools = find_tools(a, work)
    moerun = Path(a.moerun)
    if not a.prepare_only and not moerun.exists():
        sys.exit(f"compare_llamacpp: {moerun} not found (build target moerun_cli)")

    t_start = time.time()
    files = {}
    for m in models:
        if a.skip_prepare:
            d = work / m
            hf = (REPO / MODELS[m]["src"]) if MODELS[m]["kind"] == "hf" else d / "hf"
            files[m] = {"hf": hf, "bf16": d / "bf16.gguf", "q8": d / "q8_0.gguf"}
            for k in ["hf", "bf16"] + (["q8"] if "q8" in dtypes else []):
                if not files[m][k].exists():
                    sys.exit(f"compare_llamacpp: --skip-prepare but {files[m][k]} is missing")
        else:
            files[m] = prepare(m, work, dtypes, tools, layers)
    log(f"# prepared in {time.time() - t_start:.0f}s")
    if a.prepare_only:
        return 0

    check = ""
    if a.check or a.check_only:
        if not tools["python"]:
            sys.exit("compare_llamacpp: --check needs llama-cpp-python (tools/bench/build_llamacpp.sh installs it)")
        check = check_logits(models, files, moerun, tools, max(threads))
        log(check)
        if a.check_only:
            print(check)
            return 0

    llama_fn = bench_llamabench if tools["backend"] == "bench" else bench_llamapy
    cells, raw, flip = [], [], 0
    llama_build = "?"
    for m in models:
        for d in dtypes:
            gg = files[m]["bf16" if d == "bf16" else "q8"]
            llama_bpt = gguf_decode_bytes(gg, N_GEN / 2)
            for t in threads:
                cell = {"model": m, "dtype": d, "dtype_label": "bf16" if d == "bf16" else "q8 / Q8_0",
                        "threads": t, "moerun": {"pp512": [], "tg128": []}, "llama": {"pp512": [], "tg128": []},
                        "ceilings": [], "moerun_bpt": 0, "llama_bpt": llama_bpt}
                for p in range(a.passes):
                    order = ("moerun", "llama") if (flip + p) % 2 == 0 else ("llama", "moerun")
                    for eng in order:
                        if eng == "moerun":
                            if cell.get("moerun_error"):
                                continue
                            r = bench_moerun(moerun, files[m]["hf"], t, a.reps, "q8" if d == "q8" else None)
                            if "error" in r:
                                cell["moerun_error"] = r["error"]
                                log(f"# moerun: {r['error']}")
                            else:
                                for k in ("pp512", "tg128"):
                                    cell["moerun"][k] += r[k]["tps"]
                                cell["moerun_bpt"] = r["tg128"]["bytes_per_token"]
                                cell["ceilings"].append(r["tg128"]["ceiling_gbps"])
                        else:
                            if cell.get("llama_error"):
                                continue
                            r = llama_fn(tools, gg, t, a.reps)
                            if "error" in r:
                                cell["llama_error"] = r["error"]
                                log(f"# llama.cpp: {r['error']}")
                            else:
                                for k in ("pp512", "tg128"):
                                    cell["llama"][k] += r[k]["tps"]
                                llama_build = r.get("build", llama_build)
                        raw.append({"model": m, "dtype": d, "threads": t, "pass": p, "engine": eng, "result": r})
                flip += 1
                cells.append(cell)
                log("# " + table([cell]).splitlines()[-1])

    secs = time.time() - t_start
    report = (
        f"# moerun vs llama.cpp, CPU\n\n"
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {machine_line()}\n"
        f"- moerun: {moerun} at {git_rev()}; llama.cpp: {tools['backend'] == 'bench' and 'llama-bench' or 'llama-cpp-python'}"
        f" {llama_build}\n"
        f"- each cell: {a.passes} invocation(s) per engine, alternated, × {a.reps} timed reps after a warm-up; "
        f"t/s = mean ± sd of all timed reps\n"
        f"- pp512 = one forward over 512 tokens from an empty cache; tg128 = 128 one-token decode steps from an empty "
        f"cache; ratio = moerun / llama.cpp (> 1: moerun faster)\n"
        f"- bytes/token: moerun's count (weights + fp32 KV at mean context); llama.cpp GB/s: GGUF weights + f16 KV; "
        f"% ceil: of the read bandwidth moerun measured for that thread count (best start-up of the run)\n"
        + (f"- **{tools['warning']}**\n" if tools.get("warning") else "")
        + f"- command: {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}; total {secs / 60:.1f} min\n\n"
        + table(cells)
        + (f"\nSame-weights check (last-position logits of 24 fixed ids, bf16 files):\n\n{check}" if check else ""))
    print(report)
    if a.out:
        Path(a.out).write_text(report)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "cells": cells, "raw": raw}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
