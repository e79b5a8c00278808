"""Checkpoints in and out: strict loading, clear errors, resizing, export."""
from __future__ import annotations

import pickle
import types
from pathlib import Path

import pytest
import torch

from helpers import images, max_diff, perturb_, randomize_
from tunesam import build_model
from tunesam.models.checkpoint import CheckpointError, fit_state_dict, load_fitted, read_state_dict
from tunesam.peft.export import export_checkpoint
from tunesam.models.registry import build_sam
from tunesam.peft.merge import AdapterMergeError
from tunesam.peft.strategy import Strategy, apply_strategy


@pytest.fixture(scope="module")
def official_files(
    tmp_path_factory: pytest.TempPathFactory, segment_anything: types.ModuleType, mobile_sam: types.ModuleType
) -> dict[str, Path]:
    """Checkpoints written from the official modules with random weights, official names."""
    root = tmp_path_factory.mktemp("ckpt")
    files = {
        "vit_b": root / "sam_vit_b_01ec64.pth",
        "vit_t": root / "mobile_sam.pt",
    }
    torch.save(randomize_(segment_anything.sam_model_registry["vit_b"]()).state_dict(), files["vit_b"])
    torch.save(randomize_(mobile_sam.sam_model_registry["vit_t"]()).state_dict(), files["vit_t"])
    files["medsam"] = root / "medsam_vit_b.pth"
    files["medsam"].symlink_to(files["vit_b"])
    return files


@pytest.mark.parametrize("arch", ["vit_b", "vit_t"])
def test_official_file_loads_strictly_with_identical_tensors(arch: str, official_files: dict[str, Path]) -> None:
    model = build_model(arch, official_files[arch])
    reference = torch.load(official_files[arch], weights_only=True)
    state = model.state_dict()
    assert set(state) == set(reference)
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert model.load_report.resized == [] and model.load_report.initialised == []
    assert model.pixel_norm == "sam"


@pytest.mark.parametrize("arch", ["vit_l", "vit_h"])
def test_official_layout_fits_large_archs_strictly(arch: str, segment_anything: types.ModuleType) -> None:
    """ViT-L/H files are GBs: check the strict fit on the meta device (keys and shapes)."""
    with torch.device("meta"):
        official = segment_anything.sam_model_registry[arch]().state_dict()
        model = build_sam(arch)
    fitted, report = fit_state_dict(official, model, "official")
    load_fitted(model, fitted, report, arch)  # raises on any missing/unexpected/misshapen key
    assert report.arch_detected == arch


def test_medsam_file_name_selects_unit_pixel_norm(official_files: dict[str, Path]) -> None:
    model = build_model("vit_b", official_files["medsam"])
    assert model.pixel_norm == "unit"
    assert torch.equal(model.pixel_std.flatten(), torch.full((3,), 255.0))
    assert build_model("vit_b", official_files["medsam"], pixel_norm="sam").pixel_norm == "sam"


def test_vit_b_file_for_vit_h_says_it_looks_like_vit_b(official_files: dict[str, Path]) -> None:
    state = read_state_dict(official_files["vit_b"])
    with torch.device("meta"):
        model = build_sam("vit_h")
    fitted, report = fit_state_dict(state, model, str(official_files["vit_b"]))
    with pytest.raises(CheckpointError) as err:
        load_fitted(model, fitted, report, "vit_h")
    msg = str(err.value)
    assert "looks like a vit_b checkpoint" in msg
    assert "missing keys: image_encoder.blocks.12." in msg
    assert "architecture vit_h" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = build_sam("vit_test", image_size=64).state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["mask_decoder.extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_model("vit_test", path, image_size=64)
    assert "1 missing keys: mask_decoder.iou_token.weight" in str(err.value)
    assert "1 unexpected keys: mask_decoder.extra.weight" in str(err.value)


def test_truncated_file_is_a_clear_error(tmp_path: Path, official_files: dict[str, Path]) -> None:
    data = official_files["vit_t"].read_bytes()
    path = tmp_path / "mobile_sam.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*mobile_sam.pt"):
        build_model("vit_t", path)


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"image_encoder.x": _Payload()}))
    with pytest.raises(CheckpointError, match="holds objects other than tensors .* refused for safety") as err:
        read_state_dict(path)
    assert "weights_only=False will likely succeed" not in str(err.value)


def test_missing_file_says_where_it_is_published(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"):
        build_model("vit_h", tmp_path / "sam_vit_h_4b8939.pth")


def test_safetensors_and_wrapped_dicts_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = build_sam("vit_t_test", image_size=64)
    state = src.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    for name in ("w.safetensors", "wrapped.pth"):
        model = build_model("vit_t_test", tmp_path / name, image_size=64)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_other_input_size_resamples_position_tables(tmp_path: Path) -> None:
    src = randomize_(build_sam("vit_test", image_size=64)).eval()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = build_model("vit_test", tmp_path / "w.pth", image_size=128).eval()
    assert model.image_encoder.pos_embed.shape[1:3] == (8, 8)
    assert any("pos_embed" in r for r in model.load_report.resized)
    assert any("rel_pos_h" in r for r in model.load_report.resized)
    with torch.no_grad():
        assert model(images(1, 128)).shape == (1, 2, 128, 128)
    # Resampling to the same size is the identity.
    same = build_model("vit_test", tmp_path / "w.pth", image_size=64)
    assert same.load_report.resized == []


def test_more_classes_reuse_pretrained_tokens_and_report_new_heads(tmp_path: Path) -> None:
    src = build_sam("vit_test", image_size=64)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = build_model("vit_test", tmp_path / "w.pth", num_classes=4, image_size=64)
    tokens = model.mask_decoder.mask_tokens.weight
    assert torch.equal(tokens[:4], src.mask_decoder.mask_tokens.weight)
    for i in range(4):
        a = model.mask_decoder.output_hypernetworks_mlps[i].layers[0].weight
        assert torch.equal(a, src.mask_decoder.output_hypernetworks_mlps[i].layers[0].weight)
    notes = " ".join(model.load_report.initialised)
    assert "mask_tokens.weight rows 4..5" in notes
    assert "output_hypernetworks_mlps.4" in notes and "output_hypernetworks_mlps.5" in notes


@torch.no_grad()
def test_lora_export_opens_in_mobilesam_with_the_same_outputs(
    tmp_path: Path, official_files: dict[str, Path], mobile_sam: types.ModuleType
) -> None:
    model = build_model("vit_t", official_files["vit_t"])
    apply_strategy(model, Strategy("encoder-decoder", "lora"))
    perturb_([p for n, p in model.named_parameters() if "lora_B" in n])
    model.eval()
    path = tmp_path / "exported.pth"
    notes = export_checkpoint(model, path)
    assert notes == []
    official = mobile_sam.sam_model_registry["vit_t"]()
    official.load_state_dict(torch.load(path, weights_only=True), strict=True)
    official.eval()  # after loading: MobileSAM caches its attention biases in eval()
    x = images(1, 1024)
    e_ours = model.encode(x)
    e_off = official.image_encoder((x - official.pixel_mean) / official.pixel_std)
    assert max_diff(e_ours, e_off) <= 1e-4
    box = torch.tensor([[100.0, 150, 700, 800]])
    low, _ = model.decode(e_ours, boxes=box)
    sparse, dense = official.prompt_encoder(None, box, None)
    ref, _ = official.mask_decoder(e_off, official.prompt_encoder.get_dense_pe(), sparse, dense, False)
    assert max_diff(low, ref) <= 1e-4


def test_export_of_many_classes_writes_a_class_head_side_file(tmp_path: Path) -> None:
    model = build_model("vit_test", num_classes=4, image_size=64)
    notes = export_checkpoint(model, tmp_path / "out.safetensors")
    side = tmp_path / "out.class_head.safetensors"
    assert side.is_file()
    assert any("resampled" in n for n in notes)  # 64 px model exported for 1024 input
    official = read_state_dict(tmp_path / "out.safetensors")
    with torch.device("meta"):
        reference = build_sam("vit_test").state_dict()
    assert {k: v.shape for k, v in official.items()} == {k: v.shape for k, v in reference.items()}
    # and it loads back whole: the side file beside it restores the four classes' head
    model.eval()
    again = build_model("vit_test", tmp_path / "out.safetensors", num_classes=4, image_size=1024).eval()
    assert any("class head read from" in r for r in again.load_report.resized)
    assert again.load_report.initialised == []
    mine, back = model.mask_decoder.state_dict(), again.mask_decoder.state_dict()
    assert mine.keys() == back.keys() and all(torch.equal(mine[k], back[k]) for k in mine)


def test_adapter_models_cannot_be_merged(tmp_path: Path) -> None:
    model = build_model("vit_test", image_size=64)
    apply_strategy(model, Strategy("decoder", "adapter"))
    with pytest.raises(AdapterMergeError, match="cannot be merged"):
        export_checkpoint(model, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_known_files_are_recognised_by_sha256_whatever_their_name(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A renamed MedSAM-like file still gets its 0-1 normalisation, and the run says why."""
    import dataclasses
    import hashlib

    import tunesam.models.known as known
    from tunesam.config import TrainConfig

    torch.save(build_sam("vit_test", image_size=64).state_dict(), tmp_path / "renamed.pth")
    data = (tmp_path / "renamed.pth").read_bytes()
    entry = dataclasses.replace(known.OFFICIAL[0], filename="medsam_like.pth", arch="vit_test", pixel_norm="unit",
                                sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setattr(known, "FILES", (*known.FILES, entry))
    assert build_model("vit_test", tmp_path / "renamed.pth", image_size=64).pixel_norm == "unit"
    from tunesam.kinds import resolve

    cfg = resolve(TrainConfig(data="d", out="o", arch=None, tune="decoder", method="lora",
                              checkpoint=str(tmp_path / "renamed.pth")))
    assert cfg.arch == "vit_test" and cfg.pixel_norm == "unit"
    assert cfg.pixel_norm_rule == "medsam_like.pth recognised by sha256"
    other = resolve(TrainConfig(data="d", out="o", arch="vit_test", tune="decoder", method="lora"))
    assert (other.pixel_norm, other.pixel_norm_rule) == ("sam", "SAM's default")
