"""The budget arithmetic of tunesam auto's plan (issue 20), on constructed epoch costs."""
from __future__ import annotations

import pytest

from tunesam.auto.plan import plan_length, search_cost, strategies


def test_the_prior_comes_first_in_every_scenario() -> None:
    assert strategies("single")[0] == ("encoder-decoder", "lora")  # ViT-H + En/Decoder + LoRA
    for s in ("few-shot", "prompt", "multiple"):
        assert strategies(s)[0] == ("encoder-decoder", "adapter")  # En/Decoder + Adapter
    assert all(len(set(strategies(s))) == 4 for s in ("single", "few-shot", "prompt", "multiple"))
    with pytest.raises(ValueError, match="unknown scenario"):
        strategies("two")


def test_the_longest_schedule_that_fits_a_breadth_first_halving() -> None:
    # 30 min; candidates 140, 140, 15, 15 s an epoch; 60 s kept for the end. Epoch 1: all four
    # (310 s); epoch 2: the dearest 2 (280); epochs 3-4, 5-8, 9-E: the dearest one (140 each):
    # 590 + 140 (E - 2) <= 1740 gives E = 10.
    length = plan_length([140, 140, 15, 15], 1800, reserve_s=60)
    assert (length.epochs, length.candidates) == (10, 4)
    assert length.estimate_s == 310 + 280 + 140 * 8 + 60 <= 1800
    assert search_cost([140, 140, 15, 15], 10, 1, 2) == 310 + 280 + 280 + 560 + 280
    # a one-off set-up (an embedding cache) comes off the top: 590 + 100 + 140 (E - 2) <= 1740
    assert plan_length([140, 140, 15, 15], 1800, reserve_s=60, setup_s=[0, 0, 100, 0]).epochs == 9
    # a longer first rung: epochs 1-2 all four (620), 3-4 two (560), 5-8 one (560): E = 8
    assert plan_length([140, 140, 15, 15], 1800, reserve_s=60, min_epochs=2).epochs == 8


def test_rivals_that_do_not_fit_are_left_out_from_the_end() -> None:
    # 8 min, 420 s to spend: two epochs of all four cost 310 + 280, of the first three 295 + 280;
    # the first two fit (280 + 140): the cheap rivals are the ones left out, being last in line.
    length = plan_length([140, 140, 15, 15], 480, reserve_s=60)
    assert (length.epochs, length.candidates) == (2, 2)
    # 6 min, 300 s: not even two candidates for two epochs (420); the prior alone, 2 epochs
    assert (lambda x: (x.epochs, x.candidates))(plan_length([140, 140, 15, 15], 360, reserve_s=60)) == (2, 1)


def test_the_schedule_is_capped_and_a_budget_too_small_is_named_with_its_estimate() -> None:
    assert plan_length([1.0, 1.0], 10_000, max_epochs=200).epochs == 200
    with pytest.raises(ValueError, match=r"cannot fit one short run of the paper's strategy.*at least --budget 4m"):
        plan_length([140, 15], 150, reserve_s=60)
