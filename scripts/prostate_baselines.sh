#!/usr/bin/env bash
# The three baselines on the real prostate lists (docs/baselines.md), on the CPU: UNet and
# SwinUNETR (MONAI) and nnU-Net (nnunetv2: pip install -e ".[baselines]"), trained on the lists'
# 5 training slices and scored on the 5 validation slices at their last epoch (the lists have
# no test set, so nothing is selected on the scored set). A reduced setting sized for a CPU.
# Usage: scripts/prostate_baselines.sh [PROSTATE_LISTS_FOLDER] [WORK_DIR]
set -euo pipefail
SRC=${1:-../shared/data/finetune-sam-demo/MRI-Prostate}
WORK=${2:-work/prostate-baselines}
TS=${TUNESAM:-tunesam}
mkdir -p "$WORK"
t() { local s=$SECONDS; "$@"; echo "($(( SECONDS - s )) s)"; }
t "$TS" prepare "$SRC" --out "$WORK/data" --labels merge
for name in unet swinunetr; do
  rm -rf "$WORK/$name"
  t "$TS" baseline "$name" --data "$WORK/data" --out "$WORK/$name" --epochs 100 --lr 1e-3 --warmup 25 \
    --patience 0 --device cpu --quiet | tail -n 2
  t "$TS" evaluate "$WORK/$name" --split val --weights last
done
rm -rf "$WORK/nnunet"
t "$TS" baseline nnunet --data "$WORK/data" --out "$WORK/nnunet" --epochs 10 --iterations 5 --device cpu > "$WORK/nnunet.log"
t "$TS" evaluate "$WORK/nnunet" --split val --weights last
ls "$WORK/nnunet/nnunet/preprocessed/Dataset501_tunesam/nnUNetPlans.json" \
   "$WORK"/nnunet/nnunet/results/*/*/fold_0/checkpoint_final.pth
