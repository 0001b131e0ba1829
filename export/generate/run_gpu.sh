#!/usr/bin/env bash
# The distillation runs on a GPU machine, all at once on one GPU (the networks are tiny, so
# the runs are bound by kernel launches and share the card well), each bounded by wall clock.
#
#   EDGERUN_GENERATE_WORK=DIR bash export/generate/run_gpu.sh SECONDS OUT [RUN...]
#
# DIR must hold teacher.pt (train_teacher.py's output); every student's .pt/.json lands
# there too, with their logs, and OUT receives them packed as students-*.tgz. Then, on any
# machine: unpack into $WORK, `python evaluate.py --students ...` and `python export.py`.
set -euo pipefail
seconds=${1:?seconds}
out=${2:?out dir}
cd "$(dirname "$0")"
work=${EDGERUN_GENERATE_WORK:?set EDGERUN_GENERATE_WORK to the folder holding teacher.pt}
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
common=(--device "${DEVICE:-cuda}" --batch 256 --ema 0.999 --iters 1000000 --seconds "$seconds" --save-every 2000)
declare -A runs=(
  [sid1g]="--k 1 --guidance cfg"
  [sid4g]="--k 4 --guidance cfg"
  [sid4gp]="--k 4 --guidance cfg --fake-per-step"
  [sid4g_lr]="--k 4 --guidance cfg --lr 3e-5"
  [sid1g_zero]="--k 1 --guidance zero"
  [sid1g_anti]="--k 1 --guidance anti"
  [vsd1g]="--k 1 --guidance cfg --method vsd"
  # after the first seven: each step at or below sigma 0.55 cost Frechet distance
  [sid4gp16]="--k 4 --guidance cfg --fake-per-step --sigmas 2.5,1.6,1.2,0.8"
  [sid4gp18]="--k 4 --guidance cfg --fake-per-step --sigmas 2.5,1.8,1.3,1.0"
)
selected=("${@:3}")
[ ${#selected[@]} -gt 0 ] || selected=(sid1g sid4g sid4gp sid4g_lr sid1g_zero sid1g_anti vsd1g)
pids=()
for name in "${selected[@]}"; do
  # shellcheck disable=SC2086
  python distill.py --name "$name" ${runs[$name]} "${common[@]}" >"$work/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in "${selected[@]}"; do echo "== $name"; tail -n 2 "$work/$name.log"; done
cd "$work"
# three students per archive keeps each returned file small
for ((i = 0; i < ${#selected[@]}; i += 3)); do
  tar czf "$out/students-$((i / 3)).tgz" $(for n in "${selected[@]:i:3}"; do echo "$n.pt $n.json $n.log"; done)
done
exit $status
