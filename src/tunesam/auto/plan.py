"""Candidates and their length: what ``tunesam auto`` searches within a budget.

The candidates start from the paper's optimal strategy for the scenario (Table 4) and its
close rivals: both PEFT methods, encoder+decoder and decoder-only, on the weights the user
has (LiteMedSAM's, installed offline, unless other SAM-format files are given). The paper's
optimum names an architecture (ViT-H, ViT-B, ViT-T) that may not be at hand: the strategy
(what is tuned, and how) is kept, on the weights there are.

The length: every trial has one schedule of ``epochs`` epochs. The plan makes ``epochs`` as
long as the budget allows for the prior's run to its end plus each rival's first two rungs
(``min_epochs`` and ``eta * min_epochs``), with ``reserve_s`` kept for the end (the test
evaluation and the export). What rivals do beyond that is paid from what the prior and the
pruned trials leave; the search stops any trial whose next segment would not fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from tunesam.study.estimate import format_time

# Per scenario: (tune, method) in order, the paper's optimum first (Table 4 names the
# strategy; "prompt" keeps the user's prompt mode).
STRATEGIES = {
    "single": [("encoder-decoder", "lora"), ("encoder-decoder", "adapter"), ("decoder", "lora"), ("decoder", "adapter")],
    "few-shot": [("encoder-decoder", "adapter"), ("encoder-decoder", "lora"), ("decoder", "adapter"),
                 ("decoder", "lora")],
    "prompt": [("encoder-decoder", "adapter"), ("encoder-decoder", "lora"), ("decoder", "adapter"), ("decoder", "lora")],
    "multiple": [("encoder-decoder", "adapter"), ("encoder-decoder", "lora"), ("decoder", "adapter"),
                 ("decoder", "lora")],
}


def strategies(scenario: str) -> list[tuple[str, str]]:
    """(tune, method) of the candidates of ``scenario``, the paper's optimum first."""
    if scenario not in STRATEGIES:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(STRATEGIES)}")
    return list(STRATEGIES[scenario])


@dataclass(frozen=True)
class Length:
    epochs: int  # each trial's schedule
    candidates: int  # how many of the candidates, in order, are searched
    estimate_s: float  # the prior to its end, each rival's first two rungs, the reserve


def plan_length(epoch_s: list[float], budget_s: float, reserve_s: float = 0.0, min_epochs: int = 1, eta: int = 2,
                max_epochs: int = 200) -> Length:
    """The longest schedule that fits (see the module's account), over ``epoch_s``, the
    measured seconds per epoch of each candidate in order (the prior first). Rivals that do
    not fit at the shortest schedule are left out from the end. Raises ValueError, with the
    estimate, when not even the prior's first rung fits."""
    if not epoch_s or any(e <= 0 for e in epoch_s) or min_epochs < 1 or eta < 2:
        raise ValueError(f"bad plan request: epoch_s={epoch_s}, min_epochs={min_epochs}, eta={eta}")
    shortest = min_epochs * eta  # the prior's schedule must reach past the first rung to be judged
    for n in range(len(epoch_s), 0, -1):
        rivals = sum(e * min(shortest, max_epochs) for e in epoch_s[1:n])
        free = budget_s - reserve_s - rivals
        epochs = min(max_epochs, math.floor(free / epoch_s[0])) if free > 0 else 0
        if epochs >= min(shortest, max_epochs) or (n == 1 and epochs >= min_epochs):
            return Length(epochs, n, epochs * epoch_s[0] + rivals + reserve_s)
    need = min_epochs * epoch_s[0] + reserve_s
    raise ValueError(f"the budget ({format_time(budget_s)}) cannot fit one short run of the paper's strategy: "
                     f"{min_epochs} epoch(s) of it take about {format_time(min_epochs * epoch_s[0])} here, and the "
                     f"test evaluation and export about {format_time(reserve_s)}; give at least "
                     f"--budget {math.ceil(need / 60)}m")
