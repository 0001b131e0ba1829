"""Shared definitions of the generation export: prompts, rendering, networks, samplers, noise.

Everything that both the training scripts and the ONNX export must agree on lives
here, so that a generator trained by `train.py` is exported by `export.py` with the
same text encoding, preconditioning and sampling schedule the Rust runtime reads
from `models/generate/manifest.toml`.
"""
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[2]
# Checkpoints and the rendered training set; EDGERUN_GENERATE_WORK moves them (a GPU
# machine reads the teacher from a folder that travels with the checkout).
WORK = Path(os.environ.get("EDGERUN_GENERATE_WORK", Path.home() / ".cache" / "edgerun-export" / "generate"))

# --- prompts -----------------------------------------------------------------
# A prompt is ONE character. Words (2..4 characters at 32x96) were tried first: after
# 6000 teacher steps (33 min on 2 cores) the samples were glyph-like but unreadable, so the
# issue's fallback was taken. Capitals and digits without the pairs a recognizer (or a
# person) confuses at 32 px: O/0 and I/1. Case is dropped: at this scale lower case halves
# the data per glyph for little gain, and the OCR metric is case-insensitive anyway.
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
MIN_LEN, MAX_LEN = 1, 1
PAD = 0  # id 0 pads a prompt; an all-pad prompt is the empty (unconditional) prompt
CHAR_ID = {c: i + 1 for i, c in enumerate(ALPHABET)}
VOCAB = len(ALPHABET) + 1

HEIGHT, WIDTH = 32, 32
SIGMA_DATA = 0.5

# With one character per prompt no prompt can be held out (each is a class the teacher
# must know); the evaluation draws every character from seeds no training step used, and
# compares with fresh renders.
EVAL_PROMPTS = list(ALPHABET)
SAMPLE_PROMPTS = ["E", "D", "G", "R", "7", "K", "3", "M"]


def check_prompt(text):
    if not (MIN_LEN <= len(text) <= MAX_LEN):
        raise ValueError(f"prompt {text!r}: length must be {MIN_LEN}..{MAX_LEN}")
    bad = [c for c in text if c not in CHAR_ID]
    if bad:
        raise ValueError(f"prompt {text!r}: unsupported characters {bad}")


def encode_prompt(text):
    """Prompt -> ids [MAX_LEN] (int64), pads at the end; '' -> all pads."""
    if text:
        check_prompt(text)
    ids = [CHAR_ID[c] for c in text] + [PAD] * (MAX_LEN - len(text))
    return np.array(ids, dtype=np.int64)


def random_prompt(rng):
    n = int(rng.integers(MIN_LEN, MAX_LEN + 1))
    return "".join(rng.choice(list(ALPHABET), n))


# --- rendering ----------------------------------------------------------------
FONT_DIRS = ["/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation",
             "/usr/share/fonts/truetype/freefont"]
FONT_FILES = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono-Bold.ttf",
    "LiberationSans-Regular.ttf", "LiberationSerif-Bold.ttf", "LiberationMono-Regular.ttf",
    "FreeSans.ttf", "FreeSerifBold.ttf",
]


def fonts():
    found = []
    for name in FONT_FILES:
        for d in FONT_DIRS:
            p = Path(d) / name
            if p.exists():
                found.append(p)
                break
        else:
            raise FileNotFoundError(f"font {name}: install fonts-dejavu-core fonts-liberation fonts-freefont-ttf")
    return found


def _contrasting_colors(rng):
    while True:
        bg = rng.integers(0, 256, 3)
        ink = rng.integers(0, 256, 3)
        lum = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
        if abs(lum(bg) - lum(ink)) > 110:
            return tuple(int(v) for v in bg), tuple(int(v) for v in ink)


def render(text, rng, font_paths, scale=3):
    """One training image: HEIGHTxWIDTH RGB uint8, text centred with jitter.

    Drawn at `scale`x and downsampled for anti-aliasing; a random font, ink and
    background colour pair with a minimum luminance contrast, a rotation of up
    to 4 degrees, a little blur and Gaussian pixel noise.
    """
    H, W = HEIGHT * scale, WIDTH * scale
    bg, ink = _contrasting_colors(rng)
    font_path = font_paths[int(rng.integers(len(font_paths)))]
    size = int(H * rng.uniform(0.55, 0.75))
    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(text)
    tw, th = right - left, bottom - top
    if tw > W * 0.92:  # wide fonts: shrink to fit
        size = int(size * W * 0.92 / tw)
        font = ImageFont.truetype(str(font_path), size)
        left, top, right, bottom = font.getbbox(text)
        tw, th = right - left, bottom - top
    img = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(img)
    x = (W - tw) / 2 - left + rng.uniform(-0.04, 0.04) * W
    y = (H - th) / 2 - top + rng.uniform(-0.06, 0.06) * H
    draw.text((x, y), text, font=font, fill=ink)
    img = img.rotate(float(rng.uniform(-4, 4)), resample=Image.BICUBIC, fillcolor=bg)
    img = img.resize((WIDTH, HEIGHT), Image.LANCZOS)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.1, 0.6))))
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, rng.uniform(0, 6), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_dataset(n, seed, prompts=None):
    """n rendered images (uint8 [n,H,W,3]) and their prompts; deterministic in seed."""
    rng = np.random.default_rng(seed)
    paths = fonts()
    texts = prompts if prompts is not None else [random_prompt(rng) for _ in range(n)]
    images = np.stack([render(t, rng, paths) for t in texts])
    return images, texts


def to_model(images_uint8):
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    x = torch.from_numpy(images_uint8).float().permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def to_uint8(x):
    """float NCHW in [-1, 1] -> uint8 NHWC (the runtime's rounding: round half away from zero)."""
    y = ((x.clamp(-1, 1) + 1.0) * 127.5).permute(0, 2, 3, 1).detach().cpu().numpy()
    return np.floor(y + 0.5).astype(np.uint8)


# --- networks -----------------------------------------------------------------
class TextEncoder(nn.Module):
    """Character ids [B, L] -> tokens [B, L, D]: embeddings + positions + one transformer layer."""

    def __init__(self, dim=64):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(MAX_LEN, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        return self.norm(self.layer(self.embed(ids) + self.pos))


def _groups(ch):
    return 8 if ch % 8 == 0 else 1


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb):
        super().__init__()
        self.n1 = nn.GroupNorm(_groups(cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout * 2)
        self.n2 = nn.GroupNorm(_groups(cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.e(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.n2(h) * (1 + scale) + shift
        h = self.c2(F.silu(h))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Image positions attend over text tokens (single head, dim = channels)."""

    def __init__(self, ch, text_dim):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Linear(text_dim, ch)
        self.v = nn.Linear(text_dim, ch)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x, tokens):
        b, c, h, w = x.shape
        q = self.q(self.norm(x)).flatten(2).transpose(1, 2)  # [B, HW, C]
        k, v = self.k(tokens), self.v(tokens)  # [B, L, C]
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.out(y)


def coordinate_channels(b, h, w, device=None):
    """Fixed position channels so attention can tell the first letter's place from the last's."""
    xs = torch.linspace(-1, 1, w, device=device).view(1, 1, 1, w).expand(b, 1, h, w)
    ys = torch.linspace(-1, 1, h, device=device).view(1, 1, h, 1).expand(b, 1, h, w)
    return torch.cat([xs, ys, torch.sin(math.pi * xs), torch.cos(math.pi * xs)], dim=1)


class UNet(nn.Module):
    """A compact UNet: 2x2 pixel-unshuffle stem, three levels (1/2, 1/4, 1/8), cross-attention at 1/4 and 1/8."""

    def __init__(self, ch=(32, 64, 96), emb=128, text_dim=64):
        super().__init__()
        c1, c2, c3 = ch
        self.freqs = nn.Parameter(torch.randn(emb // 2) * 4.0, requires_grad=False)
        self.emb = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.text_pool = nn.Linear(text_dim, emb)
        # a 2x2 pixel-unshuffle stem: the first level works at 16x48, which is
        # what makes CPU training affordable (4x fewer positions)
        self.inp = nn.Conv2d(4 * 3 + 4, c1, 3, padding=1)
        self.d1 = ResBlock(c1, c1, emb)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.d2 = ResBlock(c2, c2, emb)
        self.a2 = CrossAttention(c2, text_dim)
        self.down2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.m1 = ResBlock(c3, c3, emb)
        self.am = CrossAttention(c3, text_dim)
        self.m2 = ResBlock(c3, c3, emb)
        self.up2 = nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1)
        self.u2 = ResBlock(c2 * 2, c2, emb)
        self.au = CrossAttention(c2, text_dim)
        self.up1 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.u1 = ResBlock(c1 * 2, c1, emb)
        self.out_norm = nn.GroupNorm(_groups(c1), c1)
        self.out = nn.Conv2d(c1, 4 * 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, c_noise, tokens):
        x = F.pixel_unshuffle(x, 2)
        b, _, h, w = x.shape
        f = c_noise.view(-1, 1) * self.freqs.view(1, -1)
        emb = self.emb(torch.cat([torch.cos(f), torch.sin(f)], dim=1)) + self.text_pool(tokens.mean(dim=1))
        h1 = self.d1(self.inp(torch.cat([x, coordinate_channels(b, h, w, x.device)], dim=1)), emb)
        h2 = self.a2(self.d2(self.down1(h1), emb), tokens)
        m = self.m2(self.am(self.m1(self.down2(h2), emb), tokens), emb)
        u2 = self.au(self.u2(torch.cat([self.up2(m), h2], dim=1), emb), tokens)
        u1 = self.u1(torch.cat([self.up1(u2), h1], dim=1), emb)
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(u1))), 2)


class Denoiser(nn.Module):
    """EDM-preconditioned denoiser D(x, sigma, prompt ids) -> estimate of the clean image.

    The text encoder is part of the module during training; the export splits it
    off so a runtime encodes a prompt once and evaluates the UNet k times.
    """

    def __init__(self):
        super().__init__()
        self.text = TextEncoder()
        self.unet = UNet()

    def denoise(self, x, sigma, tokens):
        s = sigma.view(-1, 1, 1, 1)
        c_skip = SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / torch.sqrt(s ** 2 + SIGMA_DATA ** 2)
        c_in = 1.0 / torch.sqrt(s ** 2 + SIGMA_DATA ** 2)
        return c_skip * x + c_out * self.unet(c_in * x, torch.log(sigma) / 4, tokens)

    def forward(self, x, sigma, ids):
        return self.denoise(x, sigma, self.text(ids))


def edm_loss(model, x0, ids, p_mean=-1.2, p_std=1.2):
    """EDM denoising score matching with the EDM weighting (per-sample mean)."""
    sigma = torch.exp(torch.randn(x0.shape[0], device=x0.device) * p_std + p_mean)
    noisy = x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0)
    weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
    err = (model(noisy, sigma, ids) - x0) ** 2
    return (weight.view(-1, 1, 1, 1) * err).mean()


# --- noise ---------------------------------------------------------------------
# The runtime's noise stream (crates/runtime/src/services/generate/noise.rs): SplitMix64 integers, the top
# 53 bits as a uniform in [0, 1), Box-Muller on consecutive pairs (cosine first).
NOISE_NAME = "splitmix64-box-muller"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def noise(seed, n):
    """The first n standard normal samples (float32) of the stream for `seed`."""
    pairs = (n + 1) // 2
    i = np.arange(1, 2 * pairs + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + i * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    radius = np.sqrt(-2.0 * np.log(1.0 - u[0::2]))
    angle = 2.0 * np.pi * u[1::2]
    out = np.empty(2 * pairs)
    out[0::2] = radius * np.cos(angle)
    out[1::2] = radius * np.sin(angle)
    return out[:n].astype(np.float32)
