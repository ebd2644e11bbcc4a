#!/usr/bin/env bash
# Evaluate the built-in demo models on GrabCut, Berkeley and DAVIS-345 (never on COCO_MVal, the
# training set), then put the runs side by side:
#   1. NoC protocol, 20 clicks: demo_sam, demo_focsam, demo_stable_sam, demo_stable_focsam
#   2. prompt robustness (Stable-SAM protocol): GT box, noisy boxes 0.2 / 0.4, 1 and 3 random
#      points, 10 seeded draws each (the same prompts for every model): mIoU, mBIoU, stability;
#      demo_sam and demo_stable_sam only: that protocol decodes one prompt without a click
#      session, so the FocSAM refiner never runs and the *_focsam demos give the same numbers
# Resumable: re-run to continue a killed evaluation.
#
# Environment: STEADYSAM_DATA (default ../shared/data), RUN (default runs/demo), PY.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATA=${STEADYSAM_DATA:-../shared/data}
RUN=${RUN:-runs/demo}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
MODELS=(demo_sam demo_focsam demo_stable_sam demo_stable_focsam)
PROMPTS=gt-box,noisy-box:0.2,noisy-box:0.4,points:1,points:3

runs=()
for ds in GrabCut Berkeley DAVIS345; do
  for model in "${MODELS[@]}"; do
    $PY -m steadysam eval --model "$model" --dataset "$ds" --data-root "$DATA" --clicks 20 \
      --out "$RUN/eval/$model-$ds"
    runs+=("$RUN/eval/$model-$ds")
  done
  for model in demo_sam demo_stable_sam; do
    $PY -m steadysam eval-prompts --model "$model" --dataset "$ds" --data-root "$DATA" \
      --prompts "$PROMPTS" --draws 10 --seed 0 --out "$RUN/eval-prompts/$model-$ds"
  done
done
$PY -m steadysam report "${runs[@]}" --out "$RUN/report"
for ds in GrabCut Berkeley DAVIS345; do
  $PY -m steadysam report "$RUN"/eval-prompts/*-"$ds" --out "$RUN/report-prompts/$ds"
done
