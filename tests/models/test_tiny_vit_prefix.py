"""Training LoRA or adapters on TinyViT runs the frozen stem and first stage through a fused
copy without autograd (issue 19): the same outputs and gradients, to float rounding."""
from __future__ import annotations

import copy

import pytest
import torch

from tunesam.models.registry import build_sam
from tunesam.peft.strategy import Strategy, apply_strategy


@pytest.mark.parametrize("arch", ["litemedsam_test", "vit_t_test"])
@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_the_fused_frozen_prefix_changes_nothing(arch: str, method: str) -> None:
    torch.manual_seed(0)
    model = build_sam(arch, image_size=64)
    apply_strategy(model, Strategy("encoder-decoder", method))
    model.train()
    enc = model.image_encoder
    assert enc.frozen_stages() == 1  # the stem and the convolutional stage have nothing to train
    x = torch.randn(2, 3, 64, 64)
    fast, plain = enc(x), enc.trunk(enc.embed(x))
    assert "_frozen_prefix" in enc.__dict__ and enc.__dict__["_frozen_prefix"][1] == 1
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
    trained = [p for p in enc.parameters() if p.requires_grad]
    g_fast = torch.autograd.grad(fast.square().mean(), trained)
    g_plain = torch.autograd.grad(plain.square().mean(), trained)
    # The tiny random models' gradients are ill-conditioned (float32 is ~1% off float64 either
    # way): the fused path must be as close to a float64 reference as the plain one.
    ref_model = copy.deepcopy(model).double().train()
    ref = ref_model.image_encoder
    ref_out = ref.trunk(ref.embed(x.double()))
    g_ref = torch.autograd.grad(ref_out.square().mean(), [p for p in ref.parameters() if p.requires_grad])

    def error(grads: tuple[torch.Tensor, ...]) -> float:
        return max(((g.double() - r).norm() / r.norm().clamp(min=1e-30)).item() for g, r in zip(grads, g_ref))

    assert error(g_fast) <= 2 * error(g_plain) + 1e-6, (error(g_fast), error(g_plain))
    everything = build_sam(arch, image_size=64)
    apply_strategy(everything, Strategy("encoder-decoder", "vanilla"))
    assert everything.image_encoder.frozen_stages() == 0  # vanilla trains the stem: no prefix
    model.train()
    assert "_frozen_prefix" not in enc.__dict__  # made again after train(), where freezing may change


def test_the_prefix_follows_loaded_weights_and_freezing_in_eval_too() -> None:
    """The fused copy is cached: weights loaded after a forward, or a stage unfrozen without
    ``train()``, must not leave it stale."""
    torch.manual_seed(0)
    model = build_sam("litemedsam_test", image_size=64)
    apply_strategy(model, Strategy("encoder-decoder", "lora"))
    model.eval()
    enc = model.image_encoder
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        enc(x)
        assert enc.__dict__["_frozen_prefix"][1] == 1  # validation and evaluation use it too
        other = build_sam("litemedsam_test", image_size=64)
        apply_strategy(other, Strategy("encoder-decoder", "lora"))
        for p in other.parameters():
            p.data.normal_(0, 0.05)
        model.load_state_dict(other.state_dict())
        other.eval()
        torch.testing.assert_close(enc(x), other.image_encoder.trunk(other.image_encoder.embed(x)), atol=1e-4, rtol=1e-4)
        for p in enc.patch_embed.parameters():
            p.requires_grad_(True)
        enc(x)
        assert enc.__dict__["_frozen_prefix"][0] is None  # the stem trains now: no prefix


def test_the_prefix_is_built_once_while_the_trained_stages_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """LoRA's weights change every optimiser step; the frozen stages it copies do not."""
    from tunesam.models import tiny_vit

    built = []
    real = tiny_vit.fuse_for_inference
    monkeypatch.setattr(tiny_vit, "fuse_for_inference", lambda m: built.append(1) or real(m))
    torch.manual_seed(0)
    model = build_sam("litemedsam_test", image_size=64)
    apply_strategy(model, Strategy("encoder-decoder", "lora"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 3, 64, 64) * 255
    for _ in range(4):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert len(built) == 1
    model.eval()
    with torch.no_grad():
        model(x)
        model(x)
    assert len(built) == 2  # once more after eval(), then reused


def test_no_prefix_in_a_whole_fused_copy_nor_for_inputs_that_need_gradients() -> None:
    torch.manual_seed(0)
    model = build_sam("litemedsam_test", image_size=64)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval().use_inference_encoder()
    with torch.no_grad():
        model.encode(torch.rand(1, 3, 64, 64) * 255)
    fused = model.__dict__["_inference_encoder"]
    assert "_frozen_prefix" not in fused.__dict__  # the copy is fused as a whole already
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    model.image_encoder(x).sum().backward()  # e.g. a saliency map: the input's gradient must flow
    assert x.grad is not None and x.grad.abs().sum() > 0
