"""The successive-halving search on constructed learning curves (issue 20): which candidates
halving keeps, what it does to a slow starter, the budget, and resuming after a kill."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")

from tunesam.auto.search import Candidate, rung_epochs, search  # noqa: E402

# Validation DSC per epoch (8 epochs). "slow" is the best at the end but the worst early on.
CURVES = {
    "prior": [40, 50, 55, 58, 60, 61, 62, 62.5],
    "steady": [45, 52, 56, 57, 59, 59.5, 60, 60],
    "slow": [10, 20, 35, 50, 60, 66, 70, 72],
    "weak": [30, 35, 38, 40, 41, 42, 42, 43],
}


def _trainer(calls: list[tuple[str, int]]):  # noqa: ANN202
    def train_to(c: Candidate, epochs: int) -> list[float]:
        calls.append((c.key, epochs))
        return CURVES[c.key][:epochs]
    return train_to


def _cands(order: list[str], epoch_s: float = 1.0) -> list[Candidate]:
    return [Candidate(k, k, epoch_s) for k in order]


def test_rungs_double_up_to_the_full_length() -> None:
    assert rung_epochs(1, 2, 8) == [1, 2, 4, 8]
    assert rung_epochs(2, 2, 10) == [2, 4, 8, 10]
    assert rung_epochs(3, 3, 3) == [3]


def test_halving_keeps_the_prior_and_prunes_the_slow_starter(tmp_path: Path) -> None:
    """The prior runs to its full length; each rival goes on only while it is in the best half
    of the trials that reached the rung. The slow starter, best at epoch 8 (72), is pruned at
    epoch 1 (10 against 40 and 45): that is what halving does to it."""
    calls: list[tuple[str, int]] = []
    result = search(_cands(["prior", "steady", "slow", "weak"]), _trainer(calls), epochs=8,
                    storage=tmp_path / "s.db")
    states = {t.key: t.state for t in result.trials}
    assert states == {"prior": "complete", "steady": "pruned", "slow": "pruned", "weak": "pruned"}
    slow = next(t for t in result.trials if t.key == "slow")
    assert slow.rungs == {1: 10} and "pruned at epoch 1" in slow.reason
    steady = next(t for t in result.trials if t.key == "steady")
    # ahead of the prior at epochs 1 (45 > 40) and 2 (52 > 50), behind it at 4 (57 < 58)
    assert steady.rungs == {1: 45, 2: 52, 4: 57} and "pruned at epoch 4" in steady.reason
    weak = next(t for t in result.trials if t.key == "weak")
    assert weak.rungs == {1: 30}  # the 4th at epoch 1 must be in the best 2 of 4: 30 < 40
    assert result.winner == "prior"
    # what ran: nothing past a pruning rung
    assert ("slow", 2) not in calls and ("prior", 8) in calls


def test_the_slow_starter_wins_when_it_goes_first(tmp_path: Path) -> None:
    """Asynchronous halving judges a trial against those before it: first in line, the slow
    starter is the incumbent, runs to its end and wins; the others must match it rung by rung."""
    result = search(_cands(["slow", "prior", "steady", "weak"]), _trainer([]), epochs=8, storage=tmp_path / "s.db")
    assert result.winner == "slow"
    assert {t.key: t.state for t in result.trials}["slow"] == "complete"


def test_the_budget_stops_a_trial_before_a_segment_that_does_not_fit(tmp_path: Path) -> None:
    clock = {"left": 10.0}  # seconds; every epoch costs 1 s
    spent: dict[str, int] = {}

    def charged(c: Candidate, epochs: int) -> list[float]:
        clock["left"] -= epochs - spent.get(c.key, 0)
        spent[c.key] = epochs
        return CURVES[c.key][:epochs]

    result = search(_cands(["prior", "steady"]), charged, epochs=8, storage=tmp_path / "s.db",
                    seconds_left=lambda: clock["left"], reserve_s=1.0)
    prior = next(t for t in result.trials if t.key == "prior")
    assert prior.state == "complete"  # 8 epochs of the 10 s
    steady = next(t for t in result.trials if t.key == "steady")
    # its first epoch fits (2 s left, 1 reserved); the second would eat into the reserve
    assert steady.state == "budget" and "stopped by the budget" in steady.reason and steady.curve == CURVES["steady"][:1]
    assert clock["left"] == 1.0  # the reserve is kept


def test_a_killed_search_resumes_where_it_stopped(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []

    class Killed(BaseException):
        pass

    def dies_in_slow(c: Candidate, epochs: int) -> list[float]:
        if c.key == "slow":
            raise Killed  # the process dies mid-trial (BaseException: Optuna does not catch it)
        calls.append((c.key, epochs))
        return CURVES[c.key][:epochs]

    cands = _cands(["prior", "steady", "slow", "weak"])
    with pytest.raises(Killed):
        search(cands, dies_in_slow, epochs=8, storage=tmp_path / "s.db")
    done_before = list(calls)
    calls.clear()
    result = search(cands, _trainer(calls), epochs=8, storage=tmp_path / "s.db")
    assert {k for k, _ in calls} == {"slow", "weak"}  # prior and steady were not trained again
    assert ("prior", 8) in done_before
    assert {t.key for t in result.trials} == {"prior", "steady", "slow", "weak"} and result.winner == "prior"
    prior = next(t for t in result.trials if t.key == "prior")  # read back from the first session's storage
    assert prior.state == "complete" and prior.rungs == {1: 40, 2: 50, 4: 58, 8: 62.5}
    assert prior.curve == CURVES["prior"]
