"""Our SAM-family modules compute what the official implementations compute.

Same random weights (copied with a strict ``load_state_dict``, so key names and shapes
match too), same inputs, outputs within 1e-4 in float32.
"""
from __future__ import annotations

import types

import pytest
import torch

from helpers import images, max_diff, randomize_
from tunesam.models.image_encoder import ImageEncoderViT
from tunesam.models.registry import build_sam

TOL = 1e-4


def _prompt_cases(n: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(n, 3, 2, generator=g) * size
    labels = torch.tensor([[1, 0, 1], [1, 1, -1], [0, 1, 1]])[:n]
    boxes = torch.tensor([[10.0, 20, 300, 400], [100, 100, 900, 800], [0, 0, 50, 60]])[:n] * size / 1024
    masks = torch.randn(n, 1, size // 4, size // 4, generator=g)
    return [
        {"points": (coords, labels), "boxes": None, "masks": None},
        {"points": None, "boxes": boxes, "masks": None},
        {"points": (coords, labels), "boxes": boxes, "masks": None},
        {"points": None, "boxes": boxes, "masks": masks},
        {"points": None, "boxes": None, "masks": None},
    ]


def _check_heads(official: torch.nn.Module, ours: torch.nn.Module, embedding: torch.Tensor, size: int) -> None:
    """Prompt encoder and mask decoder agree for every prompt kind, single and multimask."""
    for case in _prompt_cases(3, size):
        s1, d1 = official.prompt_encoder(**case)
        s2, d2 = ours.prompt_encoder(**case)
        assert s1.shape == s2.shape and max_diff(s1, s2) <= TOL if s1.numel() else s1.shape == s2.shape
        assert max_diff(d1, d2) <= TOL
        for multimask in (False, True):
            m1, i1 = official.mask_decoder(embedding, official.prompt_encoder.get_dense_pe(), s1, d1, multimask)
            m2, i2 = ours.mask_decoder(embedding, ours.prompt_encoder.get_dense_pe(), s2, d2, multimask)
            assert m1.shape == m2.shape and i1.shape == i2.shape
            assert max_diff(m1, m2) <= TOL
            assert max_diff(i1, i2) <= TOL


@torch.no_grad()
def test_vit_encoder_matches_official_at_small_size(segment_anything: types.ModuleType) -> None:
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT as OfficialViT

    kwargs = dict(img_size=256, embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11),
                  window_size=14, out_chans=256)
    official = OfficialViT(**kwargs, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                           qkv_bias=True, mlp_ratio=4).eval()
    randomize_(official)
    ours = ImageEncoderViT(**kwargs).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 3, 256, 256)
    assert max_diff(official(x), ours(x)) <= TOL


def _whole_model_parity(official: torch.nn.Module, arch: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Load the official model's random weights into ours; compare encoder, prompt encoder
    and decoder at 1024. Returns our model and both image embeddings."""
    official = randomize_(official).eval()  # eval() after randomising: MobileSAM caches biases there
    ours = build_sam(arch).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = images(1, 1024)
    e1 = official.image_encoder((x - official.pixel_mean) / official.pixel_std)
    e2 = ours.encode(x)
    assert e1.shape == e2.shape == (1, 256, 64, 64)
    assert max_diff(e1, e2) <= TOL
    _check_heads(official, ours, e1, 1024)
    return ours, x, e2


@pytest.mark.slow
@torch.no_grad()
def test_vit_b_matches_official_sam_at_1024(segment_anything: types.ModuleType) -> None:
    _whole_model_parity(segment_anything.sam_model_registry["vit_b"](), "vit_b")


@torch.no_grad()
def test_mobilesam_matches_official_at_1024(mobile_sam: types.ModuleType) -> None:
    official = mobile_sam.sam_model_registry["vit_t"]()
    ours, x, emb = _whole_model_parity(official, "vit_t")
    # The whole segmenter against the official Sam.forward (single-mask, box prompt).
    box = torch.tensor([[100.0, 150, 700, 800]])
    out = official([{"image": x[0], "original_size": (1024, 1024), "boxes": box}], multimask_output=False)
    ref = out[0]["low_res_logits"]
    low, _ = ours.decode(emb, boxes=box)
    assert max_diff(ref, low) <= TOL
    full = torch.nn.functional.interpolate(low, size=(1024, 1024), mode="bilinear", align_corners=False)
    assert torch.equal(full > 0, out[0]["masks"])
