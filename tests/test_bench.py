"""tunesam bench: every row measured with tunesam's speed settings and the eager fp32
baseline in one process, with the JSON contract (issue 19)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesam.bench import SPEEDS, Row, bench, measure
from tunesam.cli import main


def test_a_row_has_its_times_memory_flops_and_ratio() -> None:
    (r,) = bench([Row("vit_test", "encoder-decoder", "lora", 2, 32)], device="cpu", baseline="eager-fp32",
                 warmup=0, repeats=2)
    for key in ("arch", "tune", "method", "batch_size", "image_size", "device", "seconds_per_step",
                "peak_memory_bytes", "samples_per_s", "flops", "tflops", "trainable_params"):
        assert key in r, key
    assert r["seconds_per_step"] > 0 and r["flops"] > 0 and r["peak_memory_bytes"] >= 0
    assert 0 < r["trainable_params"] < r["total_params"]
    assert r["peak_fraction"] is None  # no known peak for a CPU
    for part in ("encoder", "decode"):
        assert r[part]["seconds"] > 0 and r[part]["flops"] > 0
    assert r["encoder"]["flops"] > r["decode"]["flops"]
    assert r["baseline"]["speed"] == "eager-fp32" and set(r["ratio"]) == {"step", "encoder", "decode"}
    assert r["ratio"]["step"] == pytest.approx(r["baseline"]["seconds_per_step"] / r["seconds_per_step"], rel=1e-2)


def test_the_training_step_flops_follow_the_strategy() -> None:
    """A frozen encoder has no backward: its step costs fewer FLOPs than tuning it."""
    common = dict(speed=SPEEDS["eager-fp32"], device=__import__("torch").device("cpu"), warmup=0, repeats=1)
    decoder = measure(Row("vit_test", "decoder", "vanilla", 1, 32), **common)
    both = measure(Row("vit_test", "encoder-decoder", "vanilla", 1, 32), **common)
    assert decoder["flops"] < both["flops"] and decoder["trainable_params"] < both["trainable_params"]
    assert decoder["encoder"]["flops"] == both["encoder"]["flops"]  # inference does not depend on the strategy


def test_cli_writes_json_and_refuses_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--arch", "vit_test", "--tune", "decoder", "--method", "lora", "--batch-size", "1",
                 "--image-size", "32", "--device", "cpu", "--warmup", "0", "--repeats", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert (row["arch"], row["tune"], row["method"], row["batch_size"], row["image_size"]) == (
        "vit_test", "decoder", "lora", 1, 32)
    assert "vit_test" in capsys.readouterr().out
    assert main(["bench", "--arch", "vit_test", "--repeats", "0", "--device", "cpu"]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err
