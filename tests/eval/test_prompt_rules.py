"""Prompts at evaluation as the paper draws them (section 4.5: the training rules "during both
training and inference"), seeded per image; ``code`` and ``tight`` beside them."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesam.data.prompts import MAX_NOISE_AT_1024, components, image_rng, simulate
from tunesam.data.store import PreparedData
from tunesam.eval.evaluate import evaluate_model, prompted_masks


def _blob() -> np.ndarray:
    m = np.zeros((300, 400), bool)
    m[50:151, 100:301] = True  # tight box x 100..300, y 50..150: 201 x 101 px
    return m


def test_tight_paper_and_code_boxes() -> None:
    obj = _blob()
    tight = simulate(obj, "box", 400, None, "paper").box
    assert tight == (100.0, 50.0, 300.0, 150.0)
    assert simulate(obj, "box", 400, np.random.default_rng(5), "tight").box == tight  # tight ignores the generator
    cap = MAX_NOISE_AT_1024 * 400 / 1024  # 7.8 px at this slice's size
    sides = []
    for seed in range(200):
        box = simulate(obj, "box", 400, image_rng(seed, 3), "paper").box
        d = np.subtract(box, tight)
        assert np.all(np.abs(d) <= cap + 1e-9)  # sd 10% of 201 / 101 px is clipped to the cap
        sides.append(d)
        code = simulate(obj, "box", 400, image_rng(seed, 3), "code").box
        assert code[0] <= 100 and code[1] <= 50 and code[2] >= 300 and code[3] >= 150  # grown: encloses the object
        assert code[0] >= 100 - 0.1 * 201 - 1e-9 and code[3] <= 150 + 0.1 * 101 + 1e-9
    sides = np.array(sides)
    assert np.mean(np.abs(sides) >= cap - 1e-9) > 0.4  # 10% of 201 px (20 px) > cap: mostly at the cap
    assert np.all(sides.std(0) > 1)  # every side moves
    assert simulate(obj, "box", 400, image_rng(0, 3), "paper") == simulate(obj, "box", 400, image_rng(0, 3), "paper")
    assert simulate(obj, "box", 400, image_rng(0, 3), "paper") != simulate(obj, "box", 400, image_rng(0, 4), "paper")


def test_points_follow_each_rule() -> None:
    obj = _blob()
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    x, y = simulate(obj, "point", 400, None, "tight").point
    assert dist[int(y), int(x)] == dist.max()
    med, top = np.median(dist[obj]), np.quantile(dist[obj], 0.9)
    for seed in range(50):
        x, y = simulate(obj, "point", 400, image_rng(seed, 0), "paper").point
        assert obj[int(y), int(x)] and dist[int(y), int(x)] > med
        x, y = simulate(obj, "point", 400, image_rng(seed, 0), "code").point
        assert dist[int(y), int(x)] >= top


class _BoxPainter(torch.nn.Module):
    """A stand-in model whose mask is its box prompt: what it predicts is what it was given."""

    image_size, interpolation = 64, "bilinear"

    def encode(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 1, 1, 1)

    def decode(self, emb: torch.Tensor, boxes: torch.Tensor, **_: object) -> tuple[torch.Tensor, None]:
        out = torch.full((len(boxes), 1, 64, 64), -1.0)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            out[i, 0, math.ceil(y0) : math.floor(y1) + 1, math.ceil(x0) : math.floor(x1) + 1] = 1.0
        return out, None


def test_evaluation_prompts_are_the_rules_draws_per_image() -> None:
    ref = np.zeros((64, 64), np.uint8)
    ref[5:20, 5:30] = 1
    ref[40:60, 10:25] = 1  # two components of class 1
    ref[30:50, 35:60] = 2
    image = (ref * 80).astype(np.uint8)
    got = prompted_masks(_BoxPainter(), image, ref, "box", torch.device("cpu"), False, None, "paper", image_rng(0, 7))
    rng = image_rng(0, 7)  # the same draws, in class then component order, made here by hand
    for c in (1, 2):
        labels, n = components(ref == c)
        expected = np.zeros(ref.shape, bool)
        for k in range(1, n + 1):
            x0, y0, x1, y1 = simulate(labels == k, "box", 64, rng, "paper").box
            expected[math.ceil(y0) : math.floor(y1) + 1, math.ceil(x0) : math.floor(x1) + 1] = True
        assert np.array_equal(got["single"][c], expected)
    tight = prompted_masks(_BoxPainter(), image, ref, "box", torch.device("cpu"), False, None, "tight", image_rng(0, 7))
    assert np.array_equal(tight["single"][2], ref == 2)  # the tight box of a rectangle is the rectangle


def test_evaluate_records_its_rule_and_reruns_equal(prepared: Path) -> None:
    from tunesam.models.build import build_model

    torch.manual_seed(0)
    model = build_model("vit_t_test", None, 1, 32)
    model.requires_grad_(False)
    data = PreparedData.open(prepared)
    runs = {rules: evaluate_model(model, data, "test", "box", "cpu", prompt_rules=rules) for rules in ("paper", "tight")}
    again = evaluate_model(model, data, "test", "box", "cpu", prompt_rules="paper")
    other_seed = evaluate_model(model, data, "test", "box", "cpu", prompt_rules="paper", prompt_seed=1)
    assert runs["paper"]["prompt_rules"] == "paper" and runs["tight"]["prompt_rules"] == "tight"
    assert runs["paper"]["prompt_seed"] == 0 and other_seed["prompt_seed"] == 1
    assert again["per_image"] == runs["paper"]["per_image"]  # seeded per image: reruns are equal
    assert runs["paper"]["per_image"] != runs["tight"]["per_image"]
    assert other_seed["per_image"] != runs["paper"]["per_image"]
    with pytest.raises(ValueError, match="prompt rules"):
        evaluate_model(model, data, "test", "box", "cpu", prompt_rules="loose")


def test_validation_prompts_follow_the_rule_and_stay_fixed(prepared: Path) -> None:
    from tunesam.data.dataset import SliceDataset

    val = {r: SliceDataset(prepared, "val", 48, mode="box", prompt_rules=r) for r in ("paper", "tight")}
    boxes = []
    for epoch in (0, 3):
        val["paper"].set_epoch(epoch)
        boxes.append(torch.stack([val["paper"][i]["box"] for i in range(len(val["paper"]))]))
    tight = torch.stack([val["tight"][i]["box"] for i in range(len(val["tight"]))])
    assert torch.equal(boxes[0], boxes[1])  # the same prompts every epoch: validation DSC compares epochs
    assert not torch.equal(boxes[0], tight) and (boxes[0] - tight).abs().max() <= MAX_NOISE_AT_1024 * 48 / 1024 + 1e-4
