"""``tunesam demo`` end to end on the real MNI152 example, with a tiny model and one epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunesam.demo import demo


def test_demo_runs_to_its_table_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = demo(tmp_path / "d", epochs=1, image_size=64, device="cpu", arch="vit_t_test")
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "mobile_sam.pt" in out
    for row in ("mean (2D slices)", "mean (3D cases)", "2 white matter (pooled)"):
        assert row in out
    assert set(metrics["pooled"]["classes"]) == {"1", "2"}
    assert len(metrics["per_case"]) == 4  # the test slabs
    figure = np.asarray(Image.open(tmp_path / "d" / "overlays.png"))
    assert figure.ndim == 3 and figure.shape[0] > 4 * 197  # four captioned rows of image | reference | prediction
    assert (tmp_path / "d" / "run" / "weights" / "best.safetensors").is_file()


def test_demo_from_a_checkpoint_trains_adapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from tunesam.models.registry import build_sam

    torch.save(build_sam("vit_t_test", image_size=64).state_dict(), tmp_path / "sam.pth")
    demo(tmp_path / "d", checkpoint=str(tmp_path / "sam.pth"), epochs=1, image_size=64, device="cpu",
         arch="vit_t_test")
    assert "RANDOM" not in capsys.readouterr().out
    config = (tmp_path / "d" / "run" / "config.yaml").read_text()
    assert "method: adapter" in config and "sam.pth" in config
