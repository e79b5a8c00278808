"""Segmentation metrics as pure functions plus an accumulator.

Conventions (written into every ``metrics.json``):

* Scores are per foreground class. A class absent from both prediction and reference is
  not scored for that image (``nan``); absent from one only scores 0.
* DSC = 2|A n B| / (|A| + |B|).
* NSD is the normalised surface distance, or surface Dice, of Nikolov et al. as DeepMind's
  ``surface-distance`` defines it: surfaces are the marching-squares (2D) / marching-cubes
  (3D) boundary elements between pixel centres, each weighted by its length/area in physical
  units; NSD is the fraction of both boundaries lying within tolerance tau of the other.
  tau = 2 (mm where the spacing is known, else pixels). The 2D version is implemented here;
  the 3D version uses MONAI's ``compute_surface_dice(use_subvoxels=True)``, which follows
  the same definition.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

NSD_TOLERANCE = 2.0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """DSC of two boolean masks; ``nan`` when both are empty."""
    a, b = int(pred.sum()), int(ref.sum())
    if a + b == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred, ref).sum()) / (a + b)


def _empty_policy(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """``nan`` when both masks are empty, 0 when one is, ``None`` when both hold foreground."""
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not has_p and not has_r:
        return math.nan
    return None if has_p and has_r else 0.0


def _contour_lengths(spacing: tuple[float, float]) -> np.ndarray:
    """Boundary length inside each 2 x 2 pixel neighbourhood, by its 4-bit code.

    Code bits: 8 top-left, 4 top-right, 2 bottom-left, 1 bottom-right. Marching squares
    joins the mid-points of edges whose end pixels differ: one corner in or out gives a
    half-diagonal, two side-by-side corners a full cell side, two opposite corners two
    half-diagonals.
    """
    rows, cols = spacing
    diag = 0.5 * math.hypot(rows, cols)
    table = np.zeros(16, np.float64)
    table[[1, 2, 4, 8, 7, 11, 13, 14]] = diag
    table[[3, 12]] = cols  # top or bottom pair in: a horizontal line across the cell
    table[[5, 10]] = rows  # left or right pair in: a vertical line
    table[[6, 9]] = 2 * diag
    return table


def _surface_2d(mask: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(boundary vertices, their contour lengths) on the grid between pixel centres."""
    p = np.pad(mask.astype(np.uint8), 1)
    code = 8 * p[:-1, :-1] + 4 * p[:-1, 1:] + 2 * p[1:, :-1] + p[1:, 1:]
    border = (code != 0) & (code != 15)
    return border, _contour_lengths(spacing)[code]


def surface_counts_2d(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), tolerance: float = NSD_TOLERANCE
) -> tuple[float, float]:
    """(boundary length within ``tolerance`` of the other boundary, total boundary length), both masks."""
    sp = (float(spacing[0]), float(spacing[1]))
    border_p, len_p = _surface_2d(pred, sp)
    border_r, len_r = _surface_2d(ref, sp)
    lp, lr = len_p[border_p], len_r[border_r]
    if not pred.any() or not ref.any():
        return 0.0, float(lp.sum() + lr.sum())
    dist_to_r = ndimage.distance_transform_edt(~border_r, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~border_p, sampling=sp)
    close = lp[dist_to_r[border_p] <= tolerance].sum() + lr[dist_to_p[border_r] <= tolerance].sum()
    return float(close), float(lp.sum() + lr.sum())


def surface_dice_2d(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), tolerance: float = NSD_TOLERANCE
) -> float:
    """NSD of two boolean ``h x w`` masks with (row, column) ``spacing``; ``nan`` if both empty."""
    empty = _empty_policy(pred, ref)
    if empty is not None:
        return empty
    close, total = surface_counts_2d(pred, ref, spacing, tolerance)
    return close / total


@dataclass(frozen=True)
class Counts:
    """What DSC and NSD of one class on one 2D image are made of; sums of them give pooled scores."""

    inter: int
    pred: int
    ref: int
    close: float
    boundary: float

    def scores(self) -> dict[str, float]:
        if self.pred + self.ref == 0:
            return {"dsc": math.nan, "nsd": math.nan}
        nsd = self.close / self.boundary if self.pred and self.ref else 0.0
        return {"dsc": 2.0 * self.inter / (self.pred + self.ref), "nsd": nsd}


def class_counts_2d(
    pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], spacing: Sequence[float],
    tolerance: float = NSD_TOLERANCE,
) -> dict[int, Counts]:
    """Per foreground class, the :class:`Counts` of two 2D label maps."""
    return {c: counts_2d(pred == c, ref == c, spacing, tolerance) for c in classes}


def counts_2d(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance: float = NSD_TOLERANCE
) -> Counts:
    """The :class:`Counts` of two boolean 2D masks."""
    close, boundary = surface_counts_2d(pred, ref, spacing, tolerance)
    return Counts(int(np.logical_and(pred, ref).sum()), int(pred.sum()), int(ref.sum()), close, boundary)


def surface_dice_3d(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance: float = NSD_TOLERANCE
) -> float:
    """NSD of two boolean ``d x h x w`` masks, ``spacing`` in array order (MONAI, subvoxels)."""
    empty = _empty_policy(pred, ref)
    if empty is not None:
        return empty
    import torch
    from monai.metrics import compute_surface_dice

    def onehot(m: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=bool))
        return torch.stack([~t, t])[None].float()

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecation notices
        value = compute_surface_dice(
            onehot(pred), onehot(ref), class_thresholds=[tolerance], include_background=False,
            spacing=[float(s) for s in spacing], use_subvoxels=True,
        )
    return float(value.reshape(-1)[0])


def score_classes(
    pred: np.ndarray,
    ref: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float],
    tolerance: float = NSD_TOLERANCE,
) -> dict[int, dict[str, float]]:
    """DSC and NSD (fractions) per foreground class of two label maps (2D or 3D)."""
    if pred.ndim == 2:
        return {c: n.scores() for c, n in class_counts_2d(pred, ref, classes, spacing, tolerance).items()}
    out = {}
    for c in classes:
        p, r = pred == c, ref == c
        out[c] = {"dsc": dice(p, r), "nsd": surface_dice_3d(p, r, spacing, tolerance)}
    return out


class ScoreTable:
    """Accumulates per-item scores; ``aggregate`` gives per-class and overall means (percent).

    ``mean`` is the mean over items per class, then the unweighted mean over classes.
    """

    def __init__(self, class_names: dict[int, str]) -> None:
        self.class_names = {c: n for c, n in class_names.items() if c != 0}
        self.rows: list[dict[str, object]] = []

    def add(self, scores: dict[int, dict[str, float]], **info: object) -> None:
        self.rows.append({**info, "scores": {str(c): v for c, v in scores.items()}})

    def add_counts(self, counts: dict[int, Counts], **info: object) -> None:
        self.add({c: n.scores() for c, n in counts.items()}, **info)

    def reset(self) -> None:
        self.rows.clear()

    def aggregate(self) -> dict[str, object]:
        classes: dict[str, dict[str, object]] = {}
        for c, name in self.class_names.items():
            vals = {k: [r["scores"][str(c)][k] for r in self.rows if str(c) in r["scores"]]  # type: ignore[index]
                    for k in ("dsc", "nsd")}
            scored = [v for v in vals["dsc"] if not math.isnan(v)]
            classes[str(c)] = {
                "name": name,
                "dsc": _pct_mean(vals["dsc"]),
                "nsd": _pct_mean(vals["nsd"]),
                "n": len(scored),
            }
        means = {k: _mean([v[k] for v in classes.values() if v[k] is not None]) for k in ("dsc", "nsd")}
        return {"classes": classes, "mean": means}


class PooledScores:
    """Every scored pixel of a split together, the "global Dice" of LiTS and Metrics Reloaded.

    Per class: DSC = 2 sum|A n B| / sum(|A| + |B|) over all images, NSD = the boundary length
    within tolerance over the total boundary length of all images. Unlike a mean over images, a
    tiny structure weighs by its size, so it reads as the score of the whole region scored
    (for slabs of one volume: of that volume's part in the split).
    """

    def __init__(self, class_names: dict[int, str]) -> None:
        self.class_names = {c: n for c, n in class_names.items() if c != 0}
        self.sums = {c: np.zeros(5) for c in self.class_names}
        self.images = {c: 0 for c in self.class_names}

    def add(self, counts: dict[int, Counts]) -> None:
        for c, n in counts.items():
            self.sums[c] += (n.inter, n.pred, n.ref, n.close, n.boundary)
            self.images[c] += int(n.pred + n.ref > 0)

    def aggregate(self) -> dict[str, object]:
        classes: dict[str, dict[str, object]] = {}
        for c, name in self.class_names.items():
            inter, pred, ref, close, boundary = self.sums[c]
            s = Counts(int(inter), int(pred), int(ref), float(close), float(boundary)).scores()
            classes[str(c)] = {"name": name, "n": self.images[c],
                               **{k: None if math.isnan(v) else round(100.0 * v, 4) for k, v in s.items()}}
        means = {k: _mean([v[k] for v in classes.values() if v[k] is not None]) for k in ("dsc", "nsd")}
        return {"classes": classes, "mean": means}


def _pct_mean(values: Sequence[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return round(100.0 * float(np.mean(kept)), 4) if kept else None


def _mean(values: Sequence[object]) -> float | None:
    nums = [float(v) for v in values if v is not None]  # type: ignore[arg-type]
    return round(float(np.mean(nums)), 4) if nums else None
