"""Messages that misled (issue 18): each now says what is wrong with which file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_factory import nnunet_dataset, png_pairs, volume_and_mask
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.readers import DataError, read_image


def test_a_lists_folder_without_a_val_list_blames_the_lists(tmp_path: Path) -> None:
    """It said "the split (7:1:2) gives it none", though the lists made the split."""
    png_pairs(tmp_path / "src")
    lines = ["image,mask"] + [f"images/patient{p}_slice0.png,masks/patient{p}_slice0_mask.png" for p in range(6)]
    (tmp_path / "src" / "lists").mkdir()
    (tmp_path / "src" / "lists" / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"the val set has no cases: the lists give it none \(a lists folder needs a "
                                        r"val\* list"):
        prepare(tmp_path / "src" / "lists", tmp_path / "p", PrepareOptions(root=str(tmp_path / "src")))


def test_an_empty_csv_field_names_its_line(tmp_path: Path) -> None:
    """It resolved to the root folder and failed as "not a DICOM folder"."""
    png_pairs(tmp_path / "src")
    (tmp_path / "src" / "lists").mkdir()
    (tmp_path / "src" / "lists" / "cases.csv").write_text("image,mask\nimages/patient0_slice0.png,\n")
    with pytest.raises(DataError, match=r"cases.csv:1: an empty path"):
        prepare(tmp_path / "src" / "lists" / "cases.csv", tmp_path / "p")


@pytest.mark.parametrize("meta, message", [
    ({"name": "x", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a"}},
     "looks like a Medical Segmentation Decathlon dataset.json .* its 'training' is missing"),
    ({"name": "x", "modality": {"0": "MRI"}, "labels": {"0": "background"}, "training": "imagesTr"},
     "its 'training' is a str"),
    ({"name": "x", "modality": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "training": []},
     r"its labels are given as name: value \('background': 0\); this dataset.json needs value: name"),
])
def test_a_malformed_msd_dataset_json_is_not_taken_for_nnunet(tmp_path: Path, meta: dict, message: str) -> None:
    """It was misdetected as nnU-Net: "label '0' has the non-integer value 'background'"."""
    root = tmp_path / "Task01_X"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        prepare(root, tmp_path / "p")


def test_nnunet_labels_in_the_decathlon_order_are_named(tmp_path: Path) -> None:
    nnunet_dataset(tmp_path / "ds", n_cases=4, labels={"0": "background", "1": "gland"})
    with pytest.raises(DataError, match=r"given as value: name \('0': 'background'\); this dataset.json needs "
                                        r"name: value"):
        prepare(tmp_path / "ds", tmp_path / "p")


def test_a_truncated_mha_says_truncated(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Its reason read "No such file or directory", after ITK's own lines."""
    import SimpleITK as sitk

    vol, _, _ = volume_and_mask(0)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "a.mha"))
    data = (tmp_path / "a.mha").read_bytes()
    (tmp_path / "a.mha").write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"a.mha: the file is truncated: its header describes 3,840 bytes"):
        read_image(tmp_path / "a.mha")
    assert "ideal" not in capfd.readouterr().err  # ITK's own lines are not printed
    (tmp_path / "whole.mha").write_bytes(data)
    np.testing.assert_equal(read_image(tmp_path / "whole.mha")[0], vol)  # a whole file still reads


def test_a_dangling_link_as_out_is_named(tmp_path: Path) -> None:
    """It said "Not a directory (.x.tmp-N)" or "File exists"."""
    from tunesam.io import owned

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"link: is a link to .*nowhere, which does not exist"), \
            owned(link, "run"):
        pass
