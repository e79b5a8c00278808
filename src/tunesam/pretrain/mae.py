"""SSLSAM: masked image modelling on SAM's image encoder (the paper's sections 2.4 and 4.3).

The objective is MAE's (He et al., 2022): the image is cut into ``m x m`` patches, a random
75% of them is hidden, a light transformer decoder (512 wide, 8 blocks, 16 heads, fixed
sine-cosine positions) predicts their pixels, and the loss is the mean squared error on the
hidden patches only, against per-patch normalised targets.

SAM's encoders do not take plain MAE's token dropping as they are: ViT-B/L/H attend within
14 x 14 windows in all but four blocks, TinyViT begins with convolutions and mixes tokens
with convolutions in every block. Two variants are offered (``mae_variant``):

* ``visible`` (SAM ViT only, its default: the paper's MAE): the visible 25% of the tokens
  alone, every block attending globally (the authors' answer in their issue #6); the
  relative-position tables are read with distances clamped to their span, so windowed blocks
  see their own table's values for the distances they know. The neck does not train (it
  needs the full grid).
* ``masked-grid`` (TinyViT's default and only choice, since its convolutions cannot take a
  sequence with tokens dropped; an option for ViT; SimMIM-style, Xie et al. 2022): every
  patch goes through the encoder exactly as fine-tuning will run it (windows, relative
  positions, convolutions, neck); a hidden patch's stem output is replaced by a learned mask
  token and its pixels are zeroed before the stem, so no convolution sees them. It trains
  the very network that is fine-tuned, at about 4x the encoder compute of token dropping.
  Batch norms keep their statistics (eval mode) so masked images do not shift them.

Only the encoder is kept: :func:`export_sslsam` writes it in SAM's layout with the prompt
encoder and mask decoder of the starting checkpoint, unchanged.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesam.models.common import attention
from tunesam.models.image_encoder import Block, ImageEncoderViT
from tunesam.models.segmenter import SamSegmenter


# -- patches and masks ------------------------------------------------------------------------
def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """``B x C x S x S`` -> ``B x L x (p*p*C)`` with ``L = (S/p)^2``, patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``B x L x (p*p*C)`` -> ``B x C x S x S``."""
    b, n, _ = patches.shape
    g = int(math.isqrt(n))
    x = patches.reshape(b, g, g, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)


def random_mask(batch: int, patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``B x L`` bool, exactly ``round(L * ratio)`` patches hidden (True) per image, uniformly."""
    hidden = int(round(patches * ratio))
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :hidden], True)
    return mask


def real_patches(valid: torch.Tensor, size: int, p: int) -> torch.Tensor:
    """``B x L`` bool: patches holding at least one real (not letterbox padding) pixel."""
    g = size // p
    starts = torch.arange(g, device=valid.device) * p
    rows = starts[None, :] < valid[:, 0, None]  # B x g
    cols = starts[None, :] < valid[:, 1, None]
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(valid), g * g)


def normalised_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels (MAE's ``norm_pix_loss``)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the ``counted`` (``B x L`` bool) patches only."""
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    weight = counted.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2D sine-cosine positions, ``grid^2 x dim``: half the channels encode the
    row, half the column, each as sines and cosines of geometric frequencies."""
    if dim % 4:
        raise ValueError(f"sine-cosine positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(ys), encode(xs)], dim=1).float()


# -- the visible-token encoder pass (ViT only) --------------------------------------------------
def _clamped_index(pos: torch.Tensor, table_len: int) -> torch.Tensor:
    """``B x N x N`` table rows for the relative distance ``pos_i - pos_j``, clamped to the table."""
    k = (table_len + 1) // 2
    d = pos[:, :, None] - pos[:, None, :]
    return d.clamp(-(k - 1), k - 1) + (k - 1)


def _global_block(blk: Block, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """One SAM ViT block on a sparse token set ``B x N x D`` at grid positions ``rows``, ``cols``
    (``B x N``), every token attending to every other, with SAM's decomposed relative positions."""
    attn = blk.attn
    b, n, c = x.shape
    y = blk.norm1(x)
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # B x heads x N x c
    bias = None
    if attn.use_rel_pos:
        bias = q.new_zeros(b, attn.num_heads, n, n)
        for table, pos in ((attn.rel_pos_h, rows), (attn.rel_pos_w, cols)):
            scores = q @ table.to(q.dtype).t()  # B x heads x N x T
            index = _clamped_index(pos, table.shape[0])[:, None].expand(-1, attn.num_heads, -1, -1)
            bias = bias + scores.gather(-1, index)
    out = attention(q, k, v, bias)
    x = x + attn.proj(out.transpose(1, 2).reshape(b, n, c))
    return x + blk.mlp(blk.norm2(x))


# -- the model ------------------------------------------------------------------------------------
class MaskedAutoencoder(nn.Module):
    """SAM's image encoder plus MAE's reconstruction decoder.

    ``forward(images, valid, mask)`` takes ``B x 3 x S x S`` normalised images (letterbox
    padding zero), ``valid`` (rows, cols of real pixels) and ``mask`` ``B x L`` (True: hidden;
    ``L = (S / mask_patch)^2``) and returns ``(loss, pred)``, ``pred`` ``B x L x (m*m*3)``.
    """

    def __init__(self, encoder: nn.Module, image_size: int, stride: int, mask_patch: int,
                 variant: str = "masked-grid", decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, norm_pix_loss: bool = True) -> None:
        super().__init__()
        if variant == "visible" and not isinstance(encoder, ImageEncoderViT):
            raise ValueError("the visible-token variant needs SAM's ViT; TinyViT's convolutions need the full grid")
        if mask_patch % stride or image_size % mask_patch:
            raise ValueError(f"the mask patch ({mask_patch} px) must be a multiple of the encoder's stride ({stride}) "
                             f"and divide the input size ({image_size})")
        self.encoder = encoder
        self.variant = variant
        self.image_size = image_size
        self.mask_patch = mask_patch
        self.norm_pix_loss = norm_pix_loss
        self.grid = image_size // mask_patch
        self.channels_last = isinstance(encoder, ImageEncoderViT)  # ViT's stem output is B x h x w x D
        if variant == "visible":
            feature_dim = encoder.patch_embed.proj.out_channels
            self.feature_norm: nn.Module = nn.LayerNorm(feature_dim, eps=1e-6)
            self.decoder_mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
            nn.init.normal_(self.decoder_mask_token, std=0.02)
        else:
            if self.channels_last:
                self.stem_stride, stem_dim = encoder.patch_embed.proj.stride[0], encoder.patch_embed.proj.out_channels
            else:
                self.stem_stride, stem_dim = encoder.patch_embed.stride, encoder.patch_embed.embed_dim
            self.mask_token = nn.Parameter(torch.zeros(stem_dim))
            nn.init.normal_(self.mask_token, std=0.02)
            self.cells_per_patch = mask_patch // stride
            feature_dim = encoder.neck[0].out_channels * self.cells_per_patch**2
            self.feature_norm = nn.Identity()
        self.decoder_embed = nn.Linear(feature_dim, decoder_dim)
        self.register_buffer("decoder_pos", sincos_2d(decoder_dim, self.grid)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(decoder_dim, decoder_heads, 4 * decoder_dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, mask_patch * mask_patch * 3)

    def train(self, mode: bool = True) -> MaskedAutoencoder:
        """Batch norms stay in eval mode: their statistics remain those of whole images."""
        super().train(mode)
        for m in self.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    # encoders
    def _upsampled(self, mask: torch.Tensor, size: int) -> torch.Tensor:
        """``B x L`` patch mask -> ``B x size x size`` bool on a finer grid."""
        m = mask.reshape(-1, 1, self.grid, self.grid).float()
        return F.interpolate(m, size=(size, size), mode="nearest")[:, 0].bool()

    def _encode_masked_grid(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pixels = self._upsampled(mask, self.image_size)[:, None]
        x = self.encoder.embed(images.masked_fill(pixels, 0.0))
        hidden = self._upsampled(mask, self.image_size // self.stem_stride)
        token = self.mask_token.to(x.dtype)
        if self.channels_last:
            x = torch.where(hidden[..., None], token, x)
        else:
            x = torch.where(hidden[:, None], token[None, :, None, None], x)
        features = self.encoder.trunk(x)  # B x C x g x g
        return F.pixel_unshuffle(features, self.cells_per_patch).flatten(2).transpose(1, 2)  # B x L x C*k*k

    def _encode_visible(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        enc: ImageEncoderViT = self.encoder  # type: ignore[assignment]
        if self.mask_patch != enc.patch_embed.proj.kernel_size[0]:
            raise ValueError("the visible-token variant masks whole ViT patches: --mask-patch must be 16")
        x = enc.embed(images)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        b, g, _, d = x.shape
        keep = (~mask).nonzero()[:, 1].reshape(b, -1)  # B x N visible patch numbers, ascending
        tokens = x.reshape(b, g * g, d).gather(1, keep[..., None].expand(-1, -1, d))
        rows, cols = keep // g, keep % g
        use_ckpt = enc.grad_checkpointing and torch.is_grad_enabled()
        for blk in enc.blocks:
            tokens = (checkpoint(_global_block, blk, tokens, rows, cols, use_reentrant=False) if use_ckpt
                      else _global_block(blk, tokens, rows, cols))
        full = tokens.new_zeros(b, g * g, d)
        return full.scatter(1, keep[..., None].expand(-1, -1, d), self.feature_norm(tokens))

    # decoder and loss
    def _decode(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(features)
        if self.variant == "visible":  # hidden patches have no features: the decoder's mask token
            x = torch.where(mask[..., None], self.decoder_mask_token.to(x.dtype), x)
        x = x + self.decoder_pos.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images.float(), self.mask_patch)
        return normalised_targets(patches) if self.norm_pix_loss else patches

    def forward(self, images: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        encode = self._encode_visible if self.variant == "visible" else self._encode_masked_grid
        pred = self._decode(encode(images, mask), mask)
        counted = mask & real_patches(valid, self.image_size, self.mask_patch)
        return masked_mse(pred, self.targets(images), counted), pred

    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images with hidden patches replaced by the prediction (de-normalised with each true
        patch's mean and spread when targets are normalised), visible patches kept."""
        patches = patchify(images.float(), self.mask_patch)
        out = pred.float()
        if self.norm_pix_loss:
            out = out * (patches.var(-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(-1, keepdim=True)
        return unpatchify(torch.where(mask[..., None], out, patches), self.mask_patch)


def mae_parameter_groups(model: MaskedAutoencoder, weight_decay: float) -> list[dict]:
    """MAE's groups: weight decay on weight matrices only; none on norms, biases, position
    tables (ViT's ``pos_embed`` and ``rel_pos``, TinyViT's ``attention_biases``) and mask tokens. Parameters that get no gradient (TinyViT's unused classifier; the
    neck in the visible variant) are frozen and left out."""
    unused = ("encoder.head.", "encoder.norm_head.") + (("encoder.neck.",) if model.variant == "visible" else ())
    decay, plain = [], []
    for name, p in model.named_parameters():
        if name.startswith(unused):
            p.requires_grad_(False)
            continue
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or any(t in name for t in ("pos_embed", "rel_pos", "attention_biases", "mask_token"))
        (plain if no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def cosine_lr_at(step: int, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """MAE's schedule per optimiser step: linear warm-up to ``base_lr`` over ``warmup`` steps,
    then a half-cycle cosine down to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def reconstruction_figure(path: Path, images: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor,
                          mask_patch: int, title: str) -> None:
    """Rows of original | masked | reconstruction for a few slices (first channel, each row
    scaled by its original's range). With per-patch targets a hidden patch is drawn from its
    prediction de-normalised by the true patch's mean and spread (MAE's own visualisation), so
    a flat block means no structure predicted inside it."""
    from tunesam.viz import pyplot, save_figure

    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False, layout="constrained")
    hidden = F.interpolate(mask.reshape(n, 1, *(2 * [images.shape[-1] // mask_patch])).float(),
                           scale_factor=mask_patch, mode="nearest")[:, 0].bool()
    for i in range(n):
        orig = images[i, 0].float().cpu().numpy()
        lo, hi = float(orig.min()), float(orig.max())
        shown = np.where(hidden[i].cpu().numpy(), np.nan, orig)
        for ax, img, name in zip(axes[i], (orig, shown, recon[i, 0].float().cpu().numpy()),
                                 ("original", "masked", "reconstruction")):
            cmap = plt.get_cmap("gray").with_extremes(bad="#3060a0")
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(path, fig)


def export_sslsam(model: MaskedAutoencoder, start: SamSegmenter, path: Path) -> list[str]:
    """Write ``path``: ``start`` (the segmenter built from the starting checkpoint) with its image
    encoder replaced by the pre-trained one, in the official layout."""
    from tunesam.peft.export import export_checkpoint

    start.image_encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    return export_checkpoint(start, path)

