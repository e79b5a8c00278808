"""Write a fine-tuned segmenter back as a SAM-format checkpoint (the official key layout).

The result opens in any tool built on segment-anything (``sam_model_registry[arch]``,
MobileSAM's for ``vit_t``) when the decoder has the official four output tokens; a model
with more classes gets the official layout for every shared part plus a side file with
its class head. LoRA is merged; adapters cannot be (see :mod:`tunesam.peft.merge`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tunesam.io import atomic_write
from tunesam.models.checkpoint import class_head_file
from tunesam.models.image_encoder import resize_pos_embed, resize_rel_pos
from tunesam.models.registry import build_sam, get_spec
from tunesam.models.segmenter import SamSegmenter
from tunesam.peft.merge import merged_state_dict

_CLASS_KEYS = (
    "mask_decoder.mask_tokens.weight",
    "mask_decoder.iou_prediction_head.layers.2.weight",
    "mask_decoder.iou_prediction_head.layers.2.bias",
)


def export_state_dicts(
    model: SamSegmenter,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """``(official, class_head, notes)``: the official-layout state dict, the tensors that do
    not fit it (empty when the decoder has the official shape), and what was changed."""
    state = merged_state_dict(model)
    with torch.device("meta"):
        reference = build_sam(model.arch, image_size=get_spec(model.arch).native_size).state_dict()
    official: dict[str, torch.Tensor] = {}
    side: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    prefix = "mask_decoder.output_hypernetworks_mlps."
    for key, value in state.items():
        want = reference.get(key)
        if want is None and key.startswith(prefix):
            side[key] = value
            continue
        if want is None:
            raise KeyError(f"{key} has no place in the official {model.arch} layout")
        if want.shape == value.shape:
            official[key] = value
        elif key.endswith("pos_embed"):
            official[key] = resize_pos_embed(value, (want.shape[1], want.shape[2]))
            notes.append(f"{key} resampled {tuple(value.shape[1:3])} -> {tuple(want.shape[1:3])} for the native input")
        elif key.endswith(("rel_pos_h", "rel_pos_w")):
            official[key] = resize_rel_pos(value, want.shape[0])
            notes.append(f"{key} resampled to {want.shape[0]} positions for the native input")
        elif key in _CLASS_KEYS:
            side[key] = value
            official[key] = value[: want.shape[0]]
        else:
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit the official {tuple(want.shape)}")
    if side:
        notes.append(
            f"the decoder has {model.mask_decoder.num_mask_tokens} output tokens, the official layout 4: "
            "the checkpoint holds the first 4; the whole class head is in the side file"
        )
    return official, side, notes


def export_checkpoint(model: SamSegmenter, path: str | Path) -> list[str]:
    """Write ``path`` (``.pth`` via ``torch.save`` or ``.safetensors``) and, if needed, a
    ``STEM.class_head.safetensors`` side file. Returns notes on what was adapted."""
    path = Path(path)
    official, side, notes = export_state_dicts(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in official.items()}
    if path.suffix == ".safetensors":
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    else:
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))
    if side:
        side_path = class_head_file(path)
        side_tensors = {k: v.detach().cpu().contiguous() for k, v in side.items()}
        atomic_write(side_path, lambda tmp: save_file(side_tensors, str(tmp)))
        notes.append(f"class head written to {side_path}")
    return notes
