"""predict: masks in the input's exact geometry and format; evaluate end to end; bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from data_factory import learnable_pngs, nnunet_dataset, write_dicom_series, write_nifti
from tunesam.cli import main
from tunesam.data.prepare import PrepareOptions, prepare
from tunesam.data.readers import DataError
from tunesam.config import TrainConfig
from tunesam.kinds import train
from tunesam.eval.evaluate import evaluate_run
from tunesam.inference.predictor import predict


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vol")
    nnunet_dataset(root / "src", n_cases=6)
    prepare(root / "src", root / "prep", PrepareOptions(split="4:1:1"))
    cfg = TrainConfig(data=str(root / "prep"), out=str(root / "run"), arch="vit_test", tune="decoder",
                      method="lora", image_size=64, epochs=1, batch_size=4, warmup=1, device="cpu", num_workers=0)
    return train(cfg)


def test_nifti_geometry_round_trips_exactly(volume_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 1, (7, 20, 18)).astype(np.float32)
    direction = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # axes swapped and flipped
    write_nifti(tmp_path / "scan.nii.gz", vol, spacing=(0.37, 1.91, 4.2), origin=(-33.5, 12.25, 7.0),
                direction=direction)
    (out,) = predict(volume_run, [tmp_path / "scan.nii.gz"], tmp_path / "pred", save_probabilities=True,
                     overlay=True)
    src = sitk.ReadImage(str(tmp_path / "scan.nii.gz"))
    got = sitk.ReadImage(str(out))
    assert out.name == "scan.nii.gz"
    assert got.GetSize() == src.GetSize()
    assert got.GetSpacing() == src.GetSpacing() and got.GetOrigin() == src.GetOrigin()
    assert got.GetDirection() == src.GetDirection()
    labels = sitk.GetArrayFromImage(got)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    probs = np.load(tmp_path / "pred" / "scan.probabilities.npz")["probabilities"]
    assert probs.shape == (3, 7, 20, 18)
    assert np.array_equal(probs.argmax(0), labels) or (probs.argmax(0) != labels).mean() < 0.01  # fp16 ties
    assert (tmp_path / "pred" / "scan.overlay.png").is_file()
    with pytest.raises(DataError, match="masks exist: .*scan.nii.gz; use --overwrite"):
        predict(volume_run, [tmp_path / "scan.nii.gz"], tmp_path / "pred")


def test_mha_and_nrrd_keep_their_format(volume_run: Path, tmp_path: Path) -> None:
    for ext in (".mha", ".nrrd"):
        img = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(4, 10, 12)).astype(np.float32))
        img.SetSpacing((0.5, 0.6, 2.0))
        img.SetOrigin((1.0, 2.0, 3.0))
        sitk.WriteImage(img, str(tmp_path / f"v{ext}"))
        (out,) = predict(volume_run, [tmp_path / f"v{ext}"], tmp_path / "o")
        assert out.suffix == ext
        got = sitk.ReadImage(str(out))
        assert got.GetSize() == img.GetSize() and got.GetSpacing() == img.GetSpacing()
        assert got.GetOrigin() == img.GetOrigin()


def test_dicom_series_gives_nifti_with_its_geometry(volume_run: Path, tmp_path: Path) -> None:
    vol = (np.random.default_rng(2).normal(size=(5, 16, 14)) * 100).astype(np.int16)
    write_dicom_series(tmp_path / "series", vol, "1.2.826.0.1.3680043.2.1125.7")
    (out,) = predict(volume_run, [tmp_path / "series"], tmp_path / "o")
    assert out.name == "series.nii.gz"
    src_reader = sitk.ImageSeriesReader()
    src_reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    src = src_reader.Execute()
    got = sitk.ReadImage(str(out))
    assert got.GetSize() == src.GetSize()
    assert np.allclose(got.GetSpacing(), src.GetSpacing()) and np.allclose(got.GetOrigin(), src.GetOrigin())
    assert np.allclose(got.GetDirection(), src.GetDirection())
    single = next((tmp_path / "series").iterdir()).rename(tmp_path / "IM0003.dcm")
    with pytest.raises(DataError, match="IM0003.dcm: a single DICOM file; give the folder holding the whole series"):
        predict(volume_run, [single], tmp_path / "o2")  # it said only "unknown file type"


def test_png_in_png_out_and_what_predict_does_with_other_shapes(volume_run: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (30, 40), dtype=np.uint8)).save(tmp_path / "a.jpg")
    with caplog.at_level("WARNING", logger="tunesam.predict"):
        (out,) = predict(volume_run, [tmp_path / "a.jpg"], tmp_path / "o")
    assert out.name == "a.png" and np.asarray(Image.open(out)).shape == (30, 40)
    assert "a.jpg: a 2D image given to a run trained on volumes" in caplog.text
    caplog.clear()
    frames = [sitk.GetImageFromArray(np.full((3, 4, 5), v, np.float32)) for v in (0.0, 1.0)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "4d.nii.gz"))
    with caplog.at_level("WARNING", logger="tunesam.predict"):
        (mask,) = predict(volume_run, [tmp_path / "4d.nii.gz"], tmp_path / "o")
    assert "4d.nii.gz: has 2 channels (frames or modalities); segmenting channel 0" in caplog.text
    assert sitk.ReadImage(str(mask)).GetSize() == (5, 4, 3)  # one 3D mask, the frames' geometry
    with pytest.raises(DataError, match="not a training run"):
        predict(tmp_path, [tmp_path / "a.jpg"], tmp_path / "o2")


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    """DSC of two boolean masks; nan (not scored) when both are empty."""
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum()) if a.any() or b.any() else math.nan


def test_evaluate_run_writes_metrics_with_3d_scores(volume_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tunesam.data.store import PreparedData

    assert main(["evaluate", str(volume_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "mean (3D cases)" in out
    m = json.loads((volume_run / "metrics.json").read_text())
    assert m["split"] == "test" and m["nsd_unit"] == "mm" and m["nsd_tolerance"] == 2.0
    assert set(m["classes"]) == {"1", "2"} and m["classes"]["1"]["name"] == "gland"
    assert len(m["per_case"]) == 1 and "mean_3d" in m
    # The scores are what predict's own mask of the test volume gives, worked out by hand against
    # its reference labels: per axial slice with foreground, per class (absent from both: not
    # scored), the class means, and each class's DSC over the whole volume.
    (case,) = [c for c in PreparedData.open(m["data"]).manifest["cases"] if c["split"] == "test"]
    (written,) = predict(volume_run, [case["image"]], tmp_path / "pred", device="cpu")
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(case["mask"]))
    slices = [z for z in range(len(ref)) if ref[z].any()]
    assert [r["slice"] for r in m["per_image"]] == slices and len(slices) == 3
    for c in (1, 2):
        by_hand = [_dsc(pred[z] == c, ref[z] == c) for z in slices]
        for row, want in zip(m["per_image"], by_hand):
            got = row["scores"][str(c)]["dsc"]
            assert (math.isnan(want) and (got is None or math.isnan(got))) or got == pytest.approx(want, abs=1e-12)
        scored = [v for v in by_hand if not math.isnan(v)]
        assert m["classes"][str(c)]["dsc"] == pytest.approx(100 * float(np.mean(scored)), abs=1e-4)  # 4 decimals
        assert m["per_case"][0]["scores"][str(c)]["dsc"] == pytest.approx(_dsc(pred == c, ref == c), abs=1e-12)
    # one test volume: its pixels pooled over its slices are its 3D DSC
    for c, v in m["per_case"][0]["scores"].items():
        if not math.isnan(v["dsc"]):
            assert m["pooled"]["classes"][c]["dsc"] == pytest.approx(100 * v["dsc"], abs=1e-3)
    assert "(pooled)" in out


def test_evaluate_refuses_data_with_other_labels(volume_run: Path, tmp_path: Path) -> None:
    learnable_pngs(tmp_path / "src", patients=5)
    prepare(tmp_path / "src", tmp_path / "other", PrepareOptions(split="3:1:1"))
    with pytest.raises(DataError, match="evaluate on data prepared with the same labels"):
        evaluate_run(volume_run, tmp_path / "other", device="cpu")


def test_unfine_tuned_checkpoint_with_box_prompts(tmp_path: Path) -> None:
    import torch

    from tunesam.models.registry import build_sam

    learnable_pngs(tmp_path / "src", patients=5)
    prepare(tmp_path / "src", tmp_path / "prep", PrepareOptions(split="3:1:1"))
    torch.save(build_sam("vit_t_test", image_size=64).state_dict(), tmp_path / "w.pth")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "w.pth"), "--arch", "vit_t_test", "--image-size",
                 "64", "--data", str(tmp_path / "prep"), "--mode", "box", "--device", "cpu",
                 "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m["multimask"]) == {"highest_iou", "oracle"}
    # the oracle picks, per object, the best of the three masks: never worse than the highest-IoU pick
    assert m["multimask"]["oracle"]["mean"]["dsc"] >= m["multimask"]["highest_iou"]["mean"]["dsc"] - 1e-6
    # pooled DSC is a size-weighted mean of the per-image DSCs: it lies between their extremes
    per_image = [r["scores"]["1"]["dsc"] for r in m["per_image"]]
    assert 100 * min(per_image) - 1e-6 <= m["pooled"]["classes"]["1"]["dsc"] <= 100 * max(per_image) + 1e-6


def test_prompted_run_predicts_from_a_prompt_file(tmp_path: Path) -> None:
    learnable_pngs(tmp_path / "src", patients=5)
    prepare(tmp_path / "src", tmp_path / "prep", PrepareOptions(split="3:1:1"))
    cfg = TrainConfig(data=str(tmp_path / "prep"), out=str(tmp_path / "run"), arch="vit_t_test", tune="decoder",
                      method="vanilla", mode="box", image_size=64, epochs=1, batch_size=4, warmup=1,
                      device="cpu", num_workers=0)
    run = train(cfg)
    image = tmp_path / "src" / "images" / "patient0_s0.png"
    (tmp_path / "prompts.json").write_text(json.dumps({"patient0_s0.png": [{"box": [5, 5, 30, 30], "label": 1}]}))
    (out,) = predict(run, [image], tmp_path / "o", prompts=tmp_path / "prompts.json")
    assert np.asarray(Image.open(out)).shape == (48, 48)
    # two prompts on one slice (encoded once) give the union of their masks alone
    masks = []
    for name, boxes in (("a", [[5, 5, 30, 30]]), ("b", [[20, 10, 44, 40]]), ("ab", [[5, 5, 30, 30], [20, 10, 44, 40]])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"patient0_s0.png": [{"box": b} for b in boxes]}))
        (m,) = predict(run, [image], tmp_path / f"o_{name}", prompts=tmp_path / f"{name}.json")
        masks.append(np.asarray(Image.open(m)) > 0)
    assert masks[0].any() and masks[1].any() and not np.array_equal(masks[0], masks[1])
    assert np.array_equal(masks[2], masks[0] | masks[1])
    with pytest.raises(DataError, match="none were given: use --prompts FILE"):
        predict(run, [image], tmp_path / "o2")

    # every output is planned before any is written
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "x.png").write_bytes(image.read_bytes())
    Image.open(image).convert("RGB").save(tmp_path / "a" / "y.jpg")
    (tmp_path / "a" / "y.png").write_bytes(image.read_bytes())
    table = {n: [{"box": [5, 5, 30, 30]}] for n in ("x.png", "y.png", "y.jpg")}
    (tmp_path / "p2.json").write_text(json.dumps(table))
    for inputs in ([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], [tmp_path / "a" / "y.png", tmp_path / "a" / "y.jpg"]):
        with pytest.raises(DataError, match="would write the same mask.*nothing was written"):
            predict(run, inputs, tmp_path / "o3", prompts=tmp_path / "p2.json", overwrite=True)
        assert not (tmp_path / "o3").exists()
    with pytest.raises(DataError, match="masks exist: .*patient0_s0.png; use --overwrite"):
        predict(run, [tmp_path / "a" / "x.png", image], tmp_path / "o", prompts=tmp_path / "prompts.json")
    assert not (tmp_path / "o" / "x.png").exists()
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="is a file; give a folder"):
        predict(run, [image], tmp_path / "afile", prompts=tmp_path / "prompts.json")

    # prompts are checked, each error names the input and the prompt
    for bad, message in (({"box": [5, 5, 300, 30]}, "must have x0 < x1, y0 < y1 and lie inside the 48 x 48 slice"),
                         ({"box": [30, 5, 5, 30]}, "must have x0 < x1"),
                         ({"box": [5, 5, 30]}, "a box is 4 numbers"),
                         ({"points": [[60, 2]]}, "every point must lie inside"),
                         ({"box": [5, 5, 30, 30], "label": 7}, r"label must be one of the run's classes \[1\]"),
                         ({"slice": 3, "box": [5, 5, 30, 30]}, "slice must be an integer in 0..0"),
                         ({"points": [[5, 5]], "point_label": [1]}, r"unknown keys \['point_label'\]"),
                         ({"box": [5, 5, 30, 30], "boxx": [1, 1, 9, 9]}, r"unknown keys \['boxx'\]"),  # was ignored
                         ({}, "neither 'box' nor 'points'")):
        (tmp_path / "bad.json").write_text(json.dumps({"patient0_s0.png": [bad]}))
        with pytest.raises(DataError, match=f"patient0_s0.png: prompt 0 .*{message}"):
            predict(run, [image], tmp_path / "o4", prompts=tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"other.png": [{"box": [5, 5, 30, 30]}]}))
    with pytest.raises(DataError, match="other.json has no entry for it"):
        predict(run, [image], tmp_path / "o4", prompts=tmp_path / "other.json")
    assert not (tmp_path / "o4").exists()
