"""Paired comparison of two cells over the same test images."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def per_image_dsc(metrics: dict[str, Any], dataset: str) -> dict[tuple[str, str, int], float]:
    """(dataset, case, slice) -> the image's DSC (percent), the mean over its scored classes."""
    out = {}
    for row in metrics.get("per_image", []):
        vals = [v["dsc"] for v in row["scores"].values() if v["dsc"] is not None and not math.isnan(v["dsc"])]
        if vals:
            out[(dataset, str(row["case"]), int(row["slice"]))] = 100.0 * float(np.mean(vals))
    return out


def paired_comparison(a: dict[Any, float], b: dict[Any, float], resamples: int = 10000,
                      seed: int = 0) -> dict[str, Any]:
    """``a`` against ``b`` on the images both scored: the mean difference (a - b), its 95%
    bootstrap interval (percentile, images resampled with replacement) and the two-sided
    Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; 1.0 when every difference is 0)."""
    from scipy.stats import wilcoxon

    keys = sorted(set(a) & set(b), key=str)
    if not keys:
        return {"n": 0, "mean_diff": None, "ci95": None, "wilcoxon_p": None}
    d = np.array([a[k] - b[k] for k in keys], dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = 1.0 if not np.any(d != 0) else float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return {"n": len(d), "mean_diff": float(d.mean()), "ci95": [float(lo), float(hi)], "wilcoxon_p": p,
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def verdict(cmp: dict[str, Any], alpha: float = 0.05, negligible: float = 1.0) -> str:
    """Plain words for a comparison of the winner against the runner-up: a clear win needs
    p < ``alpha`` and the interval above 0; one under ``negligible`` DSC points is said to be
    too small to matter."""
    if not cmp["n"]:
        return "no common test images to compare on"
    lo, _ = cmp["ci95"]
    if cmp["wilcoxon_p"] < alpha and lo > 0:
        if cmp["mean_diff"] < negligible:
            return f"consistently better, but by less than {negligible:g} DSC point: a tie in practice"
        return "the winner is better on these test images (p < 0.05, interval above 0)"
    return "not a clear win: the difference could be chance on these test images"
