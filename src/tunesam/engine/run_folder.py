"""The run folder, owned here: create, reuse, resume, refuse changed options; the files inside.

Every kind of run (fine-tuning, baselines, nnU-Net, pre-training) keeps the same folder rules:

* a new run needs an absent or empty folder: nothing is ever overwritten;
* ``--resume`` continues a run only with the options it had (those ``free`` to change, such
  as the device, excepted), and says which option differs;
* ``config.yaml`` (resolved), ``log.csv`` (one row per epoch), ``last.pt`` (everything a
  resume needs, in one file), ``preprocessing.json`` (the data's preprocessing and labels,
  so ``predict`` needs no data folder), ``summary.json`` and ``curves.png`` are written
  atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesam.config import TrainConfig, load_config
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData
from tunesam.io import atomic_path, atomic_write, write_json

STATE_VERSION = 2  # 2: the trained weights live in last.pt too
LOG_FIELDS = ["epoch", "train_loss", "val_dsc", "lr", "seconds"]
METRIC_NAMES = {"val_dsc": "validation DSC", "val_loss": "validation loss"}


@dataclass
class State:
    """What ``last.pt`` restores besides the weights and the optimiser."""

    epoch: int = 0  # next epoch to run
    step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    timed: list[float] = field(default_factory=lambda: [0.0, 0.0])  # seconds and count of timed steps, all sessions

    @property
    def seconds_per_step(self) -> float | None:
        return self.timed[0] / self.timed[1] if self.timed[1] else None

    def record(self, row: dict[str, Any], value: float, patience: int | None, higher: bool = True
               ) -> tuple[bool, bool]:
        """Log an epoch's row and its validation ``value``; returns ``(improved, stop)``, stop
        after ``patience`` epochs without a better value (``higher`` or lower is better)."""
        self.rows.append(row)
        self.epoch = int(row["epoch"])
        improved = value > self.best if higher else value < self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved, bool(patience and self.bad_epochs >= patience)

    def stop_message(self, patience: int, metric: str = "val_dsc") -> str:
        """The early-stop line, named by the metric watched (``val_dsc`` or ``val_loss``)."""
        name = METRIC_NAMES.get(metric, metric)
        decimals = 2 if metric == "val_dsc" else 4
        return (f"early stop: no better {name} for {patience} epochs "
                f"(best {self.best:.{decimals}f} at epoch {self.best_epoch})")


# -- create, reuse, resume ----------------------------------------------------------------------
def refuse_changed(run: Path, saved: dict[str, Any], now: dict[str, Any], free: Iterable[str] = (),
                   why: Callable[[set[str]], str] = lambda names: "") -> None:
    """Raise unless the options ``now`` equal those the run was ``saved`` with (``free`` ones
    aside); ``why`` explains a difference by the names that differ."""
    free = set(free)
    diffs = {k: (v, now.get(k)) for k, v in saved.items() if k not in free and now.get(k) != v}
    if diffs:
        raise ValueError(f"{run}: --resume with other options than the run had: "
                         + "; ".join(f"--{k.replace('_', '-')}: run {a!r}, now {b!r}" for k, (a, b) in diffs.items())
                         + why(set(diffs)))


def prepare(out: str | Path, resume: bool, what: str, check: Callable[[Path], None]) -> Path:
    """The run folder ``out``: on ``resume`` ``check(run)`` must accept the options; a new run
    needs an absent or empty folder (``what``: "training", "pre-training", for the message)."""
    run = Path(out)
    if resume:
        check(run)
        return run
    if run.exists() and any(run.iterdir()):
        if not (run / "config.yaml").exists():
            raise ValueError(f"{run}: already exists (a non-empty folder, not a run); choose another --out")
        if not started(run):
            raise ValueError(f"{run}: already exists (a {what} run that stopped before its first epoch ended); "
                             "--resume starts it again from the first epoch with its options, or choose another --out")
        raise ValueError(f"{run}: already exists (a {what} run); use --resume to continue it, or another --out")
    return run


def started(run: Path) -> bool:
    """Whether the run finished an epoch (it has a resume state); a run without one that is
    resumed starts from the first epoch."""
    return (run / "last.pt").is_file()


def prepare_training(cfg: TrainConfig, resume: bool, free: Iterable[str] = (),
                     also: Callable[[Path], None] | None = None) -> Path:
    """The folder rules for a training run (fine-tuning, a baseline or nnU-Net).

    Free to change on resume: where it runs, and the length of a constant-rate run (the
    decaying schedule is a function of the total step count, so ``epochs`` is fixed there);
    the data folder when it holds the same prepared data (a run may be moved or copied); and
    the kind's own ``free`` options, which its ``also`` check compares instead.
    """

    def check(run: Path) -> None:
        saved = load_config(run / "config.yaml")
        names = {"device", "num_workers", "out", "embedding_cache", *free}
        names |= {"epochs"} if saved.constant_lr and cfg.constant_lr else set()
        if saved.data != cfg.data and same_data(run, cfg.data):
            names.add("data")
        refuse_changed(run, saved.to_dict(), cfg.to_dict(), names,
                       lambda diff: " (the learning-rate schedule decays over the run's total steps; only "
                                    "--constant-lr runs can be extended)" if "epochs" in diff else "")
        if also is not None:
            also(run)

    return prepare(cfg.out, resume, "training", check)


def same_data(run: Path, data: str) -> bool:
    """Whether ``data`` is the prepared dataset the run was trained on (by its fingerprint)."""
    try:
        trained_on = json.loads((run / "preprocessing.json").read_text())["fingerprint"]
        return PreparedData.open(data).manifest["fingerprint"] == trained_on
    except (OSError, KeyError, ValueError):
        return False


# -- the files ------------------------------------------------------------------------------------
def write_preprocessing(run: Path, data: PreparedData) -> None:
    """``preprocessing.json``: what ``predict`` replays on new scans, and the labels."""
    m = data.manifest
    write_json(run / "preprocessing.json", {
        "data": str(data.folder.resolve()), "options": m["options"], "labels": m["labels"],
        "label_values": m["label_values"], "fingerprint": m["fingerprint"],
        "volumes": any(len(c["geometry"]["shape"]) == 3 for c in m["cases"]),
    })


def read_log(run: Path) -> list[dict[str, str]]:
    """``log.csv``'s rows (strings, as written); none before the first epoch ends."""
    log = Path(run) / "log.csv"
    if not log.is_file():
        return []
    with log.open() as f:
        return list(csv.DictReader(f))


def write_log(run: Path, rows: list[dict[str, Any]], fields: list[str] = LOG_FIELDS) -> None:
    """``log.csv``: one row per epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in fields})
    atomic_write(run / "log.csv", lambda tmp: tmp.write_text(buf.getvalue()))


def plot_curves(run: Path, rows: list[dict[str, Any]], metric: str = "val_dsc") -> None:
    """``curves.png``: the training loss and the validation ``metric`` per epoch."""
    from tunesam.viz import curves_figure, save_figure

    save_figure(run / "curves.png", curves_figure(rows, metric))


def save_state(run: Path, state: State, opt: torch.optim.Optimizer, weights: dict[str, torch.Tensor]) -> None:
    """``last.pt``: everything a resume needs, the trained ``weights`` included, in one atomic
    file, so a kill between writes can never pair one epoch's weights with another's
    optimiser and schedule."""
    payload = {
        "version": STATE_VERSION,
        "epoch": state.epoch, "step": state.step, "best": state.best, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "rows": state.rows, "timed": list(state.timed),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "weights": {k: v.detach().cpu() for k, v in weights.items()},
    }
    with atomic_path(run / "last.pt") as tmp:
        torch.save(payload, tmp)


def load_state(run: Path, module: nn.Module, opt: torch.optim.Optimizer) -> State:
    """Restore ``module``'s trained weights, the optimiser and the RNG from ``last.pt``."""
    path = run / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: nothing to resume (no last.pt: the first epoch never finished)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: holds objects other than tensors and plain values, and was refused for "
                         "safety (never unpickled); it is not a tunesam resume state") from exc
    except Exception as exc:  # truncated or not a torch file
        raise ValueError(f"{path}: cannot be read as a resume state ({type(exc).__name__}); the file is truncated "
                         "or corrupt. Start a new run, or restore the file") from exc
    version = payload.get("version") if isinstance(payload, dict) else None
    if version != STATE_VERSION:
        raise ValueError(f"{path}: resume state version {version} is not {STATE_VERSION} (not a resume state of "
                         "this tunesam)")
    absent = [k for k in ("weights", "optimizer", "torch_rng", "epoch", "step", "best", "best_epoch", "bad_epochs",
                          "rows") if k not in payload]
    if absent:
        raise ValueError(f"{path}: not a complete resume state (no {', '.join(absent)})")
    missing = module.load_state_dict(payload["weights"], strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path}: its weights do not fit the model: {missing.unexpected_keys[:5]}")
    opt.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    return State(payload["epoch"], payload["step"], payload["best"], payload["best_epoch"],
                 payload["bad_epochs"], list(payload["rows"]), list(payload.get("timed", [0.0, 0.0])))


# -- reading a finished run ---------------------------------------------------------------------
@dataclass
class Run:
    """A training run folder as ``evaluate``, ``predict``, ``export`` and the study read it."""

    folder: Path
    config: TrainConfig
    preprocessing: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return self.preprocessing["labels"]

    @property
    def num_classes(self) -> int:
        return len(self.labels) - 1 if self.config.mode == "auto" else 1

    def weights(self, which: str) -> Path:
        """``weights/{which}.safetensors``, which must exist."""
        path = self.folder / "weights" / f"{which}.safetensors"
        if not path.is_file():
            raise DataError(f"{self.folder}: no weights/{which}.safetensors (did the first epoch finish?)")
        return path


def open_run(folder: str | Path) -> Run:
    """Check ``folder`` is a training run and read its configuration."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise DataError(f"{folder}: not a training run (no config.yaml); give the --out folder of 'tunesam train'")
    pre = folder / "preprocessing.json"
    if not pre.is_file():
        raise DataError(f"{folder}: incomplete run (no preprocessing.json)")
    try:
        preprocessing = json.loads(pre.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{pre}: not valid JSON ({exc}); the run's preprocessing record is corrupt") from exc
    return Run(folder, load_config(folder / "config.yaml"), preprocessing)
