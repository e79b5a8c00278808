"""A damaged run folder or a wrong input gets a message naming the file, never a traceback;
a moved or copied run still resumes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tunesam.cli import main
from tunesam.config import TrainConfig
from tunesam.kinds import train


class Payload:
    """Stands for any pickled object (code runs when such a file is unpickled)."""

    def __init__(self, x: int) -> None:
        self.x = x


@pytest.fixture(scope="module")
def run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    return train(TrainConfig(data=str(prepared), out=str(out), arch="vit_test", tune="decoder", method="lora",
                             image_size=32, epochs=1, batch_size=8, device="cpu", num_workers=0, constant_lr=True))


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _train_argv(prepared: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(prepared), "--out", str(out), "--arch", "vit_test", "--tune", "decoder",
            "--method", "lora", "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--num-workers", "0",
            "--constant-lr", *extra]


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "weights" / "best.safetensors").write_bytes(b"\0" * 10),
     "best.safetensors: cannot be read as trained weights"),
    (lambda r: (r / "preprocessing.json").write_text("{bad"), "preprocessing.json: not valid JSON"),
    (lambda r: (r / "config.yaml").write_text("a: [b"), "config.yaml: not a valid training configuration"),
])
def test_damaged_run_files_are_named_at_evaluate(run: Path, tmp_path: Path, damage, message: str,  # type: ignore[no-untyped-def]
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(run, tmp_path)
    damage(copy)
    assert main(["evaluate", str(copy), "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_damaged_resume_states_are_named(run: Path, prepared: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(run, tmp_path)
    last = copy / "last.pt"
    for content, message in ((last.read_bytes()[:1000], "last.pt: cannot be read as a resume state"),
                             (None, "last.pt: holds objects other than tensors and plain values, and was refused")):
        if content is None:
            torch.save({"version": 2, "hook": Payload(1)}, last)
        else:
            last.write_bytes(content)
        assert main(_train_argv(prepared, copy, "--epochs", "2", "--resume")) == 2
        assert message in capsys.readouterr().err


def test_a_copied_run_resumes_where_it_stopped(run: Path, prepared: Path, tmp_path: Path) -> None:
    copy = _copy(run, tmp_path)
    assert main(_train_argv(prepared, copy, "--epochs", "2", "--resume")) == 0
    assert len((copy / "log.csv").read_text().splitlines()) == 3  # header, epoch 1 (copied), epoch 2


def test_wrong_inputs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    assert main(["info", "--arch", "vit_test", "--tune", "decoder", "--method", "lora",
                 "--checkpoint", str(tmp_path / "notes.pth")]) == 2
    assert "notes.pth" in capsys.readouterr().err
    (tmp_path / "x.nii.gz").write_bytes(b"")
    assert main(["prepare", str(tmp_path / "x.nii.gz"), "--layout", "nnunet", "--out", str(tmp_path / "p")]) == 2
    assert "x.nii.gz: --layout nnunet expects a dataset folder, found a file" in capsys.readouterr().err


def test_a_diverged_run_stops_and_saves_nothing_of_it(prepared: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--lr 1e12: the loss turns NaN; the run stops with a message (exit 2) and never saves
    non-finite weights, as best or otherwise."""
    out = tmp_path / "diverged"
    assert main(["train", "--data", str(prepared), "--out", str(out), "--arch", "vit_test", "--tune",
                 "encoder-decoder", "--method", "vanilla", "--image-size", "32", "--epochs", "3", "--lr", "1e12",
                 "--warmup", "0", "--constant-lr", "--device", "cpu", "--num-workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "training diverged in epoch 1" in err and "lower learning rate" in err
    assert not (out / "weights" / "best.safetensors").exists() and not (out / "last.pt").exists()


def test_evaluate_says_when_weights_are_not_finite(run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tunesam.data.readers import DataError
    from tunesam.eval.evaluate import evaluate_run

    broken = _copy(run, tmp_path)
    path = broken / "weights" / "best.safetensors"
    tensors = load_file(str(path))
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(path), metadata={"format": "tunesam-trained"})
    with pytest.raises(DataError, match="NaN or infinite values"):
        evaluate_run(broken, device="cpu")


def test_evaluate_of_a_run_whose_data_moved_asks_for_data(run: Path, tmp_path: Path, prepared: Path) -> None:
    """It said "run 'tunesam prepare' first" of a folder that was prepared, then moved."""
    import yaml

    from tunesam.data.readers import DataError
    from tunesam.eval.evaluate import evaluate_run

    moved = _copy(run, tmp_path)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["data"] = str(tmp_path / "moved_away")
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DataError, match=r"moved_away, is not there \(moved or deleted\?\); pass its folder with --data"):
        evaluate_run(moved, device="cpu")
    assert evaluate_run(moved, data=prepared, device="cpu")["mean"]["dsc"] >= 0


def test_evaluate_in_another_mode_gives_advice_that_works(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An automated run asked for box: the advice is the base weights in box mode; a prompted
    run asked for auto was told to use --checkpoint --mode auto, which evaluate refuses."""
    assert main(["evaluate", str(run), "--mode", "box", "--device", "cpu"]) == 2
    assert "--checkpoint ... --mode box" in capsys.readouterr().err
    from tunesam.eval.evaluate import evaluate_run

    with pytest.raises(ValueError, match="an automated model is a run trained with --mode auto") as err:
        evaluate_run(_box_run(run), mode="auto", device="cpu")
    assert "--checkpoint" not in str(err.value)


def _box_run(run: Path) -> Path:
    """The module's run, relabelled as a box run (only its config is read before the refusal)."""
    import yaml

    box = Path(shutil.copytree(run, run.parent / "box")) if not (run.parent / "box").exists() else run.parent / "box"
    config = yaml.safe_load((box / "config.yaml").read_text())
    config["mode"] = "box"
    (box / "config.yaml").write_text(yaml.safe_dump(config))
    return box


def test_a_read_only_run_is_evaluated_into_out(run: Path, tmp_path: Path) -> None:
    """It computed everything, then failed writing RUN/metrics.json before writing --out."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(run.parent), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot make a read-only bind mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only")
        from tunesam.eval.evaluate import evaluate_run

        with pytest.raises(OSError, match="the run folder is read-only.*give --out FILE"):
            evaluate_run(ro / run.name, device="cpu")
        out = tmp_path / "metrics.json"
        metrics = evaluate_run(ro / run.name, device="cpu", out=out)
        assert out.is_file() and metrics["mean"]["dsc"] >= 0
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_run_files_and_folders_as_checkpoint(run: Path, prepared: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A run's weights or last.pt as --checkpoint got a bare layout error; a folder "not found"
    and the download URLs."""
    for given in (run / "weights" / "best.safetensors", run / "last.pt", run):
        code = main(_train_argv(prepared, tmp_path / f"x{given.name}", "--checkpoint", str(given), "--epochs", "1"))
        err = capsys.readouterr().err
        assert code == 2 and f"tunesam export {run} --out model.pth" in err, err
    (tmp_path / "empty").mkdir()
    assert main(_train_argv(prepared, tmp_path / "y", "--checkpoint", str(tmp_path / "empty"))) == 2
    assert "a folder; --checkpoint takes a checkpoint file" in capsys.readouterr().err


def test_a_pretrain_run_folder_is_its_checkpoint(prepared: Path, tmp_path: Path) -> None:
    from tunesam.models.known import resolve_checkpoint

    folder = tmp_path / "pt"
    folder.mkdir()
    (folder / "config.yaml").write_text("objective: prompt\n")
    with pytest.raises(ValueError, match="pre-training run without checkpoint.pth yet"):
        resolve_checkpoint(folder)
    (folder / "checkpoint.pth").write_bytes(b"")
    assert resolve_checkpoint(folder) == folder / "checkpoint.pth"
