"""Shared test helpers (no fixtures here; see conftest.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Parameters that the official code initialises to zero (or constants): randomised so a
# parity test also exercises the paths they feed.
_ZERO_INIT = ("rel_pos", "pos_embed", "attention_biases")


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Give zero-initialised tables and batch-norm statistics random values, in place."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if any(z in name for z in _ZERO_INIT):
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model


@torch.no_grad()
def perturb_(params: list[nn.Parameter], seed: int = 0, scale: float = 0.05) -> None:
    """Add noise to parameters (e.g. zero-initialised LoRA B) so they matter."""
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.add_(torch.randn(p.shape, generator=g) * scale)


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random 0-255 RGB images ``batch x 3 x size x size``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 255


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def evaluated_label_maps(run: Path, monkeypatch: Any) -> dict[int, np.ndarray]:
    """The label map ``evaluate`` scores for every test row of ``run``, recorded as evaluate
    makes them (``monkeypatch``: pytest's fixture)."""
    import tunesam.eval.evaluate as evaluate_module

    seen: dict[int, np.ndarray] = {}
    original = evaluate_module.predict_rows

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        for row, labels in original(*args, **kwargs):
            seen[int(row)] = labels.copy()
            yield row, labels

    monkeypatch.setattr(evaluate_module, "predict_rows", recording)
    evaluate_module.evaluate_run(run, device="cpu")
    return seen
