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
