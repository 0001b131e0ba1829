#!/usr/bin/env bash
# Every step of the generate export, in order, as run for the shipped models (2-core x86
# CPU, about 45 minutes in all; add --device cuda to train_teacher.py on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")"
python train_teacher.py --steps 6000 --batch 64
python distill.py --name sid1 --method sid --k 1 --guidance cfg --iters 1500
python distill.py --name sid4 --method sid --k 4 --guidance cfg --iters 1500
python distill.py --name sid1_zero --method sid --k 1 --guidance zero --iters 1000
python distill.py --name sid1_anti --method sid --k 1 --guidance anti --iters 1000
python distill.py --name vsd1 --method vsd --k 1 --guidance cfg --iters 1000
python evaluate.py
python export.py --few-step sid4 --one-step sid1
