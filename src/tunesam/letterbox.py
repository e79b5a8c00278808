"""The letterbox between a stored slice and the model's square input, in one place.

A slice is resized so its longest side is the model's input size ``S`` (aspect ratio kept:
bilinear, nearest or area for images, nearest for masks) and zero-padded at the bottom and
right to ``S x S``; ``valid`` (the resized extent) lets outputs be cropped and mapped back.
Prompts drawn on the stored slice scale into the input by the same factor.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def longest_side_to(h: int, w: int, size: int) -> tuple[int, int]:
    """An ``h x w`` size scaled so its longest side is ``size`` (aspect kept, rounded)."""
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def letterbox_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """Size of an ``h x w`` slice once its longest side is ``size``."""
    return longest_side_to(h, w, size)


def to_input(coords: torch.Tensor, shape: Sequence[int], size: int) -> torch.Tensor:
    """Prompt coordinates (boxes ``x0 y0 x1 y1`` or points ``x y``, any leading shape) on an
    ``h x w`` slice -> the model's ``size`` input, as SAM's ``ResizeLongestSide``: times
    ``size / max(h, w)`` (the letterbox pads at the bottom and right, so no offset)."""
    return coords * (size / max(shape[-2], shape[-1]))


INTERPOLATIONS = ("bilinear", "nearest", "area")


def letterbox_image(image: np.ndarray | torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """``h x w`` uint8 (0-255) -> ``1 x size x size`` uint8, resized and zero-padded.

    ``mode``: ``bilinear`` (anti-aliased when shrinking), ``nearest`` (the paper's reference
    code), or ``area``: pixel-area averaging when shrinking and bilinear when enlarging, as
    OpenCV's ``INTER_AREA`` that LiteMedSAM's own preprocessing uses. uint8 keeps DataLoader
    traffic four times smaller than float; the model takes 0-255 input of any dtype.
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {mode!r}")
    img = torch.tensor(np.asarray(image), dtype=torch.uint8)[None, None]
    h, w = img.shape[-2:]
    rh, rw = letterbox_shape(h, w, size)
    if (rh, rw) != (h, w):
        if mode == "area" and rh <= h and rw <= w:
            small = Image.fromarray(img[0, 0].numpy()).resize((rw, rh), Image.Resampling.BOX)
            img = torch.from_numpy(np.asarray(small).copy())[None, None]
        elif mode == "nearest":
            img = F.interpolate(img, size=(rh, rw), mode="nearest-exact")
        else:
            img = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False, antialias=rh < h)
    return F.pad(img, (0, size - rw, 0, size - rh))[0]


def letterbox_mask(mask: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """``h x w`` class mask -> ``size x size`` uint8 class indices, nearest, zero-padded."""
    m = torch.tensor(np.asarray(mask), dtype=torch.uint8)[None, None]
    h, w = m.shape[-2:]
    rh, rw = letterbox_shape(h, w, size)
    if (rh, rw) != (h, w):
        m = F.interpolate(m.float(), size=(rh, rw), mode="nearest-exact")
    return F.pad(m.to(torch.uint8), (0, size - rw, 0, size - rh))[0, 0]


def unletterbox(logits: torch.Tensor, valid: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """``C x S x S`` model output -> ``C x h x w`` float32: crop the letterbox, resize bilinearly."""
    cropped = logits[..., : valid[0], : valid[1]].float()
    if tuple(cropped.shape[-2:]) == tuple(shape):
        return cropped
    return F.interpolate(cropped[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]


def segment_letterboxed(model: torch.nn.Module, slices: Sequence[np.ndarray], want_probs: bool = False,
                        out_shape: Sequence[int] | None = None, batch_size: int = 8
                        ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Automated-mode segmentation through a model that takes letterboxed ``B x 1 x S x S``
    0-255 input with ``valid`` and returns ``B x C x S x S`` logits (it has ``image_size`` and
    ``interpolation``): ``h x w`` uint8 slices (of any sizes) -> labels ``H x W`` (uint8) and,
    with ``want_probs``, class probabilities ``C x H x W`` (float16), where ``H x W`` is
    ``out_shape`` (default each slice's own; the logits are resized bilinearly). Batches of
    ``batch_size`` in the given order."""
    from tunesam.device import autocast_for

    device = next(model.parameters()).device
    size = int(model.image_size)  # type: ignore[arg-type]
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] | None = [] if want_probs else None
    for start in range(0, len(slices), batch_size):
        chunk = slices[start : start + batch_size]
        valids = [letterbox_shape(*s.shape, size) for s in chunk]
        batch = torch.stack([letterbox_image(s, size, model.interpolation) for s in chunk]).to(device)  # type: ignore[arg-type]
        with torch.no_grad(), autocast_for(device):
            logits = model(batch, valid=torch.tensor(valids, device=device))
        for s, lg, valid in zip(chunk, logits, valids):
            native = unletterbox(lg, valid, tuple(out_shape) if out_shape is not None else s.shape)
            labels.append(native.argmax(0).to(torch.uint8).cpu().numpy())
            if probs is not None:
                probs.append(native.softmax(0).cpu().numpy().astype(np.float16))
    return labels, probs
