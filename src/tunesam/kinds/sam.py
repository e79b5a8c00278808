"""The SAM kind: the SAM family fine-tuned with one of the paper's 18 strategies.

A run stores what training changed (``weights/{best,last}.safetensors``) on top of its base
checkpoint, named by path and sha256 in ``weights/base.json``; loading rebuilds the model from
that checkpoint, applies the strategy and loads the trained tensors strictly.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from tunesam.config import TrainConfig
from tunesam.data.readers import DataError
from tunesam.engine.run_folder import Run
from tunesam.kinds import RunKind, register
from tunesam.models.build import build_model, infer_arch, pixel_norm_rule
from tunesam.models.checkpoint import sha256_of
from tunesam.models.known import resolve_checkpoint
from tunesam.models.registry import ARCHS, get_spec
from tunesam.models.segmenter import SamSegmenter
from tunesam.peft.export import export_checkpoint
from tunesam.peft.merge import AdapterMergeError
from tunesam.peft.saving import load_trained
from tunesam.peft.strategy import apply_strategy


class SamKind(RunKind):
    name = "sam"
    modes = ("auto", "box", "point")

    def archs(self) -> Iterable[str]:
        return ARCHS

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        """A named checkpoint resolved to its (verified) file; the architecture read from it
        when not given; the input size, pixel normalisation and interpolation that belong to
        the architecture and weights."""
        checkpoint = str(resolve_checkpoint(cfg.checkpoint)) if cfg.checkpoint else None
        if not cfg.arch and checkpoint is None:
            raise ValueError("give --arch (or a --checkpoint to read the architecture from)")
        arch = cfg.arch or infer_arch(checkpoint)  # type: ignore[arg-type]
        norm, rule = (cfg.pixel_norm, "given with --pixel-norm") if cfg.pixel_norm else pixel_norm_rule(arch, checkpoint)
        return dataclasses.replace(
            cfg.with_recipe(), arch=arch, checkpoint=checkpoint, image_size=cfg.image_size or get_spec(arch).native_size,
            pixel_norm=norm, pixel_norm_rule=cfg.pixel_norm_rule or rule,
            interpolation=cfg.interpolation or get_spec(arch).interpolation,
        )

    def build(self, cfg: TrainConfig, num_classes: int) -> SamSegmenter:
        model = build_model(cfg.arch, cfg.checkpoint, num_classes, cfg.image_size, cfg.pixel_norm)
        model.interpolation = cfg.interpolation
        apply_strategy(model, cfg.strategy())
        model.image_encoder.grad_checkpointing = cfg.checkpointing
        return model

    def load(self, run: Run, which: str = "best", device: str | torch.device = "cpu") -> SamSegmenter:
        cfg = run.config
        weights = run.weights(which)
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

    def export(self, run: Run, out: Path, weights: str = "best") -> list[str]:
        """The official layout, LoRA merged, at the architecture's native input; adapter runs
        are refused (their layers have no place in plain SAM weights)."""
        if run.config.method == "adapter":
            raise AdapterMergeError(
                f"{run.folder} trained adapters, which add layers that plain SAM weights have no place for, so it "
                "cannot be exported as a SAM checkpoint. Use the run itself (tunesam evaluate/predict), or its "
                "weights/best.safetensors on top of its base checkpoint"
            )
        return export_checkpoint(self.load(run, weights, "cpu"), out)


SAM = register(SamKind())
