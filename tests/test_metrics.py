"""DSC and NSD against hand-computed cases and MONAI's DeepMind-style implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from tunesam.metrics import (
    PooledScores,
    ScoreTable,
    class_counts_2d,
    counts_2d,
    dice,
    score_classes,
    surface_counts_2d,
    surface_dice_2d,
    surface_dice_3d,
)


def test_dice_by_hand() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 pixels
    b[0, 1:] = True  # 3 pixels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert math.isnan(dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)))
    assert dice(a, np.zeros_like(a)) == 0.0


def test_nsd_by_hand() -> None:
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    assert surface_dice_2d(a, a, (1.0, 1.0), 0.0) == 1.0
    b = np.roll(a, 3, axis=1)  # shifted 3 px: every boundary point of the vertical sides moves 3
    # Tolerance below the shift: only the parts of the horizontal edges that overlap stay close.
    # Square 4x4: contour = 4 sides of length 4 (with corner half-diagonals). Hand count:
    # corners contribute diagonal pieces; at tolerance 1 px the overlapping top/bottom runs match.
    assert surface_dice_2d(a, b, (1.0, 1.0), 10.0) == 1.0
    assert surface_dice_2d(a, b, (1.0, 1.0), 0.0) < 0.5
    # anisotropic spacing: a shift of 1 column at 0.5 mm is within 0.5 mm
    c = np.roll(a, 1, axis=1)
    assert surface_dice_2d(a, c, (1.0, 0.5), 0.5) == 1.0
    assert surface_dice_2d(a, c, (1.0, 2.0), 1.0) < 1.0
    assert surface_dice_2d(a, np.zeros_like(a), (1, 1)) == 0.0
    assert math.isnan(surface_dice_2d(np.zeros_like(a), np.zeros_like(a), (1, 1)))


def test_single_pixel_contour_is_a_diamond() -> None:
    # One pixel: four half-diagonal pieces around it, length 4 * sqrt(2)/2 each side of the
    # vertex grid. Against itself shifted by one pixel diagonally at tolerance 1: the two
    # diamonds share no vertex; distances between their vertices are 1 (on the grid).
    a = np.zeros((5, 5), bool)
    a[2, 2] = True
    b = np.zeros((5, 5), bool)
    b[2, 3] = True
    # Each diamond has 4 vertices; 2 of a's lie at distance 0 from b's vertex set (shared
    # edge vertices) and 2 at distance 1: at tolerance 0.5 half of each boundary matches.
    assert surface_dice_2d(a, b, (1.0, 1.0), 0.5) == pytest.approx(0.5)
    assert surface_dice_2d(a, b, (1.0, 1.0), 1.0) == pytest.approx(1.0)


def _monai_nsd(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> float:
    from monai.metrics import compute_surface_dice

    def onehot(m: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(m)
        return torch.stack([~t, t])[None].float()

    return float(compute_surface_dice(onehot(pred), onehot(ref), [tol], spacing=list(spacing),
                                      use_subvoxels=True).reshape(-1)[0])


@pytest.mark.parametrize("seed", range(6))
def test_nsd_2d_agrees_with_monai_on_random_masks(seed: int) -> None:
    pytest.importorskip("monai")
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    shape = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    pred = ndimage.binary_opening(rng.random(shape) > 0.55, iterations=1)
    ref = ndimage.binary_opening(rng.random(shape) > 0.5, iterations=1)
    spacing = (float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.3, 2.0)))
    for tol in (0.0, 1.0, 2.0, 3.5):
        assert surface_dice_2d(pred, ref, spacing, tol) == pytest.approx(_monai_nsd(pred, ref, spacing, tol), abs=1e-6)


def test_nsd_3d_properties() -> None:
    pytest.importorskip("monai")
    a = np.zeros((8, 10, 10), bool)
    a[2:6, 3:7, 3:7] = True
    assert surface_dice_3d(a, a, (2.0, 1.0, 1.0)) == pytest.approx(1.0)
    far = np.roll(a, 4, axis=2)
    assert surface_dice_3d(a, far, (1.0, 1.0, 1.0), 1.0) < 0.5
    assert surface_dice_3d(a, far, (1.0, 1.0, 1.0), 10.0) == pytest.approx(1.0)
    # a one-voxel shift along the 2 mm axis is within 2 mm, not within 1 mm
    up = np.roll(a, 1, axis=0)
    assert surface_dice_3d(a, up, (2.0, 1.0, 1.0), 2.0) == pytest.approx(1.0)
    assert surface_dice_3d(a, up, (2.0, 1.0, 1.0), 1.0) < 1.0


def test_score_table_means_over_images_then_classes() -> None:
    table = ScoreTable({0: "bg", 1: "a", 2: "b"})
    pred = np.array([[1, 1], [0, 2]])
    ref = np.array([[1, 0], [0, 2]])
    table.add(score_classes(pred, ref, [1, 2], (1.0, 1.0)), index=0)
    table.add(score_classes(np.zeros((2, 2), int), np.zeros((2, 2), int), [1, 2], (1.0, 1.0)), index=1)
    agg = table.aggregate()
    assert agg["classes"]["1"]["dsc"] == pytest.approx(100 * 2 / 3)
    assert agg["classes"]["1"]["n"] == 1  # the empty image is not scored
    assert agg["classes"]["2"]["dsc"] == pytest.approx(100.0)
    assert agg["mean"]["dsc"] == pytest.approx((100 * 2 / 3 + 100) / 2)


def test_pooled_scores_weigh_pixels_not_images() -> None:
    # image 1: a 2 x 2 square predicted 2 x 3 (DSC 0.8); image 2: a single missed pixel (DSC 0)
    big_ref, big_pred = np.zeros((8, 8), int), np.zeros((8, 8), int)
    big_ref[2:4, 2:4] = 1
    big_pred[2:4, 2:5] = 1
    small_ref = np.zeros((8, 8), int)
    small_ref[5, 5] = 1
    pooled, table = PooledScores({0: "bg", 1: "a"}), ScoreTable({0: "bg", 1: "a"})
    for pred, ref in ((big_pred, big_ref), (np.zeros((8, 8), int), small_ref), (np.zeros((8, 8), int),) * 2):
        counts = class_counts_2d(pred, ref, [1], (1.0, 1.0))
        pooled.add(counts)
        table.add_counts(counts)
    by_image, by_pixel = table.aggregate()["classes"]["1"], pooled.aggregate()["classes"]["1"]
    assert by_image["dsc"] == pytest.approx(100 * (0.8 + 0.0) / 2)
    assert by_pixel["dsc"] == pytest.approx(100 * 2 * 4 / (6 + 4 + 1))
    assert by_pixel["n"] == 2  # the empty image adds nothing
    # NSD: the square's boundary is all within 1 px; the missed pixel's boundary counts as far
    _, lengths = surface_counts_2d(small_ref == 1, np.zeros((8, 8), bool), (1.0, 1.0), 1.0)
    close, total = surface_counts_2d(big_pred == 1, big_ref == 1, (1.0, 1.0), 2.0)
    assert close == total
    assert by_pixel["nsd"] == pytest.approx(100 * close / (total + lengths))


def test_counts_give_the_per_image_scores() -> None:
    # against independent implementations: the set-based DSC and MONAI's surface Dice
    rng = np.random.default_rng(3)
    for _ in range(10):
        pred = ndimage.binary_opening(rng.random((24, 20)) > 0.5)
        ref = ndimage.binary_opening(rng.random((24, 20)) > 0.5)
        s = counts_2d(pred, ref, (0.7, 1.3), 2.0).scores()
        assert s["dsc"] == pytest.approx(dice(pred, ref))
        assert s["nsd"] == pytest.approx(_monai_nsd(pred, ref, (0.7, 1.3), 2.0), abs=1e-6)
    assert counts_2d(pred, np.zeros_like(ref), (1.0, 1.0)).scores() == {"dsc": 0.0, "nsd": 0.0}
    assert all(math.isnan(v) for v in counts_2d(~np.ones_like(ref), ~np.ones_like(ref), (1.0, 1.0)).scores().values())


@pytest.mark.parametrize("seed", range(3))
def test_pooled_nsd_equals_monai_on_the_slices_tiled_into_one_image(seed: int) -> None:
    """Pooled NSD is the boundary within tolerance over all boundary of all slices: exactly
    MONAI's NSD of one canvas holding the slices side by side, far enough apart that no
    boundary sees another slice's (independent of our surface code)."""
    pytest.importorskip("monai")
    rng = np.random.default_rng(10 + seed)
    tol, gap = 2.0, 12
    pooled = PooledScores({0: "bg", 1: "a"})
    tiles = []
    for k in range(4):
        shape = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
        pred = ndimage.binary_opening(rng.random(shape) > 0.5, iterations=1)
        ref = ndimage.binary_opening(rng.random(shape) > 0.45, iterations=1)
        if k == 3:
            ref[:] = False  # a slice with prediction only: its boundary counts, none within tolerance
        pooled.add({1: counts_2d(pred, ref, (1.0, 1.0), tol)})
        tiles.append((pred, ref))
    height = max(p.shape[0] for p, _ in tiles) + 2 * gap
    width = sum(p.shape[1] + gap for p, _ in tiles) + gap
    canvas_pred, canvas_ref = np.zeros((height, width), bool), np.zeros((height, width), bool)
    x = gap
    for pred, ref in tiles:
        h, w = pred.shape
        canvas_pred[gap : gap + h, x : x + w], canvas_ref[gap : gap + h, x : x + w] = pred, ref
        x += w + gap
    expected = 100 * _monai_nsd(canvas_pred, canvas_ref, (1.0, 1.0), tol)
    assert pooled.aggregate()["classes"]["1"]["nsd"] == pytest.approx(expected, abs=1e-3)
