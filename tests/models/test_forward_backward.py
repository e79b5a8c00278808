"""Every registry entry runs forward and backward; input checks; bf16; checkpointing."""
from __future__ import annotations

import pytest
import torch

from helpers import images, max_diff
from tunesam.models.registry import ARCHS, build_sam

SMALL = 64


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_backward_every_entry(arch: str) -> None:
    model = build_sam(arch, num_classes=2, image_size=SMALL)
    x = images(2, SMALL)
    logits = model(x)
    assert logits.shape == (2, 3, SMALL, SMALL)
    boxes = torch.tensor([[2.0, 3.0, 40.0, 50.0], [0.0, 0.0, 63.0, 63.0]])
    prompted = model(x, boxes=boxes)
    assert prompted.shape == (2, 1, SMALL, SMALL)
    (logits.mean() + prompted.mean()).backward()
    grads = [p.grad for p in model.image_encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.image_encoder.patch_embed.__class__.__name__ == "PatchEmbed"


@pytest.mark.parametrize("arch", ["vit_test", "vit_t_test"])
def test_points_and_multimask(arch: str) -> None:
    model = build_sam(arch, image_size=SMALL).eval()
    x = images(2, SMALL)
    pts = (torch.tensor([[[10.0, 12.0]], [[30.0, 40.0]]]), torch.tensor([[1], [1]]))
    with torch.no_grad():
        assert model(x, points=pts).shape == (2, 1, SMALL, SMALL)
        low, iou = model.decode(model.encode(x), points=pts, multimask_output=True, with_iou=True)
    assert low.shape == (2, 3, SMALL // 4, SMALL // 4) and iou.shape == (2, 3)


@pytest.mark.parametrize("arch", ["vit_test", "vit_t_test"])
def test_activation_checkpointing_gives_the_same_gradients(arch: str) -> None:
    model = build_sam(arch, image_size=SMALL)
    x = images(1, SMALL)
    model(x).square().mean().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.image_encoder.grad_checkpointing = True
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        if n in plain:
            assert max_diff(plain[n], p.grad) <= 1e-5, n


@pytest.mark.parametrize("arch", ["vit_test", "vit_t_test"])
def test_bf16_autocast_runs_and_stays_close(arch: str) -> None:
    model = build_sam(arch, image_size=SMALL).eval()
    x = images(1, SMALL)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert max_diff(out, ref) <= 0.1 * ref.abs().max().item() + 0.05


def test_grey_input_equals_repeated_rgb_and_bad_shapes_are_explained() -> None:
    model = build_sam("vit_test", image_size=SMALL).eval()
    grey = images(1, SMALL)[:, :1]
    with torch.no_grad():
        assert torch.equal(model(grey), model(grey.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="must be 64 x 64"):
        model(images(1, 32))
    with pytest.raises(ValueError, match=r"B x 3 x 64 x 64"):
        model(torch.zeros(3, SMALL, SMALL))


def test_one_image_many_prompts_and_batch_mismatch() -> None:
    model = build_sam("vit_test", image_size=SMALL).eval()
    with torch.no_grad():
        emb = model.encode(images(1, SMALL))
        boxes = torch.tensor([[1.0, 1, 20, 20], [5, 5, 60, 60], [0, 0, 63, 63]])
        low, _ = model.decode(emb, boxes=boxes)
        assert low.shape[0] == 3
        with pytest.raises(ValueError, match="2 image embeddings for 3 prompt sets"):
            model.decode(emb.expand(2, -1, -1, -1), boxes=boxes)


def test_unit_pixel_norm_maps_0_255_to_0_1() -> None:
    model = build_sam("vit_test", image_size=SMALL, pixel_norm="unit")
    x = images(1, SMALL)
    assert max_diff(model.preprocess(x), x / 255.0) <= 1e-6
    with pytest.raises(ValueError, match="unknown pixel normalisation"):
        model.set_pixel_norm("imagenet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_bf16_trains() -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for arch in ("vit_t", "vit_b"):
        model = build_sam(arch, num_classes=2, image_size=256).eval()
        x = images(2, 256)
        with torch.no_grad():
            ref = model(x)
            model.cuda()
            out = model(x.cuda()).cpu()
        assert max_diff(out, ref) <= 1e-3, arch
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x.cuda()).float().logsumexp(1).mean()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("size", [(6, 5), (4, 4)])
def test_rel_pos_folded_into_qk_equals_the_mask_form(monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]) -> None:
    from tunesam.models import image_encoder
    from tunesam.models.image_encoder import Attention

    torch.manual_seed(0)
    attn = Attention(32, num_heads=2, use_rel_pos=True, input_size=size)
    with torch.no_grad():  # official checkpoints hold non-zero tables; zeros would hide a wrong fold
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(3, *size, 32, requires_grad=True)
    results = []
    for folded in (True, False):
        monkeypatch.setattr(image_encoder, "REL_POS_IN_QK", folded)
        out = attn(x)
        grads = torch.autograd.grad(out.square().sum(), [x, attn.rel_pos_h, attn.qkv.weight])
        results.append((out, *grads))
    for a, b in zip(*results):
        assert max_diff(a, b) < 1e-4 * max(1.0, b.abs().max().item())
