"""Numeric options out of range are refused by name, never ignored (``--image-size 0`` used to
train at 1024 px)."""
from __future__ import annotations

import pytest

from tunesam.config import TrainConfig
from tunesam.pretrain.config import PretrainConfig


@pytest.mark.parametrize("option, value", [("image_size", 0), ("image_size", -32), ("patience", -1), ("warmup", -5),
                                           ("weight_decay", -0.1), ("num_workers", -1), ("iterations", 0),
                                           ("epochs", "one"), ("batch_size", 0)])
def test_training_options_out_of_range_are_refused(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"--{option.replace('_', '-')} must be a number >= "):
        TrainConfig(data="d", out="o", arch="vit_t", tune="decoder", method="vanilla", **{option: value})


@pytest.mark.parametrize("option, value", [("image_size", 0), ("mask_patch", 0), ("warmup", -1), ("patience", -2)])
def test_pretraining_options_out_of_range_are_refused(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"--{option.replace('_', '-')} must be a number >= "):
        PretrainConfig(objective="mae", data=("d",), out="o", arch="vit_t", **{option: value})


def test_the_command_line_says_which_option(prepared, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from tunesam.cli import main

    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--arch", "vit_test", "--tune",
                 "decoder", "--method", "vanilla", "--image-size", "0"]) == 2
    assert "--image-size must be a number >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
