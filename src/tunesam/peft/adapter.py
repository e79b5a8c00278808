"""Bottleneck adapters that wrap the layer they adapt (the paper's "Adapter").

Following Medical SAM Adapter / AdaptFormer: an adapter *after* an attention layer
(residual bottleneck), and one *parallel* to an MLP (bottleneck added, scaled). The
up-projection starts at zero, so a freshly adapted model computes exactly what the base
model did.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Adapter(nn.Module):
    """``x -> up(GELU(down(x)))`` over the last axis (plus ``x`` when ``skip``)."""

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.skip = skip
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.act(self.down(x)))
        return x + y if self.skip else y


class SerialAdapter(nn.Module):
    """``base_layer`` followed by a residual adapter on its output."""

    def __init__(self, base_layer: nn.Module, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Adapter(dim, ratio, skip=True)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base_layer(*args, **kwargs))


class ParallelAdapter(nn.Module):
    """``base_layer(x) + scale * adapter(norm(x))``: an adapter beside an MLP.

    The adapter sees what the MLP sees, the block's normalised input (the paper's rule, as
    Medical SAM Adapter). SAM's ViT normalises before calling its MLP, so ``x`` already is;
    TinyViT's MLP carries its own LayerNorm (``norm``), which the adapter then applies too.
    """

    def __init__(self, base_layer: nn.Module, dim: int, ratio: float = 0.25, scale: float = 0.5) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Adapter(dim, ratio, skip=False)
        self.scale = scale
        norm = getattr(base_layer, "norm", None)
        self._own_norm = isinstance(norm, nn.LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer.norm(x) if self._own_norm else x
        return self.base_layer(x) + self.scale * self.adapter(h)
