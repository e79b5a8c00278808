"""Code written for ``segment_anything`` works with our models, and our exports open in it.

* ``segment_anything.SamPredictor(our_model)`` on a real non-square slice gives the masks
  that ``SamPredictor(official_model)`` gives with the same weights;
* a LoRA-tuned model exported with ``export_checkpoint`` (or ``tunesam export``) loads into
  the official ViT with ``strict=True`` and predicts what ours predicts; for full ViT-B the
  exported keys and shapes are the official builder's (on ``meta``).
"""
from __future__ import annotations

import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import perturb_, randomize_
from tunesam.peft.export import export_checkpoint, export_state_dicts
from tunesam.models.registry import build_sam, get_spec
from tunesam.peft.strategy import Strategy, apply_strategy


def _official_tiny_vit(sa: types.ModuleType, size: int) -> torch.nn.Module:
    """segment-anything's Sam with the numbers of our ``vit_test`` entry."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    spec = get_spec("vit_test")
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=size, patch_size=16, embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads,
            mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), out_chans=spec.prompt_dim, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=spec.global_attn_indexes, window_size=spec.window_size,
        ),
        prompt_encoder=PromptEncoder(embed_dim=spec.prompt_dim, image_embedding_size=(size // 16, size // 16),
                                     input_image_size=(size, size), mask_in_chans=spec.mask_in_chans),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=spec.prompt_dim, mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_heads),
            transformer_dim=spec.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=spec.iou_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@pytest.fixture(scope="module")
def mni_slice() -> np.ndarray:
    """A real non-square slice (233 x 197) of the MNI152 T1, as an RGB uint8 image."""
    import SimpleITK as sitk

    from tunesam.data.examples import mni152_files
    from tunesam.data.preprocess import percentile_to_uint8

    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(mni152_files()["t1"])))
    grey = percentile_to_uint8(t1[90].astype(np.float32), (0.5, 99.5))
    return np.repeat(grey[..., None], 3, axis=2)


def _predict(sa: types.ModuleType, model: torch.nn.Module, image: np.ndarray) -> dict[str, np.ndarray]:
    predictor = sa.SamPredictor(model)
    predictor.set_image(image)
    out = {}
    for name, kw in (("box", {"box": np.array([30, 40, 160, 200])}),
                     ("points", {"point_coords": np.array([[100, 120], [60, 60]]), "point_labels": np.array([1, 0])})):
        masks, scores, low = predictor.predict(multimask_output=True, **kw)
        out[name], out[f"{name}_scores"], out[f"{name}_low"] = masks, scores, low
    return out


@torch.no_grad()
def test_sam_predictor_runs_our_model_as_the_official_one(segment_anything: types.ModuleType,
                                                           mni_slice: np.ndarray) -> None:
    ours = randomize_(build_sam("vit_test", image_size=64)).eval()
    official = _official_tiny_vit(segment_anything, 64)
    official.load_state_dict(ours.state_dict(), strict=True)
    a, b = _predict(segment_anything, ours, mni_slice), _predict(segment_anything, official, mni_slice)
    for name in ("box", "points"):
        assert a[name].shape == (3, *mni_slice.shape[:2])
        assert np.abs(a[f"{name}_low"] - b[f"{name}_low"]).max() <= 1e-4
        assert np.allclose(a[f"{name}_scores"], b[f"{name}_scores"], atol=1e-4)
        assert (a[name] != b[name]).mean() < 1e-4  # the same masks (a pixel may sit on the threshold)


@torch.no_grad()
def test_exported_lora_model_loads_strictly_into_segment_anything(segment_anything: types.ModuleType,
                                                                 mni_slice: np.ndarray, tmp_path: Path) -> None:
    size = get_spec("vit_test").native_size  # export writes the native input size, as the official files
    ours = randomize_(build_sam("vit_test", image_size=size))
    apply_strategy(ours, Strategy("encoder-decoder", "lora", mode="box"))
    perturb_([p for n, p in ours.named_parameters() if "lora_B" in n], seed=4)
    ours.eval()
    assert export_checkpoint(ours, tmp_path / "tuned.pth") == []
    official = _official_tiny_vit(segment_anything, size)
    official.load_state_dict(torch.load(tmp_path / "tuned.pth", weights_only=True), strict=True)
    a, b = _predict(segment_anything, ours, mni_slice), _predict(segment_anything, official, mni_slice)
    for name in ("box", "points"):
        assert np.abs(a[f"{name}_low"] - b[f"{name}_low"]).max() <= 1e-4


def test_full_vit_b_lora_export_has_the_official_keys_and_shapes(segment_anything: types.ModuleType) -> None:
    with torch.device("meta"):
        ours = build_sam("vit_b", num_classes=2)
        apply_strategy(ours, Strategy("encoder-decoder", "lora"))
        official = segment_anything.sam_model_registry["vit_b"]().state_dict()
        exported, side, _ = export_state_dicts(ours)
    assert side == {}
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in official.items()}


def test_export_verb_writes_lora_runs_and_refuses_adapter_runs(prepared: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tunesam.cli import main
    from tunesam.config import TrainConfig
    from tunesam.kinds import train
    from tunesam.models.build import build_model

    for method in ("lora", "adapter"):
        train(TrainConfig(data=str(prepared), out=str(tmp_path / method), arch="vit_test", tune="encoder-decoder",
                          method=method, image_size=64, epochs=1, batch_size=8, device="cpu", num_workers=0))
    assert main(["export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora.pth")]) == 0
    model = build_model("vit_test", tmp_path / "lora.pth", num_classes=1, image_size=64)
    assert model.load_report.dropped == []
    assert main(["export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora.pth")]) == 2  # no overwrite
    assert main(["export", str(tmp_path / "adapter"), "--out", str(tmp_path / "adapter.pth")]) == 2
    err = capsys.readouterr().err
    assert "exists; choose another --out" in err and "trained adapters" in err
    assert not (tmp_path / "adapter.pth").exists()
    # never into the run folder's own files: its weights stay as trained
    best = tmp_path / "lora" / "weights" / "best.safetensors"
    before = best.read_bytes()
    assert main(["export", str(tmp_path / "lora"), "--out", str(best), "--overwrite"]) == 2
    assert main(["export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora" / "x.pth")]) == 2
    assert "inside the run folder" in capsys.readouterr().err
    assert best.read_bytes() == before and not (tmp_path / "lora" / "x.pth").exists()
    import torch

    from tunesam.models.registry import build_sam

    torch.save(build_sam("vit_test", image_size=64).state_dict(), tmp_path / "base.pth")
    train(TrainConfig(data=str(prepared), out=str(tmp_path / "on_base"), arch="vit_test", tune="decoder",
                      method="lora", checkpoint=str(tmp_path / "base.pth"), image_size=64, epochs=1, batch_size=8,
                      device="cpu", num_workers=0))
    base = (tmp_path / "base.pth").read_bytes()
    assert main(["export", str(tmp_path / "on_base"), "--out", str(tmp_path / "base.pth"), "--overwrite"]) == 2
    assert "the base checkpoint" in capsys.readouterr().err and (tmp_path / "base.pth").read_bytes() == base
    # through a link: the linked file is replaced and the link stays; a link to nothing is refused
    (tmp_path / "real.pth").write_bytes(b"old")
    (tmp_path / "link.pth").symlink_to(tmp_path / "real.pth")
    assert main(["export", str(tmp_path / "lora"), "--out", str(tmp_path / "link.pth"), "--overwrite"]) == 0
    from tunesam.models.checkpoint import read_state_dict

    exported, first = read_state_dict(tmp_path / "real.pth"), read_state_dict(tmp_path / "lora.pth")
    assert (tmp_path / "link.pth").is_symlink() and exported.keys() == first.keys()
    assert all(torch.equal(exported[k], first[k]) for k in first)
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "nowhere" / "m.pth")
    assert main(["export", str(tmp_path / "lora"), "--out", str(tmp_path / "dangling.pth")]) == 2
    assert "is a link to" in capsys.readouterr().err and (tmp_path / "dangling.pth").is_symlink()
