"""TinyViT, MobileSAM's "ViT-T" image encoder, key-compatible with ``mobile_sam.pt`` and
LiteMedSAM's ``lite_medsam.pth``.

Four stages: a convolutional stage of MBConv blocks, then three stages of windowed
attention blocks with a depth-wise "local" convolution between attention and MLP. Patch
merging halves the resolution after the first two stages and keeps it after the third, so
the output grid is ``S/16`` like SAM's ViT. Unlike the official code the grid sizes follow
the input size, so inputs other than 1024 work.

The classifier (``norm_head``, ``head``) is unused by SAM; it is kept, frozen, only so the
official checkpoint loads strictly. LiteMedSAM's variant has no classifier and a stride-1
stem of two 1x1 convolutions (``stem_stride=1``): at its native 256 px input the stages run
at 256, 128, 64 and 64, the token counts of MobileSAM at 1024, and the output grid is S/4.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesam.models.common import attention, make_neck


class Conv2d_BN(nn.Sequential):  # noqa: N801 - official module name, part of the key path
    """Bias-free convolution ``c`` followed by batch norm ``bn``."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One convolution with the batch norm's running statistics folded in (inference only)."""
        c, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                         groups=c.groups, bias=True).to(c.weight.device, c.weight.dtype)
        conv.weight.copy_(c.weight * scale[:, None, None, None])
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        return conv


class PatchEmbed(nn.Module):
    """The stem: ``B x 3 x S x S`` -> ``B x D x S/r x S/r``.

    ``stride`` 4 (MobileSAM): two 3x3 stride-2 convolutions; ``stride`` 1 (LiteMedSAM): two
    1x1 convolutions.
    """

    def __init__(self, in_chans: int, embed_dim: int, stride: int = 4) -> None:
        super().__init__()
        if stride not in (1, 4):
            raise ValueError(f"TinyViT's stem has stride 4 (MobileSAM) or 1 (LiteMedSAM), got {stride}")
        kernel, step, pad = (3, 2, 1) if stride == 4 else (1, 1, 0)
        self.stride, self.embed_dim = stride, embed_dim
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, kernel, step, pad),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, kernel, step, pad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


# Frozen leading stages through a fused copy (TinyViT.forward); off only to measure it
# (``tunesam bench --baseline eager-fp32``).
FUSED_FROZEN_PREFIX = True


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """A frozen, inference-only copy of ``module``: every convolution + batch norm folded into
    one convolution, weights in channels-last order (about 1.4x faster for LiteMedSAM's
    encoder on a CPU; outputs equal to float rounding, ~4e-6)."""
    import copy

    out = copy.deepcopy(module).eval()

    def fold(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, Conv2d_BN):
                setattr(parent, name, child.fused())
            else:
                fold(child)

    fold(out)
    for p in out.parameters():
        p.requires_grad_(False)
    for m in out.modules():  # a fused copy is frozen as a whole: no fused prefix of its own
        if isinstance(m, TinyViT):
            object.__setattr__(m, "_fused_copy", True)
    return out.to(memory_format=torch.channels_last)


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depth-wise 3x3, project 1x1) on ``B x C x H x W``."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans, 1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Change width (and halve the resolution unless ``stride == 1``); tokens out.

    Input: ``B x C x H x W`` or tokens ``B x HW x C`` at ``resolution``; output tokens
    ``B x H'W' x C'``.
    """

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2d_BN(dim, out_dim, 1)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


def window_offsets(window: int) -> tuple[int, torch.Tensor]:
    """Index of the (|dy|, |dx|) offset of every pair of positions in a window.

    Returns the number of distinct offsets and a ``window^2 x window^2`` long tensor,
    offsets numbered in order of first appearance (the order of TinyViT's checkpoints).
    """
    points = list(itertools.product(range(window), range(window)))
    seen: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(seen.setdefault(off, len(seen)))
    n = len(points)
    return len(seen), torch.tensor(idxs, dtype=torch.long).view(n, n)


class Attention(nn.Module):
    """Window attention with a learned bias per head and relative offset.

    ``qkv`` is laid out per head: for head ``h`` the columns
    ``[h*(2*key_dim+d) : (h+1)*(2*key_dim+d)]`` hold that head's q, k, v in turn.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = key_dim  # attn_ratio 1, as in MobileSAM
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.value_dim))
        self.proj = nn.Linear(num_heads * self.value_dim, dim)
        n_offsets, idxs = window_offsets(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def qkv_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Output columns of ``qkv`` holding q and v (used by LoRA)."""
        per_head = 2 * self.key_dim + self.value_dim
        heads = torch.arange(self.num_heads)[:, None] * per_head
        q = (heads + torch.arange(self.key_dim)).flatten()
        v = (heads + 2 * self.key_dim + torch.arange(self.value_dim)).flatten()
        return q, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        # 1 x heads x N x N: a 3-D mask sends SDPA to its math kernel on the CPU, 3x slower
        # than the fused one in training
        bias = self.attention_biases[:, self.attention_bias_idxs].unsqueeze(0)
        out = attention(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """LayerNorm then a two-layer MLP (``norm``, ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, depth-wise local convolution, MLP, on tokens ``B x HW x C``."""

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(
            dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim
        )

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, w = self.resolution
        ws = self.window_size
        if h == ws and w == ws:
            return self.attn(x)
        grid = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        nh, nw = hp // ws, wp // ws
        windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        windows = self.attn(windows)
        grid = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        if pad_b or pad_r:
            grid = grid[:, :h, :w]
        return grid.reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, w = self.resolution
        x = x + self._windowed_attention(x)
        conv_in = x.transpose(1, 2).reshape(b, c, h, w)
        x = self.local_conv(conv_in).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class _Stage(nn.Module):
    """Blocks then optional patch merging; the official stages differ only in their blocks."""

    def __init__(self, blocks: list[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if use_ckpt else blk(x)
        return self.downsample(x) if self.downsample is not None else x


class ConvLayer(_Stage):
    """The first stage: MBConv blocks on ``B x C x H x W``, then patch merging."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None
    ) -> None:
        super().__init__([MBConv(dim, expand_ratio) for _ in range(depth)], downsample)


class BasicLayer(_Stage):
    """An attention stage: TinyViT blocks on tokens, then (optionally) patch merging."""

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        blocks = [
            TinyViTBlock(dim, resolution, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        ]
        super().__init__(blocks, downsample)


class TinyViT(nn.Module):
    """MobileSAM's image encoder: ``B x 3 x S x S`` -> ``B x out_chans x S/g x S/g``.

    ``g`` is 16 with the stride-4 stem (MobileSAM), 4 with the stride-1 stem (LiteMedSAM).
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        stem_stride: int = 4,
        classifier: bool = True,
    ) -> None:
        super().__init__()
        if len(embed_dims) != 4:
            raise ValueError("TinyViT has exactly four stages")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], stem_stride)
        res = img_size // stem_stride
        # Stage i runs at S/r / 2**i except the last, which keeps the third's resolution.
        resolutions = [res, res // 2, res // 4, res // 4]
        self.out_grid = resolutions[-1]
        self.layers = nn.ModuleList()
        for i in range(4):
            r = (resolutions[i], resolutions[i])
            downsample = None
            if i < 3:
                stride = 1 if i == 2 else 2
                downsample = PatchMerging(r, embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                layer: nn.Module = ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, downsample)
            else:
                layer = BasicLayer(
                    embed_dims[i], r, depths[i], num_heads[i], window_sizes[i],
                    mlp_ratio, local_conv_size, downsample,
                )
            self.layers.append(layer)
        self.norm_head: nn.Module | None = None
        self.head: nn.Module | None = None
        if classifier:
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)
        self.apply(self._init_weights)
        self.neck = make_neck(embed_dims[-1], out_chans)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def grad_checkpointing(self) -> bool:
        return any(layer.grad_checkpointing for layer in self.layers)

    @grad_checkpointing.setter
    def grad_checkpointing(self, enabled: bool) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enabled

    def attention_blocks(self) -> list[TinyViTBlock]:
        """The attention blocks in order (stages 1-3)."""
        return [blk for layer in self.layers[1:] for blk in layer.blocks]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional stem, ``B x 3 x S x S`` -> ``B x C0 x S/r x S/r`` (where masked
        image modelling puts its mask token)."""
        return self.patch_embed(x)

    def trunk(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Everything after :meth:`embed` (from stage ``start``): the stages and the neck."""
        for layer in self.layers[start:]:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_grid, self.out_grid, c).permute(0, 3, 1, 2)
        return self.neck(x)

    def frozen_stages(self) -> int:
        """How many leading stages have nothing to train, with the stem (0 if the stem trains)."""
        if any(p.requires_grad for p in self.patch_embed.parameters()):
            return 0
        n = 0
        for layer in self.layers[:-1]:
            if any(p.requires_grad for p in layer.parameters()):
                break
            n += 1
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen stem and leading stages (LoRA and adapters train attention blocks only,
        so the convolutional first stage has nothing to train) run through a fused copy
        without autograd: batch norms folded, channels-last. Their batch norms are in eval mode
        in training too (:meth:`SamSegmenter.train`), so the result is the same to float
        rounding (under autocast, to its rounding), in training and validation alike. The copy
        is made again at each ``train()`` or ``eval()``, and when a weight or buffer it copies
        changed, or a stage was frozen or unfrozen, since (loaded weights, a new strategy): not
        when the trained stages step. Not for inputs that need their own gradient, nor in a copy
        that is fused as a whole (:meth:`SamSegmenter.use_inference_encoder`)."""
        if not FUSED_FROZEN_PREFIX or self.__dict__.get("_fused_copy") or x.requires_grad:
            return self.trunk(self.embed(x))
        try:
            n, state = self._prefix_state()
        except RuntimeError:  # inference tensors have no version to tell a change by
            return self.trunk(self.embed(x))
        prefix = self.__dict__.get("_frozen_prefix")
        if prefix is None or prefix[2] != state:
            copy = fuse_for_inference(nn.Sequential(self.patch_embed, *self.layers[:n])) if n else None
            prefix = (copy, n, state)
            object.__setattr__(self, "_frozen_prefix", prefix)
        if prefix[0] is not None:
            with torch.no_grad():
                y = prefix[0](x.contiguous(memory_format=torch.channels_last))
            return self.trunk(y.contiguous(), start=prefix[1])
        return self.trunk(self.embed(x))

    def _prefix_state(self) -> tuple[int, tuple]:
        """How many leading stages are frozen, and what their fused copy depends on: that count
        (freezing or unfreezing the stem or a stage up to the first trained one changes it;
        what trains beyond does not matter here) and the storage and in-place version
        (``_version`` counts in-place writes, ``load_state_dict`` included) of each tensor the
        copy is made of. Cheap enough for every forward (stage 0's tensors only)."""
        n = self.frozen_stages()
        copied = [t for m in (self.patch_embed, *self.layers[:n]) for t in (*m.parameters(), *m.buffers())]
        return n, tuple((t.data_ptr(), t._version) for t in copied)

    def train(self, mode: bool = True) -> TinyViT:
        self.__dict__.pop("_frozen_prefix", None)  # what is frozen may have changed
        return super().train(mode)
