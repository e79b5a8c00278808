"""Fold LoRA updates into plain weights (adapters cannot be folded)."""
from __future__ import annotations

import torch
from torch import nn

from tunesam.peft.adapter import ParallelAdapter, SerialAdapter
from tunesam.peft.lora import LoRALinear


class AdapterMergeError(ValueError):
    """Adapters add layers, so an adapter run has no plain-SAM equivalent."""


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the un-wrapped (official) key names, LoRA merged in."""
    adapters = [n for n, m in model.named_modules() if isinstance(m, (SerialAdapter, ParallelAdapter))]
    if adapters:
        raise AdapterMergeError(
            f"this model has {len(adapters)} adapters (e.g. {adapters[0]}); adapters add layers and cannot "
            "be merged into plain SAM weights. Keep the adapter files (tunesam.peft.saving.save_trained) and "
            "load them on top of the base checkpoint instead"
        )
    lora = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." in key:
            owner, leaf = key.rsplit(".base_layer.", 1)
            if leaf == "weight" and owner in lora:
                value = lora[owner].merged_weight()
            key = f"{owner}.{leaf}"
        out[key] = value.detach()
    return out
