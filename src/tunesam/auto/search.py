"""The search of ``tunesam auto``: successive halving over candidate strategies, on validation
DSC only, by Optuna.

Every candidate is one Optuna trial whose resource is the epoch. Each trial's run has the
full schedule (``epochs``: its learning rate decays over them), and is trained in segments:
to the first rung (``min_epochs``), then to each next rung (``eta`` times longer), and so on to
its full length. At each rung Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner`
decides whether it goes on: it does while its validation DSC there is in the best ``1/eta``
of the trials that reached that rung before it (the asynchronous form of successive halving,
the one that also runs one trial per GPU or machine). Trials run in the order given, the
paper's optimum for the scenario first: it is the incumbent that every rival must match rung
by rung, and the search always holds one full-length run.

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
    """A strategy to try: ``key`` names its run folder; ``epoch_s`` is its measured (or
    estimated) seconds per epoch, training and validation."""

    key: str
    label: str
    epoch_s: float
    options: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class TrialRecord:
    key: str
    curve: list[float]  # validation DSC per epoch
    rungs: dict[int, float]  # validation DSC at each rung reached
    state: str  # complete | pruned | budget
    reason: str
    seconds: float


@dataclass
class SearchResult:
    trials: list[TrialRecord]
    winner: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "reason": self.reason,
                "trials": [{"candidate": t.key, "state": t.state, "reason": t.reason, "curve": t.curve,
                            "rungs": {str(k): v for k, v in t.rungs.items()}, "seconds": round(t.seconds, 1),
                            "pruned": t.state == "pruned"} for t in self.trials]}


def rung_epochs(min_epochs: int, eta: int, epochs: int) -> list[int]:
    """The epochs at which a trial is judged: ``min_epochs * eta**k`` below ``epochs``, then
    ``epochs`` (its full length, where it completes)."""
    out, e = [], min_epochs
    while e < epochs:
        out.append(e)
        e *= eta
    return out + [epochs]


def search(candidates: list[Candidate], train_to: Callable[[Candidate, int], list[float]], epochs: int,
           storage: str | Path, min_epochs: int = 1, eta: int = 2, seconds_left: Callable[[], float] | None = None,
           reserve_s: float = 0.0) -> SearchResult:
    """Successive halving over ``candidates`` (the first is the prior), each to at most
    ``epochs``, the state in ``storage`` (a SQLite file or a database URL). With
    ``seconds_left``, a trial stops before a segment whose estimate would leave less than
    ``reserve_s`` (what the end needs: test evaluation, export), and is recorded as stopped by
    the budget. A rerun with the same storage continues: finished trials are kept, and a
    trial a kill interrupted runs again from its run folder."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage if "://" in str(storage) else f"sqlite:///{Path(storage).resolve()}"
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=eta,
                                                    min_early_stopping_rate=0)
    study = optuna.create_study(storage=url, study_name=STUDY_NAME, direction="maximize", pruner=pruner,
                                load_if_exists=True)
    by_key = {c.key: c for c in candidates}
    # A trial still RUNNING was interrupted (this process holds the output folder's lock): it
    # fails, and its candidate is tried again (its run folder resumes).
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    finished = {t.params["candidate"] for t in study.get_trials(deepcopy=False)
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    rungs = rung_epochs(min_epochs, eta, epochs)

    def objective(trial: optuna.Trial) -> float:
        cand = by_key[trial.suggest_categorical("candidate", list(by_key))]
        t0, curve, reached = time.perf_counter(), [], {}
        for target in rungs:
            segment = (target - len(curve)) * cand.epoch_s
            if seconds_left is not None and seconds_left() - segment < reserve_s:
                reason = (f"stopped by the budget before epochs {len(curve) + 1}-{target} "
                          f"(about {segment:.0f} s, {max(0.0, seconds_left() - reserve_s):.0f} s left)")
                return _end(trial, curve, reached, "budget", reason, t0)
            reported = len(curve)
            curve = list(train_to(cand, target))
            for epoch in range(reported + 1, len(curve) + 1):
                trial.report(curve[epoch - 1], epoch)
            reached[target] = curve[-1]
            if target < epochs and trial.should_prune():
                better = _better_at(study, trial.number, target, curve[-1])
                reason = (f"pruned at epoch {target}: validation DSC {curve[-1]:.2f}, below the best 1/{eta} of the "
                          f"{better[1]} trial(s) that reached it (best {better[0]:.2f})")
                _end(trial, curve, reached, "pruned", reason, t0)
                raise optuna.TrialPruned(reason)
        return _end(trial, curve, reached, "complete", f"trained to its full length ({epochs} epochs)", t0)

    todo = [c for c in candidates if c.key not in finished]
    for c in todo:
        study.enqueue_trial({"candidate": c.key})
    if todo:
        study.optimize(objective, n_trials=len(todo), catch=())
    return _result(study, by_key)


def _end(trial: Any, curve: list[float], reached: dict[int, float], state: str, reason: str, t0: float) -> float:
    """Record the trial's outcome in the storage (what :func:`_result` reads, in this
    session or a later one); its value, the best validation DSC."""
    for key, value in (("state", state), ("reason", reason), ("curve", curve),
                       ("rungs", {str(e): v for e, v in reached.items()}), ("seconds", time.perf_counter() - t0)):
        trial.set_user_attr(key, value)
    return max(curve) if curve else -math.inf


def _better_at(study: Any, number: int, epoch: int, value: float) -> tuple[float, int]:
    """(the best validation DSC at ``epoch`` among the other trials that reached it, how many did)."""
    values = [t.intermediate_values[epoch] for t in study.get_trials(deepcopy=False)
              if t.number != number and epoch in t.intermediate_values]
    return (max(values) if values else value), len(values) + 1


def _result(study: Any, by_key: dict[str, Candidate]) -> SearchResult:
    trials = [TrialRecord(t.params["candidate"], list(t.user_attrs.get("curve", [])),
                          {int(e): v for e, v in t.user_attrs.get("rungs", {}).items()},
                          str(t.user_attrs.get("state", "")), str(t.user_attrs.get("reason", "")),
                          float(t.user_attrs.get("seconds", 0.0)))
              for t in study.get_trials(deepcopy=False)
              if "state" in t.user_attrs and t.params.get("candidate") in by_key]  # a failed trial ended nowhere
    complete = [r for r in trials if r.state == "complete" and r.curve]
    if not complete:
        return SearchResult(trials, None, "no candidate reached its full length within the budget")
    best = max(complete, key=lambda r: max(r.curve))
    rivals = [r for r in complete if r is not best]
    why = (f"the best validation DSC ({max(best.curve):.2f}) of the {len(complete)} candidate(s) trained to their full "
           "length" + (f"; runner-up {max(rivals, key=lambda r: max(r.curve)).key}" if rivals else ""))
    return SearchResult(trials, best.key, why)
