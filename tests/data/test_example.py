"""The embedded MNI152 example prepares in one call with real tissue labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunesam.cli import main
from tunesam.data.store import PreparedData

pytest.importorskip("nilearn", reason="the example is read from the nilearn package")


def test_mni152_prepares_with_grey_and_white_matter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunesam.data.examples import mni152_files, mni152_volume

    assert main(["prepare", "--example", "mni152", "--out", str(tmp_path / "mni")]) == 0
    assert "white matter" in capsys.readouterr().out
    data = PreparedData.open(tmp_path / "mni")
    m = data.manifest
    assert m["labels"] == {"0": "background", "1": "grey matter", "2": "white matter"}
    assert len(m["cases"]) == 19  # 189 axial slices in slabs of 10
    assert {s: c["cases"] for s, c in m["counts"].items()} == {"train": 13, "val": 2, "test": 4}
    assert m["cases"][0]["native_plane"] == [233, 197]
    # Labels recomputed independently from the files: argmax of (255 - gm - wm, gm, wm).
    import SimpleITK as sitk

    files = mni152_files()
    gm = sitk.GetArrayFromImage(sitk.ReadImage(str(files["gm"]))).astype(int)
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(files["wm"]))).astype(int)
    expected = np.argmax(np.stack([255 - gm - wm, gm, wm]), axis=0)
    for row in range(0, len(data.index), 7):
        case = data.case(row)
        z = int(case["id"][4:]) * 10 + int(data.index[row]["slice"])
        assert np.array_equal(data.slice(row)[1], expected[z])
    mid = [r for r in range(len(data.index)) if data.case(r)["split"] == "test"]
    fractions = np.bincount(np.concatenate([np.asarray(data.slice(r)[1]).ravel() for r in mid]), minlength=3)
    assert fractions[1] > 0 and fractions[2] > 0  # both tissues present in the test slabs
    # slab geometry: origin moves along the volume's z direction
    _, _, geom = mni152_volume()
    slab1 = next(c for c in m["cases"] if c["id"] == "slab01")
    assert slab1["geometry"]["origin"][2] == pytest.approx(geom.origin[2] + 10 * geom.spacing[2])
