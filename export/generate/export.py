#!/usr/bin/env python3
"""Export the text encoder, the distilled generators and the teacher to ONNX, write
`models/generate/manifest.toml`, and the runtime's parity fixtures.

  python export/generate/export.py [--few-step sid4] [--one-step sid1]

Run after train_teacher.py, distill.py and evaluate.py: point qualities are read from
export/generate_report.json (OCR word accuracy on the held-out prompts).

Each network is a TorchScript-traced ONNX graph (opset 17, batch 1). Weight storage is int8
with one float scale per slice of the first axis (a conv's output channel), expanded in the
graph by Cast + Mul, which the engines fold into constants at load time.

The parity fixtures (tests/fixtures/generate/) are PNGs drawn by ONNX Runtime from the
exported files with the runtime's noise stream; the Rust test must reproduce them.
"""
import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from PIL import Image

from common import (ALPHABET, HEIGHT, MAX_LEN, MIN_LEN, NOISE_NAME, ROOT, WIDTH, WORK, Denoiser,
                    encode_prompt, noise)
from distill import SIGMA_INIT
from sample import karras_sigmas

OUT = ROOT / "models" / "generate"
FIXTURES = ROOT / "tests" / "fixtures" / "generate"
REPORT = ROOT / "export" / "generate_report.json"
TEACHER_STEPS = 50
SOURCE = "trained by export/generate (edgerun), on images rendered from Debian fonts"
LICENSE = "Apache-2.0"
# The latency target (ms, queue wait included) `edgerun serve` adapts the step count to
# unless configured otherwise: about 1.25x the 4-step point's p95 on a 2-core x86 (one
# engine thread, tract).
SLO_MS = 25


class UNetOnly(torch.nn.Module):
    def __init__(self, denoiser):
        super().__init__()
        self.d = denoiser

    def forward(self, x, sigma, tokens):
        return self.d.denoise(x, sigma, tokens)


def quantize_int8(model, min_size=1024):
    """int8 storage for every large float initializer, one scale per first-axis slice."""
    g = model.graph
    keep, nodes = [], []
    for init in g.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.size < min_size or w.ndim < 2:
            keep.append(init)
            continue
        flat = w.reshape(w.shape[0], -1)
        scale = np.abs(flat).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
        scale = scale.astype(np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
        keep += [numpy_helper.from_array(q, init.name + "_q"), numpy_helper.from_array(scale, init.name + "_scale")]
        nodes += [helper.make_node("Cast", [init.name + "_q"], [init.name + "_f"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Mul", [init.name + "_f", init.name + "_scale"], [init.name])]
    del g.initializer[:]
    g.initializer.extend(keep)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return model


def export_onnx(module, args, names, outputs, path):
    tmp = WORK / "tmp.onnx"
    torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=17, input_names=names,
                      output_names=outputs, do_constant_folding=True)
    model = quantize_int8(onnx.load(str(tmp)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def load(name=None):
    d = Denoiser()
    d.load_state_dict(torch.load(WORK / "teacher.pt"))
    if name:
        d.unet.load_state_dict(torch.load(WORK / f"{name}.pt"))
    return d.eval()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def reference_image(text_enc, gen, prompt, seed, sampler, sigmas, guidance):
    """The runtime's pipeline in numpy + ONNX Runtime (see crates/runtime/src/services/generate/mod.rs)."""
    size = 3 * HEIGHT * WIDTH
    tokens = text_enc.run(None, {"ids": encode_prompt(prompt)[None]})[0]
    steps = len(sigmas) if sampler == "renoise" else 1
    z = noise(seed, size * steps).reshape(steps, 1, 3, HEIGHT, WIDTH)

    def denoise(x, sigma, tok):
        return gen.run(None, {"x": x.astype(np.float32), "sigma": np.array([sigma], np.float32),
                              "tokens": tok})[0]

    if sampler == "renoise":
        x = None
        for k, sigma in enumerate(sigmas):
            x_t = sigma * z[k] if x is None else x + sigma * z[k]
            x = denoise(x_t, sigma, tokens)
    else:
        empty = text_enc.run(None, {"ids": encode_prompt("")[None]})[0]
        x = sigmas[0] * z[0]
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:]):
            d = denoise(x, sigma, tokens)
            if guidance != 1.0:
                u = denoise(x, sigma, empty)
                d = u + (d - u) * np.float32(guidance)
            x = d if nxt == 0 else x + (x - d) / np.float32(sigma) * np.float32(nxt - sigma)
    y = (np.clip(x[0], -1, 1) + 1) / 2 * 255 + 0.5
    return np.floor(y).astype(np.uint8).transpose(1, 2, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--few-step", default="sid4")
    ap.add_argument("--one-step", default="")
    ap.add_argument("--schedule", action="append", default=[], metavar="K=S1/S2/..",
                    help="the K-step point samples with these sigmas instead of the trained schedule's "
                         "first K (evaluate.py must have measured FEW_STEP@S1/S2/..)")
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--fixture-prompts", default="E,R,7")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder layer has no ONNX form
    report = json.loads(REPORT.read_text())
    quality = {(r["name"], r["steps"]): r["ocr_accuracy"] for r in report["rows"]}

    teacher = load()
    export_onnx(teacher.text, (torch.from_numpy(encode_prompt("E")[None]),), ["ids"], ["tokens"],
                OUT / "text_encoder.onnx")
    x = torch.randn(1, 3, HEIGHT, WIDTH)
    sigma = torch.tensor([SIGMA_INIT])
    tokens = teacher.text(torch.from_numpy(encode_prompt("E")[None]))
    files = [("text_encoder.onnx", "text_encoder",
              f"character ids [1,{MAX_LEN}] (0 = pad) -> tokens [1,{MAX_LEN},64]; shared by every generator")]
    points = []
    export_onnx(UNetOnly(teacher), (x, sigma, tokens), ["x", "sigma", "tokens"], ["denoised"], OUT / "teacher.onnx")
    files.append(("teacher.onnx", "generator", "the EDM teacher denoiser D(x, sigma, tokens)"))
    teacher_sigmas = [float(s) for s in karras_sigmas(TEACHER_STEPS)]
    points.append({"name": f"teacher:{TEACHER_STEPS}", "quality": quality[(f"teacher cfg {args.cfg:g}", TEACHER_STEPS)],
                   "generator": "teacher.onnx", "sampler": "euler", "sigmas": teacher_sigmas, "guidance": args.cfg})
    if args.one_step:
        export_onnx(UNetOnly(load(args.one_step)), (x, sigma, tokens), ["x", "sigma", "tokens"], ["denoised"],
                    OUT / "sid1.onnx")
        files.append(("sid1.onnx", "generator", f"one-step SiD generator ({args.one_step})"))
        points.append({"name": "sid1:1", "quality": quality[(args.one_step, 1)], "generator": "sid1.onnx",
                       "sampler": "renoise", "sigmas": [SIGMA_INIT]})
    export_onnx(UNetOnly(load(args.few_step)), (x, sigma, tokens), ["x", "sigma", "tokens"], ["denoised"],
                OUT / "sid4.onnx")
    # the schedule the student was trained with (distill.py --sigmas), not the default
    few_step_sigmas = json.loads((WORK / f"{args.few_step}.json").read_text())["sigmas"]
    files.append(("sid4.onnx", "generator", f"few-step SiD generator, K = {len(few_step_sigmas)} ({args.few_step})"))
    overrides = dict(spec.split("=", 1) for spec in args.schedule)
    for k in range(1, len(few_step_sigmas) + 1):
        schedule = overrides.get(str(k))
        sigmas = [float(v) for v in schedule.split("/")] if schedule else few_step_sigmas[:k]
        row = f"{args.few_step}@{schedule}" if schedule else args.few_step
        points.append({"name": f"sid:{k}", "quality": quality[(row, k)], "generator": "sid4.onnx",
                       "sampler": "renoise", "sigmas": sigmas})
    renoise = [p for p in points if p["sampler"] == "renoise"]
    best = max(p["quality"] for p in renoise)
    default = min((p for p in renoise if p["quality"] >= best - 0.02), key=lambda p: len(p["sigmas"]))

    lines = ['# Written by export/generate/export.py; do not edit by hand.',
             'service = "generate"',
             'quality_metric = "OCR accuracy (PP-OCR small, case-insensitive alphanumeric) on all 32 '
             f'characters x {report["seeds"]} seeds x {report.get("repeats", 1)} seed sets, '
             'export/generate/evaluate.py"', f'default_point = "{default["name"]}"', f'slo_ms = {SLO_MS}', '',
             '[settings]', f'alphabet = "{ALPHABET}"', f'min_len = {MIN_LEN}', f'max_len = {MAX_LEN}',
             'uppercase = true', f'height = {HEIGHT}', f'width = {WIDTH}', 'output_range = [-1.0, 1.0]',
             f'noise = "{NOISE_NAME}"', '']
    for file, role, desc in files:
        lines += ['[[files]]', f'file = "{file}"', f'role = "{role}"', f'description = "{desc}"',
                  f'sha256 = "{sha256(OUT / file)}"', f'source = "{SOURCE}"', f'license = "{LICENSE}"',
                  'transform = "torch.onnx.export (opset 17), int8 weight storage per output channel"', '']
    for p in points:
        lines += ['[[points]]', f'name = "{p["name"]}"', f'quality = {p["quality"]:.4f}',
                  f'generator = "{p["generator"]}"', f'sampler = "{p["sampler"]}"',
                  'sigmas = [' + ", ".join(f"{s:.6g}" for s in p["sigmas"]) + ']']
        if "guidance" in p:
            lines.append(f'guidance = {p["guidance"]}')
        lines.append('')
    (OUT / "manifest.toml").write_text("\n".join(lines))

    # parity fixtures: the default point and the teacher for a few prompts
    shutil.rmtree(FIXTURES, ignore_errors=True)
    FIXTURES.mkdir(parents=True)
    text_enc = session(OUT / "text_encoder.onnx")
    cases = []
    for p in [default, points[0]] + ([renoise[-1]] if renoise[-1] is not default else []):
        gen = session(OUT / p["generator"])
        for i, prompt in enumerate(args.fixture_prompts.split(",")):
            if p["sampler"] == "euler" and i > 0:
                continue  # one teacher image is enough (it takes 100 evaluations)
            img = reference_image(text_enc, gen, prompt, i, p["sampler"], p["sigmas"], p.get("guidance", 1.0))
            name = f"{p['name'].replace(':', '_')}_{prompt}_{i}.png"
            Image.fromarray(img).save(FIXTURES / name)
            cases.append({"file": name, "prompt": prompt, "seed": i, "point": p["name"]})
    (FIXTURES / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB), default point {default['name']}, {len(cases)} fixtures")


if __name__ == "__main__":
    main()
