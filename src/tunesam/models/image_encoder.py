"""SAM's ViT image encoder (ViT-B/L/H), key-compatible with Meta's checkpoints.

The module tree (``patch_embed.proj``, ``pos_embed``, ``blocks.N.{norm1,attn,norm2,mlp}``,
``neck.{0..3}``) follows the official one so state dicts load unchanged. Attention runs
through :func:`torch.nn.functional.scaled_dot_product_attention` with SAM's decomposed
relative-position terms folded into the queries and keys (no ``HW x HW`` mask; see
``Attention``); ``REL_POS_IN_QK = False`` passes them as the additive mask instead, for
comparison only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesam.models.common import MLPBlock, attention, make_neck


class PatchEmbed(nn.Module):
    """Non-overlapping patches: ``B x C x H x W`` -> ``B x H/p x W/p x D`` (channels last)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a ``L x C`` relative-position table to ``length x C``."""
    if rel_pos.shape[0] == length:
        return rel_pos
    table = rel_pos.t().unsqueeze(0).float()  # 1 x C x L
    table = F.interpolate(table, size=length, mode="linear")
    return table.squeeze(0).t().to(rel_pos.dtype)


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample ``1 x h x w x C`` absolute position embeddings to ``1 x H x W x C`` (bicubic)."""
    x = pos.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos.dtype)


# Fold the relative-position bias into q and k (see Attention._attend_rel_pos); False passes
# it as an attention mask instead (for comparison: tunesam bench --baseline rel-pos-mask).
REL_POS_IN_QK = True


def rel_pos_lookup(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis.

    Returns a ``q_size x k_size x C`` tensor. When query and key lengths differ the
    coordinates are scaled to the longer one, as in SAM.
    """
    span = 2 * max(q_size, k_size) - 1
    table = resize_rel_pos(rel_pos, span)
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    index = (q_coords - k_coords) + (k_size - 1) * k_scale
    return table[index.long()]


class Attention(nn.Module):
    """Multi-head self-attention over a ``B x H x W x C`` grid with a fused ``qkv``.

    The fused projection's output is laid out ``[q (all heads) | k | v]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("relative positions need the attention's input_size")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def qkv_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Output columns of ``qkv`` holding q and v (used by LoRA)."""
        dim = self.num_heads * self.head_dim
        return torch.arange(0, dim), torch.arange(2 * dim, 3 * dim)

    def _rel_pos_terms(self, q: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's decomposed relative-position bias from unscaled ``q``: ``B x heads x HW x h`` (query
        to key row) and ``B x heads x HW x w`` (query to key column)."""
        rh = rel_pos_lookup(h, h, self.rel_pos_h).to(q.dtype)  # h x h x c
        rw = rel_pos_lookup(w, w, self.rel_pos_w).to(q.dtype)  # w x w x c
        b, nh = q.shape[:2]
        grid_q = q.reshape(b, nh, h, w, self.head_dim)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rh).reshape(b, nh, h * w, h)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rw).reshape(b, nh, h * w, w)
        return bias_h, bias_w

    def _attend_rel_pos(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Attention with the relative-position bias.

        The bias of query i to key j = (row r_j, column c_j) is ``bias_h[i, r_j] + bias_w[i, c_j]``.
        With ``REL_POS_IN_QK`` it is folded into the dot product, ``[q_i * s, bias_h[i], bias_w[i]]
        . [k_j, onehot(r_j), onehot(c_j)]``, so attention runs without an ``HW x HW`` mask (kernels
        that take no mask; nothing of that size is stored for backward); otherwise the bias is
        materialised and passed as the mask. Both compute the same function.
        """
        bias_h, bias_w = self._rel_pos_terms(q, h, w)
        if not REL_POS_IN_QK:
            bias = (bias_h.unflatten(2, (h, w))[..., :, None] + bias_w.unflatten(2, (h, w))[..., None, :])
            return attention(q, k, v, bias.reshape(*q.shape[:2], h * w, h * w))
        rows = torch.arange(h, device=q.device).repeat_interleave(w)
        cols = torch.arange(w, device=q.device).repeat(h)
        keys = torch.cat([F.one_hot(rows, h), F.one_hot(cols, w)], 1).to(k.dtype)
        qa = torch.cat([q * self.head_dim**-0.5, bias_h, bias_w], -1)
        ka = torch.cat([k, keys.expand(*k.shape[:2], -1, -1)], -1)
        pad = -qa.shape[-1] % 8  # fused kernels want head sizes in multiples of 8
        if pad:
            qa, ka = F.pad(qa, (0, pad)), F.pad(ka, (0, pad))
        return attention(qa, ka, v, scale=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x heads x HW x c
        if self.use_rel_pos:
            out = self._attend_rel_pos(q, k, v, h, w)
        else:
            out = attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``B x H x W x C`` -> ``(B * nW) x window x window x C``, zero-padding H and W."""
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp, wp) != (h, w) else x


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's image encoder: ``B x 3 x S x S`` -> ``B x out_chans x S/16 x S/16``."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = (
            nn.Parameter(torch.zeros(1, grid, grid, embed_dim)) if use_abs_pos else None
        )
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = make_neck(embed_dim, out_chans)
        self.grad_checkpointing = False

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The patch embedding, ``B x 3 x S x S`` -> ``B x S/16 x S/16 x D`` (where masked
        image modelling puts its mask token)."""
        return self.patch_embed(x)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after :meth:`embed`: positions, blocks, neck -> ``B x out_chans x S/16 x S/16``."""
        if self.pos_embed is not None:
            x = x + self.pos_embed
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if use_ckpt else blk(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.embed(x))
