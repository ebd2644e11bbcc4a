#!/usr/bin/env bash
# Train the demo models end to end on COCO_MVal, on CPU (~30-35 min on 2 free cores):
#   1. configs/demo_tiny.yaml         SAM-architecture model from scratch (all parts, NFL,
#                                     iterative clicks, half the samples starting from a box)
#                                                            -> $WEIGHTS/demo_sam.safetensors
#   2. steadysam embed                fp16 embedding cache of the frozen stage-1 encoder
#      configs/demo_tiny_stage2.yaml  FocSAM refiner on top, the rest frozen (NFL + PTL)
#                                                            -> $WEIGHTS/demo_focsam.safetensors
#   3. configs/demo_tiny_rts.yaml     Stable-SAM plugin in the stage-1 decoder, the rest frozen
#                                     (RTS: boxes / noisy boxes / points, BCE + Dice), same cache
#                                                     -> $WEIGHTS/demo_stable_plugin.safetensors
# Resumable: if interrupted, run it again; every stage continues from its last checkpoint
# (a finished stage just re-exports). Everything else goes to $RUN (default runs/demo).
#
# Replacing the shipped weights is this script's deliberate act: training itself never writes
# into the package (a run.export / run.out_dir inside src/steadysam is a config error), so after
# each stage the script copies the stage's result from $RUN to $WEIGHTS (temporary file + mv).
#
# Environment: STEADYSAM_DATA (default ../shared/data), RUN, WEIGHTS, PY (the python to use),
# STAGE1_ARGS / STAGE2_ARGS / STAGE3_ARGS (extra key=value overrides, e.g. STAGE1_ARGS="iters=100"
# or STAGE3_ARGS="epochs=null iters=20" for a smoke run into another RUN / WEIGHTS).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATA=${STEADYSAM_DATA:-../shared/data}
RUN=${RUN:-runs/demo}
WEIGHTS=${WEIGHTS:-src/steadysam/weights}
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine, spinning threads
# made an iteration ~8x slower in our measurements.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

data=(
  "data.datasets.0.images=$DATA/COCO_MVal/images"
  "data.datasets.0.masks=$DATA/COCO_MVal/masks"
)
stage1="$RUN/stage1/final.safetensors"
start=$SECONDS

# publish SRC DEST: copy a trained file over a shipped one, atomically (temporary file + mv).
publish() {
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2.tmp.$$"
  mv -f "$2.tmp.$$" "$2"
  echo "exported $1 -> $2"
}

echo "== stage 1: SAM from scratch -> $WEIGHTS/demo_sam.safetensors"
# shellcheck disable=SC2086  # STAGE1_ARGS is a list of overrides
$PY -m steadysam train configs/demo_tiny.yaml "${data[@]}" \
  "run.out_dir=$RUN/stage1" ${STAGE1_ARGS:-}
publish "$stage1" "$WEIGHTS/demo_sam.safetensors"

echo "== embedding cache (stage-1 encoder, fp16) -> $RUN/cache"
$PY -m steadysam embed configs/demo_tiny_stage2.yaml "${data[@]}" \
  "model.checkpoint=$stage1" --out "$RUN/cache" --fp16

echo "== stage 2: FocSAM refiner -> $WEIGHTS/demo_focsam.safetensors"
# shellcheck disable=SC2086
$PY -m steadysam train configs/demo_tiny_stage2.yaml "${data[@]}" \
  "model.checkpoint=$stage1" "data.cache=$RUN/cache" \
  "run.out_dir=$RUN/stage2" ${STAGE2_ARGS:-}
publish "$RUN/stage2/final.safetensors" "$WEIGHTS/demo_focsam.safetensors"

echo "== stage 3: Stable-SAM plugin (RTS) -> $WEIGHTS/demo_stable_plugin.safetensors"
# The stage-1 encoder is frozen here too: the stage-2 cache serves (this only checks it).
$PY -m steadysam embed configs/demo_tiny_rts.yaml "${data[@]}" \
  "model.checkpoint=$stage1" --out "$RUN/cache" --fp16 --measure 0 --no-progress
# shellcheck disable=SC2086
$PY -m steadysam train configs/demo_tiny_rts.yaml "${data[@]}" \
  "model.checkpoint=$stage1" "data.cache=$RUN/cache" "run.out_dir=$RUN/rts" ${STAGE3_ARGS:-}
publish "$RUN/rts/plugin.safetensors" "$WEIGHTS/demo_stable_plugin.safetensors"

for f in "$WEIGHTS/demo_sam.safetensors" "$WEIGHTS/demo_focsam.safetensors" \
  "$WEIGHTS/demo_stable_plugin.safetensors"; do
  size=$(stat -c %s "$f")
  echo "$f: $((size / 1024)) KiB"
  if [ "$size" -gt $((25 * 1024 * 1024)) ]; then
    echo "error: $f is larger than 25 MB" >&2
    exit 1
  fi
done
$PY - "$WEIGHTS" <<'PY'
import sys
from steadysam.weights.factory import build_model
for name in ("demo_sam", "demo_focsam"):
    m = build_model(checkpoint=f"{sys.argv[1]}/{name}.safetensors")
    print(f"{name}: loads, refiner={m.refiner is not None}, input {m.image_size} px")
m = build_model(
    checkpoint=f"{sys.argv[1]}/demo_sam.safetensors",
    plugin=f"{sys.argv[1]}/demo_stable_plugin.safetensors",
)
n = sum(p.numel() for p in m.plugin_parameters())
print(f"demo_stable_plugin: loads on demo_sam, {n} plugin parameters")
PY
echo "done in $(( (SECONDS - start) / 60 )) min; logs and loss plots in $RUN/{stage1,stage2,rts}/"
