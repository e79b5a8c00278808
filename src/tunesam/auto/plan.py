"""Candidates and their length: what ``tunesam auto`` searches within a budget.

The candidates start from the paper's optimal strategy for the scenario (Table 4) and its
close rivals: both PEFT methods, encoder+decoder and decoder-only, on the weights the user
has (LiteMedSAM's, installed offline, unless other SAM-format files are given). The paper's
optimum names an architecture (ViT-H, ViT-B, ViT-T) that may not be at hand: the strategy
(what is tuned, and how) is kept, on the weights there are.

The length: every trial has one schedule of ``epochs`` epochs, trained breadth first (see
:mod:`tunesam.auto.search`): all candidates to the first rung, then the best ``1/eta`` of
them to each next rung. The plan makes ``epochs`` as long as the budget allows for that,
counting at each rung the dearest of the candidates that may still be in (``ceil(n / eta**k)``
after ``k`` rungs), their one-off set-up (embedding caches), and ``reserve_s`` kept for the
end (the test evaluation and the export). Asynchronous halving can keep more than that at a
rung; the search then stops, by the budget, the last in line.
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
    estimate_s: float  # the search at that length (see the module's account) and the reserve


def search_cost(epoch_s: list[float], epochs: int, min_epochs: int, eta: int, setup_s: list[float] | None = None
                ) -> float:
    """Seconds of a breadth-first halving of candidates costing ``epoch_s`` an epoch, each to
    ``epochs``, when at each rung the dearest of those that may still be in go on."""
    from tunesam.auto.search import rung_epochs

    dearest = sorted(epoch_s, reverse=True)
    total, before = sum(setup_s or []), 0
    for k, rung in enumerate(rung_epochs(min_epochs, eta, epochs)):
        n = max(1, math.ceil(len(epoch_s) / eta**k))
        total += (rung - before) * sum(dearest[:n])
        before = rung
    return total


def plan_length(epoch_s: list[float], budget_s: float, reserve_s: float = 0.0, min_epochs: int = 1, eta: int = 2,
                max_epochs: int = 200, setup_s: list[float] | None = None) -> Length:
    """The longest schedule that fits (see the module's account), over ``epoch_s``, the
    measured seconds per epoch of each candidate in order (the prior first), and ``setup_s``,
    their one-off costs. Rivals that do not fit with a schedule past the first rung are left
    out from the end. Raises ValueError, with the estimate, when not even the prior's first
    rung fits."""
    if not epoch_s or any(e <= 0 for e in epoch_s) or min_epochs < 1 or eta < 2:
        raise ValueError(f"bad plan request: epoch_s={epoch_s}, min_epochs={min_epochs}, eta={eta}")
    setup = list(setup_s or [0.0] * len(epoch_s))
    for n in range(len(epoch_s), 0, -1):
        shortest = min(max_epochs, min_epochs * eta if n > 1 else min_epochs)  # rivals are judged past a rung
        fits = [e for e in range(shortest, max_epochs + 1)
                if search_cost(epoch_s[:n], e, min_epochs, eta, setup[:n]) + reserve_s <= budget_s]
        if fits:
            epochs = max(fits)
            return Length(epochs, n, search_cost(epoch_s[:n], epochs, min_epochs, eta, setup[:n]) + reserve_s)
    need = min_epochs * epoch_s[0] + setup[0] + reserve_s
    raise ValueError(f"the budget ({format_time(budget_s)}) cannot fit one short run of the paper's strategy: "
                     f"{min_epochs} epoch(s) of it take about {format_time(min_epochs * epoch_s[0])} here, and the "
                     f"test evaluation and export about {format_time(reserve_s)}; give at least "
                     f"--budget {math.ceil(need / 60)}m")
