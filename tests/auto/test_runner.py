"""``tunesam auto`` end to end with tiny models (issue 20): the report's contract, the test
split read only after the winner is fixed, the baseline and its paired comparison, a budget
too small said before anything trains, and a SIGKILL resumed from the command line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

import tunesam  # noqa: E402
from tunesam.auto import runner  # noqa: E402
from tunesam.data.store import PreparedData  # noqa: E402

TINY = {"image_size": 32, "batch_size": 4, "num_workers": 0, "lr": 2e-3, "warmup": 2}


def _auto(prepared: Path, out: Path, **kw):  # noqa: ANN003, ANN202
    args = {"budget": "10m", "device": "cpu", "weights": ["random:vit_test"], "options": TINY, "max_epochs": 4,
            "say": lambda s: None, **kw}
    return tunesam.auto(str(prepared), out, **args)


def test_auto_writes_the_winner_and_the_report_and_reads_test_slices_only_after_the_winner(
        prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    test_rows = set(PreparedData.open(prepared).rows("test", include_empty=True).tolist())
    read: list[tuple[int, bool]] = []  # (row, winner fixed yet)
    fixed = {"yet": False}
    original_slice, original_fix = PreparedData.slice, runner._fix_winner

    def spy_slice(self: PreparedData, i: int):  # noqa: ANN202
        read.append((int(i), fixed["yet"]))
        return original_slice(self, i)

    def spy_fix(*a, **k):  # noqa: ANN002, ANN003, ANN202
        fixed["yet"] = True
        return original_fix(*a, **k)

    monkeypatch.setattr(PreparedData, "slice", spy_slice)
    monkeypatch.setattr(runner, "_fix_winner", spy_fix)
    out = tmp_path / "auto"
    t0 = time.monotonic()
    winner = _auto(prepared, out, baselines=["unet_test"])
    wall = time.monotonic() - t0

    before = [r for r, yet in read if not yet]
    after = [r for r, yet in read if yet]
    assert before and not set(before) & test_rows  # training and validation read slices, never a test one
    assert set(after) & test_rows  # the winner (and the baseline) scored on the test split, after

    assert winner == out / "winner" and (winner / "weights").is_dir() and (winner / "metrics.json").is_file()
    report = json.loads((out / "report" / "auto.json").read_text())
    for key in ("scenario", "fingerprint", "trials", "winner", "test", "seconds"):
        assert key in report
    assert report["scenario"]["name"] == "few-shot"  # 18 labelled training slices
    assert [t["strategy"] for t in report["trials"]][0].endswith("En/Decoder + Adapter")  # the prior first
    assert len(report["trials"]) == 4
    for t in report["trials"]:
        assert t["state"] in ("complete", "pruned", "budget") and t["reason"]
        assert t["val_dsc_per_rung"] and t["budget_spent_s"] > 0  # its epochs, from its log.csv
        assert t["pruned"] == (t["state"] == "pruned")
    assert any(t["state"] == "pruned" for t in report["trials"])  # four candidates, halving: not all go on
    win = next(t for t in report["trials"] if t["candidate"] == report["winner"]["candidate"])
    assert win["state"] == "complete" and win["epochs_run"] == report["plan"]["epochs"]
    assert json.loads((winner / "trial.json").read_text())["trial"] == win["candidate"]
    assert report["test"]["split"] == "test" and 0 <= report["test"]["mean"]["dsc"] <= 100
    assert report["seconds"] <= wall + 1.0  # the clock counts this session's wall time, nothing more
    assert report["seconds"] <= report["budget_s"] * 1.1

    (base,) = report["baselines"]
    assert base["name"] == "unet_test" and base["epochs"] >= 1 and base["share_s"] > 0
    cmp = base["comparison"]
    data = PreparedData.open(prepared)
    cases = data.manifest["cases"]
    patients = {cases[int(data.index["case"][r])].get("patient", cases[int(data.index["case"][r])]["id"])
                for r in test_rows}
    assert cmp["unit"] == "case" and cmp["n_cases"] == len(patients)  # the patient, where the data records one
    assert base["verdict"] in ("better", "worse", "tie", "inconclusive")
    assert (out / "report" / "curves.png").stat().st_size > 10_000
    page = (out / "report" / "report.md").read_text()
    assert "## Trials" in page and "pruned at epoch" in page and "per case" in page

    # a finished run is not redone (nothing trained, the test split not scored again), and
    # another run in the same folder is refused
    marks = {p: p.stat().st_mtime_ns for p in [winner / "metrics.json", *out.glob("trials/*/log.csv"),
                                               *out.glob("baselines/*/log.csv")]}
    again = _auto(prepared, out, baselines=["unet_test"], resume=True)
    assert again == winner
    assert {p: p.stat().st_mtime_ns for p in marks} == marks
    assert json.loads((out / "report" / "auto.json").read_text())["winner"] == report["winner"]
    with pytest.raises(ValueError, match="--resume"):
        _auto(prepared, out, baselines=["unet_test"])
    with pytest.raises(ValueError, match="other settings"):
        _auto(prepared, out, resume=True)  # no baselines now


def test_a_budget_too_small_is_said_before_anything_trains(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto"
    with pytest.raises(ValueError, match=r"cannot fit one short run of the paper's strategy.*at least --budget \d+m"):
        _auto(prepared, out, budget="3s")
    assert not out.exists()  # refused while planning: no folder, no clock charged to a later run


@pytest.mark.parametrize(("kw", "match"), [
    ({"baselines": ["nnunet"]}, "plans its own network"),
    ({"baselines": ["no_such_net"]}, "not a baseline"),
    ({"weights": ["random:no_such_arch"]}, "unknown architecture"),
    ({"weights": ["random:unet_test"]}, "is a baseline"),
    ({"weights": ["/no/such/weights.pth"]}, "no such file"),
    ({"mode": "boxes"}, "--mode must be"),
])
def test_a_bad_request_is_refused_before_anything_is_written(prepared: Path, tmp_path: Path, kw: dict,
                                                             match: str) -> None:
    out = tmp_path / "auto"
    with pytest.raises(ValueError, match=match):
        _auto(prepared, out, **kw)
    assert not out.exists()


def _wait_for(predicate, timeout: float) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_sigkilled_auto_resumes_from_the_command_line(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto"
    cmd = [sys.executable, "-m", "tunesam", "auto", str(prepared), "--out", str(out), "--budget", "10m",
           "--device", "cpu", "--weights", "random:vit_test", "--image-size", "32", "--max-epochs", "4"]
    env = {**os.environ, "TUNESAM_CPU_BF16": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trials = out / "trials"

    def some_epochs() -> bool:
        logs = list(trials.glob("*/log.csv"))
        return len(logs) >= 2 and proc.poll() is None

    try:
        assert _wait_for(some_epochs, 240), "no trial trained an epoch"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "report" / "auto.json").exists()
    epochs_before = {p.parent.name: len(p.read_text().splitlines()) - 1 for p in trials.glob("*/log.csv")}
    spent_before = json.loads((out / "clock.json").read_text())["seconds"]

    t0 = time.monotonic()
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Resuming" in done.stdout
    report = json.loads((out / "report" / "auto.json").read_text())
    # only new time is added: what the first session had written (every 5 s) and the second's own
    assert report["sessions"] == 2 and spent_before <= report["seconds"] <= spent_before + wall + 1.0
    for key, n in epochs_before.items():  # the epochs trained before the kill were kept, not trained again
        rows = np.genfromtxt(trials / key / "log.csv", delimiter=",", names=True)
        epochs = np.atleast_1d(rows["epoch"]).astype(int).tolist()
        assert epochs[:n] == list(range(1, n + 1)) and len(epochs) == len(set(epochs))
    assert (out / "winner" / "metrics.json").is_file()
