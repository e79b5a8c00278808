"""Open a training run folder: its configuration, model with the chosen weights, labels."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesam.baselines.nets import BaselineSegmenter, build_baseline, is_baseline
from tunesam.data.readers import DataError
from tunesam.config import TrainConfig, load_config
from tunesam.models.build import build_model
from tunesam.models.checkpoint import sha256_of
from tunesam.models.segmenter import SamSegmenter
from tunesam.peft.saving import load_trained
from tunesam.peft.strategy import apply_strategy


@dataclass
class Run:
    folder: Path
    config: TrainConfig
    preprocessing: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return self.preprocessing["labels"]

    @property
    def num_classes(self) -> int:
        return len(self.labels) - 1 if self.config.mode == "auto" else 1


def open_run(folder: str | Path) -> Run:
    """Check ``folder`` is a run and read its configuration."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise DataError(f"{folder}: not a training run (no config.yaml); give the --out folder of 'tunesam train'")
    pre = folder / "preprocessing.json"
    if not pre.is_file():
        raise DataError(f"{folder}: incomplete run (no preprocessing.json)")
    try:
        preprocessing = json.loads(pre.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{pre}: not valid JSON ({exc}); the run's preprocessing record is corrupt") from exc
    return Run(folder, load_config(folder / "config.yaml"), preprocessing)


def load_run_model(run: Run, which: str = "best", device: str | torch.device = "cpu") -> SamSegmenter:
    """The run's model with its ``best`` (or ``last``) weights, on ``device``."""
    cfg = run.config
    if cfg.arch == "nnunet":
        from tunesam.baselines.nnunet import NnUNetSegmenter

        return NnUNetSegmenter(run.folder, which).to(device).eval()  # type: ignore[return-value]
    weights = run.folder / "weights" / f"{which}.safetensors"
    if not weights.is_file():
        raise DataError(f"{run.folder}: no weights/{which}.safetensors (did the first epoch finish?)")
    if is_baseline(cfg.arch):
        model: SamSegmenter | BaselineSegmenter = build_baseline(str(cfg.arch), run.num_classes, cfg.image_size)
        load_trained(model, weights, meta_path=run.folder / "weights" / "base.json")  # type: ignore[arg-type]
        return model.to(device).eval()  # type: ignore[return-value]
    meta = json.loads((run.folder / "weights" / "base.json").read_text())
    base = meta.get("base_checkpoint")
    checkpoint = None
    if base is not None:
        checkpoint = Path(base["path"])
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{run.folder} was trained on top of {checkpoint}, which is missing; "
                                    "put it back (the run holds only what training changed)")
        if sha256_of(checkpoint) != base["sha256"]:
            raise DataError(f"{checkpoint} has changed since {run.folder} was trained on it (sha256 differs)")
    model = build_model(cfg.arch, checkpoint, run.num_classes, cfg.image_size, cfg.pixel_norm)
    model.interpolation = cfg.interpolation or "bilinear"  # runs from before the option had a default
    apply_strategy(model, cfg.strategy())
    load_trained(model, weights, meta_path=run.folder / "weights" / "base.json")
    return model.to(device).eval()
