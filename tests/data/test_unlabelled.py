"""``prepare --unlabelled``: image-only folders (volumes, DICOM series, 2D images), an nnU-Net
imagesTr without its labels, one-column CSV lists; every non-blank slice kept, counted here
from the constructed data; everything but ``pretrain mae`` refuses the result."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_factory import SHAPE, nnunet_dataset, write_dicom_series, write_nifti
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData

PLANE = (10, 12)  # 120 pixels per slice: one bright pixel is 0.8% of it, two are 1.7%


def _volume(seed: int) -> np.ndarray:
    """6 axial slices: 0 all zero and 1 with one bright pixel (blank: under 1% above the
    minimum), 2 with two bright pixels and 3-5 textured (not blank)."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((6, *PLANE), np.float32)
    vol[1, 4, 4] = 500
    vol[2, 4, 4] = vol[2, 6, 7] = 500
    vol[3:] = rng.normal(100.0, 20.0, (3, *PLANE))
    return vol


NON_BLANK = [2, 3, 4, 5]


def _volume_folder(root: Path) -> dict[str, np.ndarray]:
    """patient1-4: NIfTI and MHA files at the top, NRRD in a sub-folder, a DICOM series folder."""
    vols = {f"patient{i}": _volume(i) for i in range(1, 5)}
    write_nifti(root / "patient1.nii.gz", vols["patient1"])
    write_nifti(root / "patient2.mha", vols["patient2"])
    write_nifti(root / "more" / "patient3.nrrd", vols["patient3"])
    write_dicom_series(root / "patient4" / "t1", vols["patient4"], uid="1.2.826.0.1.3680043.2.1125.4")
    (root / ".hidden").mkdir()
    write_nifti(root / ".hidden" / "patient9.nii.gz", _volume(9))  # hidden folders are skipped
    return vols


def _percentile_uint8(vol: np.ndarray) -> np.ndarray:
    """DESIGN.md's MR rule, written out: clip at the 0.5/99.5 percentiles of the non-zero voxels."""
    lo, hi = np.percentile(vol[vol != 0].astype(np.float64), (0.5, 99.5))
    return np.clip(np.rint((vol.astype(np.float32) - np.float32(lo)) * np.float32(255 / (hi - lo))), 0, 255)


def test_volume_folder_keeps_every_non_blank_slice(tmp_path: Path) -> None:
    vols = _volume_folder(tmp_path / "src")
    vols["t1"] = vols.pop("patient4").astype(np.int16)  # the DICOM series, as written
    result = prepare(tmp_path / "src", tmp_path / "p", PrepareOptions(unlabelled=True, split="2:1:1"))
    m = result.manifest
    assert m["source"]["layout"] == "images"
    assert m["unlabelled"] is True and m["options"]["unlabelled"] is True
    assert m["labels"] == {"0": "background"}
    assert sorted(c["id"] for c in m["cases"]) == ["patient1", "patient2", "patient3", "t1"]
    assert {s: len(v) for s, v in m["split"].items()} == {"train": 2, "val": 1, "test": 1}
    for case in m["cases"]:  # in every split, blank slices are the only ones left out
        assert [i for i, _ in case["slices"]] == NON_BLANK
        assert case["blank_dropped"] == 2 and case["mask"] is None
    assert {s: (c["slices"], c["nonempty"]) for s, c in m["counts"].items()} == {
        "train": (8, 0), "val": (4, 0), "test": (4, 0)}
    data = PreparedData.open(tmp_path / "p")
    assert data.unlabelled and len(data.index) == 16
    assert not (tmp_path / "p" / "masks.u8").exists()  # no mask bytes stored
    for row in range(len(data.index)):
        image, mask = data.slice(row)
        assert mask.shape == image.shape == PLANE and not mask.any()
        want = _percentile_uint8(vols[data.case(row)["id"]])[data.index[row]["slice"]]
        assert np.abs(image.astype(int) - want).max() <= 1  # normalised per volume, as labelled data
    assert "image-only" in result.summary()


def test_png_folder_drops_blank_images_and_keeps_the_pixels(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    blank = {"patient0": np.zeros((20, 10), np.uint8), "patient1": np.full((20, 10), 77, np.uint8)}
    blank["patient1"][3, 3] = 200  # 1 of 200 pixels above the minimum: blank
    kept = {f"patient{i}": rng.integers(0, 256, (20, 10), dtype=np.uint8) for i in range(2, 9)}
    kept["patient2"] = np.zeros((20, 10), np.uint8)
    kept["patient2"][0, :3] = 9  # 3 of 200 pixels: not blank
    for name, img in {**blank, **kept}.items():
        Image.fromarray(img).save(src / f"{name}.{'tif' if name == 'patient3' else 'png'}")
    m = prepare(src, tmp_path / "p", PrepareOptions(unlabelled=True)).manifest
    stored = {c["id"]: c["slices"] for c in m["cases"]}
    assert {k for k, v in stored.items() if v} == set(kept)  # the blank images are listed, nothing stored
    assert stored["patient0"] == stored["patient1"] == [] and sum(c["slices"] for c in m["counts"].values()) == 7
    data = PreparedData.open(tmp_path / "p")
    assert len(data.index) == 7
    for row in range(len(data.index)):
        image, mask = data.slice(row)
        assert np.array_equal(image, kept[data.case(row)["id"]]) and not mask.any()  # 8-bit kept as is


def test_nnunet_images_without_labels_keep_the_slices_masks_would_empty(tmp_path: Path) -> None:
    root = tmp_path / "Dataset002"
    nonempty = nnunet_dataset(root)
    for f in (root / "labelsTr").iterdir():  # imagesTr alone
        f.unlink()
    (root / "labelsTr").rmdir()
    m = prepare(root, tmp_path / "p", PrepareOptions(unlabelled=True)).manifest
    assert m["source"]["layout"] == "nnunet" and len(m["cases"]) == 10
    # every slice of the random volumes, the 5 of 8 per case without label included, in every split
    assert all([i for i, _ in c["slices"]] == list(range(SHAPE[0])) for c in m["cases"])
    assert all(len(v) == 3 for v in nonempty.values())
    with pytest.raises(DataError, match="the train set has no slices after filtering .blank slices are dropped"):
        prepare(root, tmp_path / "q", PrepareOptions(unlabelled=True, channel=1))  # channel 1 is constant


def test_labelled_layouts_read_without_their_masks_and_csv_of_one_column(tmp_path: Path) -> None:
    root = tmp_path / "Dataset003"
    nnunet_dataset(root, n_cases=4)
    # the folders layout: images/ read, masks/ ignored (even one that does not match)
    folders = tmp_path / "folders"
    (folders / "masks").mkdir(parents=True)
    for i in range(4):
        write_nifti(folders / "images" / f"case{i}.nii.gz", _volume(i))
    m = prepare(folders, tmp_path / "f", PrepareOptions(unlabelled=True, split="2:1:1")).manifest
    assert m["source"]["layout"] == "folders" and sum(c["slices"] for c in m["counts"].values()) == 4 * 4
    lines = "image\n" + "".join(f"images/case{i}.nii.gz\n" for i in range(4))
    (folders / "list.csv").write_text(lines)
    m = prepare(folders / "list.csv", tmp_path / "c", PrepareOptions(unlabelled=True, split="2:1:1",
                                                                      root=str(folders))).manifest
    assert m["source"]["layout"] == "csv" and sum(c["slices"] for c in m["counts"].values()) == 4 * 4
    with pytest.raises(DataError, match="expected 'image,mask' on each line.*--unlabelled"):
        prepare(folders / "list.csv", tmp_path / "c2", PrepareOptions(split="2:1:1", root=str(folders)))


def test_options_about_masks_are_refused_and_the_option_is_part_of_the_identity(tmp_path: Path) -> None:
    for bad in ({"keep_empty": True}, {"labels": "merge"}, {"label_map": {1: 1}}):
        with pytest.raises(DataError, match="--unlabelled data has none"):
            PrepareOptions(unlabelled=True, **bad)
    with pytest.raises(DataError, match="--layout images .* add --unlabelled"):
        prepare(tmp_path, tmp_path / "x", PrepareOptions(layout="images"))
    src = tmp_path / "Dataset004"
    nnunet_dataset(src, n_cases=4)
    out, opts = tmp_path / "p", PrepareOptions(unlabelled=True, split="2:1:1")
    assert not prepare(src, out, PrepareOptions(split="2:1:1")).reused  # labelled first
    with pytest.raises(DataError, match="already holds a dataset prepared from other inputs or options"):
        prepare(src, out, opts)
    assert not prepare(src, out, opts, force=True).reused
    again = prepare(src, out, opts)
    assert again.reused and again.manifest["unlabelled"] is True


@pytest.fixture(scope="module")
def image_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unl")
    for i in range(4):
        write_nifti(root / "src" / f"patient{i}.nii.gz", _volume(i))
    prepare(root / "src", root / "prep", PrepareOptions(unlabelled=True, split="2:1:1"))
    return root / "prep"


def _refusal(folder: Path) -> str:
    return (f"{re.escape(str(folder))}: an image-only dataset .prepared with --unlabelled.*"
            "only 'tunesam pretrain mae' takes it")


def test_train_and_baselines_refuse_an_image_only_dataset(image_only: Path, tmp_path: Path) -> None:
    from tunesam.baselines.train import train_baseline
    from tunesam.config import TrainConfig
    from tunesam.kinds import train

    for mode in ("auto", "box"):
        cfg = TrainConfig(data=str(image_only), out=str(tmp_path / mode), arch="vit_test", tune="decoder",
                          method="vanilla", mode=mode, epochs=1, image_size=32, device="cpu", num_workers=0)
        with pytest.raises(DataError, match=_refusal(image_only)):
            train(cfg)
        assert not (tmp_path / mode).exists()  # nothing half-written
    with pytest.raises(DataError, match=_refusal(image_only)):
        train_baseline("unet", image_only, tmp_path / "unet", epochs=1, device="cpu", image_size=32, num_workers=0)


def test_evaluate_refuses_an_image_only_dataset(image_only: Path, prepared: Path, tmp_path: Path) -> None:
    from tunesam.config import TrainConfig
    from tunesam.kinds import train
    from tunesam.eval.evaluate import evaluate_checkpoint, evaluate_run
    from tunesam.models.registry import build_sam

    torch.save(build_sam("vit_test", image_size=32).state_dict(), tmp_path / "w.pth")
    with pytest.raises(DataError, match=_refusal(image_only)):
        evaluate_checkpoint(tmp_path / "w.pth", "vit_test", image_only, "box", image_size=32, device="cpu")
    run = train(TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch="vit_test", tune="decoder",
                            method="vanilla", epochs=1, image_size=32, device="cpu", num_workers=0), progress=False)
    with pytest.raises(DataError, match=_refusal(image_only)):
        evaluate_run(run, image_only, device="cpu")
    assert not (run / "metrics.json").exists()


def test_cli_prepare_unlabelled_and_train_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunesam.cli import main

    src = tmp_path / "src"
    for i in range(4):
        write_nifti(src / f"patient{i}.nii.gz", _volume(i))
    assert main(["prepare", str(src), "--out", str(tmp_path / "p"), "--unlabelled", "--split", "2:1:1"]) == 0
    assert "image-only (--unlabelled)" in capsys.readouterr().out
    assert PreparedData.open(tmp_path / "p").unlabelled
    code = main(["train", "--data", str(tmp_path / "p"), "--out", str(tmp_path / "run"), "--arch", "vit_test",
                 "--tune", "decoder", "--method", "vanilla", "--image-size", "32", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "image-only dataset" in err and str(tmp_path / "p") in err
