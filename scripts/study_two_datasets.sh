#!/usr/bin/env bash
# The two-dataset study of issue 16 (docs/results/2026-12-01-study-two-datasets.md), on the CPU: the MNI152 example and the
# real prostate slices, with the paper's multi-dataset route, a SAM pre-trained on both
# datasets' training splits before fine-tuning on each (SupSAM: `tunesam pretrain prompt` on the
# labelled sets; SSLSAM: `tunesam pretrain mae` on the same scans prepared image-only), then
# docs/study_two.yaml and its report.
#   scripts/study_two_datasets.sh [WORK]     (default: work; needs LiteMedSAM's weights)
# The prostate lists (train_5shot.csv, val_5shot.csv: ten slices of nine patients, no test list)
# are pooled into one list and split by patient (seeded 7:1:2: 6 / 1 / 2 patients), so the
# study has a test set there. A finished docs/study_brain.yaml study in WORK/study_brain lends
# its brain cells (the same settings, which the study checks cell by cell) instead of
# retraining them.
set -euo pipefail
W=${1:-work}
SRC=${PROSTATE:-../shared/data/finetune-sam-demo/MRI-Prostate}
TS=${TUNESAM:-tunesam}
mkdir -p "$W"
t() { local s=$SECONDS; "$@"; echo "($(( SECONDS - s )) s: $*)"; }
[ -f "$W/mni152/manifest.json" ] || t "$TS" prepare --example mni152 --out "$W/mni152"
cat "$SRC/train_5shot.csv" "$SRC/val_5shot.csv" > "$W/prostate_all.csv"
[ -f "$W/prostate/manifest.json" ] || t "$TS" prepare "$W/prostate_all.csv" --root "$(dirname "$SRC")" \
  --out "$W/prostate" --labels merge
# Pre-training on both training splits (the paper pre-trains on every MRI training set), from
# LiteMedSAM, 2 epochs each: a CPU-sized run.
[ -f "$W/supsam/summary.json" ] || t "$TS" pretrain prompt --data "$W/mni152" "$W/prostate" --out "$W/supsam" \
  --checkpoint litemedsam --epochs 2 --warmup 10 --device cpu --quiet $([ -d "$W/supsam" ] && echo --resume)
# SSLSAM reads images only, as the paper's ("the mask information was ignored"): the same scans
# prepared image-only (--unlabelled: every non-blank slice, the same patient split).
[ -f "$W/mni152_images/manifest.json" ] || t "$TS" prepare --example mni152 --out "$W/mni152_images" --unlabelled
[ -f "$W/prostate_images/manifest.json" ] || t "$TS" prepare "$SRC/images" --out "$W/prostate_images" --unlabelled
python3 - "$W" <<'PY'  # pre-training must not see a test patient: the image-only splits are the same
import json, sys
w = sys.argv[1]
for a, b in (("mni152", "mni152_images"), ("prostate", "prostate_images")):
    split = [json.load(open(f"{w}/{d}/manifest.json"))["split"] for d in (a, b)]
    assert split[0] == split[1], f"{a} and {b} are split differently"
PY
[ -f "$W/sslsam/summary.json" ] || t "$TS" pretrain mae --data "$W/mni152_images" "$W/prostate_images" \
  --out "$W/sslsam" --checkpoint litemedsam --epochs 2 --batch-size 2 --accumulate 1 --lr 1e-4 --device cpu \
  --quiet $([ -d "$W/sslsam" ] && echo --resume)
if [ -d "$W/study_brain/cells/brain" ] && [ ! -d "$W/study_two/cells/brain" ]; then
  mkdir -p "$W/study_two/cells" "$W/study_two/embeddings"
  cp -r "$W/study_brain/cells/brain" "$W/study_two/cells/"
  [ -d "$W/study_brain/embeddings/brain" ] && cp -r "$W/study_brain/embeddings/brain" "$W/study_two/embeddings/"
fi
t "$TS" study docs/study_two.yaml --out "$W/study_two"
t "$TS" study report "$W/study_two"
