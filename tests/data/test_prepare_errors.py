"""Bad input gets a clear error naming the file; nothing prepared is lost or half-written."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data_factory import nnunet_dataset, png_pairs, volume_and_mask, write_nifti
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.readers import DataError


def _small_nnunet(tmp_path: Path, n: int = 4) -> Path:
    root = tmp_path / "ds"
    nnunet_dataset(root, n_cases=n)
    return root


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path)
    bad = root / "imagesTr" / "case_001_0000.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(DataError, match=r"case_001_0000\.nii\.gz: the file is truncated or corrupt"):
        prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1"))
    assert not (tmp_path / "p").exists()


def test_shape_and_geometry_mismatch(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path)
    _, mask, _ = volume_and_mask(0)
    write_nifti(root / "labelsTr" / "case_000.nii.gz", mask[:, :, :-1])
    with pytest.raises(DataError, match=r"case_000\.nii\.gz: mask shape \(8, 12, 9\) differs from image"):
        prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1"))
    write_nifti(root / "labelsTr" / "case_000.nii.gz", mask, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"case_000\.nii\.gz: mask geometry differs .* spacing \(1\.0, 1\.0, 1\.0\)"):
        prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1"))


def test_non_integer_and_unmapped_mask_values(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path)
    _, mask, _ = volume_and_mask(2)
    write_nifti(root / "labelsTr" / "case_002.nii.gz", mask.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match=r"case_002\.nii\.gz: a mask must hold integer labels, found values such as 0\.5"):
        prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1"))
    write_nifti(root / "labelsTr" / "case_002.nii.gz", mask)
    with pytest.raises(DataError, match=r"mask values \[2\] are not in the label map"):
        prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1", label_map={1: 1}))
    m = prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1", label_map={1: 1, 2: 1})).manifest
    assert m["labels"] == {"0": "background", "1": "gland+lesion"}


def test_empty_after_filtering_and_too_few_patients(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path)
    for i in range(4):
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", np.zeros((8, 12, 10), np.uint8))
    with pytest.raises(DataError, match="the train set has no slices after filtering"):
        prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1"))
    png = tmp_path / "png"
    png_pairs(png, patients=4)
    from PIL import Image

    for f in (png / "masks").iterdir():
        Image.fromarray(np.zeros((40, 30), np.uint8)).save(f)
    with pytest.raises(DataError, match="every mask is empty"):
        prepare(png, tmp_path / "p", PrepareOptions(split="2:1:1"))
    root2 = tmp_path / "two"
    nnunet_dataset(root2, n_cases=2)
    with pytest.raises(DataError, match="2 patients cannot fill a val set at split 70%/10%/20%"):
        prepare(root2, tmp_path / "p")


def test_val_set_without_foreground_is_an_error(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path, n=3)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000"], "val": ["case_001"]}]))
    write_nifti(root / "labelsTr" / "case_001.nii.gz", np.zeros((8, 12, 10), np.uint8))
    with pytest.raises(DataError, match="the val set has no slices after filtering .*--keep-empty"):
        prepare(root, tmp_path / "p")


def test_existing_output_is_reused_refused_or_replaced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    png_pairs(src, patients=5)
    out = tmp_path / "p"
    first = prepare(src, out)
    assert not first.reused
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = prepare(src, out)
    assert again.reused and (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="already holds a dataset prepared from other inputs or options"):
        prepare(src, out, PrepareOptions(seed=1))
    replaced = prepare(src, out, PrepareOptions(seed=1), force=True)
    assert not replaced.reused and replaced.manifest["seed"] == 1
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="exists and is not a prepared dataset"):
        prepare(src, other, force=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_interrupted_prepare_leaves_the_old_result_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    png_pairs(src, patients=5)
    out = tmp_path / "p"
    prepare(src, out)
    before = (out / "manifest.json").read_text()
    import tunesam.data.prepare as prep

    calls = {"n": 0}
    real = prep.SliceWriter.add

    def failing_add(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(prep.SliceWriter, "add", failing_add)
    with pytest.raises(OSError, match="the disk is full: the prepared dataset .*p could not be written"):
        prepare(src, out, PrepareOptions(seed=2), force=True)
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".p.lock"]  # no temporary left


def test_stale_temporary_folder_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    png_pairs(src, patients=5)
    stale = tmp_path / ".p.tmp-999999999"
    stale.mkdir()
    (stale / "images.u8").write_bytes(b"partial")
    prepare(src, tmp_path / "p")
    assert not stale.exists()
    assert os.path.exists(tmp_path / "p" / "manifest.json")
    stale.mkdir()  # killed during a --force run; the next command reuses the result
    assert prepare(src, tmp_path / "p").reused
    assert not stale.exists()


def test_unknown_layout_and_missing_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unrecognised layout"):
        prepare(tmp_path / "empty", tmp_path / "p")
    with pytest.raises(DataError, match="not found"):
        prepare(tmp_path / "nothing", tmp_path / "p")


def test_csv_missing_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.csv").write_text("a.png,b.png\n")
    with pytest.raises(DataError, match=r"train\.csv:1: 'a\.png' not found"):
        prepare(tmp_path / "lists", tmp_path / "p")


def test_a_split_without_a_val_set_says_so(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path)
    with pytest.raises(DataError, match=r"the val set has no cases: the split \(10:0:0\) gives it none"):
        prepare(root, tmp_path / "p", PrepareOptions(split="10:0:0"))


def test_case_pattern_on_an_nnunet_source_is_said_to_be_unused(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path)
    result = prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1", case_pattern=r"case_(\d)"))
    assert any("--case-pattern is not used for nnunet sources" in w for w in result.manifest["warnings"])


def test_too_few_patients_names_the_images_skipped_for_lacking_masks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    png_pairs(src, patients=5)
    for mask in sorted((src / "masks").iterdir())[2:]:  # most images lose their masks
        mask.unlink()
    with pytest.raises(DataError, match=r"cannot fill a .* set.*Note: \d+ images have no mask and are skipped"):
        prepare(src, tmp_path / "p")


def test_an_nnunet_training_image_without_its_label_is_named(tmp_path: Path) -> None:
    """It was dropped silently (3 train cases instead of 4)."""
    root = _small_nnunet(tmp_path, n=4)
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(DataError, match=r"1 training image\(s\) without a label in labelsTr/ "
                                        r"\(imagesTr/case_002_0000.nii.gz\).*--unlabelled"):
        prepare(root, tmp_path / "p", PrepareOptions(split="2:1:1"))


@pytest.mark.parametrize("content, message", [
    ("{\"train\": []}", "found a dict"),
    ("[]", "found an empty list"),
    ("[{\"train\": \"case_000\", \"val\": [\"case_001\"]}]", "expected a list of folds"),
    ("[{\"train\": [\"case_000\"], \"val\": [\"case_001\"]", "not valid JSON"),
    ("[{\"train\": [\"case_000\", \"case_404\"], \"val\": [\"case_001\"]}]", r"names cases this dataset does not have: \['case_404'\]"),
])
def test_a_broken_splits_final_is_named(tmp_path: Path, content: str, message: str) -> None:
    root = _small_nnunet(tmp_path, n=3)
    (root / "splits_final.json").write_text(content)
    with pytest.raises(DataError, match=f"splits_final.json: .*{message}"):
        prepare(root, tmp_path / "p")


def test_a_case_in_both_train_and_val_of_splits_final_is_warned_about(tmp_path: Path) -> None:
    root = _small_nnunet(tmp_path, n=4)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001"],
                                                          "val": ["case_001", "case_002"]}]))
    result = prepare(root, tmp_path / "p")
    assert any("case_001 in both train and val of fold 0; kept in val" in w for w in result.manifest["warnings"])
    assert result.manifest["split"]["val"] == ["case_001", "case_002"]


def test_force_through_a_link_replaces_the_dataset_it_points_to(tmp_path: Path) -> None:
    """`prepare --force --out LINK` replaced the link with a local folder."""
    src = tmp_path / "src"
    png_pairs(src, patients=5)
    real = tmp_path / "store" / "p"
    prepare(src, real)
    link = tmp_path / "p"
    link.symlink_to(real)
    replaced = prepare(src, link, PrepareOptions(seed=1), force=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / "manifest.json").read_text())["seed"] == 1 and replaced.manifest["seed"] == 1
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="is a link to .*nowhere, which does not exist"):
        prepare(src, dangling)


@pytest.mark.parametrize("name, cut, message", [
    ("manifest.json", 100, r"manifest.json: damaged, not valid JSON"),
    ("index.npy", 150, r"index.npy: damaged, not a readable index"),
    ("images.u8", 500, r"images.u8: damaged: it holds 500 bytes, the index places \d+ slices in [\d,]+"),
    ("masks.u8", 0, r"masks.u8: damaged: it holds 0 bytes"),
])
def test_a_damaged_prepared_dataset_is_named_when_opened(tmp_path: Path, name: str, cut: int, message: str) -> None:
    """A bare JSON or numpy message, and a truncated images.u8 let training start."""
    from tunesam.data.store import PreparedData

    src = tmp_path / "src"
    png_pairs(src, patients=5)
    out = prepare(src, tmp_path / "p").folder
    file = out / name
    file.write_bytes(file.read_bytes()[:cut])
    with pytest.raises(DataError, match=message + r".*prepare the dataset again"):
        PreparedData.open(out)


def test_a_moved_prepared_dataset_is_said_to_be_missing(tmp_path: Path) -> None:
    from tunesam.data.store import PreparedData

    with pytest.raises(DataError, match="gone: no such folder"):
        PreparedData.open(tmp_path / "gone")
