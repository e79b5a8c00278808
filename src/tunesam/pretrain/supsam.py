"""SupSAM: the paper's task-expansive prompt-based learning (sections 2.3 and 4.2).

Several labelled datasets, one prompted segmentation task: per image one class, one prompt
(box or point) per connected component, each decoded against the image's embedding with
SAM's single-mask output; Dice + BCE per prompt. The prompt encoder is frozen; the image
encoder and mask decoder train in the vanilla setting (:func:`tunesam.peft.apply_strategy`
with ``encoder-decoder``/``vanilla``, which also freezes what gets no gradient: the IoU head,
the unused output heads, MobileSAM's classifier).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesam.device import autocast_for
from tunesam.engine.losses import dice_bce_loss
from tunesam.metrics import dice
from tunesam.models.segmenter import SamSegmenter, positive_points
from tunesam.peft.strategy import Strategy, apply_strategy

STRATEGY = Strategy("encoder-decoder", "vanilla", "box")  # single-mask output, prompt encoder frozen


def prepare_model(model: SamSegmenter) -> SamSegmenter:
    """Set what trains: the vanilla encoder + decoder, prompt encoder frozen."""
    return apply_strategy(model, STRATEGY)


def prompt_embeddings(model: SamSegmenter, kind: torch.Tensor, box: torch.Tensor,
                      point: torch.Tensor) -> torch.Tensor:
    """Sparse embeddings ``P x 2 x C`` of mixed prompts: a box is its two corner tokens, a
    point is its token plus SAM's padding token (as SAM encodes a point without a box)."""
    pe = model.prompt_encoder
    out = box.new_empty(len(kind), 2, pe.embed_dim)
    is_box = kind == 0
    if is_box.any():
        out[is_box] = pe(None, box[is_box], None)[0]
    if (~is_box).any():
        out[~is_box] = pe(positive_points(point[~is_box][:, None, :]), None, None)[0]
    return out


class PromptedSam(nn.Module):
    """The segmenter run on a batch of images with any number of mixed prompts each: the
    module DDP wraps (one forward, so every trained parameter's gradient is averaged)."""

    def __init__(self, model: SamSegmenter) -> None:
        super().__init__()
        self.sam = model

    def forward(self, images: torch.Tensor, valid: torch.Tensor, owner: torch.Tensor, kind: torch.Tensor,
                box: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """``P x 1 x S x S`` logits: prompt ``p`` (``owner[p]`` its image) on its image."""
        sam = self.sam
        embeddings = sam.encode(images, valid)
        sparse = prompt_embeddings(sam, kind, box, point)
        h, w = sam.prompt_encoder.image_embedding_size
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(owner), -1, h, w)
        low_res, _ = sam.mask_decoder.predict_masks(embeddings[owner], sam.prompt_encoder.get_dense_pe(),
                                                    sparse.to(embeddings.dtype), dense, range(0, 1), with_iou=False)
        return F.interpolate(low_res, size=(sam.image_size, sam.image_size), mode="bilinear", align_corners=False)


def prompt_logits(net: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Logits of a collated batch (:func:`tunesam.pretrain.data.collate_prompts`) through a
    :class:`PromptedSam`, DDP-wrapped or not."""
    return net(batch["image"].to(device, non_blocking=True), batch["valid"].to(device), batch["owner"].to(device),
               batch["kind"].to(device), batch["box"].to(device), batch["point"].to(device))


def loss(model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    logits = prompt_logits(model, batch, device)
    return dice_bce_loss(logits, batch["masks"].to(device, non_blocking=True).long())


@torch.no_grad()
def validate(model: PromptedSam, loader: Any, device: torch.device) -> tuple[float, float]:
    """(sum of DSC over prompts, prompts scored): each prompt's mask against its component
    on the real pixels (DSC in percent; a component too small to survive the resize and an
    empty prediction score nothing)."""
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        with autocast_for(device):
            logits = prompt_logits(model, batch, device)
        pred = (logits[:, 0] > 0).cpu().numpy()
        target = batch["masks"].numpy().astype(bool)
        for p, b in enumerate(batch["owner"].tolist()):
            rh, rw = batch["valid"][b].tolist()
            score = dice(pred[p, :rh, :rw], target[p, :rh, :rw])
            if not math.isnan(score):
                total += 100.0 * score
                count += 1
    return total, float(count)
