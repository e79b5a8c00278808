#!/usr/bin/env bash
# Pre-training before fine-tuning, at tiny scale on the CPU (docs/results/2026-12-01-pretrain-tiny.md): from
# LiteMedSAM, fine-tune directly vs after `pretrain mae` vs after `pretrain prompt` on the
# other dataset. Two directions:
#   A: pre-train on the MNI152 example's training slabs, fine-tune on the prostate lists (5
#      train slices) and score their 5 validation slices at the last epoch (the lists have no
#      test set, so nothing is selected on the scored set);
#   B: pre-train on the prostate lists, fine-tune on MNI152 and score its test slabs;
#   C: MobileSAM's architecture (vit_t, random weights: its file is not on PyPI) at 256 px and
#      a tiny test ViT at 64 px, both objectives on the two datasets pooled, then train and
#      evaluate on MNI152: every architecture family through the whole path, not a ranking.
# Every setting below was fixed before any score was seen; the same fine-tuning recipe for
# the three starting points. Usage: scripts/pretrain_comparison.sh [WORK_DIR] [A|B|C|ABC]
set -euo pipefail
WORK=${1:-work/pretrain}
WHICH=${2:-ABC}
SRC=${PROSTATE:-../shared/data/finetune-sam-demo/MRI-Prostate}
TS=${TUNESAM:-tunesam}
mkdir -p "$WORK"
t() { local s=$SECONDS; "$@"; echo "($(( SECONDS - s )) s)"; }
[ -f "$WORK/mni152/manifest.json" ] || t "$TS" prepare --example mni152 --out "$WORK/mni152"
[ -f "$WORK/prostate/manifest.json" ] || t "$TS" prepare "$SRC" --out "$WORK/prostate" --labels merge
COMMON=(--checkpoint litemedsam --device cpu --quiet)

pretrain_pair() {  # $1 source dataset, $2 epochs, $3 out prefix
  [ -f "$3-mae/summary.json" ] || t "$TS" pretrain mae --data "$1" --out "$3-mae" "${COMMON[@]}" --epochs "$2" \
    --batch-size 2 --accumulate 1 --lr 1e-4 $([ -d "$3-mae" ] && echo --resume)
  [ -f "$3-prompt/summary.json" ] || t "$TS" pretrain prompt --data "$1" --out "$3-prompt" "${COMMON[@]}" \
    --epochs "$2" --warmup 10 $([ -d "$3-prompt" ] && echo --resume)
}

finetune() {  # $1 target data, $2 out folder, $3 start checkpoint, $4 split scored, $5 weights, rest: train flags
  local data=$1 out=$2 start=$3 split=$4 weights=$5
  shift 5
  [ -f "$out/summary.json" ] || t "$TS" train --data "$data" --out "$out" --checkpoint "$start" --device cpu --quiet \
    "$@" $([ -d "$out" ] && echo --resume)
  "$TS" evaluate "$out" --split "$split" --weights "$weights" | grep "^mean"
}

if [[ $WHICH == *B* ]]; then
  pretrain_pair "$WORK/prostate" 10 "$WORK/B-pre"
  for start in litemedsam "$WORK/B-pre-mae/checkpoint.pth" "$WORK/B-pre-prompt/checkpoint.pth"; do
    name=$(basename "$(dirname "$start")"); [ "$start" = litemedsam ] && name=direct
    echo "== B: MNI152 decoder vanilla from $name (the demo's recipe)"
    finetune "$WORK/mni152" "$WORK/B-ft-$name" "$start" test best --tune decoder --method vanilla \
      --cache-embeddings --lr 5e-4 --warmup 10 --epochs 10 --patience 0
  done
fi
if [[ $WHICH == *A* ]]; then
  pretrain_pair "$WORK/mni152" 2 "$WORK/A-pre"
  for start in litemedsam "$WORK/A-pre-mae/checkpoint.pth" "$WORK/A-pre-prompt/checkpoint.pth"; do
    name=$(basename "$(dirname "$start")"); [ "$start" = litemedsam ] && name=direct
    echo "== A: prostate 5-shot decoder vanilla from $name (the recipe of scripts/prostate_fewshot.sh)"
    finetune "$WORK/prostate" "$WORK/A-ft-dec-$name" "$start" val last --tune decoder --method vanilla \
      --few-shot 5 --cache-embeddings --lr 5e-4 --warmup 10 --epochs 200
    echo "== A: prostate 5-shot encoder+decoder adapter from $name (Table 4's SSLSAM setting)"
    finetune "$WORK/prostate" "$WORK/A-ft-encdec-$name" "$start" val last --tune encoder-decoder --method adapter \
      --few-shot 5 --lr 1e-4 --warmup 10 --epochs 10
  done
fi
if [[ $WHICH == *C* ]]; then
  for spec in vit_t:256 vit_test:64; do
    arch=${spec%%:*} size=${spec##*:}
    for objective in mae prompt; do
      out="$WORK/C-$arch-$objective"
      [ -f "$out/summary.json" ] || t "$TS" pretrain "$objective" --data "$WORK/mni152" "$WORK/prostate" --out "$out" \
        --arch "$arch" --image-size "$size" --epochs 5 --lr 1e-3 --warmup 10 --device cpu --quiet \
        $([ "$objective" = mae ] && echo --accumulate 1) $([ -d "$out" ] && echo --resume)
      cat "$out/log.csv"
      echo "== C: MNI152 decoder vanilla from $out/checkpoint.pth"
      finetune "$WORK/mni152" "$WORK/C-ft-$arch-$objective" "$out/checkpoint.pth" test best --tune decoder \
        --method vanilla --image-size "$size" --lr 1e-3 --warmup 10 --epochs 5 --patience 0
    done
  done
fi
