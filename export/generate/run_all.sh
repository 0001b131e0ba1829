#!/usr/bin/env bash
# Every step of the generate export, in order, as run for the shipped models.
# CPU steps: 2-core x86, about 45 minutes in all (add --device cuda to train_teacher.py on a
# GPU machine). The shipped few-step generator (sid4gp18) and the GPU rows of the report come
# from run_gpu.sh on one H100 (about 8 minutes); the CPU-only path below ships sid4 instead.
set -euo pipefail
cd "$(dirname "$0")"
python train_teacher.py --steps 6000 --batch 64
python distill.py --name sid1 --method sid --k 1 --guidance cfg --iters 1500
python distill.py --name sid4 --method sid --k 4 --guidance cfg --iters 1500
python distill.py --name sid1_zero --method sid --k 1 --guidance zero --iters 1000
python distill.py --name sid1_anti --method sid --k 1 --guidance anti --iters 1000
python distill.py --name sid1_anti02 --method sid --k 1 --guidance anti --anti -0.2 --iters 1000
python distill.py --name sid1_anti10 --method sid --k 1 --guidance anti --anti -1.0 --iters 1000
python distill.py --name vsd1 --method vsd --k 1 --guidance cfg --iters 1000
few_step=sid4
if [ -n "${GPU_STUDENTS:-}" ]; then  # the folder where run_gpu.sh's students-*.tgz were unpacked
  cp "$GPU_STUDENTS"/*.pt "$GPU_STUDENTS"/*.json "${EDGERUN_GENERATE_WORK:-$HOME/.cache/edgerun-export/generate}/"
  few_step=sid4gp18
fi
python evaluate.py --students sid1,sid4,sid1g,sid4g,sid4gp,sid4gp16,sid4gp18,sid4gp18@2.5/1.8/1.3/1.3,sid1_zero,sid1g_zero,sid1_anti,sid1g_anti,sid1_anti02,sid1_anti10,vsd1,vsd1g
schedule=(); [ "$few_step" = sid4gp18 ] && schedule=(--schedule 4=2.5/1.8/1.3/1.3)  # chosen on validation seeds
python export.py --few-step "$few_step" --one-step sid1 "${schedule[@]}"
