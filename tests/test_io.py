"""Atomic writes: complete or absent, with the permissions a plain write would give."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tunesam.io import atomic_write, write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == mode


def test_weights_files_honour_the_umask_too(tmp_path: Path) -> None:
    """safetensors writes its file anew (0600); run weights and exports still get 0666 less the umask."""
    import torch

    from tunesam.models.registry import build_sam
    from tunesam.peft.export import export_checkpoint
    from tunesam.peft.saving import save_tensors

    old = os.umask(0o022)
    try:
        model = build_sam("vit_test", image_size=32)
        save_tensors(model, tmp_path / "w.safetensors", whole=True)
        export_checkpoint(model, tmp_path / "e.safetensors")
        atomic_write(tmp_path / "t.pt", lambda tmp: torch.save({"a": torch.zeros(1)}, tmp))
    finally:
        os.umask(old)
    for name in ("w.safetensors", "e.safetensors", "t.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "x.txt", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 256 KiB tmpfs: a real full disk (needs the right to mount; skipped without it)."""
    import shutil
    import subprocess

    where = tmp_path / "full"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_named_as_such(full_disk: Path, prepared: Path) -> None:
    """train, pretrain and export said "[enforce fail at inline_container.cc:672] unexpected pos"."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--arch", "vit_test", "--image-size", "32", "--epochs", "1", "--device", "cpu", "--num-workers", "0"]
    for verb in (["train", "--tune", "decoder", "--method", "lora", "--warmup", "1"], ["pretrain", "prompt"]):
        out = full_disk / verb[0]
        res = subprocess.run([sys.executable, "-m", "tunesam", *verb, "--data", str(prepared), "--out", str(out),
                              *common], env=env, capture_output=True, text=True)
        assert res.returncode == 2, res.stderr
        assert "the disk is full" in res.stderr and str(out) in res.stderr, res.stderr
        assert "inline_container" not in res.stderr
    run = full_disk.parent / "run"  # a run on a disk with room, exported onto the full one
    subprocess.run([sys.executable, "-m", "tunesam", "train", "--tune", "decoder", "--method", "vanilla", "--data",
                    str(prepared), "--out", str(run), *common], env=env, check=True, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "tunesam", "export", str(run), "--out", str(full_disk / "m.pth")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "the disk is full" in res.stderr and str(full_disk) in res.stderr, res.stderr
    assert not list(full_disk.glob("*m.pth*"))  # nothing half-written left


def test_predict_and_prepare_on_a_full_disk(full_disk: Path, prepared: Path, tmp_path: Path) -> None:
    """predict reported success and left an empty mask (ITK does not fail its write);
    prepare named no folder and left its temporary folder."""
    import subprocess
    import sys

    from data_factory import nnunet_dataset

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nnunet_dataset(tmp_path / "ds", n_cases=6)
    tunesam = [sys.executable, "-m", "tunesam"]
    run = tmp_path / "run"
    subprocess.run([*tunesam, "prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "prep"), "--split", "4:1:1"],
                   env=env, check=True, capture_output=True)
    subprocess.run([*tunesam, "train", "--data", str(tmp_path / "prep"), "--out", str(run), "--arch", "vit_test",
                    "--tune", "decoder", "--method", "vanilla", "--image-size", "32", "--epochs", "1", "--device",
                    "cpu", "--num-workers", "0"], env=env, check=True, capture_output=True)
    fd = os.open(full_disk / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk to its last byte
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    res = subprocess.run([*tunesam, "predict", str(run), str(tmp_path / "ds" / "imagesTr" / "case_000_0000.nii.gz"),
                          "--out", str(full_disk / "pred")], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "the disk is full" in res.stderr, res.stderr
    assert not list((full_disk / "pred").glob("*.nii.gz")) if (full_disk / "pred").exists() else True
    res = subprocess.run([*tunesam, "prepare", str(tmp_path / "ds"), "--out", str(full_disk / "prep"), "--split",
                          "4:1:1"], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "the disk is full" in res.stderr and str(full_disk) in res.stderr, res.stderr
    assert not list(full_disk.glob(".prep.tmp-*"))
