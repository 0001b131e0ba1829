"""Samplers in PyTorch: the teacher's EDM Euler sampler with CFG, and the students' few-step sampler.

The Rust runtime implements the same few-step sampler from the manifest; the
teacher sampler is what the evaluation compares the students against.
"""
import numpy as np
import torch
from PIL import Image

from common import HEIGHT, WIDTH, encode_prompt, to_uint8

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def karras_sigmas(n):
    """EDM's noise levels for an n-step sampler (n values, then 0)."""
    i = np.arange(n)
    s = (SIGMA_MAX ** (1 / RHO) + i / max(n - 1, 1) * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    return np.append(s, 0.0)


def prompt_ids(prompts):
    return torch.from_numpy(np.stack([encode_prompt(p) for p in prompts]))


@torch.no_grad()
def guided(model, x, sigma, tokens, empty, guidance):
    """CFG: D_uncond + w (D_cond - D_uncond); guidance 1 is the plain conditional model."""
    s = torch.full((x.shape[0],), float(sigma))
    cond = model.denoise(x, s, tokens)
    if guidance == 1.0:
        return cond
    uncond = model.denoise(x, s, empty)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def teacher_sample(model, prompts, steps, guidance, seed):
    """Deterministic EDM Euler sampler: `steps` evaluations of the (guided) denoiser."""
    g = torch.Generator().manual_seed(seed)
    tokens = model.text(prompt_ids(prompts))
    empty = model.text(prompt_ids([""] * len(prompts)))
    sig = karras_sigmas(steps)
    x = torch.randn(len(prompts), 3, HEIGHT, WIDTH, generator=g) * sig[0]
    for i in range(steps):
        d = guided(model, x, sig[i], tokens, empty, guidance)
        x = d if sig[i + 1] == 0 else x + (x - d) / sig[i] * (sig[i + 1] - sig[i])
    return x


@torch.no_grad()
def student_sample(generator, text_encoder, prompts, sigmas, seed, noise=None):
    """Few-step generation: x = G(sigma_1 z); then re-noise to sigma_k with fresh noise and denoise again."""
    g = torch.Generator().manual_seed(seed)
    tokens = text_encoder(prompt_ids(prompts))
    x = None
    for k, sigma in enumerate(sigmas):
        z = torch.randn(len(prompts), 3, HEIGHT, WIDTH, generator=g) if noise is None else noise[k]
        x_t = sigma * z if x is None else x + sigma * z
        x = generator.denoise(x_t, torch.full((len(prompts),), float(sigma)), tokens)
    return x


def save_grid(x, path, cols=4):
    imgs = to_uint8(x)
    rows = [np.concatenate(list(imgs[i:i + cols]), axis=1) for i in range(0, len(imgs), cols)]
    if rows[-1].shape != rows[0].shape:
        rows[-1] = np.pad(rows[-1], ((0, 0), (0, rows[0].shape[1] - rows[-1].shape[1]), (0, 0)))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
