#!/usr/bin/env bash
# Issue 9's GPU check, short enough for one lent-GPU call: DDP through torchrun with NCCL
# (one process) for a whole epoch with its validation, with and without the embedding cache
# (rank 0 fills it, then a barrier), the same epoch without torchrun, evaluate of the DDP run,
# and the CUDA-only tests that need no data packages. Needs a prepared dataset in $DATA
# (default work/mni152: `tunesam prepare --example mni152 --out work/mni152`, carried).
# SMALL=1 runs it on the CPU (gloo) with a tiny model, to check it before spending GPU time.
source "$(dirname "$0")/gpu_env.sh"
T="$PY -m tunesam"
DATA=${DATA:-work/mni152}
W=/tmp/gpu_ddp
rm -rf "$W"
if [ "${SMALL:-0}" = 1 ]; then ARCH=vit_test; SIZE=64; DEV=cpu; else ARCH=vit_b; SIZE=1024; DEV=cuda; fi
TR="$PY -m torch.distributed.run --standalone --nproc-per-node 1 -m tunesam train"
COMMON="--data $DATA --arch $ARCH --image-size $SIZE --epochs 1 --device $DEV --warmup 10 --quiet"
{
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  echo "== torchrun, one process, decoder LoRA: an epoch and its validation"
  $TR $COMMON --out $W/ddp --tune decoder --method lora && echo "RESULT ddp_epoch ok" && cat $W/ddp/log.csv
  echo "== torchrun, one process, encoder-decoder LoRA (DDP over the encoder)"
  $TR $COMMON --out $W/ddp_enc --tune encoder-decoder --method lora --batch-size 4 && echo "RESULT ddp_encoder_epoch ok" && cat $W/ddp_enc/log.csv
  echo "== torchrun, one process, decoder vanilla on cached embeddings (rank 0 fills, barrier)"
  $TR $COMMON --out $W/ddp_cache --tune decoder --method vanilla --cache-embeddings --embedding-cache $W/cache \
    && echo "RESULT ddp_cache_epoch ok" && cat $W/ddp_cache/log.csv
  echo "== the same decoder LoRA epoch without torchrun"
  $T train $COMMON --out $W/single --tune decoder --method lora && echo "RESULT single_epoch ok" && cat $W/single/log.csv
  echo "== evaluate the DDP run on $DEV"
  $T evaluate $W/ddp --device $DEV && echo "RESULT evaluate ok"
  echo "== CUDA tests"
  $PY -m pytest -q -p no:cacheprovider tests/models/test_forward_backward.py tests/engine -k "cuda or distributed or ddp" 2>&1 | tail -8
} 2>&1 | grep -v Warning | tee "$OUT/ddp_check.log"
