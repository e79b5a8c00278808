"""Save and load only what a strategy trained, with a JSON naming the base weights.

``NAME.safetensors`` holds the trained tensors by their module path (never by list
position); ``NAME.json`` holds the architecture, strategy and the base checkpoint's path
and sha256, so the pair is meaningful only on top of that base.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesam.io import atomic_write, write_json
from tunesam.models.checkpoint import CheckpointError, sha256_of
from tunesam.models.segmenter import SamSegmenter
from tunesam.peft.strategy import Strategy

FORMAT = "tunesam-trained"
VERSION = 1


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that requires grad, plus running statistics of trainable batch norms."""
    state = model.state_dict()
    out = {name: state[name] for name, p in model.named_parameters() if p.requires_grad}
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.requires_grad:
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                key = f"{mod_name}.{buf}"
                if key in state:
                    out[key] = state[key]
    return out


def _describe(model: SamSegmenter) -> dict[str, object]:
    """The set-up that trained tensors belong to; a SAM model's strategy among it (models
    without one, such as the baselines, train every parameter)."""
    described: dict[str, object] = {"arch": model.arch, "image_size": model.image_size,
                                    "num_classes": model.num_classes, "pixel_norm": model.pixel_norm}
    if hasattr(model, "strategy"):
        if not isinstance(model.strategy, Strategy):
            raise RuntimeError("apply a strategy (tunesam.peft.apply_strategy) before saving what it trained")
        described["strategy"] = model.strategy.to_dict()
    return described


def trained_meta(model: SamSegmenter, base_checkpoint: str | Path | None, sha256: str | None = None) -> dict[str, object]:
    """The description saved beside trained tensors: set-up and base checkpoint (path, sha256).

    Without a base checkpoint the whole model is saved (its base weights were random).
    """
    meta: dict[str, object] = {"format": FORMAT, "version": VERSION, **_describe(model)}
    if base_checkpoint is not None:
        digest = sha256 or sha256_of(base_checkpoint)
        meta["base_checkpoint"] = {"path": str(Path(base_checkpoint).resolve()), "sha256": digest}
    else:
        meta["base_checkpoint"] = None
    meta["contents"] = "trained tensors" if base_checkpoint is not None else "whole model"
    return meta


def save_tensors(model: SamSegmenter, path: str | Path, whole: bool) -> None:
    """Atomically write what trained (or, ``whole``, the entire state) to ``path``."""
    state = model.state_dict() if whole else trained_state_dict(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))


def save_trained(model: SamSegmenter, path: str | Path, base_checkpoint: str | Path | None = None) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` sidecar atomically; return the JSON path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"trained weights are saved as .safetensors, got {path}")
    meta = trained_meta(model, base_checkpoint)
    save_tensors(model, path, whole=base_checkpoint is None)
    json_path = path.with_suffix(".json")
    write_json(json_path, meta)
    return json_path


def read_trained_meta(path: str | Path) -> dict[str, object]:
    """The JSON sidecar of a saved ``.safetensors`` file."""
    json_path = Path(path).with_suffix(".json")
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} not found: it describes {Path(path).name} and must sit beside it")
    meta = json.loads(json_path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a tunesam trained-weights description (format {meta.get('format')!r})")
    return meta


def load_trained(model: SamSegmenter, path: str | Path, meta_path: str | Path | None = None) -> dict[str, object]:
    """Load tensors saved by :func:`save_trained` into a model prepared the same way.

    The model must have the same architecture, classes, input size and strategy applied
    (base weights loaded first). Raises naming any difference or missing/unexpected tensor.
    ``meta_path`` names the description when it is not the ``.json`` beside ``path``.
    """
    path = Path(path)
    meta = read_trained_meta(meta_path or path)
    mine = _describe(model)
    diffs = [f"{k}: file {meta.get(k)!r}, model {v!r}" for k, v in mine.items() if meta.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path} was trained for another model set-up: " + "; ".join(diffs))
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # truncated or not a safetensors file
        raise CheckpointError(f"{path}: cannot be read as trained weights (.safetensors): {exc}; the file is "
                              "truncated or corrupt") from exc
    expected = model.state_dict() if meta.get("contents") == "whole model" else trained_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"{path} does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"other shapes {misshapen[:8]}"
        )
    model.load_state_dict(tensors, strict=meta.get("contents") == "whole model")
    return meta
