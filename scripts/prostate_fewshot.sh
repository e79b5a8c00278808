#!/usr/bin/env bash
# The paper's few-shot question on the real prostate slices (docs/results/2026-12-01-prostate-fewshot.md, "LiteMedSAM on the prostate
# slices"): LiteMedSAM zero-shot with boxes, LiteMedSAM fine-tuned 5-shot for automated
# segmentation, and the same recipe from random weights. CPU, about 10 minutes.
# Usage: scripts/prostate_fewshot.sh [PROSTATE_LISTS_FOLDER] [WORK_DIR] [EPOCHS]
set -euo pipefail
SRC=${1:-../shared/data/finetune-sam-demo/MRI-Prostate}
WORK=${2:-work/prostate-fewshot}
EPOCHS=${3:-200}
TS=${TUNESAM:-tunesam}
mkdir -p "$WORK"
t() { local s=$SECONDS; "$@"; echo "($(( SECONDS - s )) s)"; }
t "$TS" prepare "$SRC" --out "$WORK/data" --labels merge
# The lists have no test set: everything is scored on the val list, and the fine-tuned runs
# are scored at their last epoch (--weights last), so nothing is selected on the scored set.
t "$TS" evaluate --checkpoint litemedsam --data "$WORK/data" --mode box --split val --cache-embeddings \
  --out "$WORK/zero_shot.json"
common=(--tune decoder --method vanilla --few-shot 5 --epochs "$EPOCHS" --lr 5e-4 --warmup 10 --cache-embeddings --device cpu)
for start in litemedsam random; do
  if [ "$start" = litemedsam ]; then init=(--checkpoint litemedsam); else init=(--arch litemedsam); fi
  rm -rf "$WORK/$start-5shot"
  t "$TS" train --data "$WORK/data" --out "$WORK/$start-5shot" "${init[@]}" "${common[@]}" | tail -n 3
  t "$TS" evaluate "$WORK/$start-5shot" --split val --weights last
done
