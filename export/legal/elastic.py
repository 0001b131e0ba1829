"""The elastic encoders: SN-Net stitches between the anchors, and CoLa chains of L6 layers.

Queries change their path; articles are always indexed with the full L6 anchor (or the L3
anchor for the L3 point), so a cheaper point only makes the *query* side cheaper, which is
what an edge device pays per request.

SN-Net (Pan et al., CVPR 2023): front layers of the small anchor, a per-token Linear stitch,
back layers of the large anchor. Stitch positions follow the paper's sliding window: front
depth m of L3 is paired with the L6 depths around the proportional one (2m - 1, 2m, 2m + 1).
Each stitch starts from least squares on article-token activations, A = pinv([X, 1]) Y, then
trains briefly with one randomly drawn configuration per batch (as SN-Net samples one
stitch per iteration): contrastive query -> gold article over the whole (fixed) article
index, plus distillation to the full L6 query embedding. The anchors stay frozen, so the
anchor points keep their exact pretrained behaviour.

CoLa (chain-of-layers): Monte Carlo Tree Search over edits of L6's layer chain (skip or
repeat a contiguous block of up to 4 layers), reward = share of training queries whose gold
article ranks first, minus a penalty on chain length; the best chain per depth is kept.
"""
import math
import random

import numpy as np
import torch
import torch.nn.functional as F

import common

torch.set_num_threads(max(1, torch.get_num_threads()))

STITCHES = [(m, n) for m in (1, 2) for n in (2 * m - 1, 2 * m, 2 * m + 1)]


def stitch_name(m, n):
    return f"l3.{m}-l6.{n}"


class Encoders:
    """Both anchors in torch, with the weights exactly as the shipped blocks compute."""

    def __init__(self, l3, l6, tok):
        self.tok = tok
        self.l3_embed, self.l3_layers = common.torch_modules(l3)
        self.l6_embed, self.l6_layers = common.torch_modules(l6)

    def batches(self, texts, size=64):
        # Sorting by length keeps padding small; `order` undoes it.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        sorted_texts = [texts[i] for i in order]
        return order, list(common.batches(self.tok, sorted_texts, size))

    @torch.no_grad()
    def encode(self, texts, chain, size=64):
        """Embeddings of `texts` along a chain: ('l3'|'l6', [layer ids]) or a stitch tuple."""
        order, batches = self.batches(texts, size)
        out = []
        for ids, mask in batches:
            out.append(self.run(ids, mask, chain))
        embs = torch.cat(out)
        result = torch.empty_like(embs)
        result[torch.tensor(order)] = embs
        return result

    def run(self, ids, mask, chain, stitch=None):
        kind = chain[0]
        if kind == "stitch":
            _, m, n = chain
            x = self.l3_embed(ids)
            for layer in self.l3_layers[:m]:
                x = layer(x, mask)
            x = stitch(x) if stitch is not None else x
            for layer in self.l6_layers[n:]:
                x = layer(x, mask)
            return common.pool(x, mask)
        embed, layers = (self.l3_embed, self.l3_layers) if kind == "l3" else (self.l6_embed, self.l6_layers)
        x = embed(ids)
        for i in chain[1]:
            x = layers[i](x, mask)
        return common.pool(x, mask)


def article_text(article):
    return f"{article['heading']}: {article['text']}" if article["heading"] else article["text"]


def rank_of_gold(query_embs, article_embs, golds, article_index):
    """Best (0-based) rank of any gold article per query."""
    scores = query_embs @ article_embs.T
    ranks = []
    for row, gold in zip(scores, golds):
        gold_ids = [article_index[g] for g in gold]
        best = row[gold_ids].max()
        ranks.append(int((row > best).sum()))
    return np.array(ranks)


# ---------------------------------------------------------------- SN-Net

def token_activations(enc, texts, max_tokens=20000, seed=0):
    """Hidden states after each L3 and L6 layer on the same (unpadded) article tokens.

    Returns ({m: X [tokens, 384]} for L3, {n: Y} for L6), a fixed random subset of tokens.
    """
    l3, l6 = {}, {}
    with torch.no_grad():
        _, batches = enc.batches(texts, 32)
        for ids, mask in batches:
            keep = mask.bool()
            x = enc.l3_embed(ids)
            for m, layer in enumerate(enc.l3_layers, start=1):
                x = layer(x, mask)
                l3.setdefault(m, []).append(x[keep])
            y = enc.l6_embed(ids)
            for n, layer in enumerate(enc.l6_layers, start=1):
                y = layer(y, mask)
                l6.setdefault(n, []).append(y[keep])
    total = sum(len(t) for t in l3[1])
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_tokens]
    return ({m: torch.cat(v)[pick] for m, v in l3.items()}, {n: torch.cat(v)[pick] for n, v in l6.items()})


def least_squares_stitch(x, y, ridge=1e-4):
    """A = pinv([X, 1]) Y: the stitch's weight [384, 384] and bias [384].

    Solved as ridge regression, (X1'X1 + r I) A = X1'Y with r = ridge * mean eigenvalue:
    LayerNorm outputs nearly lie in a hyperplane, so the plain least-squares solution has
    weights in the thousands that cancel each other (and do not survive int8 storage);
    the ridge term picks the small-norm solution that pinv with a cutoff would, at the same
    fit (measured: identical cosine to L6 to 3 decimals).
    """
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    gram = x1.T @ x1
    reg = ridge * torch.trace(gram) / gram.shape[0]
    solution = torch.linalg.solve(gram + reg * torch.eye(gram.shape[0], dtype=gram.dtype), x1.T @ y.double())
    solution = solution.float()
    return solution[:-1].clone(), solution[-1].clone()


def train_stitches(enc, articles, article_embs, train_queries, steps, log, seed=0):
    """Least-squares init, then joint training with one sampled stitch per batch."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    texts = [article_text(a) for a in articles]
    index = {a["id"]: i for i, a in enumerate(articles)}
    stitches = {}
    front, back = token_activations(enc, texts)
    for m, n in STITCHES:
        w, b = least_squares_stitch(front[m], back[n])
        stitches[(m, n)] = torch.nn.Linear(common.HIDDEN, common.HIDDEN)
        with torch.no_grad():
            stitches[(m, n)].weight.copy_(w.T)
            stitches[(m, n)].bias.copy_(b)
    params = [p for s in stitches.values() for p in s.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    qtexts = [q["text"] for q in train_queries]
    teacher = enc.encode(qtexts, ("l6", list(range(6))))
    gold = [index[q["gold"][0]] for q in train_queries]
    targets = article_embs
    batch = 32
    for step in range(steps):
        pick = rng.sample(range(len(train_queries)), batch)
        m, n = rng.choice(STITCHES)
        ids, mask = next(common.batches(enc.tok, [qtexts[i] for i in pick], batch))
        emb = enc.run(ids, mask, ("stitch", m, n), stitches[(m, n)])
        logits = emb @ targets.T / 0.05
        contrastive = F.cross_entropy(logits, torch.tensor([gold[i] for i in pick]))
        distill = (1 - (emb * teacher[pick]).sum(-1)).mean()
        loss = contrastive + 10.0 * distill
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            log(f"  step {step:4d} stitch {stitch_name(m, n)} contrastive {contrastive.item():.3f} "
                f"distill {distill.item():.4f}")
    return {k: (s.weight.detach().T.numpy().copy(), s.bias.detach().numpy().copy())
            for k, s in stitches.items()}


# ---------------------------------------------------------------- CoLa

def edits(chain, max_block=4, max_repeat=4, max_len=10):
    """Chains one skip or repeat of a contiguous block away from `chain`."""
    out = set()
    for start in range(len(chain)):
        for k in range(1, max_block + 1):
            if start + k > len(chain):
                break
            block = chain[start:start + k]
            if len(chain) - k >= 1:
                out.add(tuple(chain[:start] + chain[start + k:]))
            for r in range(1, max_repeat + 1):
                longer = chain[:start + k] + block * r + chain[start + k:]
                if len(longer) <= max_len:
                    out.add(tuple(longer))
    out.discard(tuple(chain))
    return sorted(out)


class ChainEvaluator:
    """Correctness per query of a chain, with hidden states cached per chain prefix."""

    def __init__(self, enc, texts, golds, article_embs, article_index):
        self.enc, self.golds = enc, golds
        self.article_embs, self.article_index = article_embs, article_index
        self.order, self.batches = enc.batches(texts, 128)
        with torch.no_grad():
            self.cache = {(): [enc.l6_embed(ids) for ids, _ in self.batches]}
        self.results = {}

    @torch.no_grad()
    def hidden(self, chain):
        chain = tuple(chain)
        if chain not in self.cache:
            prev = self.hidden(chain[:-1])
            layer = self.enc.l6_layers[chain[-1]]
            self.cache[chain] = [layer(x, mask) for x, (_, mask) in zip(prev, self.batches)]
            if len(self.cache) > 400:  # keep memory bounded; the root and short prefixes stay
                for key in sorted(self.cache, key=len, reverse=True)[:100]:
                    if key != chain:
                        del self.cache[key]
        return self.cache[chain]

    @torch.no_grad()
    def correct(self, chain):
        chain = tuple(chain)
        if chain not in self.results:
            embs = torch.cat([common.pool(x, mask) for x, (_, mask) in zip(self.hidden(chain), self.batches)])
            unsorted = torch.empty_like(embs)
            unsorted[torch.tensor(self.order)] = embs
            ranks = rank_of_gold(unsorted.numpy(), self.article_embs, self.golds, self.article_index)
            self.results[chain] = ranks == 0
        return self.results[chain]


def cola_search(evaluator, simulations, penalty, log, seed=0, c=0.5):
    """MCTS over chains; returns {chain: accuracy} of every evaluated chain."""
    rng = random.Random(seed)
    root = tuple(range(6))
    evaluator.correct(root)
    visits, value, children = {}, {}, {}

    def reward(chain):
        acc = float(evaluator.correct(chain).mean())
        return acc - penalty * len(chain) / 6.0

    for sim in range(simulations):
        path, node = [root], root
        # Selection: descend by UCB while the node is fully expanded.
        while node in children and children[node] and all(ch in visits for ch in children[node]):
            total = sum(visits[ch] for ch in children[node])
            node = max(children[node], key=lambda ch: value[ch] / visits[ch]
                       + c * math.sqrt(math.log(total + 1) / visits[ch]))
            path.append(node)
        # Expansion: one untried child.
        if node not in children:
            children[node] = edits(list(node))
        untried = [ch for ch in children[node] if ch not in visits]
        if untried:
            node = rng.choice(untried)
            path.append(node)
        # Simulation: one random further edit (a short rollout), best of node and rollout.
        r = reward(node)
        rollout = edits(list(node))
        if rollout:
            r = max(r, reward(rng.choice(rollout)))
        for n in path:
            visits[n] = visits.get(n, 0) + 1
            value[n] = value.get(n, 0.0) + r
        if sim % 25 == 0:
            log(f"  simulation {sim:4d}: {len(evaluator.results)} chains evaluated")
    return {chain: float(ok.mean()) for chain, ok in evaluator.results.items()}


# ---------------------------------------------------------------- fine-tuning L6's top layers

class TrainableLayer(torch.nn.Module):
    """One BERT layer with trainable weights, computing what common.torch_modules computes."""

    NAMES = ("q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "o_w", "o_b", "i_w", "i_b", "f_w", "f_b",
             "ln1_w", "ln1_b", "ln2_w", "ln2_b")

    def __init__(self, weights, i):
        super().__init__()
        self.p = torch.nn.ParameterDict({
            n: torch.nn.Parameter(torch.from_numpy(np.array(weights[f"layer{i}.{n}"], dtype=np.float32)))
            for n in self.NAMES})

    def forward(self, x, mask):
        p = self.p
        b, s, _ = x.shape
        heads = lambda y: y.view(b, s, common.HEADS, common.HIDDEN // common.HEADS).transpose(1, 2)
        q, k, v = (heads(x @ p[f"{n}_w"] + p[f"{n}_b"]) for n in "qkv")
        scores = q @ k.transpose(-1, -2) / math.sqrt(common.HIDDEN // common.HEADS)
        scores = scores + (1.0 - mask)[:, None, None, :] * -10000.0
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, common.HIDDEN)
        a = F.layer_norm(ctx @ p["o_w"] + p["o_b"] + x, (common.HIDDEN,), p["ln1_w"], p["ln1_b"], common.LN_EPS)
        h = F.gelu(a @ p["i_w"] + p["i_b"])
        return F.layer_norm(h @ p["f_w"] + p["f_b"] + a, (common.HIDDEN,), p["ln2_w"], p["ln2_b"], common.LN_EPS)

    def export(self, i):
        return {f"layer{i}.{n}": t.detach().numpy().copy() for n, t in self.p.items()}


def hidden_below(enc, texts, first_tuned, size=32):
    """Per text, L6's hidden states (real tokens only) entering layer `first_tuned`."""
    out = [None] * len(texts)
    with torch.no_grad():
        order, batches = enc.batches(texts, size)
        pos = 0
        for ids, mask in batches:
            x = enc.l6_embed(ids)
            for layer in enc.l6_layers[:first_tuned]:
                x = layer(x, mask)
            for row in range(len(ids)):
                n = int(mask[row].sum())
                out[order[pos]] = x[row, :n].clone()
                pos += 1
    return out


def pad(rows):
    s = max(len(r) for r in rows)
    x = torch.zeros(len(rows), s, common.HIDDEN)
    mask = torch.zeros(len(rows), s)
    for i, r in enumerate(rows):
        x[i, :len(r)] = r
        mask[i, :len(r)] = 1.0
    return x, mask


def finetune_top(enc, l6_weights, articles, train_queries, valid_queries, tuned_layers, epochs, log, seed=0):
    """Contrastive fine-tuning of L6's top layers, shared by queries and articles.

    Layers below stay frozen (their outputs are computed once), so a step costs two layers.
    Negatives: every other article, from embeddings refreshed each epoch. Returns the new
    weights of the tuned layers at the epoch with the best validation R@1 (validation is a
    held-out year, so the test year is never looked at) and the validation R@1 after each
    epoch (epoch 0 = before).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    first = 6 - tuned_layers
    layers = torch.nn.ModuleList([TrainableLayer(l6_weights, i) for i in range(first, 6)])
    index = {a["id"]: i for i, a in enumerate(articles)}
    a_rows = hidden_below(enc, [article_text(a) for a in articles], first)
    q_rows = hidden_below(enc, [q["text"] for q in train_queries], first)
    v_rows = hidden_below(enc, [q["text"] for q in valid_queries], first)
    gold = [index[q["gold"][0]] for q in train_queries]

    def top(rows):
        x, mask = pad(rows)
        for layer in layers:
            x = layer(x, mask)
        return common.pool(x, mask)

    @torch.no_grad()
    def encode_all(rows, size=64):
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.empty(len(rows), common.HIDDEN)
        for s in range(0, len(order), size):
            chunk = order[s:s + size]
            out[torch.tensor(chunk)] = top([rows[i] for i in chunk])
        return out

    def valid_r1(article_embs):
        ranks = rank_of_gold(encode_all(v_rows).numpy(), article_embs.numpy(),
                             [q["gold"] for q in valid_queries], index)
        return float((ranks == 0).mean())

    opt = torch.optim.AdamW(layers.parameters(), lr=2e-5, weight_decay=0.01)
    article_embs = encode_all(a_rows)
    history = [valid_r1(article_embs)]
    log(f"  fine-tune epoch 0: validation R@1 {history[-1]:.3f}")
    best = (history[0], {k: v.detach().clone() for k, v in layers.state_dict().items()})
    batch = 32
    for epoch in range(1, epochs + 1):
        order = list(range(len(train_queries)))
        rng.shuffle(order)
        for s in range(0, len(order) - batch + 1, batch):
            pick = order[s:s + batch]
            q = top([q_rows[i] for i in pick])
            golds = sorted({gold[i] for i in pick})
            fresh = top([a_rows[g] for g in golds])
            stale = article_embs.clone()
            keep = torch.ones(len(articles), dtype=torch.bool)
            keep[torch.tensor(golds)] = False
            candidates = torch.cat([fresh, stale[keep]])
            target = torch.tensor([golds.index(gold[i]) for i in pick])
            loss = F.cross_entropy(q @ candidates.T / 0.05, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        article_embs = encode_all(a_rows)
        history.append(valid_r1(article_embs))
        log(f"  fine-tune epoch {epoch}: loss {loss.item():.3f}, validation R@1 {history[-1]:.3f}")
        if history[-1] > best[0]:
            best = (history[-1], {k: v.detach().clone() for k, v in layers.state_dict().items()})
    layers.load_state_dict(best[1])
    tuned = {}
    for layer, i in zip(layers, range(first, 6)):
        tuned.update(layer.export(i))
    return tuned, history
