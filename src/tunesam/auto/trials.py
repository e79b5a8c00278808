"""A search trial is an ordinary run folder: trained in segments by ``tunesam train``'s own
loop, paused at each rung, resumed for the next (the same schedule throughout)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from tunesam.auto.search import Candidate
from tunesam.config import TrainConfig
from tunesam.engine.run_folder import read_log
from tunesam.kinds import train


def trial_config(candidate: Candidate, base: TrainConfig, folder: Path) -> TrainConfig:
    """The candidate's run: ``base`` (data, schedule, device) with the candidate's options,
    in ``folder / candidate.key``."""
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"data", "out"}
    unexpected = sorted(set(candidate.options) - known)
    if unexpected:
        raise ValueError(f"candidate {candidate.key}: unexpected training options {', '.join(unexpected)}")
    return dataclasses.replace(base, out=str(folder / candidate.key), **candidate.options)


def validation_curve(run: Path) -> list[float]:
    """Validation DSC per epoch, from the run's ``log.csv``."""
    return [float(r["val_dsc"]) for r in read_log(run)]


def make_trainer(config_of: Callable[[Candidate], TrainConfig], progress: bool | None = False
                 ) -> Callable[[Candidate, int], list[float]]:
    """``train_to(candidate, epochs)`` for :func:`tunesam.auto.search.search`: the candidate's
    run (``config_of(candidate)``, its whole schedule) trained or resumed to ``epochs``
    epochs; its validation curve."""

    def train_to(candidate: Candidate, epochs: int) -> list[float]:
        cfg = config_of(candidate)
        run = Path(cfg.out)
        done = validation_curve(run)
        if len(done) < epochs:
            # a folder a kill left (even one that never finished an epoch) is resumed, never refused
            train(cfg, resume=run.exists(), progress=progress,
                  until=None if epochs >= int(cfg.epochs or 0) else epochs)
            done = validation_curve(run)
        return done[:epochs]

    return train_to
