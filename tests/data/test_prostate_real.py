"""The real prostate slices of ../shared/data, in the reference code's CSV-list layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.store import PreparedData

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "finetune-sam-demo"
LISTS = ROOT / "MRI-Prostate"
pytestmark = pytest.mark.skipif(not LISTS.is_dir(), reason="../shared/data is not present beside this checkout")


def _list(name: str) -> list[tuple[Path, Path]]:
    pairs = []
    for line in (LISTS / name).read_text().splitlines():
        if line.strip():
            img, mask = line.split(",")
            pairs.append((ROOT / img.strip().lstrip("/"), ROOT / mask.strip().lstrip("/")))
    return pairs


def test_two_lists_are_the_split_with_two_classes(tmp_path: Path) -> None:
    result = prepare(LISTS, tmp_path / "p")
    m = result.manifest
    train, val = _list("train_5shot.csv"), _list("val_5shot.csv")
    assert m["split_source"] == "given"
    assert sorted(m["split"]["train"]) == sorted(p.stem for p, _ in train)
    assert sorted(m["split"]["val"]) == sorted(p.stem for p, _ in val)
    assert m["split"]["test"] == []
    assert any("patient patient77 is in more than one set" in w for w in m["warnings"])
    assert any("no test set" in w for w in m["warnings"])
    # Classes from the raw values, computed here from the files themselves.
    values = sorted({int(v) for _, mk in train + val for v in np.unique(np.asarray(Image.open(mk)))} - {0})
    assert values == [254, 255]
    assert m["labels"] == {"0": "background", "1": "label_254", "2": "label_255"}
    data = PreparedData.open(tmp_path / "p")
    assert len(data.index) == len(train) + len(val)
    masks = {p.stem: np.asarray(Image.open(mk)) for p, mk in train + val}
    images = {p.stem: np.asarray(Image.open(p).convert("L")) for p, _ in train + val}
    for row in range(len(data.index)):
        cid = data.case(row)["id"]
        image, mask = data.slice(row)
        expected = np.select([masks[cid] == 254, masks[cid] == 255], [1, 2], 0)
        assert np.array_equal(mask, expected)
        assert np.array_equal(image, images[cid])  # 8-bit 2D images are kept as they are
    assert data.case(0)["patient"].startswith("patient")


def test_merged_labels_are_the_prostate(tmp_path: Path) -> None:
    m = prepare(LISTS, tmp_path / "p", PrepareOptions(labels="merge")).manifest
    assert m["labels"] == {"0": "background", "1": "foreground"}
    data = PreparedData.open(tmp_path / "p")
    for row in range(len(data.index)):
        case = data.case(row)
        raw = np.asarray(Image.open(case["mask"]))
        assert np.array_equal(data.slice(row)[1], (raw > 0).astype(np.uint8))


def test_one_list_alone_gets_a_seeded_patient_split(tmp_path: Path) -> None:
    m = prepare(LISTS / "train_5shot.csv", tmp_path / "p", PrepareOptions(split="3:1:1", labels="merge")).manifest
    assert m["split_source"] == "seeded"
    assert {s: c["cases"] for s, c in m["counts"].items()} == {"train": 3, "val": 1, "test": 1}
