"""LoRA: low-rank updates added in parallel to chosen output rows of a linear layer.

A fused ``qkv`` projection gets one update for the q rows and one for the v rows (their
positions differ between SAM's ViT, ``[q | k | v]``, and TinyViT, interleaved per head;
each attention module says where via ``qkv_layout()``). The B matrices start at zero,
so a fresh LoRA model equals its base model.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LoRALinear(nn.Module):
    """``base_layer(x)`` plus ``scaling * B_t A_t x`` on the output rows of each target ``t``.

    ``targets`` maps a name (``q``, ``v``, or ``all``) to the output row indices it
    updates, or ``None`` for every row.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        targets: dict[str, torch.Tensor | None],
        rank: int = 4,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        device = base_layer.weight.device
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self._targets = list(targets)
        for name, rows in targets.items():
            n_out = base_layer.out_features if rows is None else rows.numel()
            a = nn.Parameter(torch.empty(rank, base_layer.in_features, device=device))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = a
            self.lora_B[name] = nn.Parameter(torch.zeros(n_out, rank, device=device))
            if rows is not None:
                self.register_buffer(f"rows_{name}", rows.to(device=device, dtype=torch.long), persistent=False)

    def _rows(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"rows_{name}", None)

    def delta_weight(self, name: str) -> torch.Tensor:
        """The update ``scaling * B A`` for one target, ``rows x in_features``."""
        return self.scaling * self.lora_B[name] @ self.lora_A[name]

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every target's update as one pair: A ``(targets * rank) x in`` and B
        ``out x (targets * rank)``, each target's B in its own rows and columns, zeros elsewhere.
        The update is then two small dense products on the activations, with no scatter
        into the output's columns (an ``index_add`` along the last dimension, and its
        gather in backward, cost more than the rest of the layer on a CPU)."""
        a = torch.cat([self.lora_A[name] for name in self._targets])
        blocks = []
        for name in self._targets:
            b, rows = self.lora_B[name], self._rows(name)
            if rows is not None:
                b = b.new_zeros(self.base_layer.out_features, self.rank).index_copy(0, rows, b)
            blocks.append(b)
        return a, torch.cat(blocks, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        a, b = self._stacked()
        delta = F.linear(F.linear(x, a.to(x.dtype)), (self.scaling * b).to(x.dtype))
        return out + delta.to(out.dtype)

    def merged_weight(self) -> torch.Tensor:
        """``base_layer.weight`` with every update folded in."""
        weight = self.base_layer.weight.detach().clone()
        for name in self._targets:
            rows = self._rows(name)
            delta = self.delta_weight(name).detach().to(weight.dtype)
            if rows is None:
                weight += delta
            else:
                weight.index_add_(0, rows, delta)
        return weight
