#!/usr/bin/env python3
"""Choose a few-step generator's K-step sampler schedule on validation seeds.

The last trained step of the shipped student (sigma 1.0 for sid4gp18) cost Frechet
distance: a fourth step at that low a noise level brings back the teacher's fine speckle
(the 50-step teacher scores ~100). This measures candidate K-step schedules on two sets of
validation seeds (5000.., against their own fresh renders) that the report
(evaluate.py, seeds 1000..1127) never uses, so the choice does not peek at the figures
it is reported with.

  python export/generate/choose_schedule.py [--student sid4gp18]
"""
import argparse

import numpy as np
import torch

from common import EVAL_PROMPTS, make_dataset
from evaluate import Judge, draw_by_seed, frechet, load_student, normalise
from sample import student_sample

CANDIDATES = ([2.5], [2.5, 1.8, 1.3], [2.5, 1.8, 1.3, 1.0], [2.5, 1.8, 1.3, 1.15], [2.5, 1.8, 1.3, 1.3],
              [2.5, 1.8, 1.8, 1.3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="sid4gp18")
    ap.add_argument("--seeds", type=int, default=32)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    judge = Judge()
    prompts = [p for p in EVAL_PROMPTS for _ in range(args.seeds)]
    truth = [normalise(p) for p in prompts]
    bases = (5000, 5000 + args.seeds)
    reals = [judge(make_dataset(len(prompts), seed=777 + r, prompts=prompts)[0])[1] for r in range(len(bases))]
    gen = load_student(args.student)
    for sigmas in CANDIDATES:
        accs, fds = [], []
        for r, base in enumerate(bases):
            out = draw_by_seed(lambda ps, seed: student_sample(gen, gen.text, ps, sigmas, seed), args.seeds, base)
            texts, feats = judge(out)
            accs.append(np.mean([normalise(t) == g for t, g in zip(texts, truth)]))
            fds.append(frechet(feats, reals[r]))
        print(f"{'/'.join(f'{v:g}' for v in sigmas):20s} ocr {np.mean(accs):.3f} fd {np.mean(fds):.2f}", flush=True)


if __name__ == "__main__":
    main()
