#!/usr/bin/env bash
# Every GPU check in one run, for a lent GPU machine (see README "GPU checks"):
#   1. the test suite under that machine's torch (CUDA tests included);
#   2. one bf16 training step at 1024, batch 4, for all strategies on ViT-H/B/T.
# Official reference packages travel as wheels in .whl/ (pure Python).
# SMALL=1 runs the same script on tiny models on a CPU, to check it before spending GPU time.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/env.txt" 2>/dev/null
if [ "${SMALL:-0}" = 1 ]; then
  ARCHS="vit_test vit_t_test"; SIZE=64; TESTS="tests/test_cli.py"
else
  ARCHS="vit_h vit_b vit_t"; SIZE=1024; TESTS="tests"
fi
$PY -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -15 | tee "$OUT/tests.log"
$PY benchmarks/train_step.py --arch $ARCHS --image-size $SIZE --batch-size 4 \
  --tune decoder encoder-decoder --method vanilla adapter lora 2>&1 | tee "$OUT/train_step.jsonl"
