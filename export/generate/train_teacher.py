#!/usr/bin/env python3
"""Train the text-conditioned EDM teacher on rendered words.

The teacher is the model the students are distilled from; it is never shipped to
users as the fast path, but it is exported too so that the runtime's benchmark can
measure the 50-step baseline on the same engine.

  python export/generate/train_teacher.py [--steps 6000] [--batch 48] [--device cpu|cuda]

On the 2-core x86 machine of the CI class, 6000 steps take about 10 minutes.
Writes $WORK/teacher.pt (EMA weights) and $WORK/teacher_samples.png.
"""
import argparse
import copy
import time

import numpy as np
import torch

from common import HEIGHT, SAMPLE_PROMPTS, WIDTH, WORK, Denoiser, edm_loss, encode_prompt, make_dataset, to_model
from sample import save_grid, teacher_sample


def dataset(n, seed):
    """Rendered training set, cached (rendering 40k images takes ~2 minutes)."""
    path = WORK / f"train_{HEIGHT}x{WIDTH}_{n}_{seed}.npz"
    if path.exists():
        z = np.load(path)
        return z["images"], list(z["texts"])
    images, texts = make_dataset(n, seed)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, texts=np.array(texts))
    return images, texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--images", type=int, default=40000)
    ap.add_argument("--prompt-dropout", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)

    images, texts = dataset(args.images, args.seed)
    x_all = to_model(images)
    ids_all = torch.from_numpy(np.stack([encode_prompt(t) for t in texts]))
    model = Denoiser().to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / args.steps))))
    gen = torch.Generator().manual_seed(args.seed)
    t0, running = time.time(), None
    for step in range(args.steps):
        idx = torch.randint(0, len(x_all), (args.batch,), generator=gen)
        x0, ids = x_all[idx].to(dev), ids_all[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < args.prompt_dropout
        ids[drop] = 0  # the empty prompt: what classifier-free guidance contrasts against
        loss = edm_loss(model, x0, ids.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {running:.4f} {time.time() - t0:6.0f} s", flush=True)
        if step % 2000 == 1999:
            torch.save(ema.state_dict(), WORK / "teacher.pt")
    torch.save(ema.state_dict(), WORK / "teacher.pt")
    x = teacher_sample(ema.cpu(), SAMPLE_PROMPTS, steps=50, guidance=2.0, seed=1)
    save_grid(x, WORK / "teacher_samples.png", cols=8)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
