"""``tunesam baseline``: train a baseline on a prepared dataset's own split, as a run folder.

UNet and SwinUNETR train through tunesam's trainer, so their run folders are like any other
(``config.yaml``, ``log.csv``, ``weights/``, ``last.pt`` for ``--resume``) and ``evaluate`` and
``predict`` take them. The recipe is the paper's (Dice + CE, AdamW 1e-4, weight decay 0.1,
200 warm-up steps then polynomial decay, batch 4, up to 200 epochs, early stop after 20,
histogram equalisation and brightness/contrast jitter), except what a network trained from
scratch needs: no pretrained weights or prompts, input 256 px instead of SAM's 1024 (the
networks are not bound to SAM's input; ``image_size`` changes it) and the intensity
normalisation (z-score per slice instead of SAM's mean/std). nnU-Net runs through
``nnunetv2`` itself (:mod:`tunesam.baselines.nnunet`).
"""
from __future__ import annotations

from pathlib import Path

from tunesam.config import LR, WARMUP, TrainConfig
from tunesam.kinds import baseline_names, kind_of
from tunesam.kinds import train as train_run


def train_baseline(
    name: str,
    data: str | Path,
    out: str | Path,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 0,
    image_size: int | None = None,
    batch_size: int | None = None,
    lr: float = LR,
    patience: int | None = None,
    warmup: int = WARMUP,
    few_shot: int | None = None,
    num_workers: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
    iterations: int | None = None,
) -> Path:
    """Train baseline ``name`` (``unet``, ``swinunetr``, ``nnunet`` or a registered one) on
    ``data``'s split into ``out``.

    ``iterations``: nnU-Net's iterations per epoch (its default 250); the others train on
    every training slice once per epoch.
    """
    if name not in baseline_names(test=True) or not kind_of(name).baseline:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(baseline_names())}")
    cfg = TrainConfig(data=str(data), out=str(out), arch=name, tune="encoder-decoder", method="vanilla",
                      epochs=epochs, device=device, seed=seed, image_size=image_size, batch_size=batch_size, lr=lr,
                      patience=patience, warmup=warmup, few_shot=few_shot, num_workers=num_workers,
                      iterations=iterations)
    return train_run(cfg, resume=resume, progress=progress)
