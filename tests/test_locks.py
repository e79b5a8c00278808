"""One process per output: a run, a prepared dataset and a study folder are owned by the
process writing them (an OS lock), a second is refused at once, and a dead owner blocks nobody."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunesam.io import lock_file, owned

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

HOLDER = """
import sys, time
from tunesam.io import owned
with owned(sys.argv[1], "run"):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold(folder: Path) -> subprocess.Popen:
    """Another process owning ``folder`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_process_is_refused_and_a_dead_owner_blocks_nobody(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    proc = _hold(folder)
    try:
        with pytest.raises(ValueError, match="another tunesam process is writing this run now"), owned(folder, "run"):
            pass
        folder.mkdir()
        link = tmp_path / "link"
        link.symlink_to(folder)  # the folder under another name is the same folder
        with pytest.raises(ValueError, match="another tunesam process"), owned(link, "run"):
            pass
    finally:
        _kill(proc)
    assert lock_file(folder).exists()  # left by the killed process, and no obstacle:
    with owned(folder, "run"):
        with pytest.raises(ValueError, match="another tunesam process"), owned(folder, "run"):
            pass  # owned in this process too: a second owner is refused
    with owned(tmp_path / "absent", "run"):
        pass
    assert not (tmp_path / "absent").exists()  # the lock lives beside the folder: an absent folder stays absent


def test_prepare_and_study_take_the_lock_before_any_check(tmp_path: Path, prepared: Path) -> None:
    from data_factory import png_pairs, tiny_study
    from tunesam.data.prepare import prepare
    from tunesam.study.runner import run_study

    png_pairs(tmp_path / "pngs")
    out = tmp_path / "prep"
    proc = _hold(out)
    try:
        with pytest.raises(ValueError, match="writing this prepared dataset now"):
            prepare(tmp_path / "pngs", out)
        assert not out.exists() and not list(tmp_path.glob(".prep.tmp-*"))
        config = tiny_study(tmp_path / "study.yaml", prepared)
        proc2 = _hold(tmp_path / "study")
        try:
            with pytest.raises(ValueError, match="writing this study now"):
                run_study(config, tmp_path / "study", say=lambda _: None)
        finally:
            _kill(proc2)
        assert not (tmp_path / "study").exists()
    finally:
        _kill(proc)
    assert prepare(tmp_path / "pngs", out).folder == out


def test_two_train_commands_into_one_out(prepared: Path, tmp_path: Path) -> None:
    """The campaign's case: the second `tunesam train` started while the first runs is refused
    (both reported success, and the folder held only the second)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tunesam", "train", "--data", str(prepared), "--out", str(out), "--arch", "vit_test",
           "--tune", "decoder", "--method", "vanilla", "--image-size", "32", "--epochs", "200", "--device", "cpu",
           "--num-workers", "0", "--patience", "0", "--quiet"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.yaml").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "another tunesam process is writing this run now" in second.stderr
        resume = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=120)
        assert resume.returncode == 2 and "another tunesam process" in resume.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        _kill(first)
