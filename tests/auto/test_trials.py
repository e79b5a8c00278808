"""A search trial is a run folder trained to each rung and resumed for the next (issue 20)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunesam.auto.search import Candidate
from tunesam.auto.trials import make_trainer, trial_config, validation_curve
from tunesam.config import TrainConfig


def test_a_trial_pauses_at_each_rung_and_finishes_its_one_schedule(prepared: Path, tmp_path: Path) -> None:
    base = TrainConfig(data=str(prepared), out="unused", arch="vit_test", tune="decoder", method="lora",
                       image_size=32, epochs=4, batch_size=4, lr=2e-3, warmup=2, device="cpu", num_workers=0,
                       patience=0)
    cand = Candidate("vit_test_dec_lora", "ViT test + Decoder + LoRA", 1.0, {"tune": "decoder", "method": "lora"})
    train_to = make_trainer(lambda c: trial_config(c, base, tmp_path))
    run = tmp_path / cand.key
    assert len(train_to(cand, 1)) == 1 and not (run / "summary.json").exists()
    assert len(train_to(cand, 2)) == 2 and not (run / "summary.json").exists()
    assert train_to(cand, 2) == validation_curve(run)  # nothing trained again
    curve = train_to(cand, 4)
    assert len(curve) == 4 and (run / "summary.json").is_file()  # its full length: finished
    with pytest.raises(ValueError, match="unexpected"):
        make_trainer(lambda c: trial_config(c, base, tmp_path))(Candidate("bad", "bad", 1.0, {"no_such_option": 1}), 1)


def test_a_trial_killed_before_its_first_epoch_ended_starts_again(prepared: Path, tmp_path: Path) -> None:
    """A kill during a trial's first epoch (or its embedding cache) leaves a run folder with no
    finished epoch: the next session starts that trial again instead of refusing the folder."""
    base = TrainConfig(data=str(prepared), out="unused", arch="vit_test", tune="decoder", method="lora",
                       image_size=32, epochs=2, batch_size=4, lr=2e-3, warmup=2, device="cpu", num_workers=0,
                       patience=0)
    cand = Candidate("vit_test_dec_lora", "ViT test + Decoder + LoRA", 1.0, {"tune": "decoder", "method": "lora"})
    train_to = make_trainer(lambda c: trial_config(c, base, tmp_path))
    train_to(cand, 1)
    run = tmp_path / cand.key
    for name in ("last.pt", "log.csv"):  # as a kill before the end of epoch 1 leaves it
        (run / name).unlink()
    assert len(train_to(cand, 1)) == 1 and (run / "last.pt").is_file()
