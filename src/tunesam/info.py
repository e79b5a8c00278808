"""Parameter counts per part for any architecture x strategy (``tunesam info``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesam.models.build import build_model
from tunesam.models.registry import build_sam
from tunesam.peft.strategy import Strategy, apply_strategy

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def _is_added(name: str) -> bool:
    return ".adapter." in name or ".lora_A." in name or ".lora_B." in name


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """Total, trainable, frozen and PEFT-added parameters, overall and per part."""
    parts: dict[str, dict[str, int]] = {}
    for part in PARTS:
        counts = {"total": 0, "trainable": 0, "frozen": 0, "added": 0}
        for name, p in getattr(model, part).named_parameters():
            n = p.numel()
            counts["total"] += n
            counts["trainable" if p.requires_grad else "frozen"] += n
            if _is_added(f"{part}.{name}"):
                counts["added"] += n
        parts[part] = counts
    total = {k: sum(c[k] for c in parts.values()) for k in ("total", "trainable", "frozen", "added")}
    return {
        "total_params": total["total"],
        "trainable_params": total["trainable"],
        "frozen_params": total["frozen"],
        "added_params": total["added"],
        "parts": parts,
    }


def describe(
    arch: str | None,
    strategy: Strategy,
    num_classes: int = 1,
    image_size: int | None = None,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Build the model (on the ``meta`` device unless weights are given), apply the
    strategy, and report its parameters, frozen parts and what loading did.

    ``arch`` ``None`` is read from the checkpoint; ``image_size`` defaults to the
    architecture's native input."""
    if checkpoint is None:
        if arch is None:
            raise ValueError("give --arch (or a --checkpoint to read the architecture from)")
        with torch.device("meta"):
            model = build_sam(arch, num_classes, image_size)
    else:
        model = build_model(arch, checkpoint, num_classes, image_size)
    image_size = model.image_size
    apply_strategy(model, strategy)
    out: dict[str, Any] = {
        "arch": model.arch,
        "tune": strategy.tune,
        "method": strategy.method,
        "mode": strategy.mode,
        "num_classes": num_classes,
        "image_size": image_size,
        "pixel_norm": model.pixel_norm,
        **count_parameters(model),
        "iou_head_params": sum(p.numel() for p in model.mask_decoder.iou_prediction_head.parameters()),
        "frozen_parts": dict(model.frozen_parts),
    }
    if model.load_report is not None:
        out["checkpoint"] = {"path": model.load_report.source, "notes": model.load_report.lines()[1:]}
    return out


def format_info(info: dict[str, Any]) -> str:
    """A human-readable table of :func:`describe`'s result."""
    head = (
        f"{info['arch']}  {info['tune']} / {info['method']}  mode {info['mode']}  "
        f"K={info['num_classes']}  input {info['image_size']} px  pixel norm {info['pixel_norm']}"
    )
    rows = [f"{'part':<16}{'total':>14}{'trainable':>14}{'frozen':>14}{'added (PEFT)':>14}"]
    for part, c in info["parts"].items():
        rows.append(f"{part:<16}{c['total']:>14,}{c['trainable']:>14,}{c['frozen']:>14,}{c['added']:>14,}")
    share = 100.0 * info["trainable_params"] / max(info["total_params"], 1)
    rows.append(
        f"{'all':<16}{info['total_params']:>14,}{info['trainable_params']:>14,}"
        f"{info['frozen_params']:>14,}{info['added_params']:>14,}"
    )
    lines = [head, *rows, f"trainable share: {share:.2f}%", "frozen:"]
    lines += [f"  {part}: {why}" for part, why in info["frozen_parts"].items()]
    if "checkpoint" in info:
        lines.append(f"loaded {info['checkpoint']['path']}")
        lines += [f"  {n.strip()}" for n in info["checkpoint"]["notes"]]
    return "\n".join(lines)
