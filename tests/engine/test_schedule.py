"""The learning-rate schedule at its landmarks, worked out by hand."""
from __future__ import annotations

import pytest

from tunesam.engine.schedule import lr_at


def test_warm_up_then_polynomial_decay() -> None:
    base, warmup, total = 1e-4, 200, 1200
    assert lr_at(0, base, warmup, total) == pytest.approx(base / 200)  # first step of the warm-up
    assert lr_at(199, base, warmup, total) == pytest.approx(base)  # its last step reaches the base rate
    assert lr_at(200, base, warmup, total) == pytest.approx(base)  # decay starts from the base rate
    assert lr_at(700, base, warmup, total) == pytest.approx(base * 0.5 ** 0.9)  # half-way: (1 - 1/2)^0.9
    assert lr_at(1200, base, warmup, total) == 0.0  # the end
    assert lr_at(700, base, warmup, total, constant=True) == base
