"""The paper's losses: cross-entropy (or BCE) plus soft Dice, equal weights.

Dice is computed over the whole batch per class (sums over images and pixels), so a class
missing from one slice does not dominate the loss; a class missing from the whole batch
pushes its probability towards zero. Logits are upcast to float32 (bf16-safe).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c Dice_c`` for ``B x C x H x W`` probabilities and one-hot targets."""
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Automated mode: ``logits`` ``B x (K+1) x H x W``, ``target`` ``B x H x W`` in 0..K.

    Softmax cross-entropy over all channels + soft Dice over the foreground channels.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    return ce + soft_dice_loss(probs, onehot)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Prompt modes: ``logits`` ``B x 1 x H x W``, binary ``target`` ``B x H x W``."""
    logits = logits.float()
    t = target.unsqueeze(1).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, t) + soft_dice_loss(logits.sigmoid(), t)
