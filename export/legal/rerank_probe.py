#!/usr/bin/env python3
"""Probe: does a cross-encoder reranker lift R05 F2? (Research, not part of models/.)

The runtime's best points reach R05 macro F2 0.670; the issue asks for 0.70. This probe
trains the strongest reranker this machine can: all-MiniLM-L6-v2 turned into a
cross-encoder (`[CLS] query [SEP] article [SEP]`, a linear head on [CLS], every layer
trained), listwise softmax over the gold article and 7 hard negatives drawn from the
runtime's own hybrid top 20. It reranks the hybrid top 10 by
`hybrid + alpha * 0.05 * z(cross-encoder score)` and cuts with the score-gap rule.

Training years H18..R03; R04 is held out to choose alpha and the gap; R05 is the test.
The R05 "oracle" row tunes on R05 itself: an upper bound, not a result.

Input: the runtime's per-query signals,
    edgerun bench legal --thread-counts 1 --signals-out bench-results/legal-signals.jsonl
Usage: python export/legal/rerank_probe.py [--epochs 3] [--signals FILE]
CPU only; about 21 minutes per epoch on 2 cores (EPYC, 2026-11-27).
"""
import argparse
import json
import random
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

import common
import elastic

CANDIDATES = 10
HARD_NEGATIVE_POOL = 20
HOLDOUT_YEAR = "R04"
GAPS = [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15]
ALPHAS = [0, 0.5, 1, 2, 3, 5, 10, 100]


def load_signals(path, settings):
    """Per query (id -> hybrid scores over all articles, exactly as the runtime combines them)."""
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    ranges = header["sentence_ranges"]
    w, l, t = settings["bm25_weight"], settings["sentence_weight"], settings["temperature"]
    hybrid = {}
    for line in lines[1:]:
        q = json.loads(line)
        bm25 = np.array(q["bm25"], np.float32)
        lexical = bm25 / bm25.max() if bm25.max() > 0 else bm25
        article = np.array(q["article_cosine"], np.float32)
        sentence = np.array(q["sentence_cosine"], np.float32)
        attentive = np.zeros_like(article)
        for a, (s, e) in enumerate(ranges):
            if e > s:
                x = sentence[s:e]
                weights = np.exp((x - x.max()) / t)
                attentive[a] = (x * weights).sum() / weights.sum()
        hybrid[q["id"]] = w * lexical + (1 - w) * ((1 - l) * article + l * attentive)
    return header["articles"], hybrid


class CrossEncoder(torch.nn.Module):
    """L6 over a (query, article) pair; the word and position tables stay frozen."""

    def __init__(self, weights):
        super().__init__()
        self.frozen = {k: torch.from_numpy(np.array(weights[k], np.float32)) for k in ("emb.word", "emb.pos")}
        param = lambda k: torch.nn.Parameter(torch.from_numpy(np.array(weights[k], np.float32)))
        self.token_type, self.ln_w, self.ln_b = param("emb.type"), param("emb.ln_w"), param("emb.ln_b")
        self.layers = torch.nn.ModuleList([elastic.TrainableLayer(weights, i) for i in range(6)])
        self.head = torch.nn.Linear(common.HIDDEN, 1)

    def forward(self, ids, types, mask):
        x = self.frozen["emb.word"][ids] + self.frozen["emb.pos"][: ids.shape[1]][None] + self.token_type[types]
        x = F.layer_norm(x, (common.HIDDEN,), self.ln_w, self.ln_b, common.LN_EPS)
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(x[:, 0]).squeeze(-1)


def pair_batch(tok, pairs):
    encodings = tok.encode_batch(pairs)
    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(pairs), width, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros(len(pairs), width)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n], types[row, :n], mask[row, :n] = torch.tensor(e.ids), torch.tensor(e.type_ids), 1.0
    return ids, types, mask


def reranked_f2(queries, candidates, hybrid, ce_scores, article_ids, alpha, gap):
    total = 0.0
    for q in queries:
        cand = candidates[q["id"]]
        ce = ce_scores[q["id"]]
        score = hybrid[q["id"]][cand] + alpha * 0.05 * (ce - ce.mean()) / (ce.std() + 1e-6)
        order = np.argsort(-score, kind="stable")
        n = 1
        for j in order[1:3]:
            if score[order[0]] - score[j] > gap:
                break
            n += 1
        total += common.f2_of([article_ids[cand[j]] for j in order[:n]], q["gold"])[2]
    return total / len(queries)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--signals", type=Path, default=common.ROOT / "bench-results" / "legal-signals.jsonl")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N queries only (smoke test)")
    ap.add_argument("--out", type=Path, default=common.ROOT / "bench-results" / "legal-rerank-probe.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)

    settings = tomllib.loads((common.OUT / "manifest.toml").read_text())["settings"]
    article_ids, hybrid = load_signals(args.signals, settings)
    articles = common.articles()
    assert [a["id"] for a in articles] == article_ids, "signals were written for another corpus"
    article_text = [elastic.article_text(a) for a in articles]
    index = {a: i for i, a in enumerate(article_ids)}
    train = common.queries([y for y in common.TRAIN_YEARS if y != HOLDOUT_YEAR])
    holdout, test = common.queries([HOLDOUT_YEAR]), common.queries([common.TEST_YEAR])
    if args.limit:
        train = train[: args.limit]
    pool = {q["id"]: np.argsort(-hybrid[q["id"]], kind="stable")[:HARD_NEGATIVE_POOL]
            for q in train + holdout + test}
    candidates = {k: v[:CANDIDATES] for k, v in pool.items()}

    tok = Tokenizer.from_str(common.tokenizer_json())
    tok.enable_truncation(args.max_tokens, strategy="only_second")
    model = CrossEncoder(common.load_weights("l6"))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    group = args.negatives + 1
    per_step = max(1, 32 // group)

    @torch.no_grad()
    def score(queries):
        model.eval()
        pairs = [(q["text"], article_text[c]) for q in queries for c in candidates[q["id"]]]
        out = np.concatenate([model(*pair_batch(tok, pairs[s:s + 64])).numpy() for s in range(0, len(pairs), 64)])
        model.train()
        return {q["id"]: out[i * CANDIDATES:(i + 1) * CANDIDATES] for i, q in enumerate(queries)}

    report = {"signals": str(args.signals), "settings": settings, "args": {k: str(v) for k, v in vars(args).items()},
              "epochs": []}
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        order = train[:]
        rng.shuffle(order)
        losses = []
        for s in range(0, len(order) - per_step + 1, per_step):
            pairs = []
            for q in order[s:s + per_step]:
                gold = [index[g] for g in q["gold"] if g in index]
                negatives = [c for c in pool[q["id"]] if c not in gold]
                for c in [rng.choice(gold)] + rng.sample(negatives, args.negatives):
                    pairs.append((q["text"], article_text[c]))
            logits = model(*pair_batch(tok, pairs)).view(-1, group)
            loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        train_seconds = time.time() - t0
        ce = {**score(holdout), **score(test)}
        grid = [(a, g) for a in ALPHAS for g in GAPS]
        chosen = max(grid, key=lambda ag: reranked_f2(holdout, candidates, hybrid, ce, article_ids, *ag))
        oracle = max(grid, key=lambda ag: reranked_f2(test, candidates, hybrid, ce, article_ids, *ag))
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "train_seconds": round(train_seconds),
            "ce_only_r05_r1": float(np.mean([article_ids[candidates[q["id"]][np.argmax(ce[q["id"]])]] in q["gold"]
                                             for q in test])),
            "hybrid_r05_f2": reranked_f2(test, candidates, hybrid, ce, article_ids, 0, chosen[1]),
            "alpha_gap_tuned_on_holdout": chosen,
            "holdout_f2": reranked_f2(holdout, candidates, hybrid, ce, article_ids, *chosen),
            "r05_f2": reranked_f2(test, candidates, hybrid, ce, article_ids, *chosen),
            "r05_oracle_alpha_gap": oracle,
            "r05_oracle_f2": reranked_f2(test, candidates, hybrid, ce, article_ids, *oracle),
        }
        report["epochs"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out, report)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
