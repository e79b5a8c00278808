"""Which trained parameters get weight decay: worked out by name and layer type, not by shape.

The rule (see ``decay_groups``): biases and normalisation layers' parameters are not decayed;
every other trained parameter is, the learned tokens and position tables included.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tunesam.engine.fit import decay_groups
from tunesam.models.build import build_model
from tunesam.models.common import LayerNorm2d
from tunesam.peft.strategy import Strategy, apply_strategy

NORMS = (nn.LayerNorm, LayerNorm2d, nn.BatchNorm2d)


def _model(arch: str, tune: str, method: str) -> nn.Module:
    torch.manual_seed(0)
    return apply_strategy(build_model(arch, None, 2, 64), Strategy(tune, method))


def _expected(model: nn.Module) -> tuple[set[str], set[str]]:
    """(decayed, not decayed) names of the trained parameters, by the rule in words."""
    owner = dict(model.named_modules())
    decayed, plain = set(), set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module_name, leaf = name.rsplit(".", 1)
        is_norm = isinstance(owner[module_name], NORMS)
        (plain if leaf == "bias" or is_norm else decayed).add(name)
    return decayed, plain


def _groups(model: nn.Module, weight_decay: float = 0.1) -> tuple[set[str], set[str], list[dict]]:
    names = {id(p): n for n, p in model.named_parameters()}
    groups = decay_groups(model.parameters(), weight_decay)
    decay = [g for g in groups if g["weight_decay"] == weight_decay]
    none = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(decay) == len(none) == 1 and len(groups) == 2
    return {names[id(p)] for p in decay[0]["params"]}, {names[id(p)] for p in none[0]["params"]}, groups


# Tokens and tables the rule keeps decayed, by name, per tiny model (all trained in these strategies).
TOKENS_AND_TABLES = {
    "vit_test": ["mask_decoder.mask_tokens.weight", "mask_decoder.iou_token.weight", "image_encoder.pos_embed",
                 "image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.blocks.3.attn.rel_pos_w"],
    "vit_t_test": ["mask_decoder.mask_tokens.weight", "mask_decoder.iou_token.weight",
                   "image_encoder.layers.1.blocks.0.attn.attention_biases",
                   "image_encoder.layers.3.blocks.1.attn.attention_biases"],
}


@pytest.mark.parametrize("arch", ["vit_test", "vit_t_test"])
def test_encoder_decoder_vanilla_decays_all_but_biases_and_norms(arch: str) -> None:
    model = _model(arch, "encoder-decoder", "vanilla")
    decayed, plain, groups = _groups(model)
    want_decayed, want_plain = _expected(model)
    assert decayed == want_decayed
    assert plain == want_plain
    assert set(TOKENS_AND_TABLES[arch]) <= decayed
    # a few by name: a norm's gain and a bias are not decayed, projections are
    assert {"mask_decoder.transformer.norm_final_attn.weight", "mask_decoder.transformer.layers.0.mlp.lin1.bias",
            "image_encoder.neck.1.weight"} <= plain
    assert {"mask_decoder.transformer.layers.0.self_attn.q_proj.weight", "image_encoder.neck.0.weight"} <= decayed
    # frozen parts are in neither group: the prompt encoder (its no-mask embedding too), the IoU head
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "prompt_encoder.no_mask_embed.weight" in frozen and not frozen & (decayed | plain)
    assert sum(len(g["params"]) for g in groups) == len(decayed | plain)


@pytest.mark.parametrize("method, added", [("lora", ".lora_"), ("adapter", ".adapter.")])
def test_peft_matrices_are_decayed_and_their_biases_not(method: str, added: str) -> None:
    model = _model("vit_test", "encoder-decoder", method)
    decayed, plain, _ = _groups(model)
    assert (decayed, plain) == _expected(model)
    ours = {n for n, p in model.named_parameters() if p.requires_grad and added in n}
    assert ours and {n for n in ours if not n.endswith(".bias")} <= decayed
    assert {n for n in ours if n.endswith(".bias")} <= plain
    assert "mask_decoder.mask_tokens.weight" in decayed  # the class tokens train and decay in every strategy
