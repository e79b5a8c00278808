"""nnU-Net through nnunetv2 itself: exported on our split, planned, preprocessed, trained
(a CPU-sized run), and scored and used like any other run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nnunetv2", reason="the nnU-Net baseline is an extra: pip install 'tunesam[baselines]'")

from tunesam.baselines.nnunet import DATASET, results_folder  # noqa: E402
from tunesam.baselines.train import train_baseline  # noqa: E402
from tunesam.data.store import PreparedData  # noqa: E402
from tunesam.eval.evaluate import evaluate_run  # noqa: E402
from tunesam.inference.predictor import predict  # noqa: E402


def test_nnunet_runs_through_nnunetv2_on_our_split(prepared: Path, tmp_path: Path) -> None:
    before = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                             "nnUNet_n_proc_DA")}
    run = train_baseline("nnunet", prepared, tmp_path / "run", epochs=2, iterations=6, device="cpu")
    assert {k: os.environ.get(k) for k in before} == before  # nnU-Net's variables only while it ran
    pre = run / "nnunet" / "preprocessed" / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]  # nnU-Net's own planning
    assert (results_folder(run) / "fold_0" / "checkpoint_final.pth").is_file()
    # fold 0 is our train/val split, case for case
    data = PreparedData.open(prepared)
    ours = {part: sorted({data.case(int(r))["id"] for r in data.rows(part, include_empty=True)})
            for part in ("train", "val")}
    split = json.loads((pre / "splits_final.json").read_text())[0]
    assert {k: sorted(split[k]) for k in ("train", "val")} == ours
    raw = run / "nnunet" / "raw" / DATASET
    assert len(list((raw / "imagesTr").glob("*_0000.nii.gz"))) == len(ours["train"]) + len(ours["val"])
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 3
    # scored with our metrics on our test split, and used by predict
    metrics = evaluate_run(run, device="cpu")
    assert metrics["mean"]["dsc"] > 50, metrics["mean"]  # the disc is easy; untrained output scores ~0
    assert len(metrics["per_image"]) == len(data.rows("test", include_empty=False))
    src = sorted((prepared.parent / "src" / "images").iterdir())[0]
    written = predict(run, [src], tmp_path / "pred", device="cpu")
    mask = np.asarray(Image.open(written[0]))
    ref = np.asarray(Image.open(prepared.parent / "src" / "masks" / src.name)) > 0
    assert mask.shape == ref.shape and 2 * ((mask > 0) & ref).sum() / ((mask > 0).sum() + ref.sum()) > 0.5
    # a finished run resumes to nothing
    stamp = (results_folder(run) / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns
    train_baseline("nnunet", prepared, run, epochs=2, iterations=6, device="cpu", resume=True)
    assert (results_folder(run) / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="--iterations: run 6, now 9"):
        train_baseline("nnunet", prepared, run, epochs=2, iterations=9, device="cpu", resume=True)
    moved = tmp_path / "moved"  # the same prepared data elsewhere: the run resumes on it, as every run does
    shutil.copytree(prepared, moved)
    train_baseline("nnunet", moved, run, epochs=2, iterations=6, device="cpu", resume=True)
    with pytest.raises(ValueError, match="--epochs: run 2, now 3"):
        train_baseline("nnunet", moved, run, epochs=3, iterations=6, device="cpu", resume=True)
    with pytest.raises(ValueError, match="already exists"):
        train_baseline("nnunet", prepared, run, epochs=2, iterations=6, device="cpu")
