"""Full-size models have the official key names, shapes and parameter counts (on ``meta``)."""
from __future__ import annotations

import types

import pytest
import torch

from tunesam.models.registry import ARCHS, build_sam

# The official models' totals (Meta's SAM, MobileSAM), as published with them.
OFFICIAL_TOTALS = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608, "vit_t": 10_130_092}


def _official(arch: str, sa: types.ModuleType, ms: types.ModuleType) -> torch.nn.Module:
    if arch == "vit_t":  # small; its constructor calls .item() and cannot run on meta
        return ms.sam_model_registry["vit_t"]()
    with torch.device("meta"):
        return sa.sam_model_registry[arch]()


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h", "vit_t"])
def test_state_dict_keys_and_shapes_match_official(
    arch: str, segment_anything: types.ModuleType, mobile_sam: types.ModuleType
) -> None:
    official = _official(arch, segment_anything, mobile_sam).state_dict()
    with torch.device("meta"):
        ours = build_sam(arch).state_dict()
    assert sorted(ours) == sorted(official)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h", "vit_t"])
def test_parameter_counts_equal_official(arch: str) -> None:
    with torch.device("meta"):
        model = build_sam(arch)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_TOTALS[arch]


def test_registry_has_the_family_and_tiny_variants() -> None:
    public = {n for n, s in ARCHS.items() if not s.test_only}
    assert public == {"vit_b", "vit_l", "vit_h", "vit_t", "litemedsam"}
    assert {s.family for s in ARCHS.values() if s.test_only} == {"vit", "tinyvit"}


@pytest.mark.parametrize("k, tokens", [(1, 4), (2, 4), (3, 5), (6, 8)])
def test_class_tokens_keep_official_shape_up_to_two_classes(k: int, tokens: int) -> None:
    with torch.device("meta"):
        model = build_sam("vit_b", num_classes=k)
    assert model.mask_decoder.num_mask_tokens == tokens
    assert list(model.class_heads) == list(range(1, k + 2))
