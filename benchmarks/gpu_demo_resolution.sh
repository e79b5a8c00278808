#!/usr/bin/env bash
# The demo's model and recipe (ViT-T from random weights, encoder+decoder, lr 1e-3) at larger
# input sizes on a GPU: does the test white-matter DSC per slice follow the ceiling that SAM's
# quarter-resolution output sets (scripts/resolution_ceiling.py)? Same data, same split.
#   SIZES="448 1024" EPOCHS=40 bash benchmarks/gpu_demo_resolution.sh
# SMALL=1 runs it on the CPU at toy length, to check the script before spending GPU time.
source "$(dirname "$0")/gpu_env.sh"
T="$PY -m tunesam"
W=/tmp/gpu_res
rm -rf "$W"
if [ "${SMALL:-0}" = 1 ]; then DEV=cpu; SIZES=${SIZES:-"64"}; EPOCHS=${EPOCHS:-1}; ARCH=vit_t_test
else DEV=cuda; SIZES=${SIZES:-"448 1024"}; EPOCHS=${EPOCHS:-40}; ARCH=vit_t; fi
{
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  $T prepare --example mni152 --out $W/data
  $PY scripts/resolution_ceiling.py $W/data --sizes 224 $SIZES
  for S in $SIZES; do
    start=$(date +%s)
    $T train --data $W/data --out $W/run$S --arch $ARCH --tune encoder-decoder --method vanilla \
      --image-size $S --epochs $EPOCHS --batch-size 4 --lr 1e-3 --warmup 25 --patience 0 --device $DEV \
      --num-workers 8 > $W/train$S.log 2>&1
    tail -n 3 $W/run$S/log.csv
    $T evaluate $W/run$S --device $DEV
    echo "size $S: $(( $(date +%s) - start )) s"
    cp $W/run$S/metrics.json "$OUT/metrics_$S.json"
    cp $W/run$S/log.csv "$OUT/log_$S.csv"
  done
} 2>&1 | grep -v Warning | tee "$OUT/resolution.log"
