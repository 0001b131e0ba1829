#!/usr/bin/env python3
"""Evaluate the teacher and the distilled generators with the papers' protocol at small scale.

  alignment  accuracy of edgerun's own OCR recognizer (PP-OCR small, ASCII decoding,
             case-insensitive alphanumeric) on images of every prompt from seeds no
             training step used: the CLIP-score analogue
  fidelity   Frechet distance between generated and freshly rendered real images
             of the same prompts (other seeds than the training set's), on the recognizer's 120-d sequence features
             (mean over time of the input to its classifier): the FID analogue
  diversity  mean pairwise feature distance between the seeds of one prompt
             (real renders give the reference), and the per-pixel std across seeds

  python export/generate/evaluate.py [--seeds 8] [--out export/generate_report.json]

Every sample is drawn from fixed seeds, so the table is reproducible.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from common import EVAL_PROMPTS, HEIGHT, ROOT, WIDTH, WORK, Denoiser, make_dataset, to_uint8
from distill import FEW_STEP_SIGMAS, SIGMA_INIT
from sample import student_sample, teacher_sample

sys.path.insert(0, str(ROOT / "export"))
from reference_ocr import Recognizer  # noqa: E402

FEATURE_TENSOR = "p2o.pd_op.transpose.8.0"  # [N, T, 120], the input of rec_small's classifier


class Judge:
    """PP-OCR small: text and features of generated images."""

    def __init__(self):
        models = ROOT / "models" / "ocr"
        self.rec = Recognizer("small", models / "rec_small.onnx", models / "dict_small.txt", 2, True)
        graph = onnx.load(str(models / "rec_small.onnx"))
        graph.graph.output.append(onnx.helper.make_tensor_value_info(FEATURE_TENSOR, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images):
        """uint8 NHWC RGB -> (texts, features [N, 120]); PP-OCR reads BGR."""
        bgr = images[..., ::-1]
        width = self.rec.batch_width(list(bgr))
        texts, feats = [], []
        for start in range(0, len(bgr), 64):
            x = np.stack([self.rec.prepare(np.ascontiguousarray(img), width) for img in bgr[start:start + 64]])
            probs, f = self.session.run(None, {self.input: x})
            texts += [self.rec.decode(p)[0] for p in probs]
            feats.append(f.mean(axis=1))
        return texts, np.concatenate(feats)


def normalise(text):
    return "".join(c for c in text.upper() if c.isalnum())


def frechet(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(ca cb) = tr sqrt(sa cb sa) with sa = ca^(1/2): symmetric, so eigh suffices
    w, v = np.linalg.eigh(ca)
    sa = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(sa @ cb @ sa), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_covmean)


def diversity(feats, images, seeds):
    """(mean pairwise feature distance, mean per-pixel std) across the seeds of each prompt."""
    f = feats.reshape(-1, seeds, feats.shape[-1])
    d = np.linalg.norm(f[:, :, None] - f[:, None], axis=-1)
    pair = d.sum(axis=(1, 2)) / (seeds * (seeds - 1))
    px = images.reshape(-1, seeds, *images.shape[1:]).astype(np.float32).std(axis=1).mean()
    return float(pair.mean()), float(px)


def load_student(name):
    teacher = Denoiser()
    teacher.load_state_dict(torch.load(WORK / "teacher.pt"))
    teacher.unet.load_state_dict(torch.load(WORK / f"{name}.pt"))
    return teacher.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--students", default="sid1,sid4,sid1_zero,sid1_anti,vsd1")
    ap.add_argument("--out", default=str(ROOT / "export" / "generate_report.json"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    judge = Judge()
    # prompt-major order: seeds of one prompt are adjacent (for diversity)
    prompts = [p for p in EVAL_PROMPTS for _ in range(args.seeds)]
    truth = [normalise(p) for p in prompts]
    real, _ = make_dataset(len(prompts), seed=12345, prompts=prompts)
    real_texts, real_feats = judge(real)

    rows = []

    def record(name, family, steps, nfe, images, seconds):
        texts, feats = judge(images)
        acc = float(np.mean([normalise(t) == g for t, g in zip(texts, truth)]))
        div, px = diversity(feats, images, args.seeds)
        row = {"name": name, "family": family, "steps": steps, "nfe": nfe, "ocr_accuracy": acc,
               "frechet": frechet(feats, real_feats), "diversity": div, "pixel_std": px,
               "seconds_per_image": seconds / len(images)}
        rows.append(row)
        print(f"{name:24s} steps {steps:2d} nfe {nfe:3d} ocr {acc:.3f} fd {row['frechet']:8.2f} "
              f"div {div:6.3f} px {px:5.1f}  {1e3 * row['seconds_per_image']:6.1f} ms/img", flush=True)

    real_acc = float(np.mean([normalise(t) == g for t, g in zip(real_texts, truth)]))
    real_div, real_px = diversity(real_feats, real, args.seeds)
    rows.append({"name": "real renders", "family": "data", "steps": 0, "nfe": 0, "ocr_accuracy": real_acc,
                 "frechet": 0.0, "diversity": real_div, "pixel_std": real_px, "seconds_per_image": 0.0})
    print(f"{'real renders':24s} ocr {real_acc:.3f} div {real_div:6.3f} px {real_px:5.1f}")

    teacher = Denoiser()
    teacher.load_state_dict(torch.load(WORK / "teacher.pt"))
    teacher.eval()
    # one seed per sample index: seed s covers all prompts, so a batch is (prompts x one seed)
    def by_seed(fn):
        out = np.zeros((len(prompts), HEIGHT, WIDTH, 3), np.uint8)
        for s in range(args.seeds):
            out[s::args.seeds] = to_uint8(fn(EVAL_PROMPTS, 1000 + s))
        return out

    for guidance in (args.cfg, 1.0):
        for steps in ((1, 4, 16, 50) if guidance != 1.0 else (50,)):
            t = time.time()
            imgs = by_seed(lambda ps, seed: teacher_sample(teacher, ps, steps, guidance, seed))
            nfe = steps * (2 if guidance != 1.0 else 1)
            tag = f"teacher cfg {guidance:g}" if guidance != 1.0 else "teacher no cfg"
            record(tag, "teacher", steps, nfe, imgs, time.time() - t)

    for name in [s for s in args.students.split(",") if s]:
        if not (WORK / f"{name}.pt").exists():
            print(f"skip {name}: not trained")
            continue
        meta = json.loads((WORK / f"{name}.json").read_text())
        gen = load_student(name)
        sigmas = meta["sigmas"]
        for steps in range(1, len(sigmas) + 1):
            t = time.time()
            imgs = by_seed(lambda ps, seed: student_sample(gen, gen.text, ps, sigmas[:steps], seed))
            record(name, meta["args"]["method"] + "/" + meta["args"]["guidance"], steps, steps, imgs, time.time() - t)

    report = {"prompts": EVAL_PROMPTS, "seeds": args.seeds, "cfg": args.cfg, "rows": rows,
              "few_step_sigmas": FEW_STEP_SIGMAS, "sigma_init": SIGMA_INIT}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
