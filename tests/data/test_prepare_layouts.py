"""``prepare`` on each layout: counts, labels, geometry and splits against known contents."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_factory import DIRECTION, ORIGIN, SHAPE, SPACING, nnunet_dataset, png_pairs, volume_and_mask, write_nifti
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData


@pytest.fixture
def nnunet(tmp_path: Path) -> tuple[Path, dict[str, list[int]]]:
    root = tmp_path / "Dataset001_Test"
    return root, nnunet_dataset(root)


def test_nnunet_counts_labels_geometry_split(nnunet, tmp_path: Path) -> None:
    root, nonempty = nnunet
    result = prepare(root, tmp_path / "prep")
    m = result.manifest
    assert m["labels"] == {"0": "background", "1": "gland", "2": "lesion"}
    assert m["split_source"] == "seeded"
    assert {s: len(v) for s, v in m["split"].items()} == {"train": 7, "val": 1, "test": 2}
    for case in m["cases"]:
        # every slice: test keeps all, train/val the empty ones too as none is blank (random images)
        assert [i for i, _ in case["slices"]] == list(range(SHAPE[0]))
        assert [i for i, f in case["slices"] if f] == nonempty[case["id"]]
        g = case["geometry"]
        assert g["shape"] == list(SHAPE) and g["spacing"] == pytest.approx(SPACING)
        assert g["origin"] == pytest.approx(ORIGIN) and g["direction"] == pytest.approx(DIRECTION)
        assert case["plane_spacing"] == pytest.approx([SPACING[1], SPACING[0]])
        assert case["native_plane"] == [SHAPE[1], SHAPE[2]]
    data = PreparedData.open(tmp_path / "prep")
    assert len(data.index) == 10 * SHAPE[0]
    # Stored pixels: the mask of slice z equals the source mask's slice.
    for row in range(len(data.index)):
        case = data.case(row)
        _, mask, _ = volume_and_mask(int(case["id"].split("_")[1]))
        assert np.array_equal(data.slice(row)[1], mask[data.index[row]["slice"]])


def test_nnunet_other_axis_and_channel(nnunet, tmp_path: Path) -> None:
    root, _ = nnunet
    m = prepare(root, tmp_path / "p", PrepareOptions(axis=2, channel=1, keep_empty=True)).manifest
    case = m["cases"][0]
    assert case["num_slices"] == SHAPE[2] and case["native_plane"] == [SHAPE[0], SHAPE[1]]
    assert case["plane_spacing"] == pytest.approx([SPACING[2], SPACING[1]])
    data = PreparedData.open(tmp_path / "p")
    image, _ = data.slice(0)
    assert image.shape == (SHAPE[0], SHAPE[1])
    assert len(np.unique(np.asarray(image))) == 1  # channel 1 is constant


def test_ct_channel_name_selects_the_window(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    nnunet_dataset(root, n_cases=4, channel_names={"0": "CT"})
    m = prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1")).manifest
    assert m["options"]["modality"] == "ct"
    assert m["options"]["intensity"] == {"method": "window", "level_width": [40.0, 400.0]}


def test_nnunet_splits_final_is_kept(nnunet, tmp_path: Path) -> None:
    root, _ = nnunet
    folds = [{"train": [f"case_{i:03d}" for i in range(6)], "val": ["case_006", "case_007"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    m = prepare(root, tmp_path / "p").manifest
    assert m["split_source"] == "given"
    assert m["split"]["val"] == ["case_006", "case_007"]
    assert m["split"]["test"] == ["case_008", "case_009"]


def test_nnunet_region_and_ignore_labels_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "r"
    nnunet_dataset(root, n_cases=3, labels={"background": 0, "whole": [1, 2], "core": 2})
    with pytest.raises(DataError, match="region-based labels are not supported yet"):
        prepare(root, tmp_path / "p")
    root2 = tmp_path / "i"
    nnunet_dataset(root2, n_cases=3, labels={"background": 0, "organ": 1, "ignore": 2})
    with pytest.raises(DataError, match="'ignore' labels are not supported yet"):
        prepare(root2, tmp_path / "p")


def test_msd_four_dimensional_images(tmp_path: Path) -> None:
    import SimpleITK as sitk

    root = tmp_path / "Task05_Prostate"
    training = []
    for i in range(5):
        image, mask, _ = volume_and_mask(i)
        four = np.stack([image, image * 0 + 3.0])  # channels first in the array: c, z, y, x
        img = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in four])
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(root / "imagesTr" / f"prostate_{i:02d}.nii.gz"))
        write_nifti(root / "labelsTr" / f"prostate_{i:02d}.nii.gz", mask, spacing=(1, 1, 1), origin=(0, 0, 0),
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "training": training,
    }))
    m = prepare(root, tmp_path / "p", PrepareOptions(channel=1, split="3:1:1")).manifest
    assert m["source"]["layout"] == "msd"
    assert m["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert m["cases"][0]["geometry"]["shape"] == list(SHAPE)
    data = PreparedData.open(tmp_path / "p")
    assert all(len(np.unique(np.asarray(data.slice(r)[0]))) == 1 for r in range(len(data.index)))


def test_png_folders_by_patient(tmp_path: Path) -> None:
    fg = png_pairs(tmp_path / "src", patients=10)
    (tmp_path / "src" / "images" / "patient99_slice0.png").write_bytes(
        (tmp_path / "src" / "images" / "patient0_slice0.png").read_bytes()
    )  # an image without a mask
    m = prepare(tmp_path / "src", tmp_path / "p").manifest
    assert m["source"]["layout"] == "folders"
    assert m["labels"] == {"0": "background", "1": "label_255"}
    assert any("1 images have no mask" in w for w in m["warnings"])
    assert {s: c["patients"] for s, c in m["counts"].items()} == {"train": 7, "val": 1, "test": 2}
    data = PreparedData.open(tmp_path / "p")
    for row in range(len(data.index)):
        case = data.case(row)
        assert int(np.asarray(data.slice(row)[1]).sum()) == fg[case["id"]]
        assert case["patient"] == case["id"].split("_")[0]


def test_patients_never_cross_splits_and_seed_reproduces(tmp_path: Path) -> None:
    png_pairs(tmp_path / "src", patients=20, per_patient=3, size=(16, 16))
    a = prepare(tmp_path / "src", tmp_path / "a", PrepareOptions(seed=3)).manifest
    b = prepare(tmp_path / "src", tmp_path / "b", PrepareOptions(seed=3)).manifest
    c = prepare(tmp_path / "src", tmp_path / "c", PrepareOptions(seed=4)).manifest
    assert a["split"] == b["split"] and a["split"] != c["split"]
    for m in (a, c):
        where: dict[str, set[str]] = {}
        for case in m["cases"]:
            where.setdefault(case["patient"], set()).add(case["split"])
        assert all(len(s) == 1 for s in where.values())
        assert {s: c["patients"] for s, c in m["counts"].items()} == {"train": 14, "val": 2, "test": 4}


def test_csv_single_list_with_tabs_header_and_leading_slash(tmp_path: Path) -> None:
    png_pairs(tmp_path / "data", patients=5, per_patient=1)
    lines = ["image\tmask"] + [
        f"images/patient{p}_slice0.png\t/masks/patient{p}_slice0_mask.png" for p in range(5)
    ]
    (tmp_path / "data" / "lists").mkdir()
    (tmp_path / "data" / "lists" / "all.csv").write_text("\n".join(lines) + "\n")
    m = prepare(tmp_path / "data" / "lists" / "all.csv", tmp_path / "p", PrepareOptions(split="3:1:1")).manifest
    assert m["source"]["layout"] == "csv" and m["counts"]["train"]["cases"] == 3


def test_large_slices_are_downsampled_to_size(tmp_path: Path) -> None:
    png_pairs(tmp_path / "src", patients=5, size=(40, 30))
    m = prepare(tmp_path / "src", tmp_path / "p", PrepareOptions(size=20, split="3:1:1")).manifest
    assert all(c["native_plane"] == [40, 30] and c["stored_plane"] == [20, 15] for c in m["cases"])
    data = PreparedData.open(tmp_path / "p")
    image, mask = data.slice(0)
    assert image.shape == (20, 15) and set(np.unique(mask)) <= {0, 1}


def test_manifest_flags_describe_the_stored_masks_as_the_index_does(tmp_path: Path) -> None:
    """A one-pixel object vanishes when its 200 x 200 slice is stored at 32 px."""
    import numpy as np
    from PIL import Image

    from tunesam.data.store import PreparedData

    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    for p in range(4):
        mask = np.zeros((200, 200), np.uint8)
        mask[0, 0] = 255
        if p:
            mask[50:150, 50:150] = 255
        Image.fromarray(np.full((200, 200), 80, np.uint8)).save(tmp_path / "src" / "images" / f"patient{p}.png")
        Image.fromarray(mask).save(tmp_path / "src" / "masks" / f"patient{p}.png")
    prepare(tmp_path / "src", tmp_path / "p", PrepareOptions(split="2:1:1", size=32, keep_empty=True))
    data = PreparedData.open(tmp_path / "p")
    flags = {c["id"]: [f for _, f in c["slices"]] for c in data.manifest["cases"]}
    for row in range(len(data.index)):
        case = data.manifest["cases"][int(data.index[row]["case"])]
        assert bool(data.index[row]["nonempty"]) == bool(flags[case["id"]][0])
    assert flags["patient0"] == [0] and all(flags[f"patient{p}"] == [1] for p in (1, 2, 3))
