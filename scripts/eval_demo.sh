#!/usr/bin/env bash
# Evaluate the built-in demo models (FocSAM demo vs its own no-refiner baseline) with the NoC
# protocol on GrabCut, Berkeley and DAVIS-345 (never on COCO_MVal, the training set), 20 clicks,
# then put the runs side by side. Resumable: re-run to continue a killed evaluation.
#
# Environment: STEADYSAM_DATA (default ../shared/data), RUN (default runs/demo), PY.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATA=${STEADYSAM_DATA:-../shared/data}
RUN=${RUN:-runs/demo}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

runs=()
for ds in GrabCut Berkeley DAVIS345; do
  for model in demo_sam demo_focsam; do
    $PY -m steadysam eval --model "$model" --dataset "$ds" --data-root "$DATA" --clicks 20 \
      --out "$RUN/eval/$model-$ds"
    runs+=("$RUN/eval/$model-$ds")
  done
done
$PY -m steadysam report "${runs[@]}" --out "$RUN/report"
