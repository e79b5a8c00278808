"""``tunesam info``: counts worked out by hand from the layer shapes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunesam.cli import main

D = 256  # decoder width
HEAD = (D * D + D) * 2 + (D * (D // 8) + D // 8)  # one hypernetwork MLP: 139,808
IOU_HEAD = (D * D + D) * 2 + (D * 4 + 4)  # 132,612


def _lora(n_in: int, n_out: int, r: int = 4) -> int:
    return r * n_in + n_out * r


def _info(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_vit_b_encoder_decoder_lora_counts(capsys: pytest.CaptureFixture[str]) -> None:
    info = _info(capsys, "--arch", "vit_b", "--tune", "encoder-decoder", "--method", "lora")
    encoder_lora = 12 * 2 * _lora(768, 768)  # q and v of every block
    # decoder: self-attention (256 -> 256) in 2 blocks; 5 cross-attentions (256 -> 128)
    decoder_lora = 2 * 2 * _lora(D, D) + 5 * 2 * _lora(D, D // 2)
    assert info["added_params"] == encoder_lora + decoder_lora == 147_456 + 23_552
    assert info["total_params"] == 93_735_472 + info["added_params"]
    # + the class parts: all mask tokens, and the background and foreground heads
    assert info["trainable_params"] == encoder_lora + decoder_lora + 4 * D + 2 * HEAD
    assert info["iou_head_params"] == IOU_HEAD
    assert info["frozen_params"] == info["total_params"] - info["trainable_params"]
    assert "mask_decoder.iou_prediction_head" in info["frozen_parts"]


def test_vanilla_decoder_is_the_decoder_minus_no_gradient_parts(capsys: pytest.CaptureFixture[str]) -> None:
    info = _info(capsys, "--arch", "vit_t", "--tune", "decoder", "--method", "vanilla")
    decoder = info["parts"]["mask_decoder"]["total"]
    assert decoder == 4_058_340  # SAM's mask decoder
    assert info["trainable_params"] == decoder - IOU_HEAD - 2 * HEAD  # heads 0 and 3 unused when K=1
    assert info["parts"]["image_encoder"]["trainable"] == 0


def test_adapter_counts_for_all_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    info = _info(capsys, "--arch", "vit_b", "--tune", "encoder-decoder", "--method", "adapter",
                 "--adapter-blocks", "all", "--num-classes", "3")
    per_adapter = (768 * 192 + 192) + (192 * 768 + 768)
    decoder_adapters = 4 * ((D * 64 + 64) + (64 * D + D))
    assert info["added_params"] == 12 * 2 * per_adapter + decoder_adapters
    # K = 3: five mask tokens, four class heads, one extra head beyond SAM's official four
    assert info["parts"]["mask_decoder"]["total"] == 4_058_340 + D + HEAD + (D + 1) + decoder_adapters


def test_human_table_and_console_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tunesam", "info", "--arch", "vit_h", "--tune", "decoder", "--method", "adapter"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert "image_encoder" in out and "641,222,960" in out and "frozen:" in out


def test_bad_arguments_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["info", "--arch", "vit_x", "--tune", "decoder", "--method", "lora"])
    assert main(["info", "--arch", "vit_b", "--tune", "decoder", "--method", "lora", "--num-classes", "0"]) == 2
    assert "num_classes" in capsys.readouterr().err
    assert main(["info", "--arch", "vit_b", "--tune", "decoder", "--method", "lora",
                 "--checkpoint", "/nonexistent/sam_vit_b_01ec64.pth"]) == 2
    assert "dl.fbaipublicfiles.com" in capsys.readouterr().err


def test_info_with_a_checkpoint_reports_what_loading_did(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from tunesam.models.registry import build_sam

    torch.save(build_sam("vit_test", image_size=64).state_dict(), tmp_path / "w.pth")
    info = _info(capsys, "--arch", "vit_test", "--tune", "decoder", "--method", "lora", "--image-size", "128",
                 "--num-classes", "3", "--checkpoint", str(tmp_path / "w.pth"))
    notes = " ".join(info["checkpoint"]["notes"])
    assert "pos_embed (4, 4) -> (8, 8)" in notes
    assert "output_hypernetworks_mlps.4" in notes


@pytest.mark.parametrize("argv, message", [
    (["info", "--arch", "vit_test", "--tune", "decoder", "--method", "adapter", "--lora-rank", "8"],
     "--lora-rank does not apply to --method adapter"),
    (["info", "--arch", "vit_test", "--tune", "decoder", "--method", "lora", "--adapter-blocks", "all"],
     "--adapter-blocks does not apply to --method lora"),
    (["train", "--data", "d", "--out", "o", "--arch", "vit_test", "--tune", "decoder", "--method", "vanilla",
      "--lora-rank", "8"], "--lora-rank does not apply to --method vanilla"),
    (["evaluate", "--checkpoint", "w.pth", "--data", "d", "--mode", "box", "--weights", "last"],
     "--weights does not apply to --checkpoint"),
])
def test_flags_that_do_not_apply_are_refused(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_evaluate_and_predict_refuse_what_a_run_decides(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from data_factory import learnable_pngs
    from tunesam.data.prepare import PrepareOptions, prepare
    from tunesam.data.store import PreparedData
    from tunesam.config import TrainConfig
    from tunesam.kinds import train

    learnable_pngs(tmp_path / "src", patients=5)
    prepare(tmp_path / "src", tmp_path / "prep", PrepareOptions(split="3:1:1"))
    run = train(TrainConfig(data=str(tmp_path / "prep"), out=str(tmp_path / "run"), arch="vit_test",
                            tune="decoder", method="vanilla", image_size=32, epochs=1, device="cpu", num_workers=0))
    capsys.readouterr()
    for extra, message in ((["--image-size", "64"], "--image-size does not apply to a RUN"),
                           (["--pixel-norm", "unit"], "--pixel-norm does not apply to a RUN"),
                           (["--mode", "box"], "trained in auto mode; --mode box would score output heads")):
        assert main(["evaluate", str(run), "--device", "cpu", *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["evaluate", str(run), "--device", "cpu", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["mode"] == "auto"
    image = PreparedData.open(tmp_path / "prep").manifest["cases"][0]["image"]
    (tmp_path / "p.json").write_text(json.dumps({"x.png": [{"box": [1, 2, 10, 12]}]}))
    assert main(["predict", str(run), image, "--out", str(tmp_path / "pred"), "--prompts", str(tmp_path / "p.json"),
                 "--device", "cpu"]) == 2
    assert "takes no --prompts" in capsys.readouterr().err


def test_the_architecture_comes_from_the_checkpoint_when_not_given(prepared, tmp_path,  # type: ignore[no-untyped-def]
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """No --arch: train and pretrain read it from --checkpoint; with neither, a clear error."""
    import torch

    from tunesam.config import load_config
    from tunesam.models.registry import build_sam

    for verb in (["train", "--tune", "decoder", "--method", "vanilla"], ["pretrain", "mae"]):
        assert main([*verb, "--data", str(prepared), "--out", str(tmp_path / verb[0])]) == 2
        assert "give --arch (or a --checkpoint to read the architecture from)" in capsys.readouterr().err
    torch.save(build_sam("vit_test", image_size=32).state_dict(), tmp_path / "weights.pth")
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "run"), "--tune", "decoder", "--method",
                 "vanilla", "--checkpoint", str(tmp_path / "weights.pth"), "--image-size", "32", "--epochs", "1",
                 "--device", "cpu", "--num-workers", "0", "--quiet"]) == 0
    assert load_config(tmp_path / "run" / "config.yaml").arch == "vit_test"
