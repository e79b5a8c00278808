"""The study: a tiny grid end to end to its report, a kill mid-grid and a resume that keeps
finished cells, a changed config, Ray on the CPU, and the paired comparison."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from data_factory import tiny_study
from tunesam.study.config import StudyError, parse_study
from tunesam.study.report import write_report
from tunesam.study.runner import run_study

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _config(tmp: Path, prepared: Path, methods: str = "[lora, adapter]", epochs: int = 2) -> Path:
    return tiny_study(tmp / "study.yaml", prepared, methods=methods, epochs=epochs)


def _cells_done(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "cells" / "disc").glob("*/metrics.json")}


def test_the_issue_config_expands_to_its_cells(tmp_path: Path, litemedsam_file: Path) -> None:
    import yaml

    raw = yaml.safe_load(textwrap.dedent("""\
        datasets: {brain: work/mni152}
        grid:
          arch: [litemedsam]
          checkpoint: [litemedsam, null]
          tune: [decoder]
          method: [lora, adapter]
          mode: [auto]
          epochs: 2
        baselines: [unet]
        baseline_epochs: 2
        """))
    cells, notes = parse_study(raw, tmp_path).cells()
    assert not notes
    assert sorted(c.key for c in cells) == sorted([
        "litemedsam_litemedsam_dec_lora_auto_full_s0", "litemedsam_litemedsam_dec_adapter_auto_full_s0",
        "litemedsam_random_dec_lora_auto_full_s0", "litemedsam_random_dec_adapter_auto_full_s0", "unet_full_s0"])
    assert all(c.options["epochs"] == 2 for c in cells)
    assert all(c.options["cache_embeddings"] for c in cells if c.kind == "sam")  # frozen encoders share a cache
    assert cells[0].data == str(tmp_path / "work" / "mni152")
    mixed = {**raw, "grid": [raw["grid"], {"arch": ["vit_t"], "checkpoint": ["litemedsam", None],
                                           "tune": ["encoder-decoder"], "image_size": 224, "shots": [5]}]}
    cells, notes = parse_study(mixed, tmp_path).cells()
    assert notes == ["left out vit_t/litemedsam/encoder-decoder/vanilla/auto: the checkpoint is a litemedsam file"]
    assert "vit_t_random_encdec_vanilla_auto_5shot_s0" in [c.key for c in cells]
    assert {c.key for c in cells if c.kind == "baseline"} == {"unet_full_s0", "unet_5shot_s0"}  # every shot count
    with pytest.raises(StudyError, match="unknown grid keys"):
        parse_study({**raw, "grid": {**raw["grid"], "methdo": ["lora"]}}, tmp_path)
    with pytest.raises(StudyError, match="not a dimension"):
        parse_study({**raw, "grid": {**raw["grid"], "epochs": [1, 2]}}, tmp_path)


def test_tiny_study_end_to_end_report_equals_cells(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = _config(tmp_path, prepared)
    lines: list[str] = []
    run_study(config, out, dry_run=True, say=lines.append)
    assert not (out / "cells").exists()  # a dry run trains nothing
    text = "\n".join(lines)
    assert "5 cells; estimated" in text and "unet_test_full_s0" in text and "embedding cache" in text
    cells = run_study(config, out, say=lines.append)
    assert len(cells) == 5
    report = write_report(out)
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for row in rows:  # the report's numbers are the cells' own, recomputed here from per-class scores
        m = json.loads((out / "cells" / row["dataset"] / row["cell"] / "metrics.json").read_text())
        per_class = [v["dsc"] for v in m["classes"].values() if v["dsc"] is not None]
        assert float(row["dsc"]) == pytest.approx(np.mean(per_class))
        assert float(row["nsd"]) == pytest.approx(m["mean"]["nsd"])
        assert int(row["trainable_params"]) > 0 and float(row["seconds_per_step"]) > 0
    tables = (report / "tables.md").read_text()
    best = max(rows, key=lambda r: float(r["dsc"]))
    assert f"**{float(best['dsc']):.2f} / {float(best['nsd']):.2f}**" in tables
    for fig in ("bars_automated_full-data.png", "validation_curves.png", "overlays_disc.png"):
        assert (report / "figures" / fig).stat().st_size > 5000
    assert {r["weights_class"] for r in rows} == {"random"} and {r["augmentation"] for r in rows} == {"none", "online"}
    assert all(int(r["test_cases"]) == 2 for r in rows)  # the factory's two test volumes
    rec = json.loads((report / "recommendation.json").read_text())  # the contract (DESIGN.md)
    for r in rec:
        assert {"setting", "condition", "best", "runner_up", "comparison", "verdict", "provisional", "baseline"} <= set(r)
        assert r["verdict"] in ("better", "worse", "tie", "inconclusive") and r["provisional"] is False
    single = next(r for r in rec if r["setting"] == "Single dataset" and r["condition"] == "-")
    assert single["best"] in {r["strategy"] for r in rows if r["kind"] == "sam"}  # baselines are not candidates
    assert set(single["comparison"]) >= {"unit", "n_cases", "n_images", "mean_diff", "ci95", "p", "test"}
    assert single["comparison"]["n_cases"] == 2 and single["comparison"]["min_p"] == 0.5
    assert single["verdict"] == "inconclusive"  # two test cases: nothing can be significant
    assert single["baseline"]["best_baseline"] == "unet_test_full"

    # a second run changes nothing; a changed config adds a cell and keeps the others
    before = _cells_done(out)
    run_study(config, out, say=lines.append)
    assert _cells_done(out) == before
    run_study(_config(tmp_path, prepared, methods="[lora, adapter, vanilla]"), out, say=lines.append)
    after = _cells_done(out)
    assert {k: after[k] for k in before} == before and len(after) == 7
    plan = json.loads((out / "plan.json").read_text())
    run_study(_config(tmp_path, prepared, methods="[lora]"), out, say=lines.append)
    assert len(json.loads((out / "plan.json").read_text())["cells"]) == 3 < len(plan["cells"])
    assert len(list(csv.DictReader(open(write_report(out, overlays=False) / "results.csv")))) == 3
    with pytest.raises(StudyError, match="other settings"):
        run_study(_config(tmp_path, prepared, methods="[lora]", epochs=3), out, say=lines.append)

    # a damaged cell file is named, with what to do (it was a bare JSON message)
    damaged = next((out / "cells" / "disc").glob("*/metrics.json"))
    damaged.write_text("{\n")
    with pytest.raises(ValueError, match=f"{damaged}: damaged, not valid JSON .*delete it and run the study again"):
        write_report(out, overlays=False)
    damaged.unlink()
    run_study(_config(tmp_path, prepared, methods="[lora]"), out, say=lines.append)  # evaluated again
    assert len(list(csv.DictReader(open(write_report(out, overlays=False) / "results.csv")))) == 3


KILLER = """
import os, signal, sys
import tunesam.engine.fit as t
saves = {"n": 0}
original = t.save_state
def save_then_die(*a, **k):
    original(*a, **k)
    saves["n"] += 1
    if saves["n"] == int(os.environ["KILL_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
t.save_state = save_then_die
from tunesam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_mid_grid_resumes_without_retraining_finished_cells(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = _config(tmp_path, prepared)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    # cells train 2 epochs each, one state save per epoch: the 5th save is the third cell's first epoch
    done = subprocess.run([sys.executable, str(killer), "study", str(config), "--out", str(out)],
                          env={**ENV, "KILL_AT_SAVE": "5"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr
    finished = _cells_done(out)
    assert len(finished) == 2
    third = [p for p in (out / "cells" / "disc").iterdir() if p.is_dir() and p.name not in finished]
    assert len(third) == 1 and (third[0] / "last.pt").is_file()
    import torch

    first_epoch = torch.load(third[0] / "last.pt", weights_only=True)["rows"]
    assert len(first_epoch) == 1
    again = subprocess.run([sys.executable, "-m", "tunesam", "study", str(config), "--out", str(out)],
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "2 done, 3 to run" in again.stdout
    after = _cells_done(out)
    assert len(after) == 5 and {k: after[k] for k in finished} == finished  # finished cells untouched
    with open(third[0] / "log.csv") as f:
        log = list(csv.DictReader(f))
    assert len(log) == 2  # resumed after its first epoch, not retrained: epoch 1 is the killed process's
    assert float(log[0]["seconds"]) == first_epoch[0]["seconds"]
    assert float(log[0]["val_dsc"]) == first_epoch[0]["val_dsc"]


def test_tiny_study_on_a_local_ray_instance(prepared: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tunesam[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        out = tmp_path / "out"
        lines: list[str] = []
        run_study(_config(tmp_path, prepared), out, engine="ray", say=lines.append)
    finally:
        ray.shutdown()
    assert any(line.startswith("Ray: 2 CPUs") for line in lines)
    assert len(_cells_done(out)) == 5
    assert len(list(csv.DictReader(open(write_report(out, overlays=False) / "results.csv")))) == 5


def test_a_study_refuses_an_image_only_dataset_before_any_cell(tmp_path: Path) -> None:
    from data_factory import learnable_pngs
    from tunesam.data.prepare import PrepareOptions, prepare
    from tunesam.data.readers import DataError

    learnable_pngs(tmp_path / "src", patients=5, per_patient=1)
    images_only = prepare(tmp_path / "src", tmp_path / "imgs", PrepareOptions(unlabelled=True)).folder
    config = _config(tmp_path, images_only)
    with pytest.raises(DataError, match="image-only"):
        run_study(config, tmp_path / "out", dry_run=True, say=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_shared_baseline_settings_reach_the_baselines_that_take_them(prepared: Path, tmp_path: Path) -> None:
    """baseline_lr and baseline_iterations together (as docs/study_two.yaml): UNet takes the
    lr, nnU-Net the iterations; neither gets the other's, so both resolve."""
    from tunesam import kinds

    raw = {"datasets": {"d": str(prepared)}, "grid": {"arch": ["vit_t_test"], "checkpoint": [None],
                                                      "tune": ["decoder"], "method": ["vanilla"], "mode": ["auto"]},
           "baselines": ["unet", "nnunet"], "baseline_lr": 0.001, "baseline_warmup": 10, "baseline_iterations": 7,
           "baseline_image_size": 64, "baseline_epochs": 3}
    cells = {c.arch: c for c in parse_study(raw, tmp_path).cells()[0] if c.baseline}
    unet = kinds.resolve(cells["unet"].train_config(tmp_path))
    nnunet = kinds.resolve(cells["nnunet"].train_config(tmp_path))
    assert (unet.lr, unet.warmup, unet.image_size, unet.epochs, unet.iterations) == (0.001, 10, 64, 3, None)
    assert (nnunet.iterations, nnunet.epochs, nnunet.image_size) == (7, 3, None)


def test_a_key_given_twice_in_a_study_config_is_refused(tmp_path: Path) -> None:
    """YAML lets the last duplicate win, which silently dropped whole strategy families."""
    from tunesam.study.config import load_study

    path = tmp_path / "dup.yaml"
    path.write_text("datasets: {d: /tmp/x}\ngrid:\n  arch: [vit_t_test]\n  method: [lora]\n  method: [adapter]\n")
    with pytest.raises(StudyError, match=r"the key 'method' is given twice \(lines 4 and 5\)"):
        load_study(path)
    path.write_text("datasets: {d: /tmp/x}\ndatasets: {e: /tmp/y}\n")
    with pytest.raises(StudyError, match="the key 'datasets' is given twice"):
        load_study(path)


@pytest.mark.parametrize("grid", ["grid: {}", "grid: []", "grid:", "", "grid: [{}]"])
def test_an_empty_grid_is_refused(tmp_path: Path, grid: str) -> None:
    """It ended with "0 cells ... study done" and exit 0 (grid: [] in a traceback)."""
    import yaml

    raw = yaml.safe_load(f"datasets: {{d: /tmp/x}}\n{grid}\nbaselines: [unet]\n") or {}
    with pytest.raises(StudyError, match="grid: empty|grid: a mapping"):
        parse_study(raw, tmp_path)


def test_a_grid_whose_every_cell_is_left_out_is_refused(prepared: Path, tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text(f"datasets: {{d: {prepared}}}\ngrid: {{checkpoint: [null], tune: [decoder]}}\n")
    with pytest.raises(StudyError, match="the grid gives no cells: left out .*random weights need an arch"):
        run_study(config, tmp_path / "out", say=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_baselines_as_one_name_and_wrong_types(tmp_path: Path) -> None:
    raw = {"datasets": {"d": "/tmp/x"}, "grid": {"arch": ["vit_t_test"]}}
    assert parse_study({**raw, "baselines": "unet_test"}, tmp_path).baselines == ["unet_test"]  # was ['u', 'n', ...]
    with pytest.raises(StudyError, match="baselines: a list of names"):
        parse_study({**raw, "baselines": {"unet": 1}}, tmp_path)


def test_study_out_must_be_a_study_folder_or_empty(prepared: Path, tmp_path: Path) -> None:
    """prepare and train refuse a folder that is not theirs; the study wrote into any."""
    config = _config(tmp_path, prepared, methods="[lora]")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="exists and is not a study folder"):
        run_study(config, other, say=lambda _: None)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    own = tmp_path / "own"
    own.mkdir()
    (own / "study.yaml").write_text(config.read_text())  # the config alone in its folder is fine
    cells = run_study(own / "study.yaml", own, dry_run=True, say=lambda _: None)
    assert cells
