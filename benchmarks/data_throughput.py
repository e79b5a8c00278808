"""Throughput of ``prepare`` and of the training ``Dataset`` on this machine.

    python benchmarks/data_throughput.py [--volumes 20] [--depth 64] [--side 256]

Writes a synthetic nnU-Net dataset (NIfTI volumes with a box label through part of each
volume), prepares it, then reads every stored slice through ``SliceDataset`` at model input
256 and 1024, in the main process and through a DataLoader with 2 workers, batch 4. Also
prepares the MNI152 example. Prints slices per second; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tunesam.data.dataset import SliceDataset
from tunesam.data.prepare import PrepareOptions, prepare


def _write_dataset(root: Path, volumes: int, depth: int, side: int) -> None:
    import SimpleITK as sitk

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(volumes):
        img = rng.normal(300, 80, (depth, side, side)).astype(np.float32)
        mask = np.zeros((depth, side, side), np.uint8)
        mask[depth // 4 : 3 * depth // 4, side // 4 : side // 2, side // 3 : 2 * side // 3] = 1
        for arr, path in ((img, root / "imagesTr" / f"c{i:03d}_0000.nii.gz"), (mask, root / "labelsTr" / f"c{i:03d}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((0.8, 0.8, 3.0))
            sitk.WriteImage(im, str(path))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1},
        "numTraining": volumes, "file_ending": ".nii.gz"}))


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} slices/s ({n} in {seconds:.2f} s)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=20)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--side", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _write_dataset(tmp_path / "src", args.volumes, args.depth, args.side)
        t0 = time.perf_counter()
        result = prepare(tmp_path / "src", tmp_path / "prep", PrepareOptions())
        dt = time.perf_counter() - t0
        read = args.volumes * args.depth
        print(f"prepare, {args.volumes} NIfTI volumes {args.depth}x{args.side}x{args.side}: "
              f"{_rate(read, dt)} read, {result.manifest['num_slices']} stored")

        try:
            from tunesam.data.examples import prepare_example

            t0 = time.perf_counter()
            r = prepare_example("mni152", tmp_path / "mni")
            print(f"prepare, MNI152 example (189 slices of 233x197): {_rate(189, time.perf_counter() - t0)}, "
                  f"{r.manifest['num_slices']} stored")
        except Exception as exc:  # nilearn missing
            print(f"MNI152 example skipped: {exc}")

        for size in (256, 1024):
            ds = SliceDataset(tmp_path / "prep", "test", image_size=size, include_empty=True)
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            print(f"Dataset at {size}, main process: {_rate(len(ds), time.perf_counter() - t0)}")
            loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=True, persistent_workers=True)
            sum(len(b["index"]) for b in loader)  # start the workers
            t0 = time.perf_counter()
            n = sum(len(b["index"]) for _ in range(3) for b in loader)
            print(f"Dataset at {size}, DataLoader 2 workers, batch 4 (3 epochs after a warm-up one): "
                  f"{_rate(n, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
