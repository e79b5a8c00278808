#!/usr/bin/env bash
# What augmented cached views cost and change (issue 16): LiteMedSAM's decoder (LoRA, the
# study's decoder recipe: lr 5e-4, 10 warm-up steps, 10 epochs, batch 4), automated grey/white
# matter on the MNI152 example, trained on cached embeddings of the plain images (no
# augmentation), on 2 and 4 augmented views per training slice (--cache-views), and on the
# images augmented online (no cache: the encoder runs every step). Seeds 0 and 1 for the cached
# policies, seed 0 online (its encoder passes make it the slow one). Validation DSC only: the
# study default is chosen from these, never from the test slabs.
#   scripts/cache_views.sh [WORK]      (default work/cache_views; needs LiteMedSAM's weights)
set -euo pipefail
W=${1:-work/cache_views}
TS=${TUNESAM:-tunesam}
mkdir -p "$W"
$TS prepare --example mni152 --out "$W/mni152" >/dev/null
common=(--data "$W/mni152" --checkpoint litemedsam --tune decoder --method lora --lr 5e-4 --warmup 10
        --epochs 10 --patience 0 --batch-size 4 --device cpu --quiet)
run() {  # name, extra flags...
  local name=$1; shift
  [ -f "$W/$name/summary.json" ] && return 0
  rm -rf "$W/$name"
  local t0=$SECONDS
  $TS train "${common[@]}" --out "$W/$name" "$@" 2>&1 | grep -E "embedded|epoch 10/10" || true
  echo "$name: $((SECONDS - t0)) s wall"
}
for seed in 0 1; do
  run views4_s$seed --cache-embeddings --cache-views 4 --seed $seed   # fills the 4 views once (seed 0)
  run views2_s$seed --cache-embeddings --cache-views 2 --seed $seed   # views 0 and 1: already cached
  run plain_s$seed --cache-embeddings --seed $seed
done
run online_s0 --seed 0
python3 - "$W" <<'PY'
import csv, json, sys
from pathlib import Path
w = Path(sys.argv[1])
print(f"{'run':<12}{'best val DSC':>14}{'at epoch':>10}{'val DSC ep 10':>15}{'s/epoch':>9}")
for run in sorted(p for p in w.iterdir() if (p / "log.csv").is_file()):
    rows = list(csv.DictReader(open(run / "log.csv")))
    best = max(rows, key=lambda r: float(r["val_dsc"]))
    secs = sum(float(r["seconds"]) for r in rows) / len(rows)
    print(f"{run.name:<12}{float(best['val_dsc']):>14.2f}{best['epoch']:>10}{float(rows[-1]['val_dsc']):>15.2f}{secs:>9.1f}")
PY
