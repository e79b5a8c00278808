"""Small layers shared by the SAM family: channel LayerNorm, transformer MLPs, attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention, ``B x heads x N x d``; ``bias`` is added to the scores
    (``1 x heads x N x N`` or full: a 3-D mask sends SDPA to its math kernel on the CPU).

    On the CPU half-precision inputs (bf16 autocast) are attended in float32, with autocast
    off: there the fused kernel's backward is several times slower in bf16 than in float32
    (torch 2.13), while the projections around it gain from bf16. The result has the inputs'
    dtype. Elsewhere, and for float32 or float64 inputs, SDPA as it is."""
    dtype = q.dtype
    if q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                 attn_mask=None if bias is None else bias.float(), scale=scale)
        return out.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(dtype), scale=scale)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``B x C x H x W`` tensor.

    Statistics are computed in float32 so the layer is safe under bf16 autocast.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        mean = x32.mean(1, keepdim=True)
        var = (x32 - mean).pow(2).mean(1, keepdim=True)
        x32 = (x32 - mean) * torch.rsqrt(var + self.eps)
        out = self.weight.float()[:, None, None] * x32 + self.bias.float()[:, None, None]
        return out.to(dtype)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between (``lin1``/``lin2`` as in SAM)."""

    def __init__(
        self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (the decoder's heads)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


def make_neck(in_chans: int, out_chans: int) -> nn.Sequential:
    """The encoders' output neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d; keys 0-3)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )
