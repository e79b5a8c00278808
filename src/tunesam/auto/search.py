"""The search of ``tunesam auto``: successive halving over candidate strategies, on validation
DSC only, by Optuna.

Every candidate is one Optuna trial whose resource is the epoch. Each trial's run has the
full schedule (``epochs``: its learning rate decays over them) and is trained in segments,
breadth first: every candidate to the first rung (``min_epochs``), then the ones still in to
the next rung (``eta`` times longer), and so on to the full length. At each rung, once all
have trained to it, Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner` judges them
one by one: a trial goes on while its validation DSC is in the best ``1/eta`` of the trials
judged at that rung so far (itself included; the asynchronous form of successive halving,
the one that also spreads trials over GPUs or machines). The order decides what that keeps:
the incumbent is judged first and always goes on (at the first rung the paper's optimum for
the scenario, after that the leader of the rung before), then the others from the best
down, so with ``eta = 2`` a rival goes on when it beats the incumbent, and the best rival
when it does. Candidates are trained in the same order, so that when the budget runs short
it is the last in line that it stops.

Why Optuna and not Ray Tune: the search state is one SQLite file beside the runs (a database
URL shares it across machines) that survives a kill and needs no cluster, and its pruners
are used as they are. Ray stays the study's engine for running many cells.

The trainer is passed in (``train_to(candidate, epochs) -> val DSC per epoch so far``), so
that the search never sees a test split: it ranks, prunes and picks the winner from the
curves the trainer returns, which come from the validation split alone.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STUDY_NAME = "tunesam-auto"


@dataclass(frozen=True)
class Candidate:
    """A strategy to try: ``key`` names its run folder; ``epoch_s`` is its measured seconds
    per epoch (training and validation) and ``setup_s`` what its first segment costs once
    (filling an embedding cache)."""

    key: str
    label: str
    epoch_s: float
    options: dict[str, Any] = field(default_factory=dict, compare=False)
    setup_s: float = 0.0


@dataclass
class TrialRecord:
    key: str
    curve: list[float]  # validation DSC per epoch
    rungs: dict[int, float]  # validation DSC at each rung reached
    state: str  # complete | pruned | budget | failed
    reason: str

    @property
    def best(self) -> float:
        return max(self.curve) if self.curve else -math.inf


@dataclass
class SearchResult:
    trials: list[TrialRecord]
    winner: str | None
    reason: str


def rung_epochs(min_epochs: int, eta: int, epochs: int) -> list[int]:
    """The epochs at which a trial is judged: ``min_epochs * eta**k`` below ``epochs``, then
    ``epochs`` (its full length, where it completes)."""
    out, e = [], min_epochs
    while e < epochs:
        out.append(e)
        e *= eta
    return out + [epochs]


def _pruner(min_epochs: int, eta: int) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=eta,
                                                  min_early_stopping_rate=0)


@dataclass
class _Live:
    cand: Candidate
    trial: Any
    curve: list[float] = field(default_factory=list)
    reached: dict[int, float] = field(default_factory=dict)
    epoch_s: float = 0.0  # what an epoch took so far (the candidate's estimate until one ran)


def search(candidates: list[Candidate], train_to: Callable[[Candidate, int], list[float]], epochs: int,
           storage: str | Path, min_epochs: int = 1, eta: int = 2, seconds_left: Callable[[], float] | None = None,
           reserve_s: float = 0.0, done: Callable[[Candidate], int] = lambda c: 0) -> SearchResult:
    """Successive halving over ``candidates`` (the first is the prior), each to at most
    ``epochs``, in a new Optuna study (``tunesam-auto-N``, N counting the sessions) of
    ``storage`` (a SQLite file or a database URL). With ``seconds_left`` (the budget's clock,
    which also times the segments), a trial stops before a segment whose estimate (from the
    epochs it has run, else the candidate's own) would leave less than ``reserve_s`` (what the
    end needs: test evaluation, export), and is recorded as stopped by the budget. A trial
    whose training raises an ``Exception`` (diverged, out of memory) is recorded as failed
    with the message, and the others go on.

    Resuming: the run folders are the state. A resumed session searches again in a study of
    its own, and ``train_to`` returns at once what a folder already holds (``done`` says how
    many epochs, so that the budget counts only the epochs still to train): every decision
    is made again from the same curves in the same order, so it is the one an uninterrupted
    search makes, and nothing is trained twice."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage if "://" in str(storage) else f"sqlite:///{Path(storage).resolve()}"
    taken = set(optuna.get_all_study_names(storage=url))
    name = next(f"{STUDY_NAME}-{n}" for n in range(1, len(taken) + 2) if f"{STUDY_NAME}-{n}" not in taken)
    study = optuna.create_study(storage=url, study_name=name, direction="maximize", pruner=_pruner(min_epochs, eta))
    by_key = {c.key: c for c in candidates}
    # what a segment took, on the budget's own clock where there is one
    clock = (lambda: -seconds_left()) if seconds_left is not None else time.perf_counter  # noqa: E731
    live = []
    for c in candidates:
        study.enqueue_trial({"candidate": c.key})
        trial = study.ask()
        trial.suggest_categorical("candidate", list(by_key))
        live.append(_Live(c, trial, epoch_s=c.epoch_s))

    for rung, target in enumerate(rung_epochs(min_epochs, eta, epochs)):
        if rung:  # the leader of the rung before first, so that the budget goes to the leaders
            live.sort(key=lambda x: -x.curve[-1] if x.curve else math.inf)
        trained = []
        for x in live:
            have = max(len(x.curve), min(done(x.cand), target))  # epochs its run folder already holds
            segment = (target - have) * x.epoch_s + (0.0 if have else x.cand.setup_s)
            if segment > 0 and seconds_left is not None and seconds_left() - segment < reserve_s:
                left = max(0.0, seconds_left() - reserve_s)
                _end(study, x, "budget", f"stopped by the budget before epochs {have + 1}-{target} "
                     f"(about {segment:.0f} s; {left:.0f} s left before the end's reserve)")
                continue
            t0, before = clock(), len(x.curve)
            try:
                x.curve = list(train_to(x.cand, target))
            except Exception as exc:  # noqa: BLE001 - one candidate failing (diverged, out of memory) ends only it
                _end(study, x, "failed", f"failed in epochs {have + 1}-{target}: {exc}")
                continue
            took = clock() - t0
            new_epochs = len(x.curve) - have
            if new_epochs > 0:  # what its epochs really take (the one-off set-up taken out)
                x.epoch_s = max(1e-3, took - (0.0 if have else x.cand.setup_s)) / new_epochs
            for epoch in range(before + 1, len(x.curve) + 1):
                x.trial.report(x.curve[epoch - 1], epoch)
            x.reached[target] = x.curve[-1]
            trained.append(x)
        if target == epochs:
            for x in trained:
                _end(study, x, "complete", f"trained to its full length ({epochs} epochs)")
            break
        # Judged in this order: the incumbent (the first in line), then the others best first.
        judged = trained[:1] + sorted(trained[1:], key=lambda x: -x.curve[-1])
        live, seen = [], []
        for x in judged:
            seen.append(x.curve[-1])
            if x.trial.should_prune():
                _end(study, x, "pruned", f"pruned at epoch {target}: validation DSC {x.curve[-1]:.2f}, not in the "
                     f"best 1/{eta} of the {len(seen)} trial(s) judged there so far (best {max(seen):.2f})")
            else:
                live.append(x)
    return _result(study, by_key)


def _end(study: Any, x: _Live, state: str, reason: str) -> None:
    """Record the trial's outcome in the storage (what :func:`_result` reads, in this session
    or a later one) and finish it: complete with its best validation DSC, else pruned."""
    import optuna

    for key, value in (("state", state), ("reason", reason), ("curve", x.curve),
                       ("rungs", {str(e): v for e, v in x.reached.items()})):
        x.trial.set_user_attr(key, value)
    if state == "complete":
        study.tell(x.trial, max(x.curve))
    else:
        study.tell(x.trial, state=optuna.trial.TrialState.PRUNED)


def _result(study: Any, by_key: dict[str, Candidate]) -> SearchResult:
    trials = [TrialRecord(t.params["candidate"], list(t.user_attrs.get("curve", [])),
                          {int(e): v for e, v in t.user_attrs.get("rungs", {}).items()},
                          str(t.user_attrs.get("state", "")), str(t.user_attrs.get("reason", "")))
              for t in study.get_trials(deepcopy=False)
              if "state" in t.user_attrs and t.params.get("candidate") in by_key]
    order = list(by_key)
    trials.sort(key=lambda r: order.index(r.key))
    complete = [r for r in trials if r.state == "complete" and r.curve]
    if complete:
        best = max(complete, key=lambda r: r.best)
        rivals = [r for r in complete if r is not best]
        why = (f"the best validation DSC ({best.best:.2f}) of the {len(complete)} candidate(s) trained to their full "
               "length" + (f"; runner-up {max(rivals, key=lambda r: r.best).key} ({max(r.best for r in rivals):.2f})"
                           if rivals else ""))
        return SearchResult(trials, best.key, why)
    started = [r for r in trials if r.curve]
    if not started:
        return SearchResult(trials, None, "no candidate trained an epoch within the budget")
    best = max(started, key=lambda r: r.best)
    return SearchResult(trials, best.key, f"no candidate reached its full length within the budget: the best "
                        f"validation DSC so far ({best.best:.2f}, {len(best.curve)} epochs of its schedule)")
