"""Where the mask decoder's adapters and LoRA sit, by module name, against the paper's text.

Adapters. Section 4.1: "In the mask decoder, Adapters were added after the multi-head
attention", implemented after Medical SAM Adapter (Wu et al.), an Adapter being "two
additional layers in each transformer block"; Table 3 counts 0.13M for the decoder's adapters,
four bottlenecks of width 256 (4 x 33,088 = 132,352), so two per two-way block. Medical SAM
Adapter and the authors' released code put them after the block's two cross-attentions (tokens
to image, image to tokens); the self-attention gets none, and neither does the final
token-to-image attention, which follows the blocks.

LoRA. Section 4.1: rank 4 in "the 'query' and 'value' projection layers of each transformer
block in the image encoder and mask decoder", after SAMed; the released code adapts q and v of
all seven decoder attentions (three per two-way block and the final one). Keys and output
projections are left as they are.
"""
from __future__ import annotations

import pytest
import torch

from tunesam.models.registry import build_sam
from tunesam.peft.adapter import ParallelAdapter, SerialAdapter
from tunesam.peft.lora import LoRALinear
from tunesam.peft.strategy import Strategy, apply_strategy

DECODER = "mask_decoder.transformer"
BLOCK_ATTENTIONS = ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")


def _model(arch: str, tune: str, method: str):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return apply_strategy(build_sam(arch, num_classes=2, image_size=64), Strategy(tune, method))


def _wrapped(model: torch.nn.Module, kind: type) -> list[str]:
    return sorted(n for n, m in model.named_modules() if n.startswith("mask_decoder.") and isinstance(m, kind))


@pytest.mark.parametrize("arch", ["vit_test", "vit_t_test"])
@pytest.mark.parametrize("tune", ["decoder", "encoder-decoder"])
def test_decoder_adapters_follow_the_two_cross_attentions_of_each_two_way_block(arch: str, tune: str) -> None:
    model = _model(arch, tune, "adapter")
    depth = len(model.mask_decoder.transformer.layers)
    expected = [f"{DECODER}.layers.{i}.{a}" for i in range(depth)
                for a in ("cross_attn_token_to_image", "cross_attn_image_to_token")]
    assert depth == 2 and _wrapped(model, SerialAdapter) == sorted(expected)
    assert _wrapped(model, ParallelAdapter) == [] and _wrapped(model, LoRALinear) == []
    dim = model.mask_decoder.transformer.embedding_dim
    for name in expected:
        adapter = model.get_submodule(name).adapter
        assert (adapter.down.in_features, adapter.down.out_features, adapter.up.out_features) == (dim, dim // 4, dim)
        assert adapter.down.weight.requires_grad and adapter.up.weight.requires_grad
    # every decoder attention is otherwise untouched
    assert not isinstance(model.get_submodule(f"{DECODER}.final_attn_token_to_image"), SerialAdapter)
    for i in range(depth):
        assert not isinstance(model.get_submodule(f"{DECODER}.layers.{i}.self_attn"), SerialAdapter)


@pytest.mark.parametrize("arch", ["vit_test", "vit_t_test"])
@pytest.mark.parametrize("tune", ["decoder", "encoder-decoder"])
def test_decoder_lora_sits_on_q_and_v_of_all_seven_attentions_with_rank_4(arch: str, tune: str) -> None:
    model = _model(arch, tune, "lora")
    depth = len(model.mask_decoder.transformer.layers)
    attentions = [f"{DECODER}.layers.{i}.{a}" for i in range(depth) for a in BLOCK_ATTENTIONS]
    attentions.append(f"{DECODER}.final_attn_token_to_image")
    assert len(attentions) == 7
    assert _wrapped(model, LoRALinear) == sorted(f"{a}.{p}" for a in attentions for p in ("q_proj", "v_proj"))
    assert _wrapped(model, SerialAdapter) == [] and _wrapped(model, ParallelAdapter) == []
    for a in attentions:
        for proj in ("k_proj", "out_proj"):
            assert type(model.get_submodule(f"{a}.{proj}")) is torch.nn.Linear
            assert not model.get_submodule(f"{a}.{proj}").weight.requires_grad
        for proj in ("q_proj", "v_proj"):
            lora = model.get_submodule(f"{a}.{proj}")
            base = lora.base_layer
            assert lora.rank == 4 and list(lora.lora_A) == ["all"]  # every output row of the projection
            assert lora.lora_A["all"].shape == (4, base.in_features)
            assert lora.lora_B["all"].shape == (base.out_features, 4)
            assert not base.weight.requires_grad and lora.lora_A["all"].requires_grad
