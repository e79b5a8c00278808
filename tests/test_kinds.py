"""A new run kind is cheap: a toy kind (every pixel one class) registered in one place runs
through ``tunesam baseline``, ``evaluate``, ``predict`` and a study cell with no other edit.

Its scores are worked out here by hand: a constant mask of class 1 scores
DSC = 2|R| / (|R| + h w) on a slice whose reference R is the class-1 pixels.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from data_factory import tiny_study
from tunesam import kinds
from tunesam.config import TrainConfig, save_config
from tunesam.data.store import PreparedData
from tunesam.engine.run_folder import Run, prepare_training, write_preprocessing
from tunesam.io import write_json


class ConstantSegmenter:
    """Every pixel of every slice is class ``label``."""

    arch = "constant"
    whole_cases = False

    def __init__(self, num_classes: int, label: int = 1) -> None:
        self.num_classes, self.label = num_classes, label

    def encoder_is_frozen(self) -> bool:
        return False

    def segment_stored(self, slices: Sequence[np.ndarray], spacing: tuple[float, float] = (1.0, 1.0),
                       want_probs: bool = False, out_shape: tuple[int, int] | None = None, batch_size: int = 8
                       ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        labels = [np.full(tuple(out_shape) if out_shape is not None else s.shape, self.label, np.uint8)
                  for s in slices]
        probs = None
        if want_probs:
            probs = [np.stack([(lab == c).astype(np.float32) for c in range(self.num_classes + 1)]) for lab in labels]
        return labels, probs


class ConstantKind(kinds.RunKind):
    name = "constant"
    baseline = True

    def archs(self) -> Iterable[str]:
        return ("constant",)

    def train(self, cfg: TrainConfig, resume: bool = False, progress: bool | None = None) -> Path:
        run = prepare_training(cfg, resume)  # the folder rules every kind keeps
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
        write_preprocessing(run, PreparedData.open(cfg.data))
        write_json(run / "summary.json", {"epochs_run": 0, "steps": 0, "total_params": 0, "trainable_params": 0})
        return run

    def load(self, run: Run, which: str = "best", device: str | torch.device = "cpu") -> ConstantSegmenter:
        return ConstantSegmenter(run.num_classes)


@pytest.fixture
def constant_kind() -> Iterator[kinds.RunKind]:
    kind = kinds.register(ConstantKind())  # the one place the toy kind is made known
    yield kind
    kinds.unregister(kind)


def _hand_dsc(data: PreparedData, split: str = "test") -> dict[tuple[str, int], float]:
    """Per non-empty test slice (case, slice): the constant mask's DSC as a fraction."""
    out = {}
    for r in data.rows(split, include_empty=False):
        _, mask = (np.asarray(a) for a in data.slice(int(r)))
        ref = mask == 1
        out[(data.case(int(r))["id"], int(data.index[r]["slice"]))] = 2 * ref.sum() / (ref.sum() + ref.size)
    return out


def test_a_registered_kind_trains_evaluates_and_predicts(constant_kind: kinds.RunKind, prepared: Path,
                                                         tmp_path: Path) -> None:
    from tunesam.cli import main
    from tunesam.data.readers import read_image
    from tunesam.eval.evaluate import evaluate_run
    from tunesam.inference.predictor import predict

    assert main(["baseline", "constant", "--data", str(prepared), "--out", str(tmp_path / "run")]) == 0
    metrics = evaluate_run(tmp_path / "run", device="cpu")
    hand = _hand_dsc(PreparedData.open(prepared))
    scored = {(r["case"], r["slice"]): r["scores"]["1"]["dsc"] for r in metrics["per_image"]}
    assert scored.keys() == hand.keys() and len(hand) > 0
    assert all(abs(scored[k] - hand[k]) < 1e-6 for k in hand)
    image = PreparedData.open(prepared).manifest["cases"][0]["image"]
    [mask] = predict(tmp_path / "run", [image], tmp_path / "pred", device="cpu")
    arr, geom = read_image(Path(mask))
    ref, ref_geom = read_image(Path(image))
    assert arr.shape == ref.shape[: arr.ndim] and geom.spacing == ref_geom.spacing and set(np.unique(arr)) == {1}


def test_a_registered_kind_runs_as_a_study_cell(constant_kind: kinds.RunKind, prepared: Path, tmp_path: Path) -> None:
    from tunesam.study.report import write_report
    from tunesam.study.runner import run_study

    config = tiny_study(tmp_path / "study.yaml", prepared, methods="[vanilla]", tunes="[decoder]", epochs=1,
                        baselines="[constant]")
    run_study(config, tmp_path / "study")
    cell = tmp_path / "study" / "cells" / "disc" / "constant_full_s0"
    metrics = json.loads((cell / "metrics.json").read_text())
    hand = _hand_dsc(PreparedData.open(prepared))
    assert abs(metrics["classes"]["1"]["dsc"] - 100 * float(np.mean(list(hand.values())))) < 1e-3  # percent, 4 places
    report = write_report(tmp_path / "study")
    assert "constant_full" in (report / "results.csv").read_text()


def test_the_built_in_models_and_the_toy_have_the_declared_interface() -> None:
    from tunesam.baselines.nets import build_baseline
    from tunesam.models.build import build_model

    assert isinstance(ConstantSegmenter(1), kinds.Segmenter)
    assert isinstance(build_model("vit_test", image_size=32), kinds.Segmenter)
    assert isinstance(build_baseline("unet_test", 1, 32), kinds.Segmenter)
    assert not isinstance(object(), kinds.Segmenter)
    assert not ConstantKind().timed and kinds.kind_of("unet").timed and not kinds.kind_of("nnunet").timed
    known = kinds.kinds()
    assert {known[a].name for a in ("vit_b", "litemedsam", "unet", "swinunetr", "nnunet")} == {"sam", "monai", "nnunet"}
    assert kinds.baseline_names() == ["unet", "swinunetr", "nnunet"]
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        kinds.kind_of("resnet")
