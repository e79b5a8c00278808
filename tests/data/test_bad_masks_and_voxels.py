"""Masks whose values are not labels (anti-aliased, JPEG, colour), NaN voxels, a 4D file in
an nnU-Net dataset and a broken MSD list: refused or warned about by name, never silently
turned into classes or zeros (issue 18, items 3, 8 and 9, and the MSD traceback)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_factory import nnunet_dataset, png_pairs, volume_and_mask, write_nifti
from tunesam.cli import main
from tunesam.data.prepare import PrepareOptions, parse_label_map, prepare
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData


def _pairs(root: Path, mask_of, patients: int = 5, suffix: str = ".png") -> Path:
    """images/ and masks/ with ``mask_of(p)`` (an array or a PIL image) as patient p's mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for p in range(patients):
        rng = np.random.default_rng(p)
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / "images" / f"patient{p}.png")
        mask = mask_of(p)
        (mask if isinstance(mask, Image.Image) else Image.fromarray(mask)).save(root / "masks" / f"patient{p}{suffix}")
    return root


def _antialiased(p: int) -> Image.Image:
    """A disc drawn at 4x and shrunk with a smooth filter: blended edge values, as a drawing
    program or a resize writes them."""
    big = Image.new("L", (256, 256), 0)
    ImageDraw.Draw(big).ellipse((40 + 8 * p, 40, 200, 210), fill=255)
    return big.resize((64, 64), Image.LANCZOS)


def _colour(p: int) -> np.ndarray:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[10:30, 10:30 + p] = (255, 0, 0)  # one organ in red
    rgb[35:55, 20:40] = (0, 255, 0)  # another in green
    return rgb


def test_an_antialiased_mask_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """It became 41 classes without a word."""
    src = _pairs(tmp_path / "src", _antialiased)
    with pytest.raises(DataError, match=r"the masks hold \d+ values, \d+ of which cover under 0.5% of the labelled "
                                        r"pixels each .*anti-aliased.*--labels merge.*--label-map"):
        prepare(src, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    merged = prepare(src, tmp_path / "p", PrepareOptions(labels="merge"))  # the way out it names
    assert merged.manifest["labels"] == {"0": "background", "1": "foreground"}


def test_a_jpeg_mask_is_refused(tmp_path: Path) -> None:
    """A JPEG mask gave 45 classes."""
    src = _pairs(tmp_path / "src", lambda p: np.where(np.arange(64)[:, None] < 20 + p, 255, 0).astype(np.uint8)
                 * np.ones((1, 64), np.uint8), suffix=".jpg")
    with pytest.raises(DataError, match=r"patient\d\.jpg: a JPEG mask; JPEG is lossy"):
        prepare(src, tmp_path / "p")


def test_a_colour_mask_is_refused_unless_its_colours_are_mapped(tmp_path: Path) -> None:
    """An RGB mask was turned into luminance: one organ, two classes (and no word)."""
    src = _pairs(tmp_path / "src", _colour)
    with pytest.raises(DataError, match=r"a colour mask \(#00ff00, #ff0000 on black\); map its colours to classes "
                                        r"with --label-map '\{\"#00ff00\": 1, \"#ff0000\": 2\}'"):
        prepare(src, tmp_path / "p")
    mapping = parse_label_map('{"#ff0000": 1, "#00ff00": 2}')
    data = PreparedData.open(prepare(src, tmp_path / "p", PrepareOptions(label_map=mapping)).folder)
    assert data.manifest["labels"] == {"0": "background", "1": "#ff0000", "2": "#00ff00"}
    for row in data.rows("train"):
        _, mask = data.slice(int(row))
        assert set(np.unique(mask).tolist()) == {0, 1, 2}
    with pytest.raises(DataError, match=r"mask values \[#00ff00\] are not in the label map \(known: \[#ff0000\]\)"):
        prepare(src, tmp_path / "q", PrepareOptions(label_map=parse_label_map('{"#ff0000": 1}')))


def test_a_missing_label_map_file_is_named_as_missing(tmp_path: Path) -> None:
    """It was reported as bad JSON."""
    with pytest.raises(DataError, match=r"--label-map .*nope.json: no such file, and not a JSON object either"):
        parse_label_map(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{1: 2}")
    with pytest.raises(DataError, match=r"--label-map .*bad.json: must be a JSON object"):
        parse_label_map(str(tmp_path / "bad.json"))


def test_nan_voxels_are_warned_about_and_an_all_nan_volume_refused(tmp_path: Path) -> None:
    """NaN voxels became 0 and an all-NaN volume an all-black case, with no warning."""
    nnunet_dataset(tmp_path / "ds", n_cases=6)
    victim = tmp_path / "ds" / "imagesTr" / "case_002_0000.nii.gz"
    vol, _, _ = volume_and_mask(2)
    vol = vol.astype(np.float32)
    vol[0, :3, :3] = np.nan
    write_nifti(victim, vol)
    result = prepare(tmp_path / "ds", tmp_path / "p", PrepareOptions(split="4:1:1"))
    (note,) = [w for w in result.manifest["warnings"] if "NaN" in w]
    assert "case_002_0000.nii.gz: 9 of" in note and "set to the image's lowest value" in note
    import nibabel

    img = nibabel.Nifti1Image(np.moveaxis(vol, 0, -1)[::-1].copy(), np.eye(4))  # any layout: NaN is NaN
    img.header.extensions.append(nibabel.nifti1.Nifti1Extension(6, b"a comment longer than the 540 bytes read first "
                                                                    * 20))
    nibabel.save(img, tmp_path / "ext.nii.gz")
    from tunesam.data.readers import read_image

    assert int(np.isnan(read_image(tmp_path / "ext.nii.gz")[0]).sum()) == 9  # ITK alone reads them as 0
    write_nifti(victim, np.full_like(vol, np.nan))
    with pytest.raises(DataError, match="case_002_0000.nii.gz: every voxel is NaN or infinite"):
        prepare(tmp_path / "ds", tmp_path / "q", PrepareOptions(split="4:1:1"))


def test_a_4d_image_in_an_nnunet_dataset_is_refused(tmp_path: Path) -> None:
    """It was read as its frame 0, silently."""
    nnunet_dataset(tmp_path / "ds", n_cases=6)
    vol, _, _ = volume_and_mask(1)
    import SimpleITK as sitk

    four = sitk.JoinSeries([sitk.GetImageFromArray(vol.astype(np.float32)) for _ in range(3)])
    sitk.WriteImage(four, str(tmp_path / "ds" / "imagesTr" / "case_001_0000.nii.gz"))
    with pytest.raises(DataError, match=r"case_001_0000.nii.gz: a 4D image \(3 frames or channels\) in an nnU-Net "
                                        "dataset, where each file holds one channel"):
        prepare(tmp_path / "ds", tmp_path / "p")


@pytest.mark.parametrize("entry, message", [
    ({"image": "./imagesTr/a.nii.gz"}, r"training\[0\] has no \"label\""),
    ({"label": "./labelsTr/a.nii.gz"}, r"training\[0\] has no \"image\""),
    ("./imagesTr/a.nii.gz", r"training\[0\] is not a mapping"),
])
def test_a_broken_msd_training_list_is_named(tmp_path: Path, entry, message: str) -> None:
    """An entry without "label" was a KeyError traceback."""
    root = tmp_path / "Task01_X"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"name": "x", "labels": {"0": "background", "1": "a"},
                                                   "modality": {"0": "MRI"}, "training": [entry], "test": []}))
    with pytest.raises(DataError, match=message):
        prepare(root, tmp_path / "p", PrepareOptions(layout="msd"))


def test_prepare_cli_takes_series(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--series was named in the error but no option existed."""
    png_pairs(tmp_path / "src")
    assert main(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "p"), "--series", "1.2.3"]) == 0
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["options"]["series"] == ["1.2.3"]
