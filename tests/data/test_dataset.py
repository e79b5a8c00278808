"""The Dataset: letterbox to the model input, few-shot sampling, and the split helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_factory import png_pairs
from tunesam.data.dataset import SliceDataset, few_shot_rows
from tunesam.letterbox import letterbox_image, letterbox_mask, unletterbox
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.readers import DataError
from tunesam.data.split import patient_split, split_counts
from tunesam.data.store import PreparedData


def test_letterbox_keeps_aspect_and_pads_bottom_right() -> None:
    img = np.full((50, 100), 200, np.uint8)
    out = letterbox_image(img, 64)
    assert out.shape == (1, 64, 64)
    assert out.dtype == torch.uint8
    assert torch.all(out[0, :32, :] == 200) and torch.all(out[0, 32:, :] == 0)
    mask = np.zeros((50, 100), np.uint8)
    mask[:, 50:] = 2
    m = letterbox_mask(mask, 64)
    assert m.dtype == torch.uint8 and set(m.unique().tolist()) == {0, 2}
    assert torch.all(m[:32, 32:] == 2) and torch.all(m[:32, :32] == 0) and torch.all(m[32:] == 0)
    back = unletterbox(m[None].float(), (32, 64), (50, 100))
    assert back.shape == (1, 50, 100)
    assert torch.equal(back[0].round().long(), torch.from_numpy(mask).long())


def test_dataset_items_and_few_shot(tmp_path: Path) -> None:
    png_pairs(tmp_path / "src", patients=10, per_patient=2)
    prepare(tmp_path / "src", tmp_path / "p", PrepareOptions(split="7:1:2"))
    ds = SliceDataset(tmp_path / "p", "train", image_size=64)
    assert len(ds) == 14
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (64, 64) and tuple(item["valid"].tolist()) == (64, 48)
    data = PreparedData.open(tmp_path / "p")
    rows = few_shot_rows(data, "train", k=5, seed=0)
    volumes = [data.case(int(r))["volume"] for r in rows]
    assert len(set(volumes)) == 5
    assert np.array_equal(rows, few_shot_rows(data, "train", k=5, seed=0))
    assert all(data.index[r]["nonempty"] for r in rows)
    with pytest.raises(DataError, match="needs 8 distinct volumes"):
        few_shot_rows(data, "train", k=8, seed=0)
    loader = torch.utils.data.DataLoader(SliceDataset(data, "train", 32, rows=rows), batch_size=2, num_workers=2)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 5


def test_split_counts_and_proportions() -> None:
    assert split_counts(100, (0.7, 0.1, 0.2)) == (70, 10, 20)
    assert split_counts(10, (0.7, 0.1, 0.2)) == (7, 1, 2)
    assert split_counts(3, (0.7, 0.1, 0.2)) == (1, 1, 1)
    patients = [f"p{i}" for i in range(50)] * 3  # each patient has three cases
    s = patient_split(patients, (0.7, 0.1, 0.2), seed=1)
    assert [len(s[k]) for k in ("train", "val", "test")] == [35, 5, 10]
    assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(patients)
    assert not (set(s["train"]) & set(s["val"]) or set(s["train"]) & set(s["test"]) or set(s["val"]) & set(s["test"]))
    assert s == patient_split(list(reversed(patients)), (0.7, 0.1, 0.2), seed=1)  # order does not matter


@pytest.mark.parametrize("mode", ["box", "point"])
def test_prompted_items_survive_objects_that_vanish_when_resized(tmp_path: Path, mode: str) -> None:
    """A one-pixel object at (0, 0) of a 200 x 200 slice has no pixel at 32 px input."""
    from PIL import Image

    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    for p in range(3):
        mask = np.zeros((200, 200), np.uint8)
        mask[0, 0] = 255
        mask[100:140, 100:150] = 255 if p == 0 else 0  # one slice also has a large object
        Image.fromarray(np.full((200, 200), 90, np.uint8)).save(tmp_path / "src" / "images" / f"patient{p}.png")
        Image.fromarray(mask).save(tmp_path / "src" / "masks" / f"patient{p}.png")
    prepare(tmp_path / "src", tmp_path / "prep", PrepareOptions(split="1:1:1", labels="merge"))
    assert letterbox_mask(np.pad(np.ones((1, 1), np.uint8), ((0, 199), (0, 199))), 32).sum() == 0
    for split in ("train", "val", "test"):
        ds = SliceDataset(tmp_path / "prep", split, 32, mode=mode, augment=True, seed=1)
        for epoch in range(4):
            for i in range(len(ds)):
                item = ds[i, epoch]
                coords = item["box"] if mode == "box" else item["point"]
                assert torch.all((coords >= 0) & (coords <= 32)), coords
                assert item["mask"].shape == (32, 32)
