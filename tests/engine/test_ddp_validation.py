"""Validation under DDP scores every validation slice exactly once, whatever the number of
processes (the training sampler pads its shards; validation must not count the padding)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, torch
from tunesam.data.dataset import SliceDataset
from tunesam.data.store import PreparedData
from tunesam.engine import distributed as D
from tunesam.engine.fit import Schedule, loader as make_loader
from tunesam.engine.trainer import validate
from tunesam.models.registry import build_sam

ctx, device = D.setup("cpu")
data = PreparedData.open(sys.argv[1])
rows = data.rows("val", include_empty=False)[:5]  # odd: 2 processes pad one slice
torch.manual_seed(0)
model = build_sam("vit_test", num_classes=1, image_size=32)
loader = make_loader(SliceDataset(data, "val", 32, rows=rows), Schedule(epochs=1, batch_size=2, num_workers=0), ctx,
                     device, train=False)
dsc = validate(model, loader, "auto", 1, device, ctx)
if ctx.is_main:
    print(f"VAL {dsc!r}")
D.teardown()
"""


def _val_dsc(prepared: Path, script: Path, procs: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           str(script), str(prepared)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return float(next(line for line in res.stdout.splitlines() if line.startswith("VAL ")).split()[1])


def test_validation_dsc_is_the_same_with_one_and_two_processes(prepared: Path, tmp_path: Path) -> None:
    script = tmp_path / "val.py"
    script.write_text(SCRIPT)
    one, two = _val_dsc(prepared, script, 1), _val_dsc(prepared, script, 2)
    assert one > 0 and abs(one - two) < 1e-9
