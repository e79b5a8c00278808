"""``predict`` on a source volume gives the voxels ``evaluate`` scores for that case: the same
intensity rule, the same storage downsample, the same slicing axis, written back into the
volume's own geometry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from data_factory import write_nifti
from helpers import evaluated_label_maps
from tunesam.config import TrainConfig
from tunesam.letterbox import letterbox_image, letterbox_shape, unletterbox
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.store import PreparedData
from tunesam.kinds import train
from tunesam.inference.predictor import Predictor, predict

SHAPE = (10, 40, 36)  # z, y, x: slices 40 x 36 along axis 0, 10 x 36 along 1, 10 x 40 along 2


def _nnunet_source(root: Path, n_cases: int = 5) -> None:
    """An nnU-Net raw folder of MR volumes with a bright box (label 1) holding a smaller one (2)."""
    for i in range(n_cases):
        rng = np.random.default_rng(i)
        image = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        mask[2 + i % 2 : 8, 8 : 30 - i, 6 : 26] = 1
        mask[4:6, 14:22, 10 + i : 20] = 2
        image[mask > 0] += 60
        write_nifti(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", mask)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "gland": 1, "lesion": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("consistency") / "src"
    _nnunet_source(root)
    return root


def _run(source: Path, tmp_path: Path, axis: int, size: int) -> tuple[Path, PreparedData]:
    prepared = prepare(source, tmp_path / "prep", PrepareOptions(split="3:1:1", axis=axis, size=size)).folder
    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch="vit_test", tune="decoder",
                      method="vanilla", image_size=32, epochs=1, batch_size=8, warmup=1, device="cpu",
                      num_workers=0, patience=0)
    return train(cfg), PreparedData.open(prepared)


def _test_case(data: PreparedData) -> tuple[dict, list[int]]:
    (i,) = [k for k, c in enumerate(data.manifest["cases"]) if c["split"] == "test"]
    rows = [int(r) for r in data.rows("test", include_empty=True) if int(data.index[r]["case"]) == i]
    return data.manifest["cases"][i], rows


@pytest.mark.parametrize("axis, size", [(0, 1024), (0, 16), (1, 1024), (2, 16)])
def test_predict_writes_the_voxels_evaluate_scores(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  axis: int, size: int) -> None:
    run, data = _run(source, tmp_path, axis, size)
    case, rows = _test_case(data)
    native = [s for a, s in enumerate(SHAPE) if a != axis]
    stored = [int(v) for v in case["stored_plane"]]
    assert case["axis"] == axis and case["native_plane"] == native and len(rows) == SHAPE[axis]
    assert (stored == native) == (size == 1024)  # size 16 downsamples these slices
    # prepare put the case's masks on the voxels they came from (all its slices, as a test case)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(case["mask"]))
    for r in rows:
        idx = int(data.index[r]["slice"])
        want = np.take(mask, idx, axis=axis)
        if stored != native:  # nearest, as the store records
            want = torch.nn.functional.interpolate(torch.from_numpy(want)[None, None].float(), size=stored,
                                                   mode="nearest-exact")[0, 0].numpy()
        assert np.array_equal(np.asarray(data.slice(r)[1]), want), idx

    evaluated = evaluated_label_maps(run, monkeypatch)
    (written,) = predict(run, [case["image"]], tmp_path / "pred", device="cpu")
    src, out = sitk.ReadImage(case["image"]), sitk.ReadImage(str(written))
    assert out.GetSize() == src.GetSize() and out.GetSpacing() == src.GetSpacing()
    assert out.GetOrigin() == src.GetOrigin() and out.GetDirection() == src.GetDirection()
    predicted = np.moveaxis(sitk.GetArrayFromImage(out), axis, 0)  # slices along the run's axis
    assert len(np.unique(np.stack([evaluated[r] for r in rows]))) > 1  # maps that can disagree
    if stored == native:
        for r in rows:
            assert np.array_equal(predicted[int(data.index[r]["slice"])], evaluated[r])
        return
    # Downsampled storage: evaluate scores the stored grid, predict writes the native one. Both
    # must be the logits of the stored slice's letterbox, cut to its extent and resized: to
    # the stored size (evaluate) and to the native size (predict).
    model = Predictor.from_run(run, "cpu").model
    with torch.no_grad():
        for r in rows:
            image = np.asarray(data.slice(r)[0])
            valid = letterbox_shape(*image.shape, model.image_size)
            logits = model(letterbox_image(image, model.image_size, model.interpolation)[None],
                           valid=torch.tensor([valid]))[0]
            assert np.array_equal(unletterbox(logits, valid, stored).argmax(0).numpy(), evaluated[r])
            assert np.array_equal(unletterbox(logits, valid, native).argmax(0).numpy(),
                                  predicted[int(data.index[r]["slice"])])
