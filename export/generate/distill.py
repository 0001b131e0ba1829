#!/usr/bin/env python3
"""Distill the teacher into a one- or few-step generator: SiD (with CFG, Zero-CFG or
Anti-CFG guidance) or the VSD / SwiftBrush baseline.

Data-free, as in the papers: the generator sees only prompts and noise; the
teacher f_phi stays frozen; the fake score f_psi follows the generator's output
distribution by denoising score matching on its (stop-gradient) samples. One fake
step and one generator step alternate; Adam with betas (0, 0.999).

  python export/generate/distill.py --name sid1 --method sid --k 1 --guidance cfg
  python export/generate/distill.py --name sid4 --method sid --k 4 --guidance cfg

Losses (per sample, x_t = x_g + sigma eps):
  SiD  L_G = (f_phi - f_psi) . [(f_phi - x_g) - alpha (f_phi - f_psi)] / w,
       w = sg(mean |x_g - f_phi|), alpha = 1.2; f_phi, f_psi evaluated without grad
  VSD  grad_x_g = sigma^2 (eps_phi - eps_psi) = sigma (f_psi - f_phi)
Guidance (kappa = CFG scale, f_u / f_c = unconditional / conditional output):
  cfg   teacher f_u + w (f_c - f_u), w = --cfg; fake conditional
  zero  teacher conditional (no CFG); fake trained and evaluated without text
  anti  teacher conditional; fake f_u + kappa (f_c - f_u) with kappa = --anti < 0
Few-step (--k 4): each iteration draws k ~ U{1..K}, runs k generator steps,
re-noising with fresh noise to the next sigma of `FEW_STEP_SIGMAS` (or `--sigmas`),
gradient only through the last step. `--fake-per-step` (our change, not the papers'):
one fake score per step count, so each k-step output is matched to the data on its own.

Runs on the CPU (the shipped CPU runs: 1000-1500 iterations, batch 32) or, much faster,
with `--device cuda`; `--seconds` bounds a run by wall clock (a GPU lease is short).
Writes $WORK/<name>.pt (EMA generator UNet, also every `--save-every` iterations),
$WORK/<name>.json (arguments, schedule, loss log) and $WORK/<name>_samples_<k>.png.
"""
import argparse
import copy
import json
import time

import numpy as np
import torch

from common import HEIGHT, MAX_LEN, SAMPLE_PROMPTS, SIGMA_DATA, WIDTH, WORK, Denoiser, encode_prompt, random_prompt
from sample import save_grid, student_sample

SIGMA_INIT = 2.5
# Noise level of each generator step; a k-step generation uses the first k.
FEW_STEP_SIGMAS = [2.5, 1.2, 0.55, 0.25]


def sample_sigma_uniform(n, device, lo=0.002, hi=SIGMA_INIT, rho=7.0):
    """Noise levels for the generator loss: uniform in sigma^(1/rho) between lo and hi."""
    u = torch.rand(n, device=device)
    return (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def sample_sigma_lognormal(n, device, mean=-1.2, std=1.2):
    return torch.exp(torch.randn(n, device=device) * std + mean)


def guided(net, x, sigma, tokens, empty, scale):
    if scale == 1.0:
        return net.denoise(x, sigma, tokens)
    u = net.denoise(x, sigma, empty)
    if scale == 0.0:
        return u
    return u + scale * (net.denoise(x, sigma, tokens) - u)


def generate(gen, tokens, k_steps, sigmas, grad_last=True):
    """Run k generator steps; only the last carries gradient."""
    n, device = tokens.shape[0], tokens.device
    x = None
    for j in range(k_steps):
        sigma = sigmas[j]
        z = torch.randn(n, 3, HEIGHT, WIDTH, device=device)
        x_t = sigma * z if x is None else x + sigma * z
        s = torch.full((n,), sigma, device=device)
        if j == k_steps - 1 and grad_last:
            x = gen.denoise(x_t, s, tokens)
        else:
            with torch.no_grad():
                x = gen.denoise(x_t, s, tokens)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--method", choices=["sid", "vsd"], default="sid")
    ap.add_argument("--k", type=int, default=1, help="K: most generator steps (1 = one-step)")
    ap.add_argument("--guidance", choices=["cfg", "zero", "anti"], default="cfg")
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--anti", type=float, default=-0.5)
    ap.add_argument("--alpha", type=float, default=1.2)
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--fake-prompt-dropout", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this much wall clock")
    ap.add_argument("--save-every", type=int, default=1000)
    ap.add_argument("--sigmas", default=None,
                    help="comma-separated noise level of each generator step (default FEW_STEP_SIGMAS)")
    ap.add_argument("--fake-per-step", action="store_true", help="a fake score per step count (not in the papers)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device(args.device)

    teacher = Denoiser()
    teacher.load_state_dict(torch.load(WORK / "teacher.pt"))
    teacher.to(dev)
    teacher.eval().requires_grad_(False)
    schedule = [float(v) for v in args.sigmas.split(",")] if args.sigmas else FEW_STEP_SIGMAS
    sigmas = schedule[:args.k] if args.k > 1 else [SIGMA_INIT]
    gen = copy.deepcopy(teacher).train()
    # One fake score follows the mixture of the k-step outputs (the papers); with
    # --fake-per-step each step count k has its own, so each k-step output must match the
    # data on its own rather than only their mixture.
    fakes = [copy.deepcopy(teacher).train() for _ in range(len(sigmas) if args.fake_per_step else 1)]
    # The text encoder stays the teacher's: the runtime ships one encoder for all generators.
    for net in [gen] + fakes:
        net.text.requires_grad_(False)
        net.unet.requires_grad_(True)
    ema = copy.deepcopy(gen).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(gen.unet.parameters(), lr=args.lr, betas=(0.0, 0.999))
    opts_f = [torch.optim.Adam(f.unet.parameters(), lr=args.lr, betas=(0.0, 0.999)) for f in fakes]
    teacher_scale = args.cfg if args.guidance == "cfg" else 1.0
    fake_scale = {"cfg": 1.0, "zero": 0.0, "anti": args.anti}[args.guidance]

    with torch.no_grad():
        empty_tokens = teacher.text(torch.zeros(1, MAX_LEN, dtype=torch.long, device=dev))
    t0 = time.time()
    log = []

    def save(iters_done):
        torch.save({k: v.cpu() for k, v in ema.unet.state_dict().items()}, WORK / f"{args.name}.pt")
        (WORK / f"{args.name}.json").write_text(json.dumps(
            {"args": vars(args), "sigmas": sigmas, "iters_done": iters_done, "log": log,
             "seconds": time.time() - t0}, indent=1))

    done = 0
    for it in range(args.iters):
        if args.seconds is not None and time.time() - t0 > args.seconds:
            break
        prompts = [random_prompt(rng) for _ in range(args.batch)]
        ids = torch.from_numpy(np.stack([encode_prompt(p) for p in prompts])).to(dev)
        with torch.no_grad():
            tokens = teacher.text(ids)
        empty = empty_tokens.expand(args.batch, -1, -1)
        k = int(rng.integers(1, len(sigmas) + 1))
        fake, opt_f = (fakes[k - 1], opts_f[k - 1]) if args.fake_per_step else (fakes[0], opts_f[0])

        # 1. fake score: denoising score matching on the generator's current samples
        with torch.no_grad():
            x_g = generate(gen, tokens, k, sigmas, grad_last=False)
        sigma = sample_sigma_lognormal(args.batch, dev)
        x_t = x_g + sigma.view(-1, 1, 1, 1) * torch.randn_like(x_g)
        if args.guidance == "zero":
            cond = empty
        else:  # prompt dropout keeps an unconditional fake score for Anti-CFG
            drop = (torch.rand(args.batch, device=dev) < args.fake_prompt_dropout).view(-1, 1, 1)
            cond = torch.where(drop, empty, tokens)
        weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
        loss_f = (weight.view(-1, 1, 1, 1) * (fake.denoise(x_t, sigma, cond) - x_g) ** 2).mean()
        opt_f.zero_grad(set_to_none=True)
        loss_f.backward()
        opt_f.step()

        # 2. generator
        x_g = generate(gen, tokens, k, sigmas, grad_last=True)
        sigma = sample_sigma_uniform(args.batch, dev)
        x_t = x_g.detach() + sigma.view(-1, 1, 1, 1) * torch.randn_like(x_g)
        with torch.no_grad():
            f_phi = guided(teacher, x_t, sigma, tokens, empty, teacher_scale)
            f_psi = guided(fake, x_t, sigma, tokens, empty, fake_scale)
        if args.method == "sid":
            w = (x_g.detach() - f_phi).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            diff = f_phi - f_psi
            loss_g = (diff * ((f_phi - x_g) - args.alpha * diff) / w).mean()
        else:
            grad = sigma.view(-1, 1, 1, 1) * (f_psi - f_phi)
            loss_g = 0.5 * ((x_g - (x_g - grad).detach()) ** 2).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(gen.unet.parameters(), 1.0)
        opt_g.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + it) / (10 + it))
            for pe, pg in zip(ema.unet.parameters(), gen.unet.parameters()):
                pe.lerp_(pg, 1 - decay)
        if it % 200 == 199 and dev.type == "cpu":  # a look at the samples while it trains
            save_grid(student_sample(ema, ema.text, SAMPLE_PROMPTS, sigmas[:1], seed=1),
                      WORK / f"{args.name}_progress.png", cols=8)
        if it % 50 == 0 or it == args.iters - 1:
            log.append({"iter": it, "loss_fake": loss_f.item(), "loss_gen": loss_g.item(), "s": time.time() - t0})
            print(f"iter {it:5d} fake {loss_f.item():.4f} gen {loss_g.item():+.5f} {time.time() - t0:5.0f} s", flush=True)
        if it % args.save_every == args.save_every - 1:
            save(it + 1)
        done = it + 1

    save(done)
    ema.cpu()
    for steps in sorted({1, len(sigmas)}):
        x = student_sample(ema, ema.text, SAMPLE_PROMPTS, sigmas[:steps], seed=1)
        save_grid(x, WORK / f"{args.name}_samples_{steps}.png", cols=8)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
