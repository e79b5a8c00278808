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


class Runs:
    """Stands in for the run folders: what each candidate has trained, kept across sessions,
    and every epoch actually trained."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.trained: list[tuple[str, int]] = []  # (candidate, epoch) for every epoch trained
        self.kill_at: tuple[str, int] | None = None

    def train_to(self, c: Candidate, epochs: int) -> list[float]:
        for e in range(self.done.get(c.key, 0) + 1, epochs + 1):
            if self.kill_at == (c.key, e):
                raise Killed  # the process dies mid-segment (BaseException: nothing catches it)
            self.trained.append((c.key, e))
            self.done[c.key] = e
        return CURVES[c.key][:epochs]


class Killed(BaseException):
    pass


def _cands(order: list[str], epoch_s: float = 1.0) -> list[Candidate]:
    return [Candidate(k, k, epoch_s) for k in order]


def _by_key(result):  # noqa: ANN001, ANN202
    return {t.key: t for t in result.trials}


def test_rungs_double_up_to_the_full_length() -> None:
    assert rung_epochs(1, 2, 8) == [1, 2, 4, 8]
    assert rung_epochs(2, 2, 10) == [2, 4, 8, 10]
    assert rung_epochs(3, 3, 3) == [3]


def test_halving_breadth_first_prunes_the_slow_starter_and_the_prior(tmp_path: Path) -> None:
    """Every candidate runs to epoch 1, then the best half goes on. Epoch 1, in the plan's
    order: prior 40 (alone: in), steady 45 (best of 2: in), slow 10 (not best of 3: out),
    weak 30 (not in the best 2 of 4: out). Epoch 2, best first: steady 52 (in), prior 50
    (not best of 2: out). The slow starter, best at epoch 8 (72), is gone at epoch 1; the prior
    (62.5 at the end) at epoch 2: halving ranks by the start."""
    runs = Runs()
    result = search(_cands(["prior", "steady", "slow", "weak"]), runs.train_to, epochs=8, storage=tmp_path / "s.db")
    t = _by_key(result)
    assert {k: r.state for k, r in t.items()} == {"prior": "pruned", "steady": "complete", "slow": "pruned",
                                                  "weak": "pruned"}
    assert t["slow"].rungs == {1: 10} and "pruned at epoch 1" in t["slow"].reason
    assert t["weak"].rungs == {1: 30}
    assert t["prior"].rungs == {1: 40, 2: 50} and "pruned at epoch 2" in t["prior"].reason
    assert t["steady"].rungs == {1: 45, 2: 52, 4: 57, 8: 60}
    assert result.winner == "steady"
    # breadth first: every candidate's first epoch before anyone's second; nothing past a pruning rung
    assert runs.trained[:4] == [("prior", 1), ("steady", 1), ("slow", 1), ("weak", 1)]
    assert ("slow", 2) not in runs.trained and ("prior", 3) not in runs.trained
    assert sum(1 for k, _ in runs.trained if k == "steady") == 8


def test_a_longer_first_rung_keeps_the_slow_starter(tmp_path: Path) -> None:
    """Judged first at epoch 5 of 8 (prior 60, steady 59, slow 60, weak 41), the slow starter
    ties the prior and stays; at epoch 8 it wins (72 against 62.5). What halving costs a slow
    starter is the length of its first rung."""
    result = search(_cands(["prior", "steady", "slow", "weak"]), Runs().train_to, epochs=8, min_epochs=5,
                    storage=tmp_path / "s.db")
    t = _by_key(result)
    assert result.winner == "slow"
    assert t["slow"].state == "complete" and t["prior"].state == "complete"
    assert t["steady"].state == "pruned" and t["weak"].state == "pruned"


def test_the_budget_stops_a_trial_before_a_segment_that_does_not_fit(tmp_path: Path) -> None:
    clock = {"left": 8.0}  # seconds; every epoch costs 1 s
    runs = Runs()

    def charged(c: Candidate, epochs: int) -> list[float]:
        clock["left"] -= epochs - runs.done.get(c.key, 0)
        return runs.train_to(c, epochs)

    result = search(_cands(["prior", "steady"]), charged, epochs=8, storage=tmp_path / "s.db",
                    seconds_left=lambda: clock["left"], reserve_s=1.0)
    t = _by_key(result)
    # epoch 1: both (8 -> 6); epoch 2: steady (5), prior (4, pruned); epochs 3-4: steady (2);
    # epochs 5-8 would cost 4 s and leave less than the 1 s reserve
    assert t["prior"].state == "pruned"
    assert t["steady"].state == "budget" and "stopped by the budget before epochs 5-8" in t["steady"].reason
    assert t["steady"].curve == CURVES["steady"][:4]
    assert clock["left"] == 2.0
    # nothing reached its full length: the best so far, and the report says so
    assert result.winner == "steady" and "no candidate reached its full length" in result.reason


def test_the_estimate_follows_what_epochs_really_take(tmp_path: Path) -> None:
    """A candidate estimated at 0.01 s an epoch that really takes 0.2 s: after its first
    segment the budget check uses what it took, and stops it before a segment that would
    overrun."""
    import time

    runs = Runs()
    start: list[float] = []  # the clock starts with the first epoch (the study's creation is not timed)

    def slow_epochs(c: Candidate, epochs: int) -> list[float]:
        start[:] = start or [time.perf_counter()]
        time.sleep(0.2 * (epochs - runs.done.get(c.key, 0)))
        return runs.train_to(c, epochs)

    def left() -> float:
        return 1.0 - (time.perf_counter() - start[0]) if start else 1.0

    result = search(_cands(["prior"], epoch_s=0.01), slow_epochs, epochs=8, storage=tmp_path / "s.db",
                    seconds_left=left)
    t = _by_key(result)
    assert t["prior"].state == "budget"
    # epochs 1-4 take 0.8 s; 5-8 would take 0.8 more (0.04 by the first estimate): stopped in time
    assert len(t["prior"].curve) == 4 and "before epochs 5-8" in t["prior"].reason
    assert time.perf_counter() - start[0] < 1.0


ORDERS = {"plan": ["prior", "steady", "slow", "weak"],
          # the incumbent (weak, 30) is below a rival pruned at epoch 1 (prior, 40): a resume
          # that judged it against the first session's pruned trials would prune it
          "low-incumbent": ["weak", "prior", "steady", "slow"]}


@pytest.mark.parametrize(("order", "kill_at"), [("plan", ("slow", 1)), ("plan", ("steady", 3)),
                                                ("plan", ("steady", 8)), ("low-incumbent", ("steady", 3)),
                                                ("low-incumbent", ("weak", 2))])
def test_a_killed_search_resumes_where_it_stopped(tmp_path: Path, order: str, kill_at: tuple[str, int]) -> None:
    """Killed mid-segment, the search reruns with the same storage and run folders: no epoch
    is trained twice, and every decision is the one an uninterrupted search makes."""
    cands = _cands(ORDERS[order])
    whole_runs = Runs()
    whole = search(cands, whole_runs.train_to, epochs=8, storage=tmp_path / "whole.db")
    runs = Runs()
    runs.kill_at = kill_at
    with pytest.raises(Killed):
        search(cands, runs.train_to, epochs=8, storage=tmp_path / "s.db")
    runs.kill_at = None
    # just enough time for the epochs still to train (1 s each): a check that counted the
    # epochs the run folders already hold would stop a trial by the budget
    clock = {"left": len(whole_runs.trained) - len(runs.trained) + 0.5}

    def charged(c: Candidate, epochs: int) -> list[float]:
        clock["left"] -= max(0, epochs - runs.done.get(c.key, 0))
        return runs.train_to(c, epochs)

    result = search(cands, charged, epochs=8, storage=tmp_path / "s.db", seconds_left=lambda: clock["left"],
                    done=lambda c: runs.done.get(c.key, 0))
    assert len(runs.trained) == len(set(runs.trained))  # no epoch trained twice
    assert {t.key: (t.state, t.rungs, t.curve) for t in result.trials} == \
        {t.key: (t.state, t.rungs, t.curve) for t in whole.trials}
    assert result.winner == whole.winner


def test_a_resume_with_less_time_than_the_reserve_keeps_what_is_trained(tmp_path: Path) -> None:
    """Killed after the search (in the baselines, the test pass or the export), a resumed
    search has less time left than the end's reserve: trials whose run folders hold their
    epochs cost nothing and are not stopped by the budget."""
    cands = _cands(["prior", "steady", "slow", "weak"])
    runs = Runs()
    first = search(cands, runs.train_to, epochs=8, storage=tmp_path / "s.db")
    again = search(cands, runs.train_to, epochs=8, storage=tmp_path / "s.db", seconds_left=lambda: 0.5,
                   reserve_s=1.0, done=lambda c: runs.done.get(c.key, 0))
    assert {t.key: (t.state, t.curve) for t in again.trials} == {t.key: (t.state, t.curve) for t in first.trials}
    assert again.winner == first.winner == "steady"


def test_a_candidate_that_fails_ends_alone(tmp_path: Path) -> None:
    """A trial whose training raises (diverged, out of memory) is recorded as failed with the
    message; the others go on."""
    runs = Runs()

    def diverges(c: Candidate, epochs: int) -> list[float]:
        if c.key == "steady" and epochs > 1:
            raise RuntimeError("training diverged at epoch 2 (loss nan)")
        return runs.train_to(c, epochs)

    result = search(_cands(["prior", "steady", "slow", "weak"]), diverges, epochs=8, storage=tmp_path / "s.db")
    t = _by_key(result)
    assert t["steady"].state == "failed" and "diverged" in t["steady"].reason
    assert t["prior"].state == "complete" and result.winner == "prior"
