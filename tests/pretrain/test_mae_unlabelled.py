"""MAE sees every non-blank slice: of an image-only dataset, and of a labelled one its train
slices without foreground too, while fine-tuning (and nnU-Net's export) keeps training on the
slices it trained on before unless ``--keep-empty``. SAM's ViT pre-trains with the paper's
visible-token MAE by default, TinyViT with the masked grid."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from data_factory import write_nifti
from tunesam.config import TrainConfig
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData
from tunesam.pretrain.config import PretrainConfig
from tunesam.pretrain.data import ImageSlices
from tunesam.pretrain.runner import pretrain

SHAPE = (8, 12, 10)  # z, y, x: 120 pixels per axial slice
FOREGROUND = [2, 3, 4]  # label on these slices
BLANK = [0, 2, 7]  # 0 and 2 all zero, 7 a single bright pixel (under 1% of the slice above its minimum)
# so: 1, 5, 6 carry image but no label; 2 has a label on a blank image


def _case(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
    image[[0, 2]] = 0
    image[7] = 0
    image[7, 5, 5] = 300
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 3:8, 2:6] = 1
    return image, mask


def _dataset(root: Path, n: int = 4) -> None:
    for i in range(n):
        image, mask = _case(i)
        write_nifti(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", mask)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "gland": 1}, "numTraining": n}))


def _pairs(data: PreparedData, rows: np.ndarray | list[int]) -> set[tuple[str, int]]:
    return {(data.case(int(r))["id"], int(data.index[int(r)]["slice"])) for r in rows}


def _expected(data: PreparedData, split: str, slices: list[int]) -> set[tuple[str, int]]:
    return {(cid, z) for cid in data.manifest["split"][split] for z in slices}


def _train_config(data: Path, out: Path) -> TrainConfig:
    from tunesam.kinds import resolve

    return resolve(TrainConfig(data=str(data), out=str(out), arch="vit_test", tune="decoder", method="vanilla",
                               epochs=1, image_size=32, device="cpu", num_workers=0))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lab")
    _dataset(root / "src")
    prepare(root / "src", root / "prep", PrepareOptions(split="2:1:1"))
    return root / "prep"


def test_train_and_val_store_the_non_blank_slices_without_foreground(labelled: Path) -> None:
    data = PreparedData.open(labelled)
    m = data.manifest
    assert m["empty_slices_stored"] is True and m["options"]["keep_empty"] is False
    stored = sorted(set(FOREGROUND) | (set(range(SHAPE[0])) - set(BLANK)))  # 1..6: 0 and 7 are blank and empty
    for case in m["cases"]:
        want = list(range(SHAPE[0])) if case["split"] == "test" else stored
        assert [i for i, _ in case["slices"]] == want
        assert [i for i, f in case["slices"] if f] == FOREGROUND
    for split in ("train", "val"):
        assert _pairs(data, data.rows(split)) == _expected(data, split, stored)


def test_fine_tuning_trains_on_the_same_slices_as_before_and_mae_on_every_non_blank_one(labelled: Path,
                                                                                        tmp_path: Path) -> None:
    from tunesam.baselines.nnunet import DATASET, export_raw_dataset
    from tunesam.engine.trainer import datasets as _datasets

    data = PreparedData.open(labelled)
    train, val = _datasets(data, _train_config(labelled, tmp_path / "run"))
    # before this change prepare stored exactly the foreground slices and training took them all
    assert _pairs(data, train.rows) == _expected(data, "train", FOREGROUND)
    assert _pairs(data, val.rows) == _expected(data, "val", FOREGROUND)
    split = export_raw_dataset(data, tmp_path / "raw")  # nnU-Net: what it got before, case by case
    import SimpleITK as sitk

    for ident in split["train"] + split["val"]:
        path = tmp_path / "raw" / DATASET / "labelsTr" / f"{ident}.nii.gz"
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert labels.shape == (len(FOREGROUND), *SHAPE[1:]) and labels.reshape(len(FOREGROUND), -1).any(1).all()
    mae = ImageSlices([data], "train", image_size=32)
    non_blank = sorted(set(range(SHAPE[0])) - set(BLANK))  # 1, 3, 4, 5, 6: with label or without
    assert _pairs(data, mae.items[:, 1]) == _expected(data, "train", non_blank)
    assert mae.blank == len(data.manifest["split"]["train"])  # slice 2: foreground on a blank image


def test_keep_empty_and_older_folders_train_on_every_stored_slice(labelled: Path, tmp_path: Path) -> None:
    from tunesam.engine.trainer import datasets as _datasets

    prepare(labelled.parent / "src", tmp_path / "keep", PrepareOptions(split="2:1:1", keep_empty=True))
    data = PreparedData.open(tmp_path / "keep")
    assert data.trains_on_empty
    train, _ = _datasets(data, _train_config(tmp_path / "keep", tmp_path / "run"))
    assert _pairs(data, train.rows) == _expected(data, "train", list(range(SHAPE[0])))
    # a folder of format 1 stored train slices for fine-tuning only: every one of them trains
    old = PreparedData.open(labelled)
    del old.manifest["empty_slices_stored"]
    assert old.trains_on_empty


# -- the default MAE variant ---------------------------------------------------------------------
@pytest.mark.parametrize("arch, variant", [("vit_test", "visible"), ("vit_b", "visible"), ("vit_h", "visible"),
                                           ("vit_t", "masked-grid"), ("litemedsam", "masked-grid"),
                                           ("vit_t_test", "masked-grid")])
def test_default_mae_variant_is_the_papers_for_vit_and_the_masked_grid_for_tinyvit(arch: str, variant: str) -> None:
    cfg = PretrainConfig(objective="mae", data=("d",), out="o", arch=arch).resolved()
    assert cfg.mae_variant == variant
    assert ("convolutions" in str(cfg.mae_variant_rule)) == (variant == "masked-grid")
    given = PretrainConfig(objective="mae", data=("d",), out="o", arch=arch, mae_variant="masked-grid").resolved()
    assert given.mae_variant == "masked-grid" and given.mae_variant_rule == "given with --mae-variant"
    assert PretrainConfig(objective="prompt", data=("d",), out="o", arch=arch).resolved().mae_variant is None


# -- pre-training on image-only data ---------------------------------------------------------------
def test_pretrain_mae_runs_on_an_image_only_dataset_and_prompt_refuses_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(6):
        write_nifti(src / f"patient{i}.nii.gz", _case(i)[0])
    prepare(src, tmp_path / "prep", PrepareOptions(unlabelled=True, split="4:1:1"))
    data = PreparedData.open(tmp_path / "prep")
    non_blank = sorted(set(range(SHAPE[0])) - set(BLANK))
    assert _pairs(data, data.rows("train")) == _expected(data, "train", non_blank)
    common = {"data": (str(tmp_path / "prep"),), "arch": "vit_test", "epochs": 1, "image_size": 64,
              "batch_size": 4, "accumulate": 1, "lr": 1e-3, "warmup": 1, "device": "cpu", "num_workers": 0}
    run = pretrain(PretrainConfig(objective="mae", out=str(tmp_path / "ssl"), decoder_dim=32, decoder_depth=1,
                                  decoder_heads=2, **common))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["variant"] == "visible" and summary["blank_slices_dropped"] == 0  # prepare dropped them
    assert summary["steps"] == -(-4 * len(non_blank) // 4)  # 4 train volumes x 5 slices, batch 4
    assert (run / "checkpoint.pth").is_file()
    refusal = (f"{re.escape(str(tmp_path / 'prep'))}: an image-only dataset .prepared with --unlabelled.: it has "
               "no masks, which pretrain prompt needs; only 'tunesam pretrain mae' takes it")
    with pytest.raises(DataError, match=refusal):
        pretrain(PretrainConfig(objective="prompt", out=str(tmp_path / "sup"), **common))
