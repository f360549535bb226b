#!/usr/bin/env python3
"""Component goldens for the tokenizer tests: small tokenizer.json files, one per normalizer,
pre-tokenizer, model option, added-token option, post-processor and decoder, each with the ids and
decodings that Hugging Face `tokenizers` gives for a set of texts and for random id sequences.

Writes tests/data/tokenizers/components/cases.json:

  [{"name": ..., "tokenizer": {tokenizer.json as an object},
    "texts":   [{"text", "ids", "ids_no_special", "ids_plain", "decoded", "decoded_skip"}],
    "decodes": [{"ids", "decoded", "decoded_skip"}]}, ...]

  ids             encode(text, add_special_tokens=True)
  ids_no_special  encode(text, add_special_tokens=False)
  ids_plain       encode(text, add_special_tokens=False) with encode_special_tokens=True
                  (special tokens written in the text are not recognised)
  decoded         decode(ids, skip_special_tokens=False)
  decoded_skip    decode(ids, skip_special_tokens=True)

Each model is a small BPE trained here on the corpus (deterministic), then edited where a case needs an
option the trainer does not set. Run by developers only; the C++ tests read the committed output:

    pip install tokenizers
    python3 tools/golden/make_tokenizer_goldens.py
"""

import json
import random
import re
import zlib
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "tokenizers"
OUT = DATA / "components" / "cases.json"

CORPUS = [json.loads(line)["text"] for line in (DATA / "corpus.jsonl").read_text(encoding="utf-8").split("\n") if line]
TRAIN = [t for t in CORPUS if len(t) < 400] * 2
# Character-level models learn only the 100 most common characters (ties broken by code point), so
# that most of their vocabulary goes to merges and the rest of the text exercises unk handling. The
# trainer's own limit_alphabet breaks ties in hash order, which would make this script's output vary.
_counts = {}
for _t in TRAIN:
    for _c in _t:
        _counts[_c] = _counts.get(_c, 0) + 1
ALPHABET = set(sorted(_counts, key=lambda c: (-_counts[c], ord(c)))[:100])
TRAIN_SMALL_ALPHABET = ["".join(c if c in ALPHABET else " " for c in t) for t in TRAIN]

# Texts every case encodes, plus the case's own.
COMMON_TEXTS = [
    "",
    " ",
    "Hello world",
    "  Hello   world  ",
    "The quick brown fox, don't STOP! 1234567",
    "line one\nline two\r\n\ttab",
    "naïve café Ｈｅｌｌｏ ﬁ İSTANBUL ΣΑΣ ①",
    "日本語のテキスト 中文 한국어",
    "emoji 👍🏽 👨‍👩‍👧 🇩🇪",
    "e\u0301 \u00e9 A\u030a \u212b",
    "x\u2581y \u2581lead",
    "a-b--c---d",
    "zzzq qzzz",
]


def train_bpe(vocab_size, pre_tokenizer, normalizer=None, unk="[UNK]", alphabet=None, **trainer_options):
    """A BPE trained on the corpus; without an explicit alphabet, on its 100 most common characters."""
    tok = Tokenizer(models.BPE(unk_token=unk))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=[unk] if unk else [],
        initial_alphabet=alphabet or [],
        **trainer_options,
    )
    tok.train_from_iterator(TRAIN if alphabet else TRAIN_SMALL_ALPHABET, trainer)
    return renumber(json.loads(tok.to_str()))


def renumber(tj):
    """Deterministic ids (the trainer numbers its alphabet in hash order): special tokens, then the
    other tokens no merge produces, sorted, then merge results in merge order."""
    model = tj["model"]
    prefix = model.get("continuing_subword_prefix") or ""
    merged = []
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merged.append(a + b[len(prefix):])
    specials = [t["content"] for t in tj["added_tokens"]]
    rest = sorted(t for t in model["vocab"] if t not in set(merged) and t not in specials)
    order = specials + rest + [t for t in dict.fromkeys(merged) if t not in specials]
    assert set(order) == set(model["vocab"]), "renumbering lost tokens"
    model["vocab"] = {t: i for i, t in enumerate(order)}
    for t in tj["added_tokens"]:
        t["id"] = model["vocab"][t["content"]]
    return tj


def train_affixed_bpe(num_merges, prefix="##", suffix="</w>"):
    """A BPE with continuing_subword_prefix and end_of_word_suffix, trained here (most frequent pair,
    ties to the smallest pair): tokenizers' trainer numbers such alphabets in hash order."""
    words = {}
    for t in TRAIN_SMALL_ALPHABET:
        for w in re.findall(r"\w+|[^\w\s]+", t):
            symbols = [c if i == 0 else prefix + c for i, c in enumerate(w)]
            symbols[-1] += suffix
            words[tuple(symbols)] = words.get(tuple(symbols), 0) + 1
    vocab = {s for w in words for s in w}
    merges = []
    for _ in range(num_merges):
        pairs = {}
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merged = a + b[len(prefix):]
        merges.append(f"{a} {b}")
        vocab.add(merged)
        new_words = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    tj = json.loads(Tokenizer(models.BPE()).to_str())
    tj["pre_tokenizer"] = component(pre_tokenizers.Whitespace())
    tj["added_tokens"] = [{"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False, "rstrip": False,
                           "normalized": False, "special": True}]
    tj["model"].update({"unk_token": "[UNK]", "continuing_subword_prefix": prefix, "end_of_word_suffix": suffix,
                        "vocab": {t: i for i, t in enumerate(["[UNK]"] + sorted(vocab))}, "merges": merges})
    return renumber(tj)


def byte_level_base(vocab_size=500):
    return train_bpe(
        vocab_size,
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        unk=None,
        alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )


def char_base(vocab_size=300, pre=None, normalizer=None, **options):
    return train_bpe(vocab_size, pre or pre_tokenizers.Whitespace(), normalizer=normalizer, **options)


def component(obj):
    """A tokenizers component as its tokenizer.json object."""
    holder = Tokenizer(models.BPE())
    if isinstance(obj, normalizers.Normalizer):
        holder.normalizer = obj
        return json.loads(holder.to_str())["normalizer"]
    if isinstance(obj, pre_tokenizers.PreTokenizer):
        holder.pre_tokenizer = obj
        return json.loads(holder.to_str())["pre_tokenizer"]
    if isinstance(obj, decoders.Decoder):
        holder.decoder = obj
        return json.loads(holder.to_str())["decoder"]
    if isinstance(obj, processors.PostProcessor):
        holder.post_processor = obj
        return json.loads(holder.to_str())["post_processor"]
    raise TypeError(obj)


def add_vocab(tj, tokens):
    vocab = tj["model"]["vocab"]
    for t in tokens:
        if t not in vocab:
            vocab[t] = max(vocab.values()) + 1


def add_tokens(tj, tokens):
    """tokens: list of dicts with content and options; ids are assigned after the vocabulary."""
    vocab = tj["model"]["vocab"]
    next_id = max([max(vocab.values())] + [t["id"] for t in tj["added_tokens"]]) + 1
    for t in tokens:
        entry = {
            "id": vocab.get(t["content"], next_id),
            "content": t["content"],
            "single_word": t.get("single_word", False),
            "lstrip": t.get("lstrip", False),
            "rstrip": t.get("rstrip", False),
            "normalized": t.get("normalized", not t.get("special", False)),
            "special": t.get("special", False),
        }
        if entry["id"] == next_id:
            next_id += 1
        tj["added_tokens"].append(entry)


def make_case(name, tj, texts=(), random_decodes=6, compact_merges=False):
    if compact_merges:  # the ["a", "b"] merge format instead of "a b"
        tj["model"]["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in tj["model"]["merges"]]
    text = json.dumps(tj, ensure_ascii=False)
    tok = Tokenizer.from_str(text)
    plain = Tokenizer.from_str(text)
    plain.encode_special_tokens = True
    out = {"name": name, "tokenizer": tj, "texts": [], "decodes": []}
    for t in list(COMMON_TEXTS) + list(texts):
        ids = tok.encode(t).ids
        out["texts"].append(
            {
                "text": t,
                "ids": ids,
                "ids_no_special": tok.encode(t, add_special_tokens=False).ids,
                "ids_plain": plain.encode(t, add_special_tokens=False).ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            }
        )
    rng = random.Random(zlib.crc32(name.encode()))
    size = tok.get_vocab_size(with_added_tokens=True)
    byte_ids = sorted(i for tkn, i in tok.get_vocab(with_added_tokens=True).items() if tkn.startswith("<0x"))
    for k in range(random_decodes):
        n = rng.randint(1, 14)
        pool = byte_ids if (byte_ids and k % 2 == 0) else None
        ids = [rng.choice(pool) if pool and rng.random() < 0.6 else rng.randrange(size) for _ in range(n)]
        out["decodes"].append(
            {
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            }
        )
    return out


def cases():
    out = []

    # --- byte-level BPE (GPT-2 style) and its options ------------------------------------------
    bl = byte_level_base()
    tj = json.loads(json.dumps(bl))
    tj["pre_tokenizer"] = component(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True))
    tj["decoder"] = component(decoders.ByteLevel())
    tj["post_processor"] = component(processors.ByteLevel(trim_offsets=False))
    add_tokens(tj, [{"content": "<|endoftext|>", "special": True}, {"content": "<|im_start|>", "special": True},
                    {"content": "<tool>", "normalized": False}])
    out.append(make_case("byte_level_prefix_space", tj,
                         ["<|im_start|>user\nHi<|endoftext|>", "a<tool>b <tool> c", "<|im_start|><|im_start|>"]))

    tj = json.loads(json.dumps(bl))
    tj["pre_tokenizer"] = component(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tj["decoder"] = component(decoders.ByteLevel())
    out.append(make_case("byte_level_plain", tj, compact_merges=True))

    # Llama-3 style: a Split regex with (?i:...) and \p classes, then ByteLevel without its regex;
    # "zzzq" is a whole-word vocabulary entry that only ignore_merges reaches.
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
    for ignore in (True, False):
        tj = json.loads(json.dumps(bl))
        tj["pre_tokenizer"] = component(pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(llama3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
        tj["decoder"] = component(decoders.ByteLevel())
        tj["model"]["ignore_merges"] = ignore
        add_vocab(tj, ["zzzq", "Ġqzzz"])
        add_tokens(tj, [{"content": "<|begin_of_text|>", "special": True}])
        tj["post_processor"] = component(processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tj["added_tokens"][-1]["id"])]))
        out.append(make_case(f"llama3_ignore_merges_{str(ignore).lower()}", tj,
                             ["I'M HERE, YOU'LL SEE", "zzzq", " qzzz", "12345678 x"]))

    # --- Split: every behaviour, inverted or not, String and Regex patterns -------------------
    cb = char_base()
    for pattern_name, pattern in (("string", "-"), ("regex", tokenizers.Regex(r"\s+|\d+"))):
        for behavior in ("removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"):
            for invert in (False, True):
                tj = json.loads(json.dumps(cb))
                tj["pre_tokenizer"] = component(pre_tokenizers.Split(pattern, behavior=behavior, invert=invert))
                out.append(make_case(f"split_{pattern_name}_{behavior}{'_invert' if invert else ''}", tj,
                                     ["the-final--countdown", "-lead and trail-", "ab 12 cd  345ef", "--"],
                                     random_decodes=0))

    # --- the other pre-tokenizers ----------------------------------------------------------------
    for name, pre in (
        ("digits_individual", pre_tokenizers.Digits(individual_digits=True)),
        ("digits_contiguous", pre_tokenizers.Digits(individual_digits=False)),
        ("whitespace", pre_tokenizers.Whitespace()),
        ("whitespace_split", pre_tokenizers.WhitespaceSplit()),
        ("punctuation_isolated", pre_tokenizers.Punctuation("isolated")),
        ("punctuation_removed", pre_tokenizers.Punctuation("removed")),
        ("punctuation_merged_with_previous", pre_tokenizers.Punctuation("merged_with_previous")),
        ("punctuation_merged_with_next", pre_tokenizers.Punctuation("merged_with_next")),
        ("punctuation_contiguous", pre_tokenizers.Punctuation("contiguous")),
        ("bert_pre_tokenizer", pre_tokenizers.BertPreTokenizer()),
        ("char_delimiter", pre_tokenizers.CharDelimiterSplit("o")),
        ("sequence_pre", pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(True),
                                                 pre_tokenizers.Punctuation()])),
    ):
        tj = json.loads(json.dumps(cb))
        tj["pre_tokenizer"] = component(pre)
        out.append(make_case(name, tj, ["x1y22z333 ٣٤ Ⅻ ½", "wait... what?!? (yes) ¿qué? «hi»", "foo  bar\u3000baz\u00a0q"],
                             random_decodes=0))

    # --- Metaspace: prepend schemes, split on or off, around added tokens -----------------------
    for scheme in ("always", "first", "never"):
        for split in (True, False):
            base = train_bpe(300, pre_tokenizers.Metaspace(prepend_scheme=scheme, split=split))
            base["decoder"] = component(decoders.Metaspace(prepend_scheme=scheme, split=split))
            add_tokens(base, [{"content": "<s>", "special": True}, {"content": "<sep>"}])
            out.append(make_case(f"metaspace_{scheme}{'_split' if split else ''}", base,
                                 ["<s>Hello world", "Hello<sep>world <sep> again", " x", "<s> <s>"]))

    # --- normalizers ------------------------------------------------------------------------------
    for name, norm in (
        ("nfc", normalizers.NFC()),
        ("nfd", normalizers.NFD()),
        ("nfkc", normalizers.NFKC()),
        ("nfkd", normalizers.NFKD()),
        ("lowercase", normalizers.Lowercase()),
        ("strip_both", normalizers.Strip()),
        ("strip_left", normalizers.Strip(left=True, right=False)),
        ("strip_right", normalizers.Strip(left=False, right=True)),
        ("strip_accents", normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])),
        ("prepend", normalizers.Prepend("\u2581")),
        ("replace_string", normalizers.Replace(" ", "\u2581")),
        ("replace_regex", normalizers.Replace(tokenizers.Regex(r"\s+"), "_")),
        ("sequence_norm", normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                                normalizers.Replace("o", "0")])),
    ):
        tj = char_base(normalizer=norm, pre=pre_tokenizers.WhitespaceSplit())
        add_tokens(tj, [{"content": "Yes", "normalized": True}, {"content": "RAW", "normalized": False}])
        out.append(make_case(f"normalizer_{name}", tj, ["Yes yes YES RAW raw", "\tpadded  \u3000"]))

    # --- BPE model options -------------------------------------------------------------------------
    tj = train_affixed_bpe(150)
    out.append(make_case("bpe_prefix_suffix", tj, ["unbelievable things", "a"]))

    for fuse in (True, False):
        tj = char_base(vocab_size=250)
        tj["model"]["fuse_unk"] = fuse
        out.append(make_case(f"bpe_unk_fuse_{str(fuse).lower()}", tj, ["a☃☃b ☃x☃☃☃", "☃"]))

    tj = char_base(vocab_size=250)
    tj["model"]["unk_token"] = None
    out.append(make_case("bpe_no_unk_drops", tj, ["a☃☃b ☃x☃☃☃", "☃"]))

    # Mistral-like: Prepend/Replace normalizer, no pre-tokenizer, byte fallback, SentencePiece decoder chain.
    tj = train_bpe(400, pre_tokenizers.Metaspace(prepend_scheme="first", split=False), unk="<unk>")
    add_vocab(tj, [f"<0x{b:02X}>" for b in range(256)])
    tj["model"]["byte_fallback"] = True
    tj["model"]["fuse_unk"] = True
    tj["pre_tokenizer"] = None
    tj["normalizer"] = component(normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]))
    tj["decoder"] = component(decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                                 decoders.Fuse(), decoders.Strip(" ", 1, 0)]))
    add_tokens(tj, [{"content": "<unk>", "special": True}, {"content": "<s>", "special": True},
                    {"content": "</s>", "special": True}])
    vocab = {t["content"]: t["id"] for t in tj["added_tokens"]}
    tj["post_processor"] = component(processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]))
    out.append(make_case("byte_fallback_sentencepiece_style", tj, ["<s>Hello</s> <s> x", "\u0000\u0001\u007f"],
                         random_decodes=12))

    # --- added tokens: single_word, lstrip, rstrip, normalized, special ----------------------------
    tj = char_base(normalizer=normalizers.Lowercase(), pre=pre_tokenizers.WhitespaceSplit())
    add_tokens(tj, [
        {"content": "<mask>", "single_word": True, "lstrip": True, "rstrip": True},
        {"content": "[CLS]", "special": True},
        {"content": "[SEP]", "special": True, "lstrip": True},
        {"content": "ony", "single_word": True},
        {"content": "Yes", "normalized": True},
        {"content": "RAW", "normalized": False},
        {"content": "<eot>", "special": True, "rstrip": True},
    ])
    out.append(make_case("added_token_options", tj, [
        "[CLS] My name is Anthony [SEP]",
        "<mask> My name <mask> A<mask> <mask>ony <mask>",
        "Hi <mask> there\t<mask>\t<mask>\u2000",
        "pony ony ony. tony",
        "YES yes Yes RAW raw Raw",
        "x   [SEP] y<eot>   z <eot>",
        "[CLS][CLS][SEP]",
    ]))

    # --- decoders ----------------------------------------------------------------------------------
    meta = train_bpe(300, pre_tokenizers.Metaspace())
    for name, dec in (
        ("decoder_none", None),
        # Strip with stop > 0 is left out: tokenizers panics when a token is shorter than `stop`.
        ("decoder_strip_per_token", decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Strip(" ", 2, 0)])),
        ("decoder_fuse_strip", decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(),
                                                  decoders.Strip(" ", 2, 0)])),
        ("decoder_replace_multichar", decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(),
                                                         decoders.Replace("he", "HE")])),
        ("decoder_metaspace_never", decoders.Metaspace(prepend_scheme="never")),
        ("decoder_metaspace_always", decoders.Metaspace(prepend_scheme="always")),
        ("decoder_byte_fallback_only", decoders.ByteFallback()),
    ):
        tj = json.loads(json.dumps(meta))
        tj["decoder"] = component(dec) if dec is not None else None
        if name == "decoder_byte_fallback_only":
            add_vocab(tj, [f"<0x{b:02X}>" for b in range(256)])
        out.append(make_case(name, tj, ["he said hello", "  two  spaces  "], random_decodes=10))

    # --- post-processors -----------------------------------------------------------------------------
    def with_specials(names):
        tj = json.loads(json.dumps(cb))
        add_tokens(tj, [{"content": n, "special": True} for n in names])
        return tj, {t["content"]: t["id"] for t in tj["added_tokens"]}

    tj, ids = with_specials(["<s>", "</s>"])
    tj["post_processor"] = component(processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])]))
    out.append(make_case("post_template_bos_eos", tj))

    tj, ids = with_specials(["<s>", "</s>"])
    tj["post_processor"] = component(processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"])))
    out.append(make_case("post_roberta", tj))

    tj, ids = with_specials(["[CLS]", "[SEP]"])
    tj["post_processor"] = component(processors.BertProcessing(("[SEP]", ids["[SEP]"]), ("[CLS]", ids["[CLS]"])))
    out.append(make_case("post_bert", tj))

    tj, ids = with_specials(["<bos>"])
    tj["post_processor"] = component(processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", ids["<bos>"])])]))
    out.append(make_case("post_sequence", tj))
    return out


def main():
    all_cases = cases()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"tokenizers_version": tokenizers.__version__, "cases": all_cases},
                              ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {len(all_cases)} cases to {OUT.relative_to(ROOT)} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
