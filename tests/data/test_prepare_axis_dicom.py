"""``prepare --axis 1|2`` slices the volume along that array axis, and a CSV list may name DICOM
series folders; in both, the stored pixels and masks are the source's voxels (worked out here
from the source arrays), and predict writes masks back into the source geometry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from data_factory import SHAPE, SPACING, nnunet_dataset, write_dicom_series
from helpers import evaluated_label_maps
from tunesam.config import TrainConfig
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.store import PreparedData
from tunesam.data.readers import DataError
from tunesam.kinds import train
from tunesam.inference.predictor import predict


def _to_uint8(volume: np.ndarray) -> np.ndarray:
    """The MR rule of DESIGN.md: clip at the 0.5 and 99.5 percentiles of the non-zero voxels,
    scale to 0-255, round."""
    lo, hi = np.percentile(volume[volume != 0].astype(np.float64), (0.5, 99.5))
    return np.clip(np.rint((volume.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _check_stored(data: PreparedData, case: dict, image: np.ndarray, mask: np.ndarray, axis: int) -> None:
    """Every stored slice of ``case`` is slice ``idx`` of the source along ``axis``."""
    i = [c["id"] for c in data.manifest["cases"]].index(case["id"])
    rows = [int(r) for r in data.rows(case["split"], include_empty=True) if int(data.index[r]["case"]) == i]
    pixels = _to_uint8(image)
    kept = []
    for r in rows:
        idx = int(data.index[r]["slice"])
        kept.append(idx)
        stored_image, stored_mask = (np.asarray(a) for a in data.slice(r))
        # float rounding may split an exact .5 differently from the float32 the code uses
        assert np.abs(stored_image.astype(int) - np.take(pixels, idx, axis=axis).astype(int)).max() <= 1
        assert (stored_image != np.take(pixels, idx, axis=axis)).mean() < 0.01
        assert np.array_equal(stored_mask, np.take(mask, idx, axis=axis))
        assert bool(data.index[r]["nonempty"]) == bool(np.take(mask, idx, axis=axis).any())
    foreground = {k for k in range(mask.shape[axis]) if np.take(mask, k, axis=axis).any()}
    assert foreground <= set(kept) and len(set(kept)) == len(kept)
    if case["split"] == "test":  # every slice, so 3D scores see the whole volume
        assert kept == list(range(mask.shape[axis]))


@pytest.mark.parametrize("axis", [1, 2])
def test_axis_slices_are_the_volume_along_that_array_axis(tmp_path: Path, axis: int) -> None:
    nnunet_dataset(tmp_path / "src", n_cases=5)
    data = PreparedData.open(prepare(tmp_path / "src", tmp_path / "prep", PrepareOptions(split="3:1:1", axis=axis)).folder)
    x, y, z = SPACING
    # slices along array axis 1 (y) are z x x; along axis 2 (x), z x y
    plane, spacing = {1: ([SHAPE[0], SHAPE[2]], [z, x]), 2: ([SHAPE[0], SHAPE[1]], [z, y])}[axis]
    for case in data.manifest["cases"]:
        assert case["axis"] == axis and case["num_slices"] == SHAPE[axis]
        assert case["native_plane"] == plane and case["plane_spacing"] == pytest.approx(spacing)
        image = sitk.GetArrayFromImage(sitk.ReadImage(case["image"]))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(case["mask"]))
        _check_stored(data, case, image, mask, axis)


def _dicom_list(root: Path, patients: int = 5) -> Path:
    """patientN/t2 (image) and patientN/seg (mask) DICOM series, listed in lists/cases.csv."""
    lines = ["image,mask"]
    for p in range(patients):
        rng = np.random.default_rng(p)
        volume = rng.normal(300, 60, (6, 20, 18))
        mask = np.zeros(volume.shape, np.int16)
        mask[1 + p % 2 : 5, 4 : 15, 3 : 13 + p % 3] = 1
        volume[mask > 0] += 200
        write_dicom_series(root / f"patient{p}" / "t2", volume, f"1.2.826.0.1.3680043.2.1125.{p}.1")
        write_dicom_series(root / f"patient{p}" / "seg", mask, f"1.2.826.0.1.3680043.2.1125.{p}.2")
        lines.append(f"patient{p}/t2,patient{p}/seg")
    (root / "lists").mkdir()
    (root / "lists" / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "lists" / "cases.csv"


def _series(folder: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
    return reader.Execute()


def test_csv_list_of_dicom_series_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = _dicom_list(tmp_path / "dicom")
    data = PreparedData.open(prepare(listed, tmp_path / "prep", PrepareOptions(split="3:1:1")).folder)
    assert data.manifest["source"]["layout"] == "csv"
    cases = data.manifest["cases"]
    assert sorted(c["patient"] for c in cases) == [f"patient{p}" for p in range(5)]
    for case in cases:
        assert Path(case["image"]).name == "t2" and Path(case["mask"]).name == "seg"
        geom = case["geometry"]
        assert geom["shape"] == [6, 20, 18] and geom["spacing"] == pytest.approx([0.7, 0.9, 2.5])
        assert geom["origin"] == pytest.approx([-5.0, 10.0, 0.0])
        image = sitk.GetArrayFromImage(_series(case["image"]))
        mask = sitk.GetArrayFromImage(_series(case["mask"]))
        _check_stored(data, case, image, mask, 0)

    # a run on it predicts a DICOM series into a NIfTI mask of the series' geometry, with the
    # voxels evaluate scores for that case
    cfg = TrainConfig(data=str(data.folder), out=str(tmp_path / "run"), arch="vit_test", tune="decoder",
                      method="vanilla", image_size=32, epochs=1, batch_size=8, warmup=1, device="cpu",
                      num_workers=0, patience=0)
    run = train(cfg)
    seen = evaluated_label_maps(run, monkeypatch)
    (i,) = [k for k, c in enumerate(cases) if c["split"] == "test"]
    (written,) = predict(run, [cases[i]["image"]], tmp_path / "pred", device="cpu")
    assert written.name == "t2.nii.gz"
    src, out = _series(cases[i]["image"]), sitk.ReadImage(str(written))
    assert out.GetSize() == src.GetSize()
    assert np.allclose(out.GetSpacing(), src.GetSpacing()) and np.allclose(out.GetOrigin(), src.GetOrigin())
    assert np.allclose(out.GetDirection(), src.GetDirection())
    predicted = sitk.GetArrayFromImage(out)
    rows = [int(r) for r in data.rows("test", include_empty=True) if int(data.index[r]["case"]) == i]
    assert len(rows) == 6 and len(np.unique(np.stack([seen[r] for r in rows]))) > 1
    for r in rows:
        assert np.array_equal(predicted[int(data.index[r]["slice"])], seen[r])

    # a folder holding a second series: predict names both and reads the one --series gives
    import shutil

    mixed = tmp_path / "mixed" / "t2"
    shutil.copytree(cases[i]["image"], mixed)
    write_dicom_series(mixed, np.zeros((3, 20, 18)), "1.2.826.0.1.3680043.2.1125.99", suffix="x")
    with pytest.raises(DataError, match=r"holds 2 DICOM series; choose one with --series UID: .*\(6 files\).*"
                                        r"\(3 files\)"):
        predict(run, [mixed], tmp_path / "pred2", device="cpu")
    uid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(cases[i]["image"]))[0]
    (again,) = predict(run, [mixed], tmp_path / "pred2", device="cpu", series=[uid])
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again))), predicted)
