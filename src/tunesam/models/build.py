"""``build_model``: the one call that gives a ready segmenter, with or without weights."""
from __future__ import annotations

from pathlib import Path

import torch

from tunesam.models.checkpoint import LoadReport, load_checkpoint
from tunesam.models.registry import build_sam
from tunesam.models.segmenter import SamSegmenter


def default_pixel_norm(checkpoint: str | Path | None) -> str:
    """``unit`` (0-1 input) for MedSAM weights, recognised by file name; else SAM's mean/std."""
    if checkpoint is not None and "medsam" in Path(checkpoint).name.lower():
        return "unit"
    return "sam"


def build_model(
    arch: str,
    checkpoint: str | Path | None = None,
    num_classes: int = 1,
    image_size: int = 1024,
    pixel_norm: str | None = None,
    device: str | torch.device | None = None,
) -> SamSegmenter:
    """A SAM-family segmenter for ``num_classes`` foreground classes.

    Args:
        arch: ``vit_b``, ``vit_l``, ``vit_h`` (SAM), ``vit_t`` (MobileSAM), or a test variant.
        checkpoint: SAM-format weights (``.pth``/``.pt``/``.safetensors``): Meta's, MobileSAM's,
            MedSAM's or any file with the same keys. ``None`` leaves the weights random.
        num_classes: foreground classes K of the automated mode (K + 1 output channels).
        image_size: input side S; position tables of a 1024 checkpoint are resampled.
        pixel_norm: ``sam`` or ``unit``; by default ``unit`` for MedSAM files, else ``sam``.
        device: where to put the model (weights are read on the CPU first).

    The returned model's ``load_report`` says what loading adapted (``None`` without weights).
    """
    model = build_sam(arch, num_classes, image_size, pixel_norm or default_pixel_norm(checkpoint))
    report: LoadReport | None = None
    if checkpoint is not None:
        report = load_checkpoint(model, checkpoint, expected_arch=arch)
    model.load_report = report
    if device is not None:
        model.to(device)
    return model
