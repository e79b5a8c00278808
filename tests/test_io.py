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
