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

  python export/generate/evaluate.py [--seeds 32] [--repeats 4] [--out export/generate_report.json]

Every row is measured on `--repeats` disjoint seed sets (each against its own fresh
renders) and reports the mean and the standard deviation across them: differences between
rows smaller than that spread are noise.

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


def draw_by_seed(fn, seeds, base):
    """Every prompt x seeds base .. base + seeds - 1, prompt-major, as uint8 images.
    fn(prompts, seed) draws all prompts from one seed, so a batch is (prompts x one seed)."""
    out = np.zeros((len(EVAL_PROMPTS) * seeds, HEIGHT, WIDTH, 3), np.uint8)
    for s in range(seeds):
        out[s::seeds] = to_uint8(fn(EVAL_PROMPTS, base + s))
    return out


def load_student(name):
    teacher = Denoiser()
    teacher.load_state_dict(torch.load(WORK / "teacher.pt"))
    teacher.unet.load_state_dict(torch.load(WORK / f"{name}.pt"))
    return teacher.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=32, help="seeds per prompt in one set")
    ap.add_argument("--repeats", type=int, default=4,
                    help="disjoint seed sets (and real render sets); rows give mean and sd over them")
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--students", default="sid1,sid4,sid1_zero,sid1_anti,vsd1",
                    help="checkpoints in $WORK; NAME@S1/S2/.. measures NAME with that sampler schedule "
                         "(one row) instead of its trained one (one row per step count)")
    ap.add_argument("--out", default=str(ROOT / "export" / "generate_report.json"))
    ap.add_argument("--update", action="store_true", help="keep --out's rows and measure only the missing ones")
    args = ap.parse_args()
    previous = json.loads(Path(args.out).read_text()) if args.update else {"rows": [], "students": {}}
    torch.set_grad_enabled(False)
    judge = Judge()
    # prompt-major order: seeds of one prompt are adjacent (for diversity)
    prompts = [p for p in EVAL_PROMPTS for _ in range(args.seeds)]
    truth = [normalise(p) for p in prompts]
    # Set r draws seeds 1000 + r * seeds ... (no training step used them; the few-step
    # schedule was chosen on seeds 5000..5063) and compares with its own fresh renders.
    bases = [1000 + r * args.seeds for r in range(args.repeats)]
    real_images = [make_dataset(len(prompts), seed=12345 + r, prompts=prompts)[0] for r in range(args.repeats)]
    reals = [judge(images)[1] for images in real_images]
    metrics = ("ocr_accuracy", "frechet", "diversity", "pixel_std")
    rows = list(previous["rows"])
    done = {(r["name"], r["steps"]) for r in rows}

    def record(name, family, steps, nfe, draw, **extra):
        """draw(base) -> uint8 images of every prompt x seeds base.. base + seeds - 1."""
        if (name, steps) in done:
            return
        per, t = [], time.time()
        for r, base in enumerate(bases):
            images = draw(base)
            texts, feats = judge(images)
            acc = float(np.mean([normalise(t) == g for t, g in zip(texts, truth)]))
            div, px = diversity(feats, images, args.seeds)
            per.append((acc, frechet(feats, reals[r]), div, px))
        per = np.array(per)
        row = {"name": name, "family": family, "steps": steps, "nfe": nfe, **extra,
               "seconds_per_image": (time.time() - t) / (len(prompts) * len(bases))}
        for i, m in enumerate(metrics):
            row[m], row[m + "_sd"] = float(per[:, i].mean()), float(per[:, i].std(ddof=1)) if len(bases) > 1 else 0.0
        rows.append(row)
        print(f"{name:24s} steps {steps:2d} nfe {nfe:3d} ocr {row['ocr_accuracy']:.3f}±{row['ocr_accuracy_sd']:.3f} "
              f"fd {row['frechet']:7.2f}±{row['frechet_sd']:5.2f} div {row['diversity']:6.3f} "
              f"px {row['pixel_std']:5.1f}  {1e3 * row['seconds_per_image']:6.1f} ms/img", flush=True)

    record("real renders", "data", 0, 0, lambda base: real_images[bases.index(base)])
    # the floor of the Frechet distance at this sample count: a second, independent set of renders
    record("real renders, other seed", "data", 0, 0,
           lambda base: make_dataset(len(prompts), seed=54321 + bases.index(base), prompts=prompts)[0])

    teacher = Denoiser()
    teacher.load_state_dict(torch.load(WORK / "teacher.pt"))
    teacher.eval()

    def by_seed(fn, base):
        return draw_by_seed(fn, args.seeds, base)

    for guidance in (args.cfg, 1.0):
        for steps in ((1, 4, 16, 50) if guidance != 1.0 else (50,)):
            nfe = steps * (2 if guidance != 1.0 else 1)
            tag = f"teacher cfg {guidance:g}" if guidance != 1.0 else "teacher no cfg"
            record(tag, "teacher", steps, nfe,
                   lambda base: by_seed(lambda ps, seed: teacher_sample(teacher, ps, steps, guidance, seed), base))

    students = dict(previous["students"])
    for spec in [s for s in args.students.split(",") if s]:
        name, _, schedule = spec.partition("@")
        if not (WORK / f"{name}.pt").exists():
            print(f"skip {name}: not trained")
            continue
        meta = json.loads((WORK / f"{name}.json").read_text())
        students[name] = meta["args"] | {"sigmas": meta["sigmas"], "iters_done": meta.get("iters_done")}
        gen = load_student(name)
        family = meta["args"]["method"] + "/" + meta["args"]["guidance"]
        if schedule:
            sigmas = [float(v) for v in schedule.split("/")]
            runs = [(spec, sigmas)]
        else:
            runs = [(name, meta["sigmas"][:k]) for k in range(1, len(meta["sigmas"]) + 1)]
        for row_name, sigmas in runs:
            record(row_name, family, len(sigmas), len(sigmas),
                   lambda base: by_seed(lambda ps, seed: student_sample(gen, gen.text, ps, sigmas, seed), base),
                   sigmas=sigmas)

    report = {"prompts": EVAL_PROMPTS, "seeds": args.seeds, "repeats": args.repeats, "seed_bases": bases,
              "cfg": args.cfg, "rows": rows, "few_step_sigmas": FEW_STEP_SIGMAS, "sigma_init": SIGMA_INIT,
              "students": students}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
