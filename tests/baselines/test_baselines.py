"""UNet and SwinUNETR baselines: they learn on the prepared split, and their run folders are
scored by evaluate and used by predict like any other run."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunesam.baselines import build_baseline
from tunesam.baselines.train import train_baseline
from tunesam.data.store import PreparedData
from tunesam.eval.evaluate import evaluate_run
from tunesam.export import export_run
from tunesam.inference.predictor import predict


def _val_dsc(run: Path) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["val_dsc"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", ["unet_test", "swinunetr_test"])
def test_baseline_learns_and_is_a_run_that_evaluate_and_predict_take(name: str, prepared: Path, tmp_path: Path) -> None:
    run = train_baseline(name, prepared, tmp_path / "run", epochs=8, device="cpu", image_size=64, lr=3e-3,
                         warmup=5, patience=0, num_workers=0, progress=False)
    dsc = _val_dsc(run)
    assert len(dsc) == 8
    assert max(dsc) > 70, dsc  # the disc is learnable; random output scores far lower
    assert max(dsc[-3:]) > dsc[0]
    cfg = (run / "config.yaml").read_text()
    assert f"arch: {name}" in cfg and "pixel_norm: zscore" in cfg
    metrics = evaluate_run(run, device="cpu")
    # evaluate's DSC is what the baseline's own masks give: predict every test slice from its
    # source image and score the written mask against the source mask, by hand
    cases = [c for c in PreparedData.open(prepared).manifest["cases"] if c["split"] == "test"]
    written = predict(run, [c["image"] for c in cases], tmp_path / "test_masks", device="cpu")
    by_hand = {}
    for case, path in zip(cases, written):
        pred = np.asarray(Image.open(path)) == 1
        ref = np.asarray(Image.open(case["mask"])) > 0
        by_hand[case["id"]] = 100.0 * 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    assert len(by_hand) == 6
    assert {r["case"]: 100.0 * r["scores"]["1"]["dsc"] for r in metrics["per_image"]} == pytest.approx(by_hand, abs=1e-9)
    assert metrics["mean"]["dsc"] == pytest.approx(float(np.mean(list(by_hand.values()))), abs=1e-4)  # 4 decimals
    assert metrics["mean"]["dsc"] > 60
    # predict on a test image; the mask keeps the image's size and marks the disc
    src = sorted((prepared.parent / "src" / "images").iterdir())[0]
    written = predict(run, [src], tmp_path / "pred", device="cpu")
    mask = np.asarray(Image.open(written[0]))
    ref = np.asarray(Image.open(prepared.parent / "src" / "masks" / src.name)) > 0
    assert mask.shape == ref.shape
    inter = ((mask > 0) & ref).sum()
    assert 2 * inter / ((mask > 0).sum() + ref.sum()) > 0.6


def test_zscore_over_real_pixels_with_padding_zero() -> None:
    model = build_baseline("unet_test", 2, 64)
    x = torch.zeros(2, 1, 64, 64)
    x[0, :, :40, :30] = torch.rand(1, 40, 30) * 200 + 20
    x[1] = torch.rand(1, 64, 64) * 255
    z = model.preprocess(x, torch.tensor([[40, 30], [64, 64]]))
    inside = z[0, 0, :40, :30]
    assert abs(float(inside.mean())) < 1e-4 and float(inside.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    assert float(z[0, 0, 40:].abs().max()) == 0 and float(z[0, 0, :, 30:].abs().max()) == 0
    assert float(z[1].std(unbiased=False)) == pytest.approx(1, abs=1e-4)


def test_baseline_refusals(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        build_baseline("swinunetr_test", 1, 48)
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("resnet", 1)
    model = build_baseline("unet_test", 1, 64)
    with pytest.raises(ValueError, match="no prompts"):
        model(torch.zeros(1, 1, 64, 64), boxes=torch.zeros(1, 4))
    from tunesam.config import TrainConfig

    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "r"), arch="unet", tune="encoder-decoder",
                      method="vanilla", mode="box")
    from tunesam.kinds import resolve

    with pytest.raises(ValueError, match="--mode box does not apply"):
        resolve(cfg)


def test_cli_baseline_run_cannot_be_exported(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "tunesam", "baseline", "unet_test", "--data", str(prepared), "--out",
                           str(out), "--epochs", "1", "--image-size", "32", "--device", "cpu", "--num-workers", "0",
                           "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "weights" / "best.safetensors").is_file() and (out / "last.pt").is_file()
    with pytest.raises(ValueError, match="baseline, not a SAM model"):
        export_run(out, tmp_path / "x.pth")
    again = subprocess.run([sys.executable, "-m", "tunesam", "baseline", "nnunet", "--data", str(prepared), "--out",
                            str(tmp_path / "nn"), "--image-size", "64"], capture_output=True, text=True)
    assert again.returncode == 2 and "--image-size" in again.stderr
