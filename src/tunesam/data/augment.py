"""The paper's training augmentations on uint8 slices: histogram equalisation (p = 0.1) and
brightness/contrast jitter (0.3), as the reference code applies them.

Randomness comes from a generator passed in, so an item's augmentation depends only on
(seed, epoch, slice): a resumed run sees exactly what an uninterrupted one saw.
"""
from __future__ import annotations

import numpy as np


def equalize_histogram(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation of a uint8 image (the classic cumulative-histogram mapping)."""
    hist = np.bincount(image.ravel(), minlength=256)
    cdf = hist.cumsum()
    nonzero = cdf[cdf > 0]
    if nonzero.size == 0 or cdf[-1] == nonzero[0]:
        return image.copy()
    lut = np.clip(np.round((cdf - nonzero[0]) * 255.0 / (cdf[-1] - nonzero[0])), 0, 255).astype(np.uint8)
    return lut[image]


def jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.3, contrast: float = 0.3) -> np.ndarray:
    """Scale brightness by b ~ U(1-0.3, 1+0.3), then contrast about the mean by c ~ U(0.7, 1.3)."""
    x = image.astype(np.float32)
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    x = np.clip(x * b, 0, 255)
    mean = x.mean()
    x = (x - mean) * c + mean
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def augment(image: np.ndarray, rng: np.random.Generator, p_equalize: float = 0.1) -> np.ndarray:
    """The training augmentation of one ``h x w`` uint8 slice."""
    out = np.asarray(image)
    if rng.random() < p_equalize:
        out = equalize_histogram(out)
    return jitter(out, rng)
