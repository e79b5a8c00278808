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
