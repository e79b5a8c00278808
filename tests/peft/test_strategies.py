"""The 18 strategies' invariants, on the tiny ViT and TinyViT variants.

For each tune x method (x backbone family): the adapted model equals its base at
initialisation; exactly the intended parameters require grad (the expected set is derived
here from the rules, by name); every trainable parameter gets a gradient (so DDP never
sees an unused one); one optimiser step changes nothing frozen; saving and loading what
was trained reproduces the outputs exactly.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import images, max_diff, perturb_
from tunesam.models.build import build_model
from tunesam.models.registry import build_sam
from tunesam.models.segmenter import SamSegmenter
from tunesam.peft.lora import LoRALinear
from tunesam.peft.saving import load_trained, save_trained
from tunesam.peft.strategy import METHODS, TUNES, Strategy, adapter_block_indexes, apply_strategy

SIZE = 64
ARCHS = ["vit_test", "vit_t_test", "litemedsam_test"]
CASES = list(itertools.product(ARCHS, TUNES, METHODS))
BOX = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 2.0, 60.0, 30.0]])


def _base(arch: str, num_classes: int = 2, seed: int = 0) -> SamSegmenter:
    torch.manual_seed(seed)
    return build_sam(arch, num_classes=num_classes, image_size=SIZE)


def _adapted(arch: str, s: Strategy, num_classes: int = 2) -> tuple[SamSegmenter, SamSegmenter]:
    base = _base(arch, num_classes)
    model = _base(arch, num_classes)
    model.load_state_dict(base.state_dict())
    return base, apply_strategy(model, s)


def _expected_trainable(model: SamSegmenter, s: Strategy) -> set[str]:
    """The rule of DESIGN.md's 'Strategies', applied to parameter names."""
    heads = [f"mask_decoder.output_hypernetworks_mlps.{i}." for i in
             (model.class_heads if s.mode == "auto" else [0])]
    out = set()
    for name, _ in model.named_parameters():
        in_encoder = name.startswith("image_encoder.")
        in_decoder = name.startswith("mask_decoder.")
        no_grad_part = (
            "iou_prediction_head" in name
            or ("output_hypernetworks_mlps" in name and not any(name.startswith(h) for h in heads))
            or name.startswith(("image_encoder.head.", "image_encoder.norm_head."))
        )
        class_part = name == "mask_decoder.mask_tokens.weight" or any(name.startswith(h) for h in heads)
        added = ".adapter." in name or ".lora_" in name
        if s.method == "vanilla":
            wanted = in_decoder or (in_encoder and s.tune == "encoder-decoder")
        else:
            wanted = added or class_part
        if wanted and not no_grad_part:
            out.add(name)
    return out


POINTS = (torch.tensor([[[20.0, 30.0], [5.0, 7.0]], [[40.0, 12.0], [50.0, 60.0]]]), torch.tensor([[1, 0], [1, 1]]))


def _run(model: SamSegmenter, x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "auto":
        return model(x)
    return model(x, boxes=BOX) if mode == "box" else model(x, points=POINTS)


def _loss(model: SamSegmenter, x: torch.Tensor, mode: str) -> torch.Tensor:
    out = _run(model, x, mode)
    return out.logsumexp(1).mean() if mode == "auto" else out.sigmoid().mean()


@pytest.mark.parametrize("arch, tune, method", CASES)
@pytest.mark.parametrize("mode", ["auto", "box", "point"])
def test_strategy_invariants(arch: str, tune: str, method: str, mode: str, tmp_path: Path) -> None:
    s = Strategy(tune, method, mode)
    base, model = _adapted(arch, s, num_classes=2 if mode == "auto" else 1)
    x = images(2, SIZE)
    base.eval()
    model.eval()
    with torch.no_grad():
        assert max_diff(_run(model, x, mode), _run(base, x, mode)) <= 1e-5

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(model, s)
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())

    model.train()
    if tune == "decoder":
        assert not model.encode(x).requires_grad  # frozen encoder runs without autograd
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _loss(model, x, mode).backward()
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert no_grad == [], f"trainable but unused: {no_grad}"
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable and changed

    # The real path: a base checkpoint file plus only what trained reproduce the outputs.
    torch.save(base.state_dict(), tmp_path / "base.pth")
    save_trained(model, tmp_path / "trained.safetensors", base_checkpoint=tmp_path / "base.pth")
    assert len(load_file(str(tmp_path / "trained.safetensors"))) < len(model.state_dict())
    fresh = build_model(arch, tmp_path / "base.pth", num_classes=model.num_classes, image_size=SIZE)
    apply_strategy(fresh, s)
    load_trained(fresh, tmp_path / "trained.safetensors")
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(_run(model, x, mode), _run(fresh, x, mode))


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_placement(arch: str) -> None:
    for which in ("default", "all"):
        _, model = _adapted(arch, Strategy("encoder-decoder", "adapter", adapter_blocks=which))
        wrapped = sorted({n.split(".attn.adapter.")[0] for n, _ in model.named_parameters() if ".attn.adapter." in n})
        blocks = (model.image_encoder.blocks if arch == "vit_test" else model.image_encoder.attention_blocks())
        names = {id(m): n for n, m in model.image_encoder.named_modules()}
        all_blocks = [f"image_encoder.{names[id(b)]}" for b in blocks]
        n = len(all_blocks)
        expected = all_blocks if which == "all" else [all_blocks[i] for i in (0, 1, n - 2, n - 1)]
        assert wrapped == sorted(expected)
        # an MLP adapter beside each attention adapter
        assert sum(".mlp.adapter.up.weight" in k for k, _ in model.named_parameters()) == len(expected)
    assert adapter_block_indexes(12, "default") == [0, 1, 10, 11]
    assert adapter_block_indexes(3, "default") == [0, 1, 2]


def test_tinyvit_lora_touches_only_q_and_v_rows_of_interleaved_qkv() -> None:
    _, model = _adapted("vit_t_test", Strategy("encoder-decoder", "lora"))
    lora = next(m for n, m in model.image_encoder.named_modules() if isinstance(m, LoRALinear))
    attn = next(m for m in model.image_encoder.modules() if hasattr(m, "qkv") and m.qkv is lora)
    perturb_([lora.lora_B["q"], lora.lora_B["v"]])
    changed = (lora.merged_weight() != lora.base_layer.weight).any(dim=1).nonzero().flatten().tolist()
    # TinyViT's qkv output is viewed as (heads, key_dim + key_dim + value_dim): per head q, k, v.
    kd, heads = attn.key_dim, attn.num_heads
    expected = []
    for h in range(heads):
        start = h * 3 * kd
        expected += list(range(start, start + kd)) + list(range(start + 2 * kd, start + 3 * kd))
    assert changed == expected


def test_vit_lora_touches_only_q_and_v_blocks_of_fused_qkv() -> None:
    _, model = _adapted("vit_test", Strategy("encoder-decoder", "lora"))
    lora = model.image_encoder.blocks[0].attn.qkv
    perturb_([lora.lora_B["q"], lora.lora_B["v"]])
    dim = lora.base_layer.in_features
    changed = (lora.merged_weight() != lora.base_layer.weight).any(dim=1).nonzero().flatten().tolist()
    assert changed == list(range(dim)) + list(range(2 * dim, 3 * dim))


def test_lora_rank_option_and_identity_start() -> None:
    _, model = _adapted("vit_test", Strategy("decoder", "lora", lora_rank=8))
    ranks = {p.shape[0] for n, p in model.named_parameters() if ".lora_A." in n}
    assert ranks == {8}
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if ".lora_B." in n)


def test_strategy_rejects_bad_values_and_double_application() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        Strategy("decoder", "prefix")
    _, model = _adapted("vit_test", Strategy("decoder", "vanilla"))
    with pytest.raises(RuntimeError, match="already applied"):
        apply_strategy(model, Strategy("decoder", "lora"))
    with pytest.raises(ValueError, match="num_classes=1"):
        apply_strategy(_base("vit_test", num_classes=2), Strategy("decoder", "vanilla", mode="point"))


def test_loading_trained_weights_into_another_setup_fails(tmp_path: Path) -> None:
    _, model = _adapted("vit_test", Strategy("decoder", "lora"))
    save_trained(model, tmp_path / "a.safetensors")
    _, other = _adapted("vit_test", Strategy("decoder", "adapter"))
    with pytest.raises(ValueError, match="another model set-up: strategy"):
        load_trained(other, tmp_path / "a.safetensors")


def test_trained_weights_record_the_base_checkpoint(tmp_path: Path) -> None:
    import hashlib
    import json

    base = tmp_path / "base.pth"
    torch.save(_base("vit_test").state_dict(), base)
    _, model = _adapted("vit_test", Strategy("encoder-decoder", "adapter"))
    meta_path = save_trained(model, tmp_path / "run.safetensors", base_checkpoint=base)
    meta = json.loads(meta_path.read_text())
    assert meta["base_checkpoint"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert meta["strategy"]["method"] == "adapter"


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_adapters_see_the_normalised_input_the_mlp_sees(arch: str) -> None:
    _, model = _adapted(arch, Strategy("encoder-decoder", "adapter"))
    block = next(m for m in model.image_encoder.modules() if hasattr(m, "mlp") and hasattr(m.mlp, "adapter"))
    seen: dict[str, torch.Tensor] = {}

    def record(name: str):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.setdefault(name, inputs[0])
        return hook

    block.mlp.adapter.down.register_forward_hook(record("adapter"))
    mlp = block.mlp.base_layer
    first = mlp.lin1 if hasattr(mlp, "lin1") else mlp.fc1  # SAM's MLPBlock / TinyViT's Mlp
    first.register_forward_hook(record("mlp"))
    with torch.no_grad():
        model.eval()(images(1, SIZE))
    assert torch.equal(seen["adapter"], seen["mlp"])


@pytest.mark.parametrize("arch", ["vit_test", "vit_t_test"])
def test_lora_forward_and_gradients_equal_its_merged_layer(arch: str) -> None:
    """The forward stacks the targets' updates into one dense low-rank pair: it must equal the
    layer with the updates merged into its weight, values and gradients of A and B."""
    _, model = _adapted(arch, Strategy("encoder-decoder", "lora"))
    lora = next(m for m in model.image_encoder.modules() if isinstance(m, LoRALinear))
    perturb_(list(lora.lora_B.values()))
    x = torch.randn(3, 7, lora.base_layer.in_features, dtype=torch.float64)
    lora.double()
    out = lora(x)
    merged = torch.nn.functional.linear(x, lora.merged_weight(), lora.base_layer.bias)
    torch.testing.assert_close(out, merged)
    params = [*lora.lora_A.values(), *lora.lora_B.values()]
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), params)

    def by_rows(x: torch.Tensor) -> torch.Tensor:  # the update added row by row, as the definition says
        y = lora.base_layer(x)
        for name in lora._targets:
            rows = lora._rows(name)
            delta = lora.scaling * (x @ lora.lora_A[name].t()) @ lora.lora_B[name].t()
            y = y + delta if rows is None else y.index_add(-1, rows, delta)
        return y

    ref = by_rows(x)
    for g, r in zip(grads, torch.autograd.grad((ref * torch.cos(ref)).sum(), params)):
        torch.testing.assert_close(g, r)
