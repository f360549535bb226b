#!/usr/bin/env python3
"""The speculative-decoding measurement (docs/performance.md): `moerun bench --spec KIND
--spec-prompt FILE` for every prompt of tools/bench/prompts/ and every draft source, each run pairing
the speculating decode with the plain one on the same prompt, alternated per repetition. Prints one
markdown table: prompt, its class (copy: the answer copies much of the prompt; chat: a plain
question), tokens, plain and speculating gen t/s (mean +- sd), the ratio, drafted/accepted, the
acceptance rate and the accepted drafts per decode forward.

    python3 tools/bench/spec_protocol.py --moerun build/moerun [--model DIR] [--draft-model DIR] \
        [-t 2] [-r 3] [-n 128] [--spec-max 8]

Sources: ngram always; draft when --draft-model is given (tools/models/make_draft.py makes an
early-exit draft of a llama checkpoint).
"""
import argparse
import json
import pathlib
import subprocess
import sys

PROMPTS = pathlib.Path(__file__).resolve().parent / "prompts"


def bench(args, prompt, source):
    cmd = [args.moerun, "bench", "--spec-prompt", str(prompt), "-n", str(args.n), "-r", str(args.r), "-p", "0",
           "-t", str(args.t), "--spec-max", str(args.spec_max), "-o", "json"]
    if args.model:
        cmd += ["-m", args.model]
    cmd += ["--spec", source] if source != "draft" else ["--spec", "draft", "--draft-model", args.draft_model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    spec = next(r for r in rows if r["spec"] not in ("", "none"))
    plain = next(r for r in rows if r["spec"] == "none")
    return spec, plain


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moerun", default="build/moerun")
    ap.add_argument("--model", default="")
    ap.add_argument("--draft-model", default="")
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--spec-max", type=int, default=8)
    args = ap.parse_args()
    sources = ["ngram"] + (["draft"] if args.draft_model else [])
    print("| prompt | class | source | tokens | plain t/s | spec t/s | ratio | drafted / accepted | acceptance | accepted / forward |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for prompt in sorted(PROMPTS.glob("*.txt")):
        kind = "chat" if prompt.stem.startswith("chat") else "copy"
        for source in sources:
            spec, plain = bench(args, prompt, source)
            ratio = spec["tps_mean"] / plain["tps_mean"]
            print(f"| {prompt.stem} | {kind} | {source} | {spec['tokens']} | {plain['tps_mean']:.1f} ± {plain['tps_sd']:.1f} | "
                  f"{spec['tps_mean']:.1f} ± {spec['tps_sd']:.1f} | {ratio:.2f} | {spec['drafted_tokens']} / {spec['accepted_tokens']} | "
                  f"{100 * spec['acceptance_rate']:.0f}% | {spec['accepted_per_step']:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
