"""Readers: DICOM series by content, PNG modes, geometry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_factory import write_dicom_series
from tunesam.data.readers import DataError, Geometry, read_image


def test_dicom_series_found_by_content_without_extension(tmp_path: Path) -> None:
    vol = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5)
    write_dicom_series(tmp_path / "series", vol, "1.2.826.0.1.3680043.2.1125.1")
    arr, geom = read_image(tmp_path / "series")
    assert arr.shape == (4, 6, 5) and np.array_equal(arr, vol)
    assert geom.spacing == pytest.approx((0.7, 0.9, 2.5))
    assert geom.origin == pytest.approx((-5.0, 10.0, 0.0))


def test_two_series_in_one_folder_ask_which(tmp_path: Path) -> None:
    vol = np.zeros((2, 4, 4), np.int16)
    write_dicom_series(tmp_path / "mixed", vol, "1.2.3.4", ".dcm")
    write_dicom_series(tmp_path / "mixed", vol + 1, "1.2.3.5", "b.dcm")
    with pytest.raises(DataError, match=r"holds 2 DICOM series; choose one with --series UID: "
                                        r"1\.2\.3\.4 \(2 files\); 1\.2\.3\.5 \(2 files\)"):
        read_image(tmp_path / "mixed")
    arr, _ = read_image(tmp_path / "mixed", dicom_series="1.2.3.5")
    assert int(arr.min()) == 1
    arr, _ = read_image(tmp_path / "mixed", dicom_series=("9.9", "1.2.3.4"))  # one UID per folder, several folders
    assert int(arr.max()) == 0
    with pytest.raises(DataError, match="holds none of the series given with --series; it holds 1.2.3.4"):
        read_image(tmp_path / "mixed", dicom_series="9.9")


def test_a_dicom_series_with_a_missing_or_damaged_slice_is_refused(tmp_path: Path) -> None:
    """ITK read it with uneven spacing (7 slices at 2.92 mm for 8 at 2.5), so the predicted
    mask did not line up with the scan; and it printed its own warning."""
    vol = np.arange(8 * 6 * 5, dtype=np.int16).reshape(8, 6, 5)
    write_dicom_series(tmp_path / "gap", vol, "1.2.826.0.1.3680043.2.1125.7")
    (tmp_path / "gap" / "IM0003").unlink()
    with pytest.raises(DataError, match=r"not evenly spaced: slices 2.5 mm apart but 5 mm after slice 3 "
                                        r"\(7 files, about 1 slice\(s\) missing\)"):
        read_image(tmp_path / "gap")
    write_dicom_series(tmp_path / "cut", vol, "1.2.826.0.1.3680043.2.1125.8")
    damaged = tmp_path / "cut" / "IM0005"
    damaged.write_bytes(damaged.read_bytes()[:300])
    with pytest.raises(DataError, match="cut: DICOM series .*(IM0005 cannot be read|not evenly spaced)"):
        read_image(tmp_path / "cut")


def test_folder_without_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="found no DICOM files"):
        read_image(tmp_path / "d")


def test_png_modes(tmp_path: Path) -> None:
    grey = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(grey).convert("RGB").save(tmp_path / "rgb.png")  # equal channels -> grey
    arr, geom = read_image(tmp_path / "rgb.png")
    assert np.array_equal(arr, grey) and geom == Geometry((5, 7), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), False)
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(read_image(tmp_path / "pal.png")[0], [[0, 1], [2, 1]])  # palette indices
    sixteen = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    assert np.array_equal(read_image(tmp_path / "16.png")[0], sixteen)


def test_unknown_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(DataError, match=r"x\.xyz: unknown file type"):
        read_image(tmp_path / "x.xyz")
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "none.nii.gz")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"broken\.png: cannot be read as an image"):
        read_image(tmp_path / "broken.png")


def test_plane_spacing_per_axis() -> None:
    g = Geometry((10, 20, 30), (0.5, 0.7, 3.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert g.plane_spacing(0) == (0.7, 0.5)  # rows are y, columns x
    assert g.plane_spacing(1) == (3.0, 0.5)  # rows z, columns x
    assert g.plane_spacing(2) == (3.0, 0.7)  # rows z, columns y


@pytest.mark.parametrize("name", ["t.nii", "t.nii.gz"])
def test_truncated_nifti_is_refused(tmp_path: Path, name: str) -> None:
    """SimpleITK reads a NIfTI cut after its header with zeros for the missing voxels."""
    import SimpleITK as sitk

    from tunesam.data.readers import DataError, read_image

    vol = np.random.default_rng(0).normal(size=(20, 30, 40)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / name))
    assert read_image(tmp_path / name)[0].shape == (20, 30, 40)
    data = (tmp_path / name).read_bytes()
    (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"cut_{name}: the file is truncated"):
        read_image(tmp_path / f"cut_{name}")
