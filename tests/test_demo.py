"""``tunesam demo`` end to end on the real MNI152 example, with tiny models and one epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunesam.demo import choose_recipe, demo
from tunesam.models.registry import build_sam


def test_demo_from_random_weights_runs_to_its_table_and_figure_twice_in_one_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo(tmp_path / "d", epochs=1, image_size=64, device="cpu", arch="vit_t_test")
    capsys.readouterr()
    metrics = demo(tmp_path / "d", epochs=1, image_size=64, device="cpu", arch="vit_t_test")
    out = capsys.readouterr().out
    assert "reused" in out and "replacing the previous demo run" in out  # the second run reuses the data
    assert "RANDOM weights" in out
    for row in ("mean (2D slices)", "mean (3D cases)", "2 white matter (pooled)"):
        assert row in out
    assert set(metrics["pooled"]["classes"]) == {"1", "2"}
    assert len(metrics["per_case"]) == 4  # the test slabs
    figure = np.asarray(Image.open(tmp_path / "d" / "overlays.png"))
    assert figure.ndim == 3 and figure.shape[0] > 4 * 197  # four captioned rows of image | reference | prediction
    assert figure.shape[1] >= 3 * 197
    assert (tmp_path / "d" / "run" / "weights" / "best.safetensors").is_file()


def test_demo_from_a_checkpoint_scores_it_zero_shot_then_tunes_the_decoder_on_cached_embeddings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = "litemedsam_test"
    torch.save(build_sam(arch, image_size=64).state_dict(), tmp_path / "sam.pth")
    metrics = demo(tmp_path / "d", checkpoint=str(tmp_path / "sam.pth"), epochs=1, image_size=64, device="cpu")
    out = capsys.readouterr().out
    assert "RANDOM" not in out and "zero-shot" in out and "multimask oracle" in out  # the box table
    assert "fine-tuned (no prompt)" in out and "2 white matter (pooled)" in out
    config = (tmp_path / "d" / "run" / "config.yaml").read_text()
    assert f"arch: {arch}" in config and "tune: decoder" in config and "cache_embeddings: true" in config
    caches = list((tmp_path / "d" / "data" / "embeddings").iterdir())
    assert len(caches) == 1  # zero-shot evaluation, training and evaluation shared one cache
    done = np.load(caches[0] / "done.npy")
    assert done.sum() == 99 + 20 + 40  # train, val and every test slice, each embedded once
    figure = np.asarray(Image.open(tmp_path / "d" / "overlays.png"))
    assert figure.shape[1] >= 4 * 197  # image | reference | zero-shot | fine-tuned
    assert len(metrics["per_case"]) == 4


def test_demo_starts_from_litemedsam_when_it_is_installed(litemedsam_file: Path) -> None:
    recipe = choose_recipe()
    assert recipe.checkpoint == "litemedsam" and recipe.pretrained
    assert recipe.tune == "decoder" and recipe.cache_embeddings
