"""Dice + cross-entropy against values worked out by hand."""
from __future__ import annotations

import math

import torch

from tunesam.engine.losses import SMOOTH, dice_bce_loss, dice_ce_loss


def test_uniform_logits_two_classes_by_hand() -> None:
    # 1 image, 2 x 2 pixels, half foreground; equal logits -> p = 0.5 everywhere.
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = torch.zeros(1, 2, 2, 2)
    ce = math.log(2)
    dice = (2 * 0.5 * 2 + SMOOTH) / (0.5 * 4 + 2 + SMOOTH)  # inter 1, probs 2, target 2
    assert math.isclose(dice_ce_loss(logits, target).item(), ce + 1 - dice, rel_tol=1e-6)


def test_confident_correct_prediction_is_near_zero_and_wrong_is_large() -> None:
    target = torch.randint(0, 3, (2, 8, 8))
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40
    assert dice_ce_loss(good, target).item() < 1e-4
    assert dice_ce_loss(-good, target).item() > 10


def test_binary_loss_by_hand() -> None:
    target = torch.tensor([[[1, 0], [0, 0]]])
    logits = torch.zeros(1, 1, 2, 2)
    dice = (2 * 0.5 + SMOOTH) / (2.0 + 1 + SMOOTH)
    assert math.isclose(dice_bce_loss(logits, target).item(), math.log(2) + 1 - dice, rel_tol=1e-6)


def test_bf16_logits_give_float32_loss() -> None:
    target = torch.randint(0, 2, (1, 4, 4))
    loss = dice_ce_loss(torch.randn(1, 2, 4, 4).bfloat16(), target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
