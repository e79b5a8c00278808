#!/usr/bin/env bash
# Issue 11's GPU check, short enough for one lent-GPU call: ViT-B `pretrain mae` at 1024 with
# bf16 autocast (both variants: masked-grid, visible tokens), timed per optimiser step with
# peak memory (RUN/summary.json: seconds_per_step after the first step, peak_memory_gib =
# torch.cuda.max_memory_allocated), the same under torchrun (NCCL, one process), and ViT-B
# `pretrain prompt` at 1024. Needs a prepared dataset in $DATA (default work/mni152, carried).
# SMALL=1 runs it on the CPU with a tiny model first.
source "$(dirname "$0")/gpu_env.sh"
T="$PY -m tunesam"
DATA=${DATA:-work/mni152}
W=/tmp/gpu_pretrain
rm -rf "$W"
if [ "${SMALL:-0}" = 1 ]; then ARCH=vit_test; SIZE=64; DEV=cpu; DEC="--decoder-dim 32 --decoder-depth 1 --decoder-heads 2"
else ARCH=vit_b; SIZE=1024; DEV=cuda; DEC=""; fi
# one epoch of the MNI152 training slabs at batch 2 (the paper's), accumulate 1 so every step is timed
COMMON="--data $DATA --arch $ARCH --image-size $SIZE --epochs 1 --device $DEV --quiet --batch-size 2"
summary() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('steps', 'seconds_per_step', 'peak_memory_gib', 'precision', 'effective_batch', 'device')})" "$1/summary.json"; }
{
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  for variant in masked-grid visible; do
    echo "== pretrain mae $ARCH at $SIZE, $variant, batch 2, one optimiser step per batch"
    $T pretrain mae $COMMON --out $W/mae_$variant --mae-variant $variant --accumulate 1 $DEC \
      && echo "RESULT mae_$variant ok" && summary $W/mae_$variant && cat $W/mae_$variant/log.csv
  done
  echo "== the same masked-grid epoch under torchrun (NCCL, one process), batch 2 x 16 accumulated"
  $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m tunesam pretrain mae $COMMON --out $W/mae_ddp \
    --mae-variant masked-grid --accumulate 16 $DEC && echo "RESULT mae_ddp ok" && summary $W/mae_ddp
  echo "== pretrain prompt $ARCH at $SIZE, batch 3"
  $T pretrain prompt --data $DATA --arch $ARCH --image-size $SIZE --epochs 1 --device $DEV --quiet --warmup 10 \
    --out $W/prompt && echo "RESULT prompt ok" && summary $W/prompt
  echo "== the checkpoints load with build_model"
  $PY -c "
from tunesam.models.build import build_model
import sys
for run in sys.argv[1:]:
    m = build_model(None, run + '/checkpoint.pth'); print(run, m.arch, 'loaded')" $W/mae_masked-grid $W/prompt
  cp $W/mae_masked-grid/reconstructions/epoch_001.png "$OUT/reconstructions_vit_b.png" 2>/dev/null
} 2>&1 | grep -v Warning | tee "$OUT/pretrain_check.log"
