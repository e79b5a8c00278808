"""Run kinds as plug-ins: how each kind of run is trained, loaded and scored.

A *kind* (SAM fine-tuning, the MONAI baselines, nnU-Net, and later ones such as SAM 2) is a
:class:`RunKind` registered under the architecture names it answers for. ``train``,
``evaluate``, ``predict``, ``export`` and the study ask :func:`kind_of` and never branch on a
kind's name; adding a kind is its own module plus one :func:`register` call.

The built-in kinds are imported on the first lookup (:data:`BUILTIN`); other packages add
theirs through the ``tunesam.kinds`` entry-point group (each entry point names a module that
calls :func:`register` when imported), or by calling :func:`register` themselves.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from tunesam.config import TrainConfig
from tunesam.engine.run_folder import Run, open_run

BUILTIN = ("tunesam.kinds.sam", "tunesam.baselines.nets", "tunesam.baselines.nnunet")
ENTRY_POINTS = "tunesam.kinds"
log = logging.getLogger("tunesam.kinds")
DEFAULT_ARCH = "vit_b"  # whose kind takes a run whose architecture is read from its checkpoint


@runtime_checkable
class Segmenter(Protocol):
    """What ``evaluate``, ``predict``, the study and ``serve`` need of a trained model.

    ``segment_stored`` takes slices as the prepared data stores them (``h x w`` uint8, 0-255)
    with their in-plane ``spacing`` (row, col; mm) and returns their labels (``H x W`` uint8
    class indices) and, with ``want_probs``, class probabilities (``C x H x W``; else
    ``None``), where ``H x W`` is ``out_shape`` (default each slice's own); ``batch_size``
    bounds the slices per forward where the model batches. ``whole_cases``: the model wants a
    case's slices in one call (nnU-Net normalises a call's slices as one image, and uses the
    spacing); otherwise callers batch slices of any cases, and the spacing may be any of
    theirs. ``encoder_is_frozen`` is true only for models with SAM's image-encoder interface
    (``encode``, ``use_inference_encoder``): they may be scored on cached embeddings; prompted
    modes need SAM's ``encode``/``decode`` besides.
    """

    arch: str
    num_classes: int
    whole_cases: bool

    def segment_stored(self, slices: Sequence[np.ndarray], spacing: tuple[float, float] = (1.0, 1.0),
                       want_probs: bool = False, out_shape: tuple[int, int] | None = None, batch_size: int = 8
                       ) -> tuple[list[np.ndarray], list[np.ndarray] | None]: ...

    def encoder_is_frozen(self) -> bool: ...


class RunKind:
    """One kind of run. Subclasses set the attributes and override what differs.

    ``baseline``: trained from scratch in automated mode, listed by ``tunesam baseline`` and a
    study's ``baselines:``; ``augmentation``: the study's name for its image augmentation
    (``online``: the paper's, drawn every epoch).
    """

    name: str = ""
    baseline: bool = False
    augmentation: str = "online"

    def archs(self) -> Iterable[str]:
        """The architecture names (``--arch``, ``config.yaml``'s ``arch``) this kind answers for."""
        raise NotImplementedError

    def label(self, arch: str) -> str:
        """How reports name ``arch`` (``UNet``, ``nnU-Net``)."""
        return arch

    @property
    def timed(self) -> bool:
        """Whether the study's dry run can time a training step before the run: kinds that
        build a model for tunesam's loop can (it times that loop's step)."""
        return type(self).build is not RunKind.build

    def takes(self, option: str) -> bool:
        """Whether a study's shared setting ``option`` (a ``TrainConfig`` field, such as ``lr``
        or ``iterations``) applies to this kind's cells; those that do not are left out."""
        return option != "iterations"

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with this kind's defaults filled in and its options checked."""
        return cfg.with_recipe()

    def build(self, cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
        """The model to fine-tune (for kinds trained by tunesam's own loop)."""
        raise NotImplementedError(f"{self.name} does not build a model for tunesam's loop")

    def train(self, cfg: TrainConfig, resume: bool = False, progress: bool | None = None,
              until: int | None = None) -> Path:
        """Train the resolved ``cfg`` into ``cfg.out``: by default tunesam's fine-tuning loop.
        ``until``: pause after that many epochs of the run's schedule (``resume`` goes on)."""
        from tunesam.engine.trainer import finetune

        return finetune(cfg, self.build, resume, progress, until)

    def resumable(self, folder: Path) -> bool:
        """Whether the run in ``folder`` (its training interrupted) can continue with
        ``--resume``: by default once an epoch finished (``last.pt``)."""
        return (folder / "last.pt").is_file()

    def load(self, run: Run, which: str = "best", device: str | torch.device = "cpu") -> Segmenter:
        """The run's model with its ``best`` (or ``last``) weights, on ``device``, in eval mode."""
        raise NotImplementedError

    def export(self, run: Run, out: Path, weights: str = "best") -> list[str]:
        """Write the run's model as a checkpoint others open; returns notes."""
        raise ValueError(f"{run.folder} is a {run.config.arch} run: there is no SAM checkpoint to export")


_KINDS: dict[str, RunKind] = {}  # arch name -> kind
_loaded = False


def register(kind: RunKind) -> RunKind:
    """Make ``kind`` answer for its architectures (a later registration of a name replaces
    the earlier one: the built-ins are registered first, so a plug-in may override one)."""
    _load_builtin()
    for arch in kind.archs():
        _KINDS[arch] = kind
    return kind


def unregister(kind: RunKind) -> None:
    _load_builtin()
    for arch in [a for a, k in _KINDS.items() if k is kind]:
        del _KINDS[arch]


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: the modules imported below register themselves
    for module in BUILTIN:
        importlib.import_module(module)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not take every command down with it
            log.warning("run kinds: the plug-in %s (%s) failed to load and is left out: %s: %s", ep.name, ep.value,
                        type(exc).__name__, exc)


def kinds() -> dict[str, RunKind]:
    """Every registered architecture name and its kind."""
    _load_builtin()
    return dict(_KINDS)


def kind_of(arch: str | None) -> RunKind:
    """The kind that answers for ``arch`` (``None``: read from a checkpoint, SAM's)."""
    _load_builtin()
    if arch is None:  # read from a checkpoint: a SAM-format file
        return _KINDS[DEFAULT_ARCH]
    if arch not in _KINDS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(public_archs()))}")
    return _KINDS[arch]


def public_archs(baseline: bool | None = None) -> list[str]:
    """Registered architecture names, test-only ones left out (``baseline``: only those)."""
    _load_builtin()
    return [a for a, k in _KINDS.items() if not a.endswith("_test") and (baseline is None or k.baseline == baseline)]


def baseline_names(test: bool = False) -> list[str]:
    """The baselines (``tunesam baseline NAME``, a study's ``baselines:``): the built-ins in
    their modules' order, then the plug-ins'."""
    _load_builtin()

    def rank(kind: RunKind) -> int:
        module = type(kind).__module__
        return BUILTIN.index(module) if module in BUILTIN else len(BUILTIN)

    names = [a for a, k in _KINDS.items() if k.baseline and (test or not a.endswith("_test"))]
    return sorted(names, key=lambda a: rank(_KINDS[a]))  # stable: within a module, its own order


def resolve(cfg: TrainConfig) -> TrainConfig:
    return kind_of(cfg.arch).resolve(cfg)


def train(cfg: TrainConfig, resume: bool = False, progress: bool | None = None, until: int | None = None) -> Path:
    """``tunesam train`` (and ``baseline``): train ``cfg`` by its kind; returns the run folder.
    ``progress``: the tqdm bar (``None``: when stderr is a terminal; ``False``: never).
    ``until``: pause after that many epochs of the run's schedule, without its summary; a
    later ``resume`` continues the same schedule (``tunesam auto`` trains its trials so)."""
    kind = kind_of(cfg.arch)
    if until is None:  # a kind registered from outside may not know ``until``
        return kind.train(kind.resolve(cfg), resume, progress)
    return kind.train(kind.resolve(cfg), resume, progress, until=until)


def load_run_model(run: Run, which: str = "best", device: str | torch.device = "cpu") -> Any:
    """A run's model by its kind, with its ``best`` (or ``last``) weights."""
    if which not in ("best", "last"):
        raise ValueError(f"weights must be best or last, got {which!r}")
    return kind_of(run.config.arch).load(run, which, device)


__all__ = ["BUILTIN", "RunKind", "Segmenter", "baseline_names", "kind_of", "kinds", "load_run_model", "open_run",
           "public_archs", "register", "resolve", "train", "unregister"]
