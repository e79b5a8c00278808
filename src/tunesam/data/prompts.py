"""Prompt simulation (the paper, section 2.3) for the point and box modes.

The prompted object is one connected component of one class: a box (its tight box plus
noise of standard deviation 10% of the box size per side, at most 20 px at 1024 input,
scaled with the input size) or a point (sampled among the component's pixels whose
distance to the component's edge is above the median). For evaluation the prompt is
deterministic: the tight box, or the point farthest from the edge.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

NOISE_FRACTION = 0.1
MAX_NOISE_AT_1024 = 20.0


@dataclass(frozen=True)
class Prompt:
    """One prompt in model-input pixel coordinates (x, y)."""

    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels, count)."""
    return ndimage.label(mask, structure=np.ones((3, 3), int))


def box_prompt(component: np.ndarray, image_size: int, rng: np.random.Generator | None) -> Prompt:
    ys, xs = np.nonzero(component)
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    if rng is not None:
        cap = MAX_NOISE_AT_1024 * image_size / 1024
        w, h = x1 - x0 + 1, y1 - y0 + 1
        noise = rng.normal(0.0, 1.0, 4) * NOISE_FRACTION * np.array([w, h, w, h])
        noise = np.clip(noise, -cap, cap)
        x0, y0, x1, y1 = x0 + noise[0], y0 + noise[1], x1 + noise[2], y1 + noise[3]
    hi = image_size - 1
    x0, x1 = sorted((float(np.clip(x0, 0, hi)), float(np.clip(x1, 0, hi))))
    y0, y1 = sorted((float(np.clip(y0, 0, hi)), float(np.clip(y1, 0, hi))))
    return Prompt(box=(x0, y0, x1, y1))


def point_prompt(component: np.ndarray, rng: np.random.Generator | None) -> Prompt:
    dist = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    if rng is None:
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return Prompt(point=(float(x), float(y)))
    inside = dist[component]
    ys, xs = np.nonzero(component & (dist > np.median(inside)))
    if ys.size == 0:  # thin objects: every pixel is at the median distance
        ys, xs = np.nonzero(component)
    i = int(rng.integers(len(ys)))
    return Prompt(point=(float(xs[i]), float(ys[i])))


def simulate(component: np.ndarray, mode: str, image_size: int, rng: np.random.Generator | None) -> Prompt:
    """A ``box`` or ``point`` prompt for one component (``rng=None``: deterministic)."""
    if mode == "box":
        return box_prompt(component, image_size, rng)
    if mode == "point":
        return point_prompt(component, rng)
    raise ValueError(f"prompt mode must be box or point, got {mode!r}")


def pick_object(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random connected component of a random class present in ``mask`` (boolean)."""
    classes = [int(c) for c in np.unique(mask) if c != 0]
    cls = classes[int(rng.integers(len(classes)))]
    labels, n = components(mask == cls)
    return labels == int(rng.integers(1, n + 1))
