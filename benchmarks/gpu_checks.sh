#!/usr/bin/env bash
# Every GPU check in one run, for a lent GPU machine (see docs/development.md, "GPU checks"):
#   1. the test suite under that machine's torch (CUDA tests included);
#   2. the real pipeline on CUDA: prepare the MNI152 example, train ViT-B encoder+decoder LoRA
#      at 1024 (batch 4, bf16) for one epoch, the same through torchrun (NCCL), evaluate,
#      predict a NIfTI volume;
#   3. the demo configuration on CUDA, at its CPU length and much longer;
#   4. (STEP_TABLE=1) one bf16 training step at 1024, batch 4, for all strategies on ViT-H/B/T.
# Official reference packages travel as wheels in .whl/ (pure Python).
# SMALL=1 runs the same script on tiny settings on a CPU, to check it before spending GPU time.
source "$(dirname "$0")/gpu_env.sh"
T="$PY -m tunesam"
W=/tmp/gpu_work
rm -rf "$W"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/env.txt" 2>/dev/null
if [ "${SMALL:-0}" = 1 ]; then
  ARCH=vit_test; SIZE=64; TESTS="tests/test_cli.py"; DEV=cpu; LONG=2; DEMO_EPOCHS=1
else
  ARCH=vit_b; SIZE=1024; TESTS="tests"; DEV=cuda; LONG=60; DEMO_EPOCHS=14
fi
$PY -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -15 | tee "$OUT/tests.log"
{
  $T prepare --example mni152 --out $W/mni
  $T train --data $W/mni --out $W/vitb --arch $ARCH --tune encoder-decoder --method lora \
    --image-size $SIZE --epochs 1 --device $DEV --num-workers 8 --warmup 10
  cat $W/vitb/log.csv
  # DDP through torchrun (NCCL on CUDA, even with one process): an epoch with its validation.
  $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m tunesam train --data $W/mni --out $W/ddp \
    --arch $ARCH --tune decoder --method lora --image-size $SIZE --epochs 1 --device $DEV --warmup 10 \
    && echo "torchrun DDP epoch with validation: ok" && cat $W/ddp/log.csv
  $T evaluate $W/vitb --device $DEV
  T1=$($PY -c "from tunesam.data.examples import mni152_files; print(mni152_files()['t1'])")
  $T predict $W/vitb "$T1" --out $W/pred --device $DEV --overlay
  $PY -c "
import SimpleITK as s, sys
a, b = s.ReadImage(sys.argv[1]), s.ReadImage(sys.argv[2])
print('geometry equal:', a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection())
" "$T1" $W/pred/$(basename "$T1")
  time $T demo --out $W/demo --device $DEV --epochs $DEMO_EPOCHS
  $T train --data $W/demo/data --out $W/demo_long --arch vit_t --tune encoder-decoder --method vanilla \
    --image-size 224 --epochs $LONG --batch-size 4 --lr 1e-3 --warmup 25 --patience 0 --device $DEV --num-workers 8
  $T evaluate $W/demo_long --device $DEV
  cp $W/demo_long/curves.png "$OUT/demo_long_curves.png" 2>/dev/null
  cp $W/demo/overlays.png "$OUT/demo_overlays_gpu.png" 2>/dev/null
} 2>&1 | grep -v Warning | tee "$OUT/pipeline.log"
if [ "${STEP_TABLE:-0}" = 1 ]; then
  $T bench --arch vit_h vit_b vit_t --image-size $SIZE --batch-size 4 --tune decoder encoder-decoder \
    --method vanilla adapter lora --device $DEV --baseline eager-fp32 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
