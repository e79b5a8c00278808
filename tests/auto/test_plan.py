"""The budget arithmetic of tunesam auto's plan (issue 20), on constructed epoch costs."""
from __future__ import annotations

import pytest

from tunesam.auto.plan import plan_length, strategies


def test_the_prior_comes_first_in_every_scenario() -> None:
    assert strategies("single")[0] == ("encoder-decoder", "lora")  # ViT-H + En/Decoder + LoRA
    for s in ("few-shot", "prompt", "multiple"):
        assert strategies(s)[0] == ("encoder-decoder", "adapter")  # En/Decoder + Adapter
    assert all(len(set(strategies(s))) == 4 for s in ("single", "few-shot", "prompt", "multiple"))
    with pytest.raises(ValueError, match="unknown scenario"):
        strategies("two")


def test_the_longest_schedule_that_fits_the_prior_and_the_rivals_first_rungs() -> None:
    # 30 min; prior 140 s an epoch, rivals 140, 15, 15 s; 60 s kept for the end.
    # rivals' first two rungs (2 epochs each): 2 * (140 + 15 + 15) = 340 s;
    # (1800 - 60 - 340) / 140 = 10 epochs for the prior.
    length = plan_length([140, 140, 15, 15], 1800, reserve_s=60)
    assert (length.epochs, length.candidates) == (10, 4)
    assert length.estimate_s == 10 * 140 + 340 + 60 <= 1800


def test_rivals_that_do_not_fit_are_left_out_from_the_end() -> None:
    # 8 min: with all rivals 480 - 60 - 340 = 80 s, not 2 epochs of 140; without the last two
    # rivals 480 - 60 - 280 = 140: 1 epoch, still short; the prior alone: 420 / 140 = 3 epochs.
    length = plan_length([140, 140, 15, 15], 480, reserve_s=60)
    assert (length.epochs, length.candidates) == (3, 1)


def test_the_schedule_is_capped_and_a_budget_too_small_is_named_with_its_estimate() -> None:
    assert plan_length([1.0, 1.0], 10_000, max_epochs=200).epochs == 200
    with pytest.raises(ValueError, match=r"cannot fit one short run of the paper's strategy.*at least --budget 4m"):
        plan_length([140, 15], 150, reserve_s=60)
